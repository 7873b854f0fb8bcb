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
from bayling_duplex.data.pair_build import PairDataConfig
from bayling_duplex.data.recipe import RecipeConfig
from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.eval.dialogues import EvalSetConfig
from bayling_duplex.format.spec import FormatConfig
from bayling_duplex.format.vocab import VocabConfig
from bayling_duplex.model.backbone import ModelConfig
from bayling_duplex.serve.config import ServeConfig
from bayling_duplex.train.config import (
    DpoEvalConfig,
    DpoSettings,
    LoraSettings,
    OptimConfig,
    SftTrainConfig,
    TrainConfig,
    dpo_optim,
    dpo_train,
)


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
    train: SftTrainConfig = field(default_factory=SftTrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraSettings = field(default_factory=LoraSettings)


@dataclass
class DpoConfig:
    """Root config of ``python -m bayling_duplex.train dpo``.

    ``model`` says how to load (dtype, attention); the weights come from ``init``.
    ``data.recipe`` names the recipe whose sources, format and synthesis the
    pairs are made from (``data.build_if_missing``: build them when missing).
    ``train`` and ``optim`` are the loop and optimizer, the same keys as SFT's;
    ``dpo`` holds only TRL's DPO hyperparameters.
    """

    stage: str = "dpo"
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    data: TrainDataConfig = field(default_factory=lambda: TrainDataConfig())
    deepspeed: DeepSpeedConfig = field(default_factory=lambda: DeepSpeedConfig())
    # the SFT checkpoint folder; "latest": the newest runs/sft/*/final
    init: str = "latest"
    pairs: PairDataConfig = field(default_factory=PairDataConfig)
    # the same keys as SFT's train.* and optim.*, with DPO's defaults
    train: TrainConfig = field(default_factory=dpo_train)
    optim: OptimConfig = field(default_factory=dpo_optim)
    dpo: DpoSettings = field(default_factory=DpoSettings)
    lora: LoraSettings = field(default_factory=LoraSettings)
    eval: DpoEvalConfig = field(default_factory=DpoEvalConfig)
    # rounds of roll out (the current policy) -> pairs -> train; each round in round_<n>/
    # (1: the run folder itself). More than one needs pairs.source on_policy or mix.
    rounds: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if self.rounds > 1 and self.pairs.source == "gold":
            raise ValueError(
                "rounds > 1 needs pairs.source=on_policy or mix: gold pairs do not depend on "
                "the policy, so a second round would train on the same pairs again"
            )


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

    source: str = "data/speech_demo"  # a built dataset folder or a timelines .jsonl file
    split: str = "train"  # for a built dataset
    record: str | None = None  # record id; None: the index below
    index: int = 0
    # for a timelines file: the format to interleave with (a built dataset carries its own)
    format: FormatConfig = field(default_factory=FormatConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    cache_dir: str = "data/.backbones"


@dataclass
class EvalConfig:
    # a checkpoint folder; "latest": the newest runs/<stage>/*/final; "untrained": the backbone as built
    checkpoint: str = "latest"
    stage: str = "sft"  # where "latest" looks
    compare_untrained: bool = True  # also evaluate the untrained backbone, side by side
    run: RunConfig = field(default_factory=RunConfig)
    evalset: EvalSetConfig = field(default_factory=EvalSetConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # the backbone for "untrained"
    format: FormatConfig = field(
        default_factory=FormatConfig
    )  # used when the checkpoint has no duplex.json
    batch_size: int = 16
    plots: int = 8
    # real-speech evaluation sets only (they keep the user's audio):
    # the VAD cascades beside the model (silero, webrtc) and their end-of-turn silences
    baselines: list[str] = field(default_factory=lambda: ["silero", "webrtc"])
    baseline_end_silence_s: list[float] = field(default_factory=lambda: [0.5, 0.8])
    # the no-marker check: the turn-taking set again with the last frame of each turn's
    # speech removed; SR@3s of both, paired (docs/evaluation.md)
    no_marker_check: bool = True
    # the backchannel check: the backchannel set again without the backchannel clips; a
    # stop the judge counts is the backchannel's only where the response ends later without it
    backchannel_check: bool = True
    listen: int = 6  # dialogues written as stereo WAVs for report.html


ROOTS: dict[str, type] = {
    "sft": SftConfig,
    "dpo": DpoConfig,
    "build": BuildConfig,
    "render": RenderConfig,
    "eval": EvalConfig,
    "serve": ServeConfig,
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
