"""The one reader of a recipe's sources, for the SFT build and the preference pairs alike.

A source (``recipe.train`` / ``recipe.heldout``, :class:`~bayling_duplex.data.recipe.SourceConfig`)
is the generated demo, a JSON-lines file of scripts or timelines, or a Hugging Face
dataset of either (a ``save_to_disk`` folder or json/parquet files). Each record
comes out parsed (``Script`` or ``Timeline``) or as a ``RecordError`` carrying its
id and reason, never raised: one bad record must not lose the others. A record
without a usable id is named by its place (``file:line``, ``folder[row]``), sizes
are capped by ``recipe.limits`` as the record is read, and a record whose id was
already read is rejected (``duplicate_id``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from bayling_duplex.data.recipe import RecipeConfig, SourceConfig
from bayling_duplex.format.records import (
    RecordError,
    RecordLimits,
    line_id,
    raw_lines,
    read_jsonl,
    record_id,
    script_from_json,
    timeline_from_json,
)


def count_source(
    src: SourceConfig, shard_size: int, max_line_bytes: int | None = None
) -> tuple[int, list[int]]:
    """Number of source records and the byte offset of each shard's first line (JSON lines).

    A JSON-lines source has one record per line (blank lines included), so record
    ``i`` is line ``i + 1``; lines over ``max_line_bytes`` are counted without being held.
    """
    if src.kind == "demo":
        return src.count, []
    if src.kind.endswith("_jsonl"):
        offsets, n, pos = [], 0, 0
        with open(src.path, "rb") as f:
            for _, size in raw_lines(f, max_line_bytes):
                if n % shard_size == 0:
                    offsets.append(pos)
                pos += size
                n += 1
                if src.count is not None and n >= src.count:
                    break
        return n, offsets
    return min(len(hf_dataset(src)), src.count or 1 << 62), []


def hf_dataset(src: SourceConfig):
    """The Hugging Face dataset of an ``hf_*`` source (local files only: no hub here)."""
    import datasets

    if src.hf_format == "disk":
        ds = datasets.load_from_disk(src.path)
        return ds[src.split] if isinstance(ds, datasets.DatasetDict) else ds
    return datasets.load_dataset(src.hf_format, data_files=src.path, split=src.split)


def read_records(
    src: SourceConfig,
    codec,
    seed: int,
    first: int = 0,
    count: int | None = None,
    byte_offset: int = 0,
    limits: RecordLimits | None = None,
    seen: dict[str, str] | None = None,
) -> Iterator[object]:
    """Records ``[first, first + count)`` of ``src`` (``count=None``: to the source's
    ``count`` or its end), parsed, or ``RecordError``. JSON-lines sources start reading at
    ``byte_offset``, the offset of record ``first`` (:func:`count_source` gives them).

    ``limits`` caps the records' sizes (``recipe.record_limits()``; default: the
    defaults for a 10:5:10 layout). ``seen`` maps the ids read so far to where they
    were read; the read adds to it, and a record whose id is in it is rejected
    (``duplicate_id``): pass one dict through the reads of a split's shards to
    catch repeats across them.
    """
    seen = {} if seen is None else seen
    if src.kind == "demo":
        from bayling_duplex.data.demo import demo_script

        stop = src.count if count is None else first + count
        for i in range(first, stop):
            if hasattr(codec, "script"):  # the real-speech demo (data/speech_demo.py)
                script = codec.script(src.split, i)
            else:
                script = demo_script(src.split, i, seed, codec)
            yield _once(script, f"{src.split}[{i}]", seen)
        return
    if limits is None:
        limits = RecipeConfig().record_limits()
    parse = script_from_json if "scripts" in src.kind else timeline_from_json
    if src.kind.endswith("_jsonl"):
        limit = src.count if count is None else count
        lines = read_jsonl(src.path, byte_offset, limit, first + 1, limits.max_line_bytes)
        rows = ((line_id(src.path, first + 1 + n), obj) for n, obj in lines)
    else:
        ds = hf_dataset(src)
        stop = min(len(ds), src.count or len(ds)) if count is None else first + count
        name = Path(src.path).name
        rows = ((f"{name}[{i}]", ds[i]) for i in range(first, stop))
    for where, obj in rows:
        if isinstance(obj, RecordError):
            yield obj
            continue
        try:
            rid = record_id(obj, limits, where)
        except RecordError as e:
            yield e
            continue
        if rid in seen:
            yield RecordError(rid, "duplicate_id", f"{where} repeats the id of {seen[rid]}")
            continue
        seen[rid] = where
        try:
            yield parse(obj, limits, where)
        except RecordError as e:
            yield e


def _once(record, where: str, seen: dict[str, str]):
    """``record``, or a ``duplicate_id`` rejection when its id was read before."""
    if record.id in seen:
        return RecordError(
            record.id, "duplicate_id", f"{where} repeats the id of {seen[record.id]}"
        )
    seen[record.id] = where
    return record


def load_backchannels(recipe: RecipeConfig, codec) -> tuple[tuple[str, tuple[int, ...]], ...]:
    """``(text, codes)`` backchannel clips: the recipe's file, else the demo's (toy codec)."""
    if recipe.backchannels_path:
        return tuple(
            (o["text"], tuple(o["codes"]))
            for _, o in read_jsonl(recipe.backchannels_path)
            if isinstance(o, dict)
        )
    if codec is not None:
        from bayling_duplex.data.demo import backchannel_clips

        return backchannel_clips(codec)
    return ()
