"""The sharded dataset build: sources → (synthesis) → interleaving → Hugging Face shards + manifest.

Layout of a built dataset::

    <out>/build_plan.json          fingerprint + shard plan, written first
    <out>/<split>/shard-00000/     a Hugging Face dataset (save_to_disk) …
        stats.json                 … with its counts, lengths and rejections
        rejections.jsonl           one line per rejected record: id, reason, detail
        record_ids.json            the ids its records had, and each row's record
    <out>/manifest.json            written last, from the shards' stats

Shard ``i`` holds source records ``[i·S, (i+1)·S)``, and every random choice is
seeded by the record id, so a shard's content does not depend on the worker
that built it. A shard is written to a temporary folder and renamed when
complete: an interrupted build resumes by skipping finished shards and never
sees a half-written one. A record repeating an id read earlier in its split is
rejected (``duplicate_id``): inside a shard as it is read, across shards by a
pass over the finished shards' ``record_ids.json`` before the manifest.
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bayling_duplex.data.mixer import hesitation_pauses
from bayling_duplex.data.recipe import RecipeConfig, SourceConfig, fingerprint, vocab_fingerprint
from bayling_duplex.data.sources import count_source, load_backchannels, read_records
from bayling_duplex.data.synthesis import record_rng, synthesize, with_partner
from bayling_duplex.format.interleave import (
    check_sequence,
    interleave,
    num_blocks_for,
    place_responses,
)
from bayling_duplex.format.records import (
    RecordError,
    Script,
    Timeline,
)
from bayling_duplex.runtime import plain, write_json

log = logging.getLogger(__name__)
MANIFEST = "manifest.json"
PLAN = "build_plan.json"
RECORD_IDS = "record_ids.json"


class BuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class ShardTask:
    split: str
    index: int
    first: int  # index of its first source record (JSON lines: line first + 1, 1-based)
    count: int
    byte_offset: int  # for JSON-lines sources
    out_dir: str


# ----------------------------------------------------------------------------- worker

_W: dict = {}


def _init_worker(
    recipe: RecipeConfig, tokenizer_dir: str, vocab_cfg, codec_dir=None, one_thread=False
) -> None:
    if one_thread:  # pool workers: parallel across processes; torch's own threads would
        import torch  # oversubscribe the cores (each op slows down tenfold)

        torch.set_num_threads(1)
    from bayling_duplex.format.vocab import extend_tokenizer, resolve_vocab
    from bayling_duplex.model.backbone import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    extend_tokenizer(tok, vocab_cfg)
    _W.update(
        recipe=recipe,
        tok=tok,
        vocab=resolve_vocab(tok, vocab_cfg),
        spec=recipe.format.spec(),
        limits=recipe.record_limits(),
        speech=None,
    )
    if recipe.codec.kind == "units":  # the real-speech demo: synthesized, mixed, coded
        from bayling_duplex.audio.units import UnitCodec
        from bayling_duplex.data.speech_demo import speech_pipeline

        codec = UnitCodec.load(codec_dir)
        _W["speech"], _W["mixer"] = speech_pipeline(recipe, codec)
        _W["codec"] = _W["speech"]  # the source reader asks it for the spoken scripts
        _W["backchannels"] = ()  # per dialogue, in its user's voice
        return
    from bayling_duplex.audio.codec import ToyCodec

    _W["codec"] = ToyCodec(recipe.codec.num_codes) if recipe.codec.kind == "toy" else None
    _W["backchannels"] = load_backchannels(recipe, _W["codec"])
    from bayling_duplex.data.mixer import WaveformMixer

    _W["mixer"] = WaveformMixer.for_recipe(recipe)  # None unless recipe.waveform.level=waveform


def _text_ids(texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return _W["tok"](texts, add_special_tokens=False)["input_ids"]


def _timelines(record, recipe: RecipeConfig, partner) -> list[tuple[Timeline, list, list | None]]:
    """The timelines of one source record, each with its responses' text ids and its
    hesitation pauses (``[start, end)`` frames; None for a given timeline: not known).

    A timeline passes through. A script's answers are tokenized once: response
    ``i`` of a synthesised timeline is turn ``i``'s answer, so its ids are reused
    for interleaving instead of tokenizing the same texts again.
    """
    if not isinstance(record, Script):
        return [(record, _text_ids([r.text for r in record.responses]), None)]
    own = _text_ids([t.assistant_text for t in record.turns])
    out = []
    for scenario in recipe.synthesis.scenarios_for(record_rng(recipe.synthesis.seed, record.id)):
        script, ids = record, own
        if scenario == "interruption" and len(record.turns) < 2 and partner is not None:
            script = with_partner(record, partner)
            ids = own + _text_ids([partner.assistant_text])
        bcs = _W["backchannels"]
        if _W.get("speech") is not None and scenario == "backchannel":
            bcs = _W["speech"].backchannels(record.id)  # in this dialogue's user's voice
        t = synthesize(script, ids, scenario, recipe.synthesis, _W["spec"], bcs)
        pauses = hesitation_pauses(t, script)  # from the codes synthesis placed
        if _W.get("mixer"):  # waveform level: mix the audio on this timeline, tokenize the channels
            t = _W["mixer"].render(whole_blocks(t, ids, _W["spec"]), script)
        if recipe.synthesis.mode == "each":  # one timeline per scenario: keep ids unique
            t = dataclasses.replace(t, id=f"{record.id}:{scenario}")
        out.append((t, ids[: len(t.responses)], pauses))
    return out


def whole_blocks(t: Timeline, text_ids, spec) -> Timeline:
    """``t`` lengthened to the whole blocks its sequence takes, so that a mixed channel is
    tokenized to its end and no user frame is filled with silence in code space (a noisy
    microphone's silence is not the codec's digital silence)."""
    layout = spec.layout
    placed = place_responses(t, text_ids[: len(t.responses)], layout)
    frames = num_blocks_for(t, placed, layout) * layout.frames_per_block
    if frames <= t.num_frames:
        return t
    pad = tuple(int(c) for c in spec.silence(t.num_frames, frames))
    return dataclasses.replace(t, num_frames=frames, user_codes=t.user_codes + pad)


def build_shard(task: ShardTask, src: SourceConfig) -> dict:
    """Build one shard into ``task.out_dir`` (atomically) and return its stats."""
    import datasets
    import pyarrow as pa

    recipe, spec, vocab, limits = _W["recipe"], _W["spec"], _W["vocab"], _W["limits"]
    ids_parts, cls_parts, lengths, rows_meta, row_records = [], [], [], [], []
    rejected: list[dict] = []
    scenarios: Counter = Counter()
    seen: dict[str, str] = {}  # the ids of this shard's records, and where each was read
    if _W.get("speech") is not None:
        _W["speech"].reset()
    records = list(
        read_records(
            src,
            _W["codec"],
            recipe.synthesis.seed,
            task.first,
            task.count,
            task.byte_offset,
            limits,
            seen,
        )
    )
    if _W.get("mixer") and src.path:
        _W["mixer"].index_shard(src.path, task.byte_offset, task.count)
    scripts = [k for k, r in enumerate(records) if isinstance(r, Script)]
    for n, record in enumerate(records):
        if isinstance(record, RecordError):
            rejected.append(
                {"id": record.record_id, "reason": record.reason, "detail": record.detail}
            )
            continue
        partner = _partner(records, scripts, n)
        try:
            for t, text_ids, pauses in _timelines(record, recipe, partner):
                seq = interleave(t, text_ids, spec, vocab, max_seq_len=limits.max_seq_len)
                check_sequence(seq, spec.layout, vocab)
                ids_parts.append(seq.input_ids.astype(np.int32))
                cls_parts.append(seq.classes)
                lengths.append(seq.num_blocks)
                scenarios[t.scenario or "given"] += 1
                rows_meta.append((t.id, t.scenario or "given", _meta_json(t, pauses)))
                row_records.append(record.id)
        except RecordError as e:
            rejected.append({"id": e.record_id, "reason": e.reason, "detail": e.detail})

    offsets = np.zeros(len(ids_parts) + 1, dtype=np.int32)
    np.cumsum([len(x) for x in ids_parts], out=offsets[1:])
    flat_ids = np.concatenate(ids_parts) if ids_parts else np.zeros(0, np.int32)
    flat_cls = np.concatenate(cls_parts) if cls_parts else np.zeros(0, np.int8)
    table = pa.table(
        {
            "id": pa.array([m[0] for m in rows_meta], pa.string()),
            "scenario": pa.array([m[1] for m in rows_meta], pa.string()),
            "num_blocks": pa.array(lengths, pa.int32()),
            "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_ids)),
            "classes": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat_cls)),
            "meta": pa.array([m[2] for m in rows_meta], pa.string()),
        }
    )
    stats = {
        "split": task.split,
        "shard": task.index,
        "records": task.count,
        "sequences": len(lengths),
        "tokens": int(offsets[-1]),
        "scenarios": dict(scenarios),
        "rejected": len(rejected),
        "rejections_by_reason": dict(Counter(r["reason"] for r in rejected)),
        "num_blocks_hist": dict(Counter(lengths)),
    }
    final = Path(task.out_dir)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.disable_progress_bars()
    datasets.Dataset(table).save_to_disk(str(tmp))
    with open(tmp / "rejections.jsonl", "w") as f:
        for r in rejected:
            f.write(json.dumps(r) + "\n")
    write_json(tmp / RECORD_IDS, {"records": seen, "rows": row_records})
    write_json(tmp / "stats.json", stats)
    tmp.rename(final)
    return stats


def _partner(records: list, scripts: list[int], n: int):
    """The first turn of the next script after record ``n`` in the shard (wrapping, past
    rejected records), or None. ``scripts`` are the indices of the shard's scripts."""
    if len(scripts) < 2 or not isinstance(records[n], Script):
        return None
    k = bisect.bisect_right(scripts, n) % len(scripts)
    return records[scripts[k]].turns[0]


def _meta_json(t, pauses: list | None = None) -> str:
    """What evaluation, rendering, DPO and the pause weight need of the timeline, without
    its codes. ``pauses``: the hesitation pauses synthesis made (absent for a given
    timeline, where they are not known)."""
    meta = {
        "num_frames": t.num_frames,
        "user_segments": [[s.start_frame, s.end_frame, s.kind] for s in t.user_segments],
        "responses": [[r.start_frame, r.end_frame, int(r.interrupted)] for r in t.responses],
    }
    if pauses is not None:
        meta["pauses"] = [[a, b] for a, b in pauses]
    return json.dumps(meta, separators=(",", ":"))


def _run_task(args) -> dict:
    task, src = args
    return build_shard(task, src)


# ----------------------------------------------------------------------------- driver


def plan_shards(recipe: RecipeConfig, out: Path) -> list[tuple[ShardTask, SourceConfig]]:
    tasks = []
    for split, src in recipe.splits().items():
        total, offsets = count_source(src, recipe.shard_size, recipe.limits.max_line_bytes)
        for i, first in enumerate(range(0, total, recipe.shard_size)):
            tasks.append(
                (
                    ShardTask(
                        split,
                        i,
                        first,
                        min(recipe.shard_size, total - first),
                        offsets[i] if offsets else 0,
                        str(out / split / f"shard-{i:05d}"),
                    ),
                    src,
                )
            )
    return tasks


def build_recipe(
    recipe: RecipeConfig,
    model_cfg,
    vocab_cfg,
    out: Path,
    cache_dir: str | Path,
    num_workers: int = 2,
    overwrite: bool = False,
) -> dict:
    """Build ``recipe`` with the tokenizer of ``model_cfg`` (the tiny one built into
    ``cache_dir`` when needed) into ``out``; return the manifest."""
    from bayling_duplex.model.backbone import backbone_source

    recipe.format.resolve()
    tokenizer_dir = backbone_source(model_cfg, cache_dir)
    return run_build(
        recipe, str(tokenizer_dir), vocab_cfg, Path(out), num_workers, overwrite=overwrite
    )


def run_build(
    recipe: RecipeConfig,
    tokenizer_dir: str,
    vocab_cfg,
    out: Path,
    num_workers: int,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Build (or resume) the dataset of ``recipe`` in ``out``; return the manifest."""
    from tqdm.auto import tqdm

    from bayling_duplex.format.vocab import extend_tokenizer, resolve_vocab
    from bayling_duplex.model.backbone import load_tokenizer

    tok = load_tokenizer(tokenizer_dir)
    extend_tokenizer(tok, vocab_cfg)
    vocab = resolve_vocab(tok, vocab_cfg)
    if recipe.codec.kind == "toy" and recipe.codec.num_codes > vocab.num_audio:
        raise BuildError(
            f"recipe.codec.num_codes={recipe.codec.num_codes} exceeds the tokenizer's "
            f"{vocab.num_audio} audio tokens"
        )
    bad = [c for c in recipe.format.silence_codes if not 0 <= c < vocab.num_audio]
    if bad:  # a config error: fail once here, not once per record
        file = recipe.format.silence_codes_file
        raise BuildError(
            f"recipe.format.silence_codes={list(recipe.format.silence_codes)}"
            f"{f' (read from recipe.format.silence_codes_file {file})' if file else ''}: "
            f"{bad} outside the tokenizer's audio codes [0, {vocab.num_audio}); "
            "silence codes are speech codes"
        )
    fp = fingerprint(plain(recipe), vocab_fingerprint(vocab, tok), recipe.codec.name)
    plan_path = out / PLAN
    if plan_path.is_file():
        old = json.loads(plan_path.read_text())["fingerprint"]
        if old["combined"] != fp["combined"]:
            if not overwrite:
                diff = [k for k in fp if k != "combined" and fp[k] != old.get(k)]
                raise BuildError(
                    f"{out} holds a build of another configuration (differs in {diff}); "
                    "pass overwrite=true to replace it"
                )
            shutil.rmtree(out)
    elif out.exists() and not overwrite and any(p.name != "data.log" for p in out.iterdir()):
        raise BuildError(f"{out} is not empty and holds no build plan; pass overwrite=true")
    out.mkdir(parents=True, exist_ok=True)
    codec_dir, codec_info = None, None
    if recipe.codec.kind == "units":
        codec_dir, codec_info = _fitted_codec(recipe, out, vocab, progress)
    tasks = plan_shards(recipe, out)
    write_json(plan_path, {"fingerprint": fp, "recipe": plain(recipe), "shards": len(tasks)})
    for split in recipe.splits():  # leftovers of a killed run
        for tmp in (out / split).glob(".shard-*.tmp*") if (out / split).is_dir() else []:
            shutil.rmtree(tmp, ignore_errors=True)
        (out / split).mkdir(exist_ok=True)
    todo = [t for t in tasks if not (Path(t[0].out_dir) / "stats.json").is_file()]
    log.info(
        "%d shards planned, %d already built, %d to build",
        len(tasks),
        len(tasks) - len(todo),
        len(todo),
    )
    start = time.perf_counter()
    bar = tqdm(
        total=len(tasks),
        initial=len(tasks) - len(todo),
        desc=f"build {recipe.name}",
        unit="shard",
        disable=not progress,
    )
    init = (recipe, tokenizer_dir, vocab_cfg, codec_dir)
    if num_workers <= 1 or len(todo) <= 1:
        _init_worker(*init)
        for t in todo:
            _run_task(t)
            bar.update()
    else:
        # fork is fastest, but a parent that ran torch's thread pool (fitting the unit
        # codec) hands a forked child a pool that hangs at its first op: spawn then
        context = "spawn" if recipe.codec.kind == "units" else "fork"
        with mp.get_context(context).Pool(
            num_workers, initializer=_init_worker, initargs=(*init, True)
        ) as pool:
            for _ in pool.imap_unordered(_run_task, todo):
                bar.update()
    bar.close()
    for split in recipe.splits():
        reject_repeated_ids([t for t, _ in tasks if t.split == split], recipe.format.spec())
    manifest = summarize(out, recipe, fp, tasks, time.perf_counter() - start)
    if codec_info is not None:
        manifest["codec"] = codec_info
    for split in recipe.splits():
        manifest["splits"][split]["turn_end_audit"] = turn_end_audit(
            load_split_shards(out, tasks, split), recipe.format.spec().layout, vocab
        )
    write_json(out / MANIFEST, manifest)
    if manifest["status"] != "ok":
        raise BuildError(manifest["failure"])
    return manifest


def _fitted_codec(recipe: RecipeConfig, out: Path, vocab, progress: bool) -> tuple[str, dict]:
    """The build's unit codec (fitted into ``out/codec`` unless it is there), its silence
    codes made the recipe's, and what the manifest records of it."""
    from bayling_duplex.audio.units import UnitCodec, read_codec_json
    from bayling_duplex.data.speech_demo import CODEC_DIR, fit_codec

    folder = out / CODEC_DIR
    if (folder / "codec.json").is_file():
        codec = UnitCodec.load(folder)
        log.info("reusing the fitted codec %s in %s", codec.name, folder)
    else:
        t0 = time.perf_counter()
        codec = fit_codec(recipe, folder, progress)
        log.info("codec fitted in %.1f s", time.perf_counter() - t0)
    if codec.num_codes > vocab.num_audio:
        raise BuildError(
            f"recipe.codec.num_codes={codec.num_codes} exceeds the tokenizer's "
            f"{vocab.num_audio} audio tokens"
        )
    if recipe.format.silence_from_codec:
        recipe.format.silence_codes = [int(c) for c in codec.silence_codes]
    info = read_codec_json(folder)
    return str(folder), {
        "dir": CODEC_DIR,
        "name": codec.name,
        "fingerprint": codec.fingerprint,
        "silence_codes": [int(c) for c in codec.silence_codes],
        "fitted_on": info.get("fitted_on"),
    }


def load_split_shards(out: Path, tasks, split: str):
    """The rows of ``split``'s finished shards (an iterator of datasets)."""
    import datasets

    for task, _ in tasks:
        folder = Path(task.out_dir)
        if task.split == split and _shard_rows(folder):
            yield datasets.load_from_disk(str(folder))


def turn_end_audit(shards, layout, vocab, max_rows: int = 2000) -> dict:
    """Whether the last frame of a user turn holds codes that speech never holds elsewhere.

    Over up to ``max_rows`` sequences: every user turn's last speech frame (its
    turn-final code) and every other frame inside user speech. A code planted to
    end utterances (a marker) occurs only turn-finally; ``never_inside_share`` is the
    share of turn-final codes that never occur inside speech (the no-marker
    guarantee keeps it under 5 %; docs/data.md)."""
    from bayling_duplex.format.interleave import split_channels

    inside: Counter = Counter()
    final: Counter = Counter()
    rows = 0
    for ds in shards:
        if rows >= max_rows:
            break
        for row in ds.select_columns(["input_ids", "meta"]):
            if rows >= max_rows:
                break
            rows += 1
            meta = json.loads(row["meta"])
            codes = split_channels(np.asarray(row["input_ids"]), layout, vocab).user_codes
            for start, end, kind in meta["user_segments"]:
                if kind != "turn" or end <= start:
                    continue
                final[int(codes[end - 1])] += 1
                inside.update(int(c) for c in codes[start : end - 1])
    n = sum(final.values())
    never = sum(v for c, v in final.items() if c not in inside)
    return {
        "rows": rows,
        "turn_final_codes": n,
        "never_inside_speech": never,
        "never_inside_share": round(never / n, 4) if n else None,
        "distinct_final_codes": len(final),
    }


def reject_repeated_ids(tasks: list[ShardTask], spec) -> int:
    """The cross-shard half of ``duplicate_id``: a record whose id an earlier shard of the
    split read is rejected, and its rows leave its (rewritten) shard. Returns how many.

    Each shard rejected its own repeats as it read them; this pass compares the finished
    shards' ``record_ids.json`` in order. A rewritten shard no longer lists the ids it
    dropped, so running the pass again (a resumed build) changes nothing.
    """
    seen: dict[str, str] = {}
    dropped = 0
    for task in sorted(tasks, key=lambda t: t.index):
        folder = Path(task.out_dir)
        if not (folder / RECORD_IDS).is_file():  # a shard of an older builder
            continue
        ids = json.loads((folder / RECORD_IDS).read_text())
        repeated = {rid: where for rid, where in ids["records"].items() if rid in seen}
        if repeated:
            _drop_records(folder, ids, repeated, seen, spec)
            dropped += len(repeated)
        for rid, where in ids["records"].items():
            seen.setdefault(rid, where)
    return dropped


def _drop_records(folder: Path, ids: dict, repeated: dict, seen: dict, spec) -> None:
    """Rewrite shard ``folder`` without the rows of the ``repeated`` records, rejecting them."""
    import datasets

    keep = [i for i, rid in enumerate(ids["rows"]) if rid not in repeated]
    ds = datasets.load_from_disk(str(folder))
    kept = ds.select(keep)
    stats = json.loads((folder / "stats.json").read_text())
    blocks = kept["num_blocks"]
    stats.update(
        sequences=len(kept),
        tokens=sum(blocks) * spec.layout.block_len,
        scenarios=dict(Counter(kept["scenario"])),
        rejected=stats["rejected"] + len(repeated),
        rejections_by_reason=dict(
            Counter(stats["rejections_by_reason"]) + Counter({"duplicate_id": len(repeated)})
        ),
        num_blocks_hist=dict(Counter(blocks)),
    )
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    datasets.disable_progress_bars()
    kept.save_to_disk(str(tmp))
    with open(folder / "rejections.jsonl") as f, open(tmp / "rejections.jsonl", "w") as g:
        g.write(f.read())
        for rid, where in repeated.items():
            detail = f"{where} repeats the id of {seen[rid]}"
            g.write(json.dumps({"id": rid, "reason": "duplicate_id", "detail": detail}) + "\n")
    records = {rid: where for rid, where in ids["records"].items() if rid not in repeated}
    write_json(tmp / RECORD_IDS, {"records": records, "rows": [ids["rows"][i] for i in keep]})
    write_json(tmp / "stats.json", stats)
    del ds, kept
    # the old folder goes aside under a name the next run cleans up (.shard-*.tmp*)
    old = folder.with_name(f".{folder.name}.tmp-old{os.getpid()}")
    folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def summarize(out: Path, recipe: RecipeConfig, fp: dict, tasks, seconds: float) -> dict:
    splits: dict[str, dict] = {
        split: {  # every split of the recipe, also one whose source held no record
            "records": 0,
            "sequences": 0,
            "tokens": 0,
            "rejected": 0,
            "scenarios": Counter(),
            "rejections_by_reason": Counter(),
            "hist": Counter(),
            "shards": [],
        }
        for split in recipe.splits()
    }
    for task, _ in tasks:
        st = json.loads((Path(task.out_dir) / "stats.json").read_text())
        agg = splits[task.split]
        for k in ("records", "sequences", "tokens", "rejected"):
            agg[k] += st[k]
        agg["scenarios"].update(st["scenarios"])
        agg["rejections_by_reason"].update(st["rejections_by_reason"])
        agg["hist"].update({int(k): v for k, v in st["num_blocks_hist"].items()})
        agg["shards"].append(str(Path(task.out_dir).relative_to(out)))
    result = {
        "name": recipe.name,
        "fingerprint": fp,
        "status": "ok",
        "build_seconds": round(seconds, 2),
        "layout": {
            "frames_per_block": recipe.format.frames_per_block,
            "slots_per_block": recipe.format.slots_per_block,
            "frame_rate_hz": recipe.format.frame_rate_hz,
        },
        "silence_codes": list(recipe.format.silence_codes),
        "splits": {},
    }
    failures = []
    for split, agg in splits.items():
        hist = agg.pop("hist")
        blocks = np.repeat(np.array(list(hist.keys()) or [0]), list(hist.values()) or [1])
        agg["num_blocks"] = {
            "min": int(blocks.min()),
            "mean": round(float(blocks.mean()), 2),
            "p50": int(np.percentile(blocks, 50)),
            "p90": int(np.percentile(blocks, 90)),
            "max": int(blocks.max()),
        }
        # tokens of the longest sequence: training refuses a model with fewer positions
        agg["max_seq_len"] = int(blocks.max()) * (
            2 * recipe.format.frames_per_block + recipe.format.slots_per_block
        )
        agg["num_blocks_hist"] = {str(k): v for k, v in sorted(hist.items())}
        agg["scenarios"] = dict(agg["scenarios"])
        agg["rejections_by_reason"] = dict(agg["rejections_by_reason"])
        share = agg["rejected"] / max(1, agg["records"])
        agg["rejected_share"] = round(share, 5)
        top = ", ".join(f"{r}: {n}" for r, n in Counter(agg["rejections_by_reason"]).most_common(5))
        if agg["sequences"] == 0:
            src = recipe.splits()[split]
            source = f"{src.kind} {src.path}" if src.path else f"{src.kind} {src.split}"
            failures.append(
                f"split {split} yields no sequence: its source ({source}) holds no record"
                if agg["rejected"] == 0
                else f"split {split} yields no sequence: all {agg['rejected']} records rejected; "
                f"by reason: {top}; see {out}/{split}/shard-*/rejections.jsonl"
            )
        elif share > recipe.max_reject_share:
            failures.append(
                f"split {split}: {agg['rejected']} of {agg['records']} records rejected "
                f"({share:.1%} > max_reject_share {recipe.max_reject_share:.1%}); by reason: {top}; "
                f"see {out}/{split}/shard-*/rejections.jsonl"
            )
        splits[split] = agg
    result["splits"] = splits
    if failures:
        result["status"] = "failed"
        result["failure"] = "; ".join(failures)
    return result


def load_split(data_dir: str | Path, split: str):
    """The shards of ``split`` as one Hugging Face dataset (memory-mapped)."""
    import datasets

    data_dir = Path(data_dir)
    manifest = json.loads((data_dir / MANIFEST).read_text())
    shards = manifest["splits"][split]["shards"]
    # a shard whose every record was rejected holds no row, and datasets cannot load that
    full = [s for s in shards if _shard_rows(data_dir / s)]
    if not full:
        raise BuildError(f"split {split} of {data_dir} holds no sequence")
    return datasets.concatenate_datasets([datasets.load_from_disk(str(data_dir / s)) for s in full])


def _shard_rows(folder: Path) -> int:
    return json.loads((folder / "stats.json").read_text())["sequences"]
