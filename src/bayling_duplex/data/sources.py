"""The one reader of a recipe's sources, for the SFT build and the preference pairs alike.

A source (``recipe.train`` / ``recipe.heldout``, :class:`~bayling_duplex.data.recipe.SourceConfig`)
is the generated demo, a JSON-lines file of scripts or timelines, or a Hugging Face
dataset of either (a ``save_to_disk`` folder or json/parquet files). Each record
comes out parsed (``Script`` or ``Timeline``) or as a ``RecordError`` carrying its
id and reason, never raised: one bad record must not lose the others.
"""

from __future__ import annotations

from collections.abc import Iterator

from bayling_duplex.data.recipe import RecipeConfig, SourceConfig
from bayling_duplex.format.records import (
    RecordError,
    read_jsonl,
    script_from_json,
    timeline_from_json,
)


def count_source(src: SourceConfig, shard_size: int) -> tuple[int, list[int]]:
    """Number of source records and the byte offset of each shard's first line (JSON lines)."""
    if src.kind == "demo":
        return src.count, []
    if src.kind.endswith("_jsonl"):
        offsets, n, pos = [], 0, 0
        with open(src.path, "rb") as f:
            for line in f:
                if n % shard_size == 0:
                    offsets.append(pos)
                pos += len(line)
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
) -> Iterator[object]:
    """Records ``[first, first + count)`` of ``src`` (``count=None``: to the source's
    ``count`` or its end), parsed, or ``RecordError``. JSON-lines sources start reading at
    ``byte_offset``, the offset of record ``first`` (:func:`count_source` gives them)."""
    if src.kind == "demo":
        from bayling_duplex.data.demo import demo_script

        stop = src.count if count is None else first + count
        for i in range(first, stop):
            yield demo_script(src.split, i, seed, codec)
        return
    parse = script_from_json if "scripts" in src.kind else timeline_from_json
    if src.kind.endswith("_jsonl"):
        limit = src.count if count is None else count
        rows = (obj for _, obj in read_jsonl(src.path, byte_offset, limit))
    else:
        ds = hf_dataset(src)
        stop = min(len(ds), src.count or len(ds)) if count is None else first + count
        rows = (ds[i] for i in range(first, stop))
    for obj in rows:
        if isinstance(obj, RecordError):
            yield obj
            continue
        try:
            yield parse(obj)
        except RecordError as e:
            yield e


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
