"""Preference pairs as data: made from a recipe's sources, built once, fingerprinted.

The pairs themselves come from :mod:`bayling_duplex.data.pairs` (pure); this
module reads the recipe's sources, writes one Hugging Face dataset per split
with a manifest (like the SFT data, :mod:`bayling_duplex.data.build`), and loads it
for the DPO stage, refusing pairs made for another configuration.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayling_duplex.data.onpolicy import OnPolicyConfig
from bayling_duplex.data.pairs import PairConfig, pair_from_script, pair_from_timeline

log = logging.getLogger("bayling_duplex.pair_data")
PAIR_BUILDER_VERSION = 1  # bump when the pairs made from the same inputs change
PAIR_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids", "chosen_mask", "rejected_mask")
# gold: perturbations of the reference dialogue; on_policy: the policy's own continuations
# at its decision blocks (data/onpolicy.py); mix: both, concatenated
PAIR_SOURCES = ("gold", "on_policy", "mix")


@dataclass
class PairDataConfig:
    """The built pairs: where, how many, and how they are made (sources: ``data.recipe``)."""

    path: str = "data/speech_demo_dpo"
    source: str = "gold"  # gold | on_policy | mix (PAIR_SOURCES)
    train: int = 1500  # gold pairs from the recipe's train source
    heldout: int = 100  # pairs from its heldout source: rewards on unseen pairs (0: none)
    # the build fails when more than this share of the source records it read gave no pair
    max_reject_share: float = 0.25
    overwrite: bool = False  # replace pairs built for another configuration
    make: PairConfig = field(default_factory=PairConfig)
    onpolicy: OnPolicyConfig = field(default_factory=OnPolicyConfig)

    def __post_init__(self) -> None:
        if self.source not in PAIR_SOURCES:
            raise ValueError(f"pairs.source must be one of {PAIR_SOURCES}, got {self.source!r}")
        if self.train < 1 or self.heldout < 0:
            raise ValueError("pairs.train must be >= 1 and pairs.heldout >= 0")
        if not 0 <= self.max_reject_share <= 1:
            raise ValueError("pairs.max_reject_share must lie in [0, 1]")


# ----------------------------------------------------------------------------- pairs build


def make_split_pairs(
    src, wanted: int, recipe, cfg: PairConfig, tokenizer, vocab, spec, codec=None, progress=True
) -> tuple:
    """``(columns, stats, rejections)``: ``wanted`` pairs from ``src`` (fewer if it runs out).

    At ``recipe.codec.kind=units`` the dialogues are spoken, mixed and coded by ``codec``
    (the SFT checkpoint's) as in the SFT build."""
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.sources import load_backchannels, read_records
    from bayling_duplex.data.synthesis import record_rng
    from bayling_duplex.format.records import RecordError, Script

    speech = render = None
    if recipe.codec.kind == "units":
        from bayling_duplex.data.build import whole_blocks
        from bayling_duplex.data.speech_demo import speech_pipeline

        if codec is None:
            raise ValueError("pairs of a units recipe need the SFT checkpoint's codec")
        speech, mixer = speech_pipeline(recipe, codec, keep=8)

        def render(t, script, ids):
            return mixer.render(whole_blocks(t, ids, spec), script)

        reader, clips = speech, ()
    else:
        reader = ToyCodec(recipe.codec.num_codes) if recipe.codec.kind == "toy" else None
        clips = load_backchannels(recipe, reader)

    def ids_of(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []

    rows = {c: [] for c in ("id", "kind", "decision_block", "shift_blocks", *PAIR_COLUMNS)}
    failures, kinds, rejected = Counter(), Counter(), []
    records, partner = 0, None
    from tqdm.auto import tqdm

    bar = tqdm(total=wanted, desc=f"pairs ({src.split})", unit="pair", disable=not progress)
    for record in read_records(src, reader, recipe.synthesis.seed, limits=recipe.record_limits()):
        if len(rows["id"]) >= wanted:
            break
        records += 1
        if isinstance(record, RecordError):
            failures[record.reason] += 1
            rejected.append(record)
            continue
        rng = record_rng(cfg.seed, record.id, "pairs")
        if isinstance(record, Script):
            ids = ids_of([t.assistant_text for t in record.turns])
            bcs = speech.backchannels(record.id) if speech is not None else clips
            pair, errs = pair_from_script(
                record, ids, cfg, recipe.synthesis, spec, vocab, rng, bcs, partner, render
            )
            partner = (record.turns[0], ids[0])
        else:  # a timeline keeps only the played speech: a late stop cannot be made from it
            full = [r.codes for r in record.responses]
            ids = ids_of([r.text for r in record.responses])
            kind = cfg.sample_kind(rng)
            pair, errs = pair_from_timeline(record, ids, full, kind, spec, vocab, cfg, rng)
        failures.update(e.reason for e in errs)
        if pair is None:
            rejected.append(errs[-1])
            continue
        kinds[pair.kind] += 1
        bar.update()
        for name, value in (
            ("id", pair.id),
            ("kind", pair.kind),
            ("decision_block", pair.decision_block),
            ("shift_blocks", pair.shift_blocks),
        ):
            rows[name].append(value)
        for name in PAIR_COLUMNS:
            rows[name].append(np.asarray(getattr(pair, name)).tolist())
    bar.close()
    prompt_blocks = np.asarray(rows["decision_block"] or [0])
    stats = {
        "pairs": len(rows["id"]),
        "records": records,
        "records_without_pair": len(rejected),
        "rejected_share": round(len(rejected) / max(records, 1), 4),
        "kinds": dict(kinds),
        "failures_by_reason": dict(failures),
        "prompt_blocks": {
            "mean": round(float(prompt_blocks.mean()), 2),
            "max": int(prompt_blocks.max()),
        },
    }
    return (
        rows,
        stats,
        [{"id": e.record_id, "reason": e.reason, "detail": e.detail} for e in rejected],
    )


def pair_fingerprint(recipe, pairs: PairDataConfig, vocab, tokenizer, codec=None) -> dict:
    from bayling_duplex.data.recipe import fingerprint, vocab_fingerprint
    from bayling_duplex.runtime import plain

    keys = ("train", "heldout", "format", "codec", "synthesis", "backchannels_path", "limits")
    recipe_part = {k: plain(getattr(recipe, k)) for k in keys}
    made = {"pairs": plain(pairs.make), "train": pairs.train, "heldout": pairs.heldout}
    return fingerprint(
        {"recipe": recipe_part, "pairs": made, "pair_builder": PAIR_BUILDER_VERSION},
        vocab_fingerprint(vocab, tokenizer),
        recipe.codec.name if codec is None else codec.name,  # a fitted codec: its own name
    )


def build_pairs(
    recipe, pairs: PairDataConfig, tokenizer, vocab, spec, out: Path, codec=None
) -> dict:
    """Make the pairs of both splits into ``out`` (a Hugging Face dataset per split) + manifest."""
    import datasets

    from bayling_duplex.data.build import MANIFEST, BuildError
    from bayling_duplex.runtime import write_json

    t0 = time.perf_counter()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    splits, failures = {}, []
    for split, wanted in (("train", pairs.train), ("heldout", pairs.heldout)):
        src = recipe.train if split == "train" else recipe.heldout
        if src is None or wanted == 0:
            continue
        rows, stats, rejected = make_split_pairs(
            src, wanted, recipe, pairs.make, tokenizer, vocab, spec, codec
        )
        datasets.disable_progress_bars()
        datasets.Dataset.from_dict(rows).save_to_disk(str(tmp / split))
        with open(tmp / split / "rejections.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rejected)
        splits[split] = stats
        if stats["pairs"] < wanted:
            failures.append(f"split {split}: {stats['pairs']} of {wanted} pairs (source ran out)")
        if stats["rejected_share"] > pairs.max_reject_share:
            failures.append(
                f"split {split}: {stats['rejected_share']:.1%} of records gave no pair "
                f"(> {pairs.max_reject_share:.1%}); by reason {stats['failures_by_reason']}"
            )
    manifest = {
        "name": f"{recipe.name}_dpo",
        "fingerprint": pair_fingerprint(recipe, pairs, vocab, tokenizer, codec),
        "status": "failed" if failures else "ok",
        "build_seconds": round(time.perf_counter() - t0, 2),
        "layout": {
            "frames_per_block": spec.layout.frames_per_block,
            "slots_per_block": spec.layout.slots_per_block,
            "frame_rate_hz": spec.layout.frame_rate_hz,
        },
        "silence_codes": list(spec.silence_codes),
        "splits": splits,
        **({"failure": "; ".join(failures)} if failures else {}),
    }
    write_json(tmp / MANIFEST, manifest)
    if failures:
        raise BuildError(f"pairs build into {out} failed: {manifest['failure']}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return manifest


def load_pairs(conf, tokenizer, vocab, spec, codec=None):
    """``(train, heldout or None, manifest)``; builds the pairs when missing (rank 0) and allowed."""
    import datasets

    from bayling_duplex.data.build import MANIFEST
    from bayling_duplex.data.load import DataMismatchError, recipe_from_file
    from bayling_duplex.data.recipe import differences, mismatch_message
    from bayling_duplex.runtime import is_main_process, wait_for_rank0

    recipe = recipe_from_file(conf.data.recipe)
    if recipe.format.silence_from_codec and codec is not None:
        recipe.format.silence_codes = [int(c) for c in codec.silence_codes]
    recipe.format.resolve()
    diff = spec.differences(recipe.format.spec())
    if diff:
        raise DataMismatchError(
            mismatch_message(
                "the SFT checkpoint",
                [f"format.{d}" for d in diff],
                f"make the pairs with the recipe it was trained on (data.recipe=…, not "
                f"{recipe.name})",
            )
        )
    out = Path(conf.pairs.path)
    want = pair_fingerprint(recipe, conf.pairs, vocab, tokenizer, codec)

    def built() -> dict | None:
        return json.loads((out / MANIFEST).read_text()) if (out / MANIFEST).is_file() else None

    have = built()
    stale = have is not None and have["fingerprint"]["combined"] != want["combined"]
    if stale and not conf.pairs.overwrite:
        raise DataMismatchError(
            mismatch_message(
                f"the pair set {out}",
                differences(have["fingerprint"], want),
                "pass pairs.overwrite=true to rebuild them, or pairs.path=… for a new folder",
            )
        )
    if have is None or stale:
        if not conf.data.build_if_missing:
            raise DataMismatchError(
                f"no pairs at {out}; allow building them: data.build_if_missing=true"
            )
        if is_main_process():
            log.info("making preference pairs into %s", out)
            build_pairs(recipe, conf.pairs, tokenizer, vocab, spec, out, codec)
        else:

            def ready() -> bool:
                have = built()
                return have is not None and have["fingerprint"]["combined"] == want["combined"]

            wait_for_rank0(ready, f"the preference pairs {out}")
    manifest = json.loads((out / MANIFEST).read_text())
    train = datasets.load_from_disk(str(out / "train"))
    heldout = (
        datasets.load_from_disk(str(out / "heldout")) if "heldout" in manifest["splits"] else None
    )
    return train, heldout, manifest


def combine_pair_sets(sets: dict[str, tuple]) -> tuple:
    """``(train, heldout or None, manifest)`` of several pair sets, concatenated.

    ``sets``: source name -> ``(train, heldout, manifest)``. The datasets keep the columns
    every pair set has (``id``, ``kind``, ``decision_block``, ``shift_blocks`` and the pair
    columns); the manifest lists each source's and the combined counts by kind."""
    import datasets

    keep = ["id", "kind", "decision_block", "shift_blocks", *PAIR_COLUMNS]

    def cat(parts):
        parts = [p.select_columns(keep) for p in parts if p is not None]
        return datasets.concatenate_datasets(parts) if parts else None

    train = cat([s[0] for s in sets.values()])
    heldout = cat([s[1] for s in sets.values()])
    splits = {}
    for split, ds in (("train", train), ("heldout", heldout)):
        if ds is not None:
            kinds = Counter(ds["kind"])
            splits[split] = {"pairs": len(ds), "kinds": dict(sorted(kinds.items()))}
    manifest = {
        "name": "+".join(m["name"] for _, _, m in sets.values()),
        "sources": {
            k: {"name": m["name"], "path": m.get("path"), "splits": m["splits"]}
            for k, (_, _, m) in sets.items()
        },
        "splits": splits,
    }
    return train, heldout, manifest
