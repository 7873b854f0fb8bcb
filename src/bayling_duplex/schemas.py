"""Root config schemas, one per command, registered in Hydra's ConfigStore.

Each root composes the component configs that live next to their components.
``configs/<root>.yaml`` names ``<root>_schema`` first in its defaults list;
each group YAML (``configs/model/*.yaml`` …) names its group schema the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from bayling_duplex.backbone import ModelConfig
from bayling_duplex.run_dir import RunConfig
from bayling_duplex.vocab import VocabConfig


@dataclass
class TrainDataConfig:
    """A built dataset to train on (``python -m bayling_duplex.data build`` writes it)."""

    path: str = "data/demo"  # folder with manifest.json and shards, relative to the working dir
    recipe: str = (
        "demo"  # the data_recipes/ entry that builds it, for the error message and auto-build
    )
    build_if_missing: bool = True  # build the recipe when path is missing (the tiny demo only)
    eval_split: str = "heldout"  # split of held-out dialogues for evaluation


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


@dataclass
class DpoConfig:
    stage: str = "dpo"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    data: TrainDataConfig = field(default_factory=TrainDataConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


ROOTS: dict[str, type] = {"sft": SftConfig, "dpo": DpoConfig}
GROUPS: dict[str, type] = {
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
