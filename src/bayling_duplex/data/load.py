"""Loading a built dataset for training, refusing one built for another configuration."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from bayling_duplex.data.build import MANIFEST, load_split
from bayling_duplex.data.recipe import BUILDER_VERSION, vocab_fingerprint
from bayling_duplex.format.spec import FormatSpec
from bayling_duplex.format.vocab import DuplexVocab
from bayling_duplex.runtime import is_main_process, wait_for_rank0

log = logging.getLogger(__name__)


class DataMismatchError(FileNotFoundError):
    """Missing data, or data built for another vocabulary / builder."""


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


def ensure_built(data_cfg, model_cfg, vocab_cfg) -> None:
    """Build the demo data when it is missing and allowed to; otherwise explain how."""
    path = Path(data_cfg.path)
    if (path / MANIFEST).is_file():
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


def check_manifest(manifest: dict, vocab: DuplexVocab, tokenizer, path: Path) -> None:
    """Refuse data whose fingerprint does not match, naming the part that differs."""
    if manifest.get("status") != "ok":
        raise DataMismatchError(f"{path} is a failed build: {manifest.get('failure')}")
    fp = manifest["fingerprint"]
    problems = []
    if fp["builder"] != BUILDER_VERSION:
        problems.append(f"builder version {fp['builder']} (this code writes {BUILDER_VERSION})")
    if fp["vocab"] != vocab_fingerprint(vocab, tokenizer):
        problems.append(
            "vocabulary (the tokenizer or the duplex token ids differ from the model's)"
        )
    if problems:
        raise DataMismatchError(
            f"{path} was built for another configuration: {'; '.join(problems)}; "
            "rebuild it with the model's tokenizer (data build … overwrite=true)"
        )


def load_training_data(
    data_cfg, vocab: DuplexVocab, tokenizer, eval_dialogues: int, model_cfg=None, vocab_cfg=None
):
    """``(train, heldout or None, manifest)`` as Hugging Face datasets with the columns the collator needs."""
    if model_cfg is not None:
        ensure_built(data_cfg, model_cfg, vocab_cfg)
    path = Path(data_cfg.path)
    if not (path / MANIFEST).is_file():
        raise DataMismatchError(
            f"no built dataset at {path}; build it first:\n  {build_command(data_cfg)}"
        )
    manifest = json.loads((path / MANIFEST).read_text())
    check_manifest(manifest, vocab, tokenizer, path)
    keep = ["input_ids", "classes", "num_blocks"]
    train = load_split(path, "train").select_columns(keep)
    heldout = None
    if data_cfg.eval_split in manifest["splits"] and eval_dialogues > 0:
        held = load_split(path, data_cfg.eval_split)
        heldout = held.select(range(min(eval_dialogues, len(held)))).select_columns(keep)
    return train, heldout, manifest
