"""Root config schemas, one per command, registered in Hydra's ConfigStore.

Each root composes the component configs that live next to their components.
``configs/<root>.yaml`` names ``<root>_schema`` first in its defaults list;
each group YAML (``configs/model/*.yaml`` …) names its group schema the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from bayling_duplex.cli.run_dir import RunConfig
from bayling_duplex.data.recipe import FormatConfig, RecipeConfig
from bayling_duplex.format.vocab import VocabConfig
from bayling_duplex.model.backbone import ModelConfig
from bayling_duplex.train.sft import LoraSettings, OptimConfig, TrainConfig


@dataclass
class TrainDataConfig:
    """A built dataset to train on (``python -m bayling_duplex.data build`` writes it)."""

    path: str = "data/demo"  # folder with manifest.json and shards, relative to the working dir
    recipe: str = (
        "demo"  # the data_recipes/ entry that builds it, for the error message and auto-build
    )
    build_if_missing: bool = True  # build the recipe when path is missing (the tiny demo only)
    eval_split: str = "heldout"  # split of held-out dialogues for evaluation
    # held-out scripts (.jsonl) for the behaviour evaluation during training; the demo needs none
    eval_scripts: str | None = None


@dataclass
class DeepSpeedConfig:
    """A DeepSpeed JSON config, inline (null: no DeepSpeed)."""

    config: dict[str, Any] | None = None


@dataclass
class SftConfig:
    stage: str = "sft"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class BuildConfig:
    """``python -m bayling_duplex.data build``: a recipe built with a tokenizer into a folder."""

    recipe: RecipeConfig = field(default_factory=RecipeConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # whose tokenizer tokenizes the text
    vocab: VocabConfig = field(default_factory=VocabConfig)
    output_dir: str = "data/${recipe.name}"
    num_workers: int = 2
    overwrite: bool = False  # replace a build of another configuration
    cache_dir: str = "data/.backbones"  # where the tiny backbone is built once

    def __post_init__(self) -> None:
        if self.num_workers < 1:
            raise ValueError("num_workers must be >= 1")


@dataclass
class RenderConfig:
    """``python -m bayling_duplex.data render``: the block grid of one dialogue."""

    source: str = "data/demo"  # a built dataset folder or a timelines .jsonl file
    split: str = "train"  # for a built dataset
    record: str | None = None  # record id; None: the index below
    index: int = 0
    # for a timelines file: the format to interleave with (a built dataset carries its own)
    format: FormatConfig = field(default_factory=FormatConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    cache_dir: str = "data/.backbones"


def _dpo_config() -> type:
    from bayling_duplex.train.dpo import DpoConfig  # next to its stage, like the other components

    return DpoConfig


def _eval_config() -> type:
    from bayling_duplex.cli.eval import EvalConfig  # next to its command, like the other components

    return EvalConfig


ROOTS: dict[str, type] = {
    "sft": SftConfig,
    "dpo": _dpo_config(),
    "build": BuildConfig,
    "render": RenderConfig,
    "eval": _eval_config(),
}
GROUPS: dict[str, type] = {
    "recipe": RecipeConfig,
    "model": ModelConfig,
    "data": TrainDataConfig,
    "deepspeed": DeepSpeedConfig,
}


def register() -> None:
    """Store every schema: roots as ``<root>_schema``, groups as ``<group>/<group>_schema``."""
    cs = ConfigStore.instance()
    for name, node in ROOTS.items():
        cs.store(name=f"{name}_schema", node=node)
    for group, node in GROUPS.items():
        cs.store(group=group, name=f"{group}_schema", node=node)
