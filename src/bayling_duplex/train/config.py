"""The training stages' settings: plain dataclasses, shared by SFT and DPO.

Both stages take the same generic parts, ``train.*`` (:class:`TrainConfig`: the
loop, batches, precision, checkpoints) and ``optim.*`` (:class:`OptimConfig`:
optimizer and schedule), and ``lora.*`` (:class:`LoraSettings`). What only one
stage has is its own dataclass: :class:`SftTrainConfig` (SFT's ``train.*``
extras: sampling, packing, held-out dialogues, loss weights) and
:class:`DpoSettings` (``dpo.*``: TRL's beta and losses). DPO's defaults for the
generic parts are :func:`dpo_train` and :func:`dpo_optim`.
:mod:`bayling_duplex.train.hf_args` maps these to ``TrainingArguments``.

Importing this module imports neither torch nor transformers nor TRL (the root
schemas and the config checks load it; tests/unit/cli/test_config.py checks).
Validation is in each ``__post_init__``, its message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.eval.dialogues import EvalSetConfig

# The one precision vocabulary: ``train.precision`` and ``model.dtype`` (whose
# torch dtypes, model/backbone.py's DTYPES, sit a layer below and are pinned to
# these names by tests/unit/cli/test_config.py).
PRECISIONS = ("fp32", "bf16", "fp16")

# TRL 1.16's DPOConfig.loss_type values (tests/unit/train/test_dpo.py pins them against TRL)
TRL_LOSS_TYPES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)

# transformers' SchedulerType values that need no scheduler arguments (this config has no
# key for them: cosine_with_min_lr, cosine_warmup_with_min_lr and warmup_stable_decay need
# some, reduce_lr_on_plateau needs an evaluation every step).
# tests/unit/train/test_run_settings.py pins them against transformers.
SCHEDULERS = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
    "greedy",
)

# ``train.loss_impl``: how the SFT loss meets the output layer (train/linear_ce.py).
# chunked: the output layer applied at target positions only, a slice of the vocabulary at
# a time, never the full logits (portable PyTorch, the default); liger: Liger-Kernel's fused
# linear cross-entropy on a CUDA device when it is installed (else chunked, with a warning);
# full: the model's full logits and a plain cross-entropy, as before (for comparison).
LOSS_IMPLS = ("chunked", "liger", "full")
# ``train.pack_attention``: how a packed row keeps its dialogues apart (train/collate.py).
# position_ids: no mask, position ids restarting per dialogue (flash / flex / sdpa kernels
# find the boundaries); mask: a dense block-diagonal 4-D mask (the eager fallback); auto:
# mask for eager attention or a model outside transformers, position_ids otherwise.
PACK_ATTENTION = ("auto", "position_ids", "mask")
USER_UNIT_SWAP_SCOPES = ("all", "speech")


# ----------------------------------------------------------------------------- both stages


@dataclass
class OptimConfig:
    """The optimizer and its schedule (``optim.*``)."""

    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    scheduler: str = "cosine"  # SCHEDULERS: linear, cosine, constant_with_warmup …
    max_grad_norm: float = 1.0
    adam_beta2: float = 0.98

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ValueError(f"optim.lr must be positive, got {self.lr}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(
                f"optim.warmup_ratio must be in [0, 1) (a share of the total steps), "
                f"got {self.warmup_ratio}"
            )
        if self.scheduler not in SCHEDULERS:
            raise ValueError(
                f"optim.scheduler must be one of {SCHEDULERS} (transformers' SchedulerType, "
                f"those that need no scheduler arguments), got {self.scheduler!r}"
            )
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ValueError("optim.weight_decay and optim.max_grad_norm must be >= 0")
        if not 0 < self.adam_beta2 < 1:
            raise ValueError(f"optim.adam_beta2 must be in (0, 1), got {self.adam_beta2}")


@dataclass
class TrainConfig:
    """The training loop, the same keys in every stage (``train.*``)."""

    epochs: float = 3.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16  # per device (DPO: pairs, each two sequences)
    grad_accum: int = 1
    precision: str = "fp32"  # PRECISIONS: fp32, bf16, fp16
    gradient_checkpointing: bool = False
    logging_steps: int = 20
    save_steps: int = 500
    save_total_limit: int = 2
    # held-out evaluation every this many steps (0: only at the end)
    eval_steps: int = 250
    dataloader_workers: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.batch_size <= 0 or self.grad_accum <= 0:
            raise ValueError("train.batch_size and train.grad_accum must be positive")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(
                f"train.max_steps must be > 0, or -1 to train train.epochs, got {self.max_steps}"
            )
        if self.max_steps == -1 and not self.epochs > 0:
            raise ValueError(
                f"train.epochs must be > 0 (or set train.max_steps > 0), got {self.epochs}"
            )
        for key in ("logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        if self.eval_steps < 0 or self.dataloader_workers < 0:
            raise ValueError("train.eval_steps and train.dataloader_workers must be >= 0")


@dataclass
class LoraSettings:
    """LoRA adapters instead of full fine-tuning (``lora.*``)."""

    enabled: bool = False  # full fine-tuning by default
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(
        default_factory=lambda: [
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_up_proj",
            "down_proj",
        ]
    )


# ----------------------------------------------------------------------------- SFT


@dataclass
class LossWeights:
    """Per-class loss weights (all 1.0 by default; 0 removes a class)."""

    silence_slot: float = 1.0  # [SILENCE] in the text channel
    control: float = 1.0  # <|assistant|>, [PAD], [EPAD]
    text: float = 1.0  # response text tokens
    speech: float = 1.0  # assistant audio frames inside a response
    silent_audio: float = 1.0  # assistant audio frames outside responses
    # [SILENCE] slots of the blocks that hear a hesitation pause (the rare "keep listening
    # though the user went quiet" decision; needs data built with its pauses in `meta`);
    # None: weighted as silence_slot, and the collator marks nothing
    pause_silence: float | None = None

    def __post_init__(self) -> None:
        for name, w in self.__dict__.items():
            if w is not None and w < 0:
                raise ValueError(f"train.loss_weights.{name} must be >= 0, got {w}")

    def table(self):
        """Weights as a ``torch.Tensor`` indexed by TokenClass value (user audio is always 0)."""
        import torch

        from bayling_duplex.format.interleave import TokenClass

        w = torch.zeros(len(TokenClass))
        w[TokenClass.SILENCE_SLOT] = self.silence_slot
        w[TokenClass.CONTROL] = self.control
        w[TokenClass.TEXT] = self.text
        w[TokenClass.SPEECH] = self.speech
        w[TokenClass.SILENT_AUDIO] = self.silent_audio
        w[TokenClass.PAUSE_SILENCE] = (
            self.silence_slot if self.pause_silence is None else self.pause_silence
        )
        return w


@dataclass
class SftTrainConfig(TrainConfig):
    """SFT's ``train.*``: the generic loop and what only SFT has."""

    group_by_length: bool = True  # batches of similar length (little padding)
    pack: bool = False  # several dialogues per row, attention kept inside each dialogue
    pack_attention: str = "auto"  # PACK_ATTENTION: auto, position_ids, mask
    eval_dialogues: int = 200  # held-out dialogues for the held-out losses
    # behaviour evaluation (SR@3s, ISR@2s …) on this many held-out dialogues at each
    # evaluation, split over the four sets; 0 turns it off
    behaviour_dialogues: int = 48
    # stop (after saving a checkpoint) at this step: simulates a run that dies, for resume tests
    stop_after_steps: int | None = None
    loss_weights: LossWeights = field(default_factory=LossWeights)
    loss_impl: str = "chunked"  # LOSS_IMPLS: chunked, liger, full
    # assistant-audio targets normalised over the audio ids only, text-channel targets over
    # the other ids (the decoder's masks); off: every target over the whole vocabulary
    channel_softmax: bool = False
    # share of the user's speech codes replaced, each training step, by user codes drawn
    # from elsewhere in the batch (input noise against memorising; train/augment.py); 0: off
    user_unit_swap: float = 0.0
    # USER_UNIT_SWAP_SCOPES: all (every user code, silences too), speech (only the frames
    # inside the user's recorded speech segments, their hesitation pauses left out; needs
    # data whose rows' meta records the segments)
    user_unit_swap_scope: str = "all"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.user_unit_swap_scope not in USER_UNIT_SWAP_SCOPES:
            raise ValueError(
                f"train.user_unit_swap_scope must be one of {USER_UNIT_SWAP_SCOPES}, "
                f"got {self.user_unit_swap_scope!r}"
            )
        if not 0 <= self.user_unit_swap < 1:
            raise ValueError(
                f"train.user_unit_swap must be in [0, 1) (a share of the user's codes), "
                f"got {self.user_unit_swap}"
            )
        if self.loss_impl not in LOSS_IMPLS:
            raise ValueError(f"train.loss_impl must be one of {LOSS_IMPLS}, got {self.loss_impl!r}")
        if self.pack_attention not in PACK_ATTENTION:
            raise ValueError(
                f"train.pack_attention must be one of {PACK_ATTENTION}, got {self.pack_attention!r}"
            )
        if self.stop_after_steps is not None and self.stop_after_steps < 1:
            raise ValueError(
                f"train.stop_after_steps must be >= 1 or null, got {self.stop_after_steps}"
            )
        if self.eval_dialogues < 0 or self.behaviour_dialogues < 0:
            raise ValueError("train.eval_dialogues and train.behaviour_dialogues must be >= 0")


# ----------------------------------------------------------------------------- DPO


@dataclass
class DpoSettings:
    """TRL's DPO hyperparameters (``dpo.*``); DPO's loop and optimizer are ``train.*`` and
    ``optim.*``, the same keys as SFT's."""

    beta: float = 0.1
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])  # TRL_LOSS_TYPES
    loss_weights: list[float] | None = None  # one per loss_type (None: all 1)
    # > 0 adds TRL's "sft" loss (NLL of the chosen side's scored tokens) with this weight: it
    # anchors the chosen decision token, which a pairwise margin alone can let drift (docs/dpo.md)
    sft_weight: float = 1.0
    # reference log-probs computed once before training: the reference model leaves memory
    precompute_ref: bool = False

    def __post_init__(self) -> None:
        unknown = [t for t in self.loss_type if t not in TRL_LOSS_TYPES]
        if not self.loss_type or unknown:
            raise ValueError(f"dpo.loss_type must hold values of {TRL_LOSS_TYPES}, got {unknown}")
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError("dpo.loss_weights needs one weight per dpo.loss_type")
        if self.sft_weight < 0 or (self.sft_weight > 0 and "sft" in self.loss_type):
            raise ValueError("dpo.sft_weight must be >= 0, and not set when loss_type has 'sft'")
        if self.beta <= 0:
            raise ValueError(f"dpo.beta must be positive, got {self.beta}")

    def losses(self) -> tuple[list[str], list[float]]:
        """TRL's ``loss_type`` and ``loss_weights``, the SFT term appended when asked."""
        types = list(self.loss_type)
        weights = list(self.loss_weights or [1.0] * len(types))
        if self.sft_weight > 0:
            types.append("sft")
            weights.append(self.sft_weight)
        return types, weights


def dpo_train() -> TrainConfig:
    """DPO's defaults for ``train.*``: one epoch of 8 pairs per device, rewards of the
    held-out pairs at the end only. Precision fp32 and no gradient checkpointing, as
    for SFT: TRL would default to bf16 (even on CPU) and to checkpointing."""
    return TrainConfig(epochs=1.0, batch_size=8, logging_steps=10, save_total_limit=1, eval_steps=0)


def dpo_optim() -> OptimConfig:
    """DPO's defaults for ``optim.*``: a small step from the SFT weights, 10 % warmup,
    and transformers' own ``adam_beta2`` (0.999)."""
    return OptimConfig(lr=2e-5, warmup_ratio=0.1, adam_beta2=0.999)


@dataclass
class DpoEvalConfig:
    """Behaviour evaluation of the SFT checkpoint and the DPO result on the same dialogues."""

    enabled: bool = True
    evalset: EvalSetConfig = field(default_factory=EvalSetConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    batch_size: int = 16
    plots: int = 8
