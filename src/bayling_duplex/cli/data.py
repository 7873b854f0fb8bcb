"""``python -m bayling_duplex.data {build,render} [overrides]``.

* ``build recipe=demo``: build a recipe of ``data_recipes/`` into sharded
  Hugging Face datasets with a manifest (resumable, parallel).
* ``render source=… index=…``: print the block grid of one dialogue.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from omegaconf import DictConfig

from bayling_duplex.cli.hydra import ConfigError, run_hydra_command, to_dataclass
from bayling_duplex.format.records import RecordError
from bayling_duplex.format.vocab import VocabError

log = logging.getLogger("bayling_duplex.data")


def build_dataset(conf) -> dict:
    """Build ``conf.recipe`` (a :class:`~bayling_duplex.cli.schemas.BuildConfig`); return the manifest."""
    from bayling_duplex.data.build import build_recipe

    return build_recipe(
        conf.recipe,
        conf.model,
        conf.vocab,
        Path(conf.output_dir),
        conf.cache_dir,
        conf.num_workers,
        overwrite=conf.overwrite,
    )


def _build(cfg: DictConfig) -> None:
    from bayling_duplex.cli.schemas import BuildConfig
    from bayling_duplex.data.build import BuildError

    try:
        conf = to_dataclass(cfg, BuildConfig)
        manifest = build_dataset(conf)
    except (ConfigError, BuildError, VocabError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    for split, s in manifest["splits"].items():
        print(
            f"{split}: {s['sequences']} sequences from {s['records']} records, {s['tokens']} tokens, "
            f"blocks p50 {s['num_blocks']['p50']} max {s['num_blocks']['max']}, "
            f"scenarios {s['scenarios']}, rejected {s['rejected']} {s['rejections_by_reason']}"
        )
    print(f"manifest: {Path(conf.output_dir) / 'manifest.json'} ({manifest['build_seconds']} s)")


def _render(cfg: DictConfig) -> None:
    from bayling_duplex.cli.schemas import RenderConfig

    try:
        conf = to_dataclass(cfg, RenderConfig)
        print(render_record(conf))
    except (
        ConfigError,
        VocabError,
        FileNotFoundError,
        RecordError,
        RenderError,
        KeyError,
        IndexError,
    ) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


class RenderError(ValueError):
    """A record or split to render that is not there (the message lists what is)."""


def _pick(ids: list[str], record: str | None, index: int, where: str) -> int:
    """The position of ``record`` (by id) or of ``index`` among ``ids``; RenderError naming
    what was asked and what exists otherwise."""
    shown = ", ".join(map(repr, ids[:5])) + (", …" if len(ids) > 5 else "")
    have = f"{where} holds {len(ids)} record(s)" + (f", first ids: {shown}" if ids else "")
    if record is not None:
        try:
            return ids.index(record)
        except ValueError:
            raise RenderError(f"record={record!r} is not in {where}: {have}") from None
    if not -len(ids) <= index < len(ids):
        raise RenderError(f"index={index} is out of range: {have}")
    return index % len(ids)


def render_record(conf) -> str:
    """The grid of one record of a built dataset or of a timelines file."""
    import numpy as np

    from bayling_duplex.data.build import MANIFEST, load_split
    from bayling_duplex.format.interleave import DuplexSequence, interleave
    from bayling_duplex.format.layout import BlockLayout
    from bayling_duplex.format.records import (
        Response,
        Timeline,
        UserSegment,
        read_jsonl,
        timeline_from_json,
    )
    from bayling_duplex.format.render import render_grid, tokenizer_token_text
    from bayling_duplex.format.vocab import extend_tokenizer, resolve_vocab
    from bayling_duplex.model.backbone import load_tokenizer, tokenizer_source

    tok = load_tokenizer(tokenizer_source(conf.model, conf.cache_dir))
    extend_tokenizer(tok, conf.vocab)
    vocab = resolve_vocab(tok, conf.vocab)
    src = Path(conf.source)
    if (src / MANIFEST).is_file():
        manifest = json.loads((src / MANIFEST).read_text())
        layout = BlockLayout(**manifest["layout"])
        splits = manifest.get("splits", {})
        if conf.split not in splits:
            raise RenderError(
                f"split={conf.split!r} is not in the built dataset {src}: its splits are "
                f"{', '.join(map(repr, splits)) or 'none'}"
            )
        ds = load_split(src, conf.split)
        row = ds[_pick(ds["id"], conf.record, conf.index, f"split {conf.split!r} of {src}")]
        meta = json.loads(row["meta"])
        timeline = Timeline(
            row["id"],
            meta["num_frames"],
            (),
            tuple(UserSegment(s, e, k) for s, e, k in meta["user_segments"]),
            tuple(Response(s, e, "", (), bool(i)) for s, e, i in meta["responses"]),
        )
        seq = DuplexSequence(
            np.asarray(row["input_ids"]),
            np.asarray(row["classes"], dtype=np.int8),
            row["num_blocks"],
        )
    else:
        spec = conf.format.spec()
        layout = spec.layout
        objs = [o for _, o in read_jsonl(src)]
        ids = [str(o.get("id", "")) if isinstance(o, dict) else "" for o in objs]
        obj = objs[_pick(ids, conf.record, conf.index, str(src))]
        if isinstance(obj, RecordError):  # a line that is not JSON
            raise obj
        timeline = timeline_from_json(obj)
        ids = (
            tok([r.text for r in timeline.responses], add_special_tokens=False)["input_ids"]
            if timeline.responses
            else []
        )
        seq = interleave(timeline, ids, spec, vocab)
    head = f"{timeline.id}  ({layout.ratio}, {seq.num_blocks} blocks, {seq.num_blocks * layout.block_s:.1f} s)\n"
    return head + render_grid(seq, layout, vocab, tokenizer_token_text(tok, vocab), timeline)


COMMANDS = {"build": ("build", _build), "render": ("render", _render)}


def main(argv: list[str] | None = None) -> None:
    run_hydra_command("data", COMMANDS, argv)


if __name__ == "__main__":
    main()
