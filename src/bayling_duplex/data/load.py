"""Loading a built dataset for training, refusing one built for another configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bayling_duplex.data.build import MANIFEST, load_split
from bayling_duplex.data.recipe import (
    BUILDER_VERSION,
    differences,
    mismatch_message,
    vocab_fingerprint,
)
from bayling_duplex.format.spec import FormatSpec
from bayling_duplex.format.vocab import DuplexVocab
from bayling_duplex.runtime import is_main_process, wait_for_rank0

log = logging.getLogger(__name__)


class DataMismatchError(FileNotFoundError):
    """Missing or unusable data, or data built for another configuration."""


def recipe_from_file(name: str):
    """The typed recipe ``data_recipes/<name>.yaml`` (outside a Hydra app)."""
    from omegaconf import OmegaConf

    from bayling_duplex.config import recipes_dir, to_dataclass
    from bayling_duplex.data.recipe import RecipeConfig

    path = recipes_dir() / f"{name}.yaml"
    if not path.is_file():
        raise DataMismatchError(f"no recipe {path}")
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return to_dataclass(OmegaConf.merge(OmegaConf.structured(RecipeConfig), raw), RecipeConfig)


def manifest_format(manifest: dict) -> FormatSpec:
    """The format a built dataset (or pair set) was made in, from its manifest."""
    return FormatSpec.from_json({**manifest["layout"], "silence_codes": manifest["silence_codes"]})


def build_command(data_cfg) -> str:
    return (
        f"python -m bayling_duplex.data build recipe={data_cfg.recipe} output_dir={data_cfg.path}"
    )


def recipe_drift(path: Path, data_cfg) -> str | None:
    """A warning when the data at ``path`` was built from another version of
    ``data.recipe`` than the file today (a default that changed since the build, or a
    build with overrides), else None. Training still uses the data as built: only the
    codec, builder, vocabulary and format must match (:func:`check_manifest`)."""
    from bayling_duplex.data.recipe import recipe_digest
    from bayling_duplex.runtime import plain

    try:
        built = json.loads((path / MANIFEST).read_text())["fingerprint"]["recipe"]
        now = recipe_digest(plain(recipe_from_file(data_cfg.recipe)))
    except (OSError, ValueError, KeyError, TypeError, DataMismatchError):
        return None  # no readable manifest or recipe: check_manifest says what is wrong
    if built == now:
        return None
    return (
        f"{path} was built from another version of recipe {data_cfg.recipe} (recipe "
        f"fingerprint {built} != {now} today): training uses it as built; to train on the "
        f"recipe as it is now, rebuild it: {build_command(data_cfg)} overwrite=true"
    )


def ensure_built(data_cfg, model_cfg, vocab_cfg) -> None:
    """Build the demo data when it is missing and allowed to; otherwise explain how."""
    path = Path(data_cfg.path)
    if (path / MANIFEST).is_file():
        drift = recipe_drift(path, data_cfg)
        if drift and is_main_process():
            log.warning(drift)
        return
    if not data_cfg.build_if_missing:
        raise DataMismatchError(
            f"no built dataset at {path} (no {MANIFEST}); build it first:\n  {build_command(data_cfg)}"
        )
    if is_main_process():
        from bayling_duplex.data.build import build_recipe

        log.info("building %s into %s (%s)", data_cfg.recipe, path, build_command(data_cfg))
        build_recipe(
            recipe_from_file(data_cfg.recipe),
            model_cfg,
            vocab_cfg,
            path,
            cache_dir=path.parent / ".backbones",
        )
    else:
        wait_for_rank0((path / MANIFEST).is_file, f"the dataset {path}")


def recipe_format(recipe, manifest: dict) -> FormatSpec:
    """The format ``recipe`` builds in. Its silence codes come from its
    ``silence_codes_file`` when that is set; when the file is not here (training away
    from the sources) they cannot be known and are taken as the data's."""
    cfg = recipe.format
    if cfg.silence_from_codec and not cfg.silence_codes:  # measured by the build, checked with
        return manifest_format(manifest)  # the codec itself (check_manifest)
    try:
        cfg.resolve()
    except FileNotFoundError:
        log.warning(
            "recipe %s's silence_codes_file %s is not here: the data's silence codes are not checked",
            recipe.name,
            cfg.silence_codes_file,
        )
        cfg.silence_codes = list(manifest["silence_codes"])
    return cfg.spec()


def codec_differences(manifest: dict, path: Path) -> list[str]:
    """A fitted codec recorded in the manifest must be the one in the data's folder."""
    info = manifest.get("codec")
    if not info:
        return []
    folder = Path(path) / info["dir"]
    if not (folder / "codec.json").is_file():
        return [f"codec: the fitted codec {info['name']} is missing from {folder}"]
    have = json.loads((folder / "codec.json").read_text()).get("fingerprint")
    if have != info["fingerprint"]:
        return [f"codec fingerprint: {have} (in {folder}) != {info['fingerprint']} (manifest)"]
    return []


def check_manifest(
    manifest: dict,
    vocab: DuplexVocab,
    tokenizer,
    path: Path,
    recipe=None,
    max_positions: int | None = None,
    splits: tuple[str, ...] = ("train",),
) -> None:
    """Refuse data training cannot use, in one line: a failed build; no ``train`` split or
    one without sequences; a fingerprint part that differs from this configuration
    (every one, with both values: the format and codec of ``recipe``, the builder
    version, the vocabulary); a sequence of ``splits`` longer than ``max_positions``."""
    if manifest.get("status") != "ok":
        raise DataMismatchError(f"{path} is a failed build: {manifest.get('failure')}")
    have = manifest.get("splits") or {}
    if "train" not in have or not have["train"].get("sequences"):
        listed = ", ".join(f"{k} ({v.get('sequences', 0)} sequences)" for k, v in have.items())
        raise DataMismatchError(
            f"{path} holds no training sequences: its manifest has "
            f"{'no train split' if 'train' not in have else 'an empty train split'} "
            f"(splits: {listed or 'none'}); rebuild it from a source with records"
        )
    fp = manifest["fingerprint"]
    expected = {"builder": BUILDER_VERSION, "vocab": vocab_fingerprint(vocab, tokenizer)}
    parts = []
    if recipe is not None:
        built_format = manifest_format(manifest)
        parts += [f"format.{d}" for d in built_format.differences(recipe_format(recipe, manifest))]
        expected["codec"] = recipe.codec.name
    parts += differences(
        fp, expected, keys=[k for k in ("codec", "builder", "vocab") if k in expected]
    )
    parts += codec_differences(manifest, path)
    if fp.get("vocab") != expected["vocab"]:
        parts[-1] += (
            " (another vocabulary: the tokenizer or the duplex token ids differ from the model's)"
        )
    if parts:
        name = recipe.name if recipe is not None else "…"
        raise DataMismatchError(
            mismatch_message(
                str(path),
                parts,
                f"rebuild it for this model and recipe (python -m bayling_duplex.data build "
                f"recipe={name} output_dir={path} overwrite=true), or set data.recipe to the "
                "recipe it was built with",
            )
        )
    if max_positions:
        block_len = manifest_format(manifest).layout.block_len
        for split in splits:
            s = have[split]
            longest = s.get("max_seq_len") or s["num_blocks"]["max"] * block_len
            if longest > max_positions:
                raise DataMismatchError(
                    f"{path}: the longest {split} sequence has {longest} tokens, more than the "
                    f"model's max_position_embeddings={max_positions}; rebuild the data with "
                    f"recipe.limits.max_seq_len={max_positions} (longer dialogues are then "
                    "rejected) or train a model with more positions"
                )


def load_training_data(
    data_cfg,
    vocab: DuplexVocab,
    tokenizer,
    eval_dialogues: int,
    model_cfg=None,
    vocab_cfg=None,
    max_positions: int | None = None,
):
    """``(train, heldout or None, manifest)`` as Hugging Face datasets with the columns the collator needs.

    The data is checked first (:func:`check_manifest`) against the recipe
    ``data_cfg.recipe`` names, this vocabulary and ``max_positions`` (the model's
    ``max_position_embeddings``).
    """
    if model_cfg is not None:
        ensure_built(data_cfg, model_cfg, vocab_cfg)
    path = Path(data_cfg.path)
    if not (path / MANIFEST).is_file():
        raise DataMismatchError(
            f"no built dataset at {path}; build it first:\n  {build_command(data_cfg)}"
        )
    manifest = json.loads((path / MANIFEST).read_text())
    try:
        recipe = recipe_from_file(data_cfg.recipe)
    except DataMismatchError as e:
        raise DataMismatchError(
            f"data.recipe={data_cfg.recipe}: {e}; data.recipe names the recipe {path} was "
            "built with (training checks the data's format and codec against it)"
        ) from None
    use_eval = data_cfg.eval_split in manifest.get("splits", {}) and eval_dialogues > 0
    splits = ("train", data_cfg.eval_split) if use_eval else ("train",)
    check_manifest(manifest, vocab, tokenizer, path, recipe, max_positions, splits)
    # meta: the hesitation pauses the pause weight reads (train/collate.py)
    keep = ["input_ids", "classes", "num_blocks", "meta"]
    train = load_split(path, "train")
    train = train.select_columns([c for c in keep if c in train.column_names])
    heldout = None
    if use_eval:
        held = load_split(path, data_cfg.eval_split)
        held = held.select(range(min(eval_dialogues, len(held))))
        heldout = held.select_columns([c for c in keep if c in held.column_names])
    return train, heldout, manifest
