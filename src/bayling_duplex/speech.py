"""``python -m bayling_duplex.speech {tokenize,silence,render}``: audio in and out of the codes.

* ``tokenize`` — a manifest of spoken dialogues (audio files; schema in
  ``audio_manifest.py`` and docs/data.md) → Script or Timeline JSONL, with
  GLM-4-Voice's 12.5 Hz tokenizer (on the GPU when there is one)::

      python -m bayling_duplex.speech tokenize --manifest dialogues.jsonl \\
          --tokenizer checkpoints/glm-4-voice-tokenizer \\
          --out data/sources/instructs2s_200k.scripts.jsonl

  Resumable: the output is appended to, one whole line per record, and records
  whose id is already there are skipped; a line cut by a crash is dropped on the
  next start. Records with a missing or unreadable file are reported (id and
  reason, also in ``<out>.errors.jsonl``) and skipped. The silence pattern is
  measured first and written beside the output as ``silence_codes.json`` (or
  checked against the one already there).
* ``silence`` — only that measurement.
* ``render`` — assistant codes decoded by ``python -m bayling_duplex.infer``
  rendered to WAV files with GLM-4-Voice's decoder (``vocoder.py``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path

import numpy as np

from bayling_duplex.audio_manifest import (
    ScriptEntry,
    TimelineEntry,
    parse_script_entry,
    parse_timeline_entry,
    script_json,
    timeline_from_codes,
)
from bayling_duplex.records import RecordError, read_jsonl, timeline_to_json
from bayling_duplex.speech_codec import GlmSpeechCodec, SilencePattern

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


# --------------------------------------------------------------------------- command


def _tokenize(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if not Path(args.manifest).is_file():
        raise FileNotFoundError(f"no manifest {args.manifest}")
    codec = GlmSpeechCodec.load(args.tokenizer, args.device, args.batch_size)
    log.info("speech tokenizer on %s: %d codes", codec.device, codec.num_codes)
    # 1. the silence pattern of this tokenizer, beside the data
    silence_path = out.parent / SILENCE_FILE
    pattern = codec.measure_silence(args.silence_seconds)
    if write_or_check_silence(silence_path, pattern, codec, str(args.tokenizer)):
        log.info("silence pattern %s written to %s", list(pattern.codes), silence_path)
    # 2. the records; SIGTERM (Slurm preemption, kill) stops between two lines, like Ctrl-C
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        report = tokenize_manifest(
            Path(args.manifest),
            out,
            codec,
            kind=args.kind,
            audio_root=Path(args.audio_root) if args.audio_root else None,
            chunk_size=args.chunk,
            io_workers=args.io_workers,
            progress=not args.no_progress,
            shard=args.shard,
        )
    except KeyboardInterrupt:
        print(f"interrupted; {out} holds whole lines only: run the same command to go on")
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(report.summary(out, out.with_name(out.stem + ".errors.jsonl")))
    return 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _silence(args: argparse.Namespace) -> int:
    codec = GlmSpeechCodec.load(args.tokenizer, args.device)
    pattern = codec.measure_silence(args.silence_seconds)
    out = Path(args.out)
    write_or_check_silence(out, pattern, codec, str(args.tokenizer))
    print(json.dumps(silence_json(pattern, codec, str(args.tokenizer))))
    return 0


def _render(args: argparse.Namespace) -> int:
    import soundfile as sf

    from bayling_duplex.vocoder import DECODER_SAMPLE_RATE, render_audio

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for _, obj in read_jsonl(args.decoded):
        if isinstance(obj, RecordError) or "assistant_codes" not in obj:
            continue
        wav = render_audio(
            obj["assistant_codes"], args.decoder, device=args.device, code_dir=args.code_dir
        )
        sf.write(out_dir / f"{obj['id']}.wav", wav, DECODER_SAMPLE_RATE)
        n += 1
    print(f"{n} WAV files at {DECODER_SAMPLE_RATE} Hz in {out_dir}")
    return 0


def _shard(text: str) -> tuple[int, int]:
    i, _, n = text.partition("/")
    try:
        shard = int(i), int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard takes I/N, got {text!r}") from None
    if not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard I/N needs 0 <= I < N, got {text!r}")
    return shard


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bayling_duplex.speech", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def tokenizer_args(q: argparse.ArgumentParser) -> None:
        q.add_argument("--tokenizer", required=True, help="glm-4-voice-tokenizer folder")
        q.add_argument("--device", default=None, help="default: cuda when present, else cpu")
        q.add_argument("--silence-seconds", type=float, default=30.0, help="silence measured")

    t = sub.add_parser("tokenize", help="manifest of audio dialogues -> Script/Timeline JSONL")
    t.add_argument("--manifest", required=True, help="JSON lines, one dialogue each")
    t.add_argument("--out", required=True, help="output JSONL (appended to; resumable)")
    t.add_argument("--kind", choices=("scripts", "timelines"), default="scripts")
    t.add_argument(
        "--audio-root", default=None, help="relative paths' base (default: manifest's folder)"
    )
    t.add_argument("--chunk", type=int, default=32, help="records tokenized together")
    t.add_argument("--batch-size", type=int, default=64, help="30 s windows per forward pass")
    t.add_argument("--io-workers", type=int, default=4, help="threads reading audio")
    t.add_argument("--shard", type=_shard, default=(0, 1), help="I/N: lines I, I+N, … only")
    t.add_argument("--no-progress", action="store_true")
    tokenizer_args(t)

    s = sub.add_parser("silence", help="measure the silence pattern into a JSON file")
    s.add_argument("--out", required=True, help=f"the JSON file (usually .../{SILENCE_FILE})")
    tokenizer_args(s)

    r = sub.add_parser("render", help="decoded assistant codes -> WAV (GLM-4-Voice decoder)")
    r.add_argument(
        "--decoded", required=True, help="output JSONL of python -m bayling_duplex.infer"
    )
    r.add_argument("--decoder", required=True, help="glm-4-voice-decoder folder")
    r.add_argument("--out-dir", required=True)
    r.add_argument("--code-dir", default=None, help="GLM-4-Voice source clone (if not importable)")
    r.add_argument("--device", default=None)
    args = p.parse_args(argv)
    if args.command == "tokenize" and (args.chunk < 1 or args.batch_size < 1):
        p.error("--chunk and --batch-size must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    commands = {"tokenize": _tokenize, "silence": _silence, "render": _render}
    try:
        return commands[args.command](args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
