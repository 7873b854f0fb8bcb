"""The batch pipeline from audio files to code records (``python -m bayling_duplex.speech``).

The command itself is :mod:`bayling_duplex.cli.speech`; this module holds the
resumable, parallel pipeline it runs and the silence-pattern file it writes.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from bayling_duplex.audio.codec import GlmSpeechCodec, SilencePattern
from bayling_duplex.audio.manifest import (
    ScriptEntry,
    TimelineEntry,
    parse_script_entry,
    parse_timeline_entry,
    script_json,
    timeline_from_codes,
)
from bayling_duplex.format.records import RecordError, read_jsonl, timeline_to_json

log = logging.getLogger("bayling_duplex.speech")
SILENCE_FILE = "silence_codes.json"
_ID_AT_START = re.compile(rb'^\{"id":("(?:[^"\\]|\\.)*")')


# --------------------------------------------------------------------------- silence file


def silence_json(pattern: SilencePattern, codec: GlmSpeechCodec, source: str) -> dict:
    """The content of ``silence_codes.json`` (``recipe.format.silence_codes_file`` reads ``silence_codes``)."""
    return {
        "silence_codes": list(pattern.codes),
        "agreement": pattern.agreement,
        "measured_frames": pattern.measured_frames,
        "codec": codec.name,
        "tokenizer": source,
    }


def write_or_check_silence(path: Path, pattern: SilencePattern, codec, source: str) -> bool:
    """Write ``path``, or check that the pattern already there is the same; True if written."""
    if path.is_file():
        old = json.loads(path.read_text())["silence_codes"]
        if list(old) != list(pattern.codes):
            raise ValueError(
                f"{path} holds silence codes {old[:8]} but this tokenizer gives "
                f"{list(pattern.codes)[:8]}: the data beside it was tokenized by another "
                "tokenizer; use another output folder or delete the file"
            )
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(silence_json(pattern, codec, source), indent=2) + "\n")
    tmp.replace(path)
    return True


# --------------------------------------------------------------------------- resumable output


def resume_jsonl(path: Path) -> set[str]:
    """Ids already in ``path``; a last line without its newline (a crash) is cut off first."""
    if not path.is_file():
        return set()
    size = path.stat().st_size
    with path.open("rb+") as f:
        keep, pos = 0, size
        while pos > 0:  # the last newline, read backwards in blocks
            step = min(1 << 16, pos)
            pos -= step
            f.seek(pos)
            i = f.read(step).rfind(b"\n")
            if i >= 0:
                keep = pos + i + 1
                break
        if keep < size:
            log.warning("%s: dropping a half-written last line (%d bytes)", path, size - keep)
            f.truncate(keep)
    ids = set()
    with path.open("rb") as f:
        for line in f:
            m = _ID_AT_START.match(line)
            if m:
                ids.add(json.loads(m.group(1)))
            elif line.strip():
                ids.add(json.loads(line)["id"])
    return ids


class LineAppender:
    """Appends whole lines to a file: one unbuffered ``write`` per line, synced on close."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(path, "ab", buffering=0)  # noqa: SIM115

    def write(self, obj: dict) -> None:
        data = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[self._f.write(view) :]

    def close(self) -> None:
        os.fsync(self._f.fileno())
        self._f.close()


# --------------------------------------------------------------------------- tokenize


@dataclass
class TokenizeReport:
    total: int = 0
    written: int = 0
    already_done: int = 0
    failed: Counter = field(default_factory=Counter)  # reason -> count

    def summary(self, out: Path, errors: Path) -> str:
        failed = sum(self.failed.values())
        text = (
            f"{self.total} records: {self.written} written, {self.already_done} already in {out}, "
            f"{failed} failed"
        )
        if failed:
            text += (
                f" ({', '.join(f'{r}: {n}' for r, n in self.failed.most_common())}; see {errors})"
            )
        return text


Entry = ScriptEntry | TimelineEntry


def _load(codec: GlmSpeechCodec, entry: Entry) -> list[np.ndarray]:
    """The entry's waveforms at 16 kHz (two channels of one recording padded to one length)."""
    wavs = []
    for path, channel in entry.audio_files():
        if not Path(path).is_file():
            raise RecordError(entry.id, "missing_file", f"no such file: {path}")
        try:
            wav = codec.load_audio(path, channel)
        except Exception as e:  # libsndfile, resampler, channel index: all mean "unreadable"
            raise RecordError(entry.id, "unreadable_audio", f"{path}: {e}") from None
        if wav.size == 0:
            raise RecordError(entry.id, "empty_audio", f"{path} has no samples")
        wavs.append(wav)
    if isinstance(entry, TimelineEntry):
        n = max(len(w) for w in wavs)
        wavs = [np.pad(w, (0, n - len(w))) for w in wavs]
    return wavs


def _record(entry: Entry, codes: list[tuple[int, ...]], rate: float) -> dict:
    if isinstance(entry, ScriptEntry):
        return script_json(entry, codes, rate)
    return timeline_to_json(timeline_from_codes(entry, codes[0], codes[1], rate))


def _chunks(
    manifest: Path, root: Path, kind: str, size: int, shard: tuple[int, int] = (0, 1)
) -> Iterator[list]:
    """Manifest lines in chunks: parsed entries, or RecordError for lines that do not parse.

    ``shard=(i, n)`` keeps lines ``i, i+n, i+2n, …`` (0-based): one of ``n`` processes.
    """
    parse = parse_script_entry if kind == "scripts" else parse_timeline_entry
    chunk: list = []
    for n, obj in read_jsonl(manifest):
        if n % shard[1] != shard[0]:
            continue
        if isinstance(obj, RecordError):
            chunk.append(RecordError(f"line {n + 1}", obj.reason, obj.detail))
        else:
            try:
                chunk.append(parse(obj, root))
            except RecordError as e:
                chunk.append(e)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def tokenize_manifest(
    manifest: Path,
    out: Path,
    codec: GlmSpeechCodec,
    kind: str = "scripts",
    audio_root: Path | None = None,
    chunk_size: int = 32,
    io_workers: int = 4,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> TokenizeReport:
    """Tokenize every record of ``manifest`` not yet in ``out``; append them to ``out``.

    Audio of the next chunk is read by ``io_workers`` threads while the current
    chunk is tokenized; all clips of a chunk go through the tokenizer together.
    ``shard=(i, n)`` takes every ``n``-th line from line ``i`` (one GPU of ``n``).
    Returns the counts; failures are also written to ``<out>.errors.jsonl``.
    """
    from tqdm.auto import tqdm

    if kind not in ("scripts", "timelines"):
        raise ValueError(f"kind must be scripts or timelines, got {kind!r}")
    root = (audio_root or manifest.parent).resolve()
    errors_path = out.with_name(out.stem + ".errors.jsonl")
    done = resume_jsonl(out)
    seen: set[str] = set()
    report = TokenizeReport()
    with manifest.open("rb") as f:
        total = sum(1 for k, _ in enumerate(f) if k % shard[1] == shard[0])
    bar = tqdm(total=total, desc=f"tokenize {manifest.name}", unit="rec", disable=not progress)
    sink, errors = LineAppender(out), errors_path.open("w", encoding="utf-8")

    def fail(e: RecordError) -> None:
        report.failed[e.reason] += 1
        errors.write(json.dumps({"id": e.record_id, "reason": e.reason, "detail": e.detail}) + "\n")
        errors.flush()
        bar.write(f"skipped {e.record_id}: {e.reason}: {e.detail}")

    def todo(chunk: list) -> list[Entry]:
        keep = []
        for item in chunk:
            report.total += 1
            if isinstance(item, RecordError):
                fail(item)
            elif item.id in seen:
                fail(RecordError(item.id, "duplicate_id", "an earlier manifest line has this id"))
            elif item.id in done:
                seen.add(item.id)
                report.already_done += 1
            else:
                seen.add(item.id)
                keep.append(item)
        return keep

    def load_all(pool: ThreadPoolExecutor, entries: list[Entry]) -> list[Future]:
        return [pool.submit(_load, codec, e) for e in entries]

    try:
        with ThreadPoolExecutor(max(1, io_workers)) as pool:
            pending: tuple[list, list, list[Future]] | None = None
            for chunk in chain(_chunks(manifest, root, kind, chunk_size, shard), [None]):
                nxt = None
                if chunk is not None:
                    entries = todo(chunk)
                    nxt = (chunk, entries, load_all(pool, entries))
                if pending is not None:
                    _finish(pending, codec, sink, fail, report)
                    bar.update(len(pending[0]))
                pending = nxt
    finally:
        sink.close()
        errors.close()
        bar.close()
    return report


def _finish(pending, codec: GlmSpeechCodec, sink: LineAppender, fail, report) -> None:
    """Tokenize one loaded chunk and append its records in manifest order."""
    _, entries, futures = pending
    loaded: list[tuple[Entry, list[np.ndarray]]] = []
    for entry, fut in zip(entries, futures, strict=True):
        try:
            loaded.append((entry, fut.result()))
        except RecordError as e:
            fail(e)
    if not loaded:
        return
    try:
        flat = codec.encode_many([w for _, wavs in loaded for w in wavs])
        per_entry = []
        for _, wavs in loaded:
            per_entry.append(flat[: len(wavs)])
            flat = flat[len(wavs) :]
    except Exception:  # isolate the record that breaks the batch
        per_entry = []
        for entry, wavs in loaded:
            try:
                per_entry.append(codec.encode_many(wavs))
            except Exception as e:
                per_entry.append(RecordError(entry.id, "tokenize_failed", repr(e)))
    for (entry, _), codes in zip(loaded, per_entry, strict=True):
        try:
            if isinstance(codes, RecordError):
                raise codes
            sink.write(_record(entry, codes, codec.frame_rate_hz))
            report.written += 1
        except RecordError as e:
            fail(e)
