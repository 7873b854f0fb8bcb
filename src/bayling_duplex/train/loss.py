"""The duplex loss (format §5): cross-entropy on the text channel and the assistant audio,
user audio masked, each token weighted by its class.

Mirrors moshi-finetune's weighted loss: no state. The weights are a table indexed
by :class:`~bayling_duplex.format.interleave.TokenClass`; a weight of 0 removes a
class from the loss. Position ``i`` predicts token ``i+1``, so its weight is that
of class ``i+1``.

Two ways to the same figures (:class:`DuplexLoss`, ``train.loss_impl``):

* ``full`` — the model's logits for every position (:func:`weighted_loss`,
  :func:`channel_loss_sums`): ``[batch, seq, V]`` floats and their float32 copy.
* ``chunked`` (default) / ``liger`` — the final hidden states of the target
  positions only, through the output layer a slice of the vocabulary at a time
  (:mod:`bayling_duplex.train.linear_ce`); user audio (40 % of the positions) and
  zero-weight classes never meet the output layer. Same loss and gradients up
  to float rounding (tests/unit/train/test_chunked_loss.py).

``train.channel_softmax`` (``audio_columns``) normalises assistant-audio targets
over the audio ids only and text-channel targets over the other ids, the masks
the decoder applies when it picks (``decode/decoder.py``); off by default.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.train.config import LossWeights  # noqa: F401 (re-exported)
from bayling_duplex.train.linear_ce import liger_unavailable, linear_cross_entropy
from bayling_duplex.train.output_layer import call_output_layer, final_hidden_states

log = logging.getLogger("bayling_duplex.train")

TEXT_CHANNEL = (
    TokenClass.SILENCE_SLOT,
    TokenClass.CONTROL,
    TokenClass.TEXT,
    TokenClass.PAUSE_SILENCE,
)
AUDIO_CHANNEL = (TokenClass.SPEECH, TokenClass.SILENT_AUDIO)


def is_audio_target(classes: torch.Tensor) -> torch.Tensor:
    """Which targets are assistant audio (bool, same shape as ``classes``)."""
    return (classes == TokenClass.SPEECH) | (classes == TokenClass.SILENT_AUDIO)


def target_classes(classes: torch.Tensor) -> torch.Tensor:
    """The class of each position's target ``[batch, seq]`` (the last one: USER_AUDIO, none)."""
    return F.pad(classes[:, 1:], (0, 1), value=int(TokenClass.USER_AUDIO))


# ----------------------------------------------------------------------------- full logits


def _channel_masked(
    logits: torch.Tensor, tgt_cls: torch.Tensor, audio_columns: tuple[int, int]
) -> torch.Tensor:
    """float32 logits with each position's other channel set to -inf (a new tensor)."""
    a0, a1 = audio_columns
    col = torch.arange(logits.shape[-1], device=logits.device)
    audio_col = (col >= a0) & (col < a1)
    keep = audio_col == is_audio_target(tgt_cls)[..., None]
    return logits.float().masked_fill(~keep, float("-inf"))


def token_losses(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    classes: torch.Tensor | None = None,
    audio_columns: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Next-token cross-entropy ``[batch, seq]``: position ``i`` predicts token ``i+1``; the last is 0.

    The targets are shifted rather than the logits, so the (large) logits tensor
    is never copied; it is upcast to float32 only if it is not already. With
    ``classes``, positions without a target (user audio next) are 0 too;
    ``audio_columns`` (needs ``classes``) restricts each softmax to its channel.
    """
    targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    if classes is not None:
        tgt_cls = target_classes(classes)
        targets = targets.masked_fill(tgt_cls == TokenClass.USER_AUDIO, -100)
        if audio_columns is not None:
            logits = _channel_masked(logits, tgt_cls, audio_columns)
    return F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]),
        targets.reshape(-1),
        reduction="none",
        ignore_index=-100,
    ).view(input_ids.shape)


def weighted_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    classes: torch.Tensor,
    weights: torch.Tensor,
    audio_columns: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Weighted mean CE over targets. ``classes`` is ``[batch, seq]`` (padding = USER_AUDIO)."""
    w = weights.to(logits.device)[target_classes(classes).long()]
    ce = token_losses(logits, input_ids, classes if audio_columns else None, audio_columns)
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


def channel_loss_sums(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    classes: torch.Tensor,
    audio_columns: tuple[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Unweighted CE sums and counts per channel, for held-out per-channel losses."""
    ce = token_losses(logits, input_ids, classes if audio_columns else None, audio_columns)
    return channel_sums(ce, target_classes(classes))


# ----------------------------------------------------------------------------- per target


@dataclass(frozen=True)
class Targets:
    """The positions that carry a loss, flattened: ``rows [n]`` index ``[batch * seq]``,
    ``ids [n]`` the token each predicts, ``classes [n]`` its class."""

    rows: torch.Tensor
    ids: torch.Tensor
    classes: torch.Tensor


def select_targets(
    input_ids: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor | None = None
) -> Targets:
    """Every position whose target is not user audio (and, given ``weights``, whose class
    weighs more than 0: a zero-weight target adds nothing to the loss or its gradient)."""
    tgt_cls = target_classes(classes)
    keep = tgt_cls != TokenClass.USER_AUDIO
    if weights is not None:
        keep &= weights.to(tgt_cls.device)[tgt_cls.long()] > 0
    rows = keep.flatten().nonzero().squeeze(1)
    ids = F.pad(input_ids[:, 1:], (0, 1)).flatten()
    return Targets(rows, ids[rows], tgt_cls.flatten()[rows])


def target_losses(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: Targets,
    impl: str = "chunked",
    audio_columns: tuple[int, int] | None = None,
) -> torch.Tensor:
    """float32 CE ``[n]`` of each target from the final hidden states ``[batch, seq, H]``
    and the output layer's weight ``[V, H]``."""
    h = hidden.flatten(0, 1).index_select(0, targets.rows)
    return linear_cross_entropy(
        h,
        weight,
        targets.ids,
        audio_rows=is_audio_target(targets.classes) if audio_columns else None,
        audio_columns=audio_columns,
        impl=impl,
    )


def model_target_losses(
    model, hidden: torch.Tensor, targets: Targets, impl: str, audio_columns=None
) -> torch.Tensor:
    """:func:`target_losses` run as the forward of ``model``'s output layer (so ZeRO-3
    gathers its weight: ``train/output_layer.py``)."""
    return call_output_layer(
        model,
        lambda weight, h: target_losses(h, weight, targets, impl, audio_columns),
        hidden,
    )


def weighted_mean(ce: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ w·ce / Σ w with ``w`` the weight of each target's class (any shape, same for both)."""
    w = weights.to(ce.device)[classes.long()]
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


def channel_sums(ce: torch.Tensor, classes: torch.Tensor) -> dict[str, torch.Tensor]:
    """``{text,audio}_{sum,count}`` of unweighted CE by the channel of each target's class."""
    out = {}
    for name, members in (("text", TEXT_CHANNEL), ("audio", AUDIO_CHANNEL)):
        mask = torch.zeros_like(classes, dtype=torch.bool)
        for c in members:
            mask |= classes == c
        out[f"{name}_sum"] = (ce * mask).sum()
        out[f"{name}_count"] = mask.sum().to(ce.dtype)
    return out


# ----------------------------------------------------------------------------- the loss


def resolve_impl(impl: str, device, audio_columns: tuple[int, int] | None = None) -> str:
    """The implementation that runs for ``train.loss_impl=impl`` on ``device``: ``liger``
    where it cannot run (or with channels, which it has no masks for) is ``chunked``,
    with a warning saying why."""
    if impl != "liger":
        return impl
    why = liger_unavailable(device)
    if why is None and audio_columns is not None:
        why = "train.channel_softmax needs per-channel columns, which Liger's kernel has not"
    if why is not None:
        log.warning("train.loss_impl=liger: %s; using the chunked PyTorch loss", why)
        return "chunked"
    return impl


@dataclass
class DuplexLoss:
    """The training loss and held-out figures of one micro-batch, for ``impl`` (module doc)."""

    weights: torch.Tensor  # LossWeights.table()
    impl: str = "chunked"
    audio_columns: tuple[int, int] | None = None  # channel softmax: [a0, a1) are the audio ids

    def __call__(self, model, inputs: dict, classes: torch.Tensor):
        """``(loss, outputs)``: the weighted mean CE of the micro-batch."""
        ids = inputs["input_ids"]
        if self.impl == "full":
            outputs = model(**inputs, use_cache=False)
            return weighted_loss(
                outputs.logits, ids, classes, self.weights, self.audio_columns
            ), outputs
        hidden, outputs = final_hidden_states(model, inputs)
        targets = select_targets(ids, classes, self.weights)
        ce = model_target_losses(model, hidden, targets, self.impl, self.audio_columns)
        return weighted_mean(ce, targets.classes, self.weights), outputs

    @torch.no_grad()
    def figures(self, model, inputs: dict, classes: torch.Tensor) -> dict[str, torch.Tensor]:
        """Held-out figures: ``weighted`` (the loss) and the per-channel sums and counts."""
        ids = inputs["input_ids"]
        if self.impl == "full":
            logits = model(**inputs, use_cache=False).logits
            out = channel_loss_sums(logits, ids, classes, self.audio_columns)
            out["weighted"] = weighted_loss(logits, ids, classes, self.weights, self.audio_columns)
            return out
        hidden, _ = final_hidden_states(model, inputs)
        targets = select_targets(ids, classes)
        ce = model_target_losses(model, hidden, targets, self.impl, self.audio_columns)
        out = channel_sums(ce, targets.classes)
        out["weighted"] = weighted_mean(ce, targets.classes, self.weights)
        return out
