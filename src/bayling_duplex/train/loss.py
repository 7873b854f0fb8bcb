"""The duplex loss (format §5): cross-entropy on the text channel and the assistant audio,
user audio masked, each token weighted by its class.

Mirrors moshi-finetune's weighted loss: one function, no state. The weights
are a table indexed by :class:`~bayling_duplex.format.interleave.TokenClass`; a
weight of 0 removes a class from the loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bayling_duplex.format.interleave import TokenClass
from bayling_duplex.train.config import LossWeights  # noqa: F401 (re-exported)

TEXT_CHANNEL = (TokenClass.SILENCE_SLOT, TokenClass.CONTROL, TokenClass.TEXT)
AUDIO_CHANNEL = (TokenClass.SPEECH, TokenClass.SILENT_AUDIO)


def token_losses(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy ``[batch, seq]``: position ``i`` predicts token ``i+1``; the last is 0.

    The targets are shifted rather than the logits, so the (large) logits tensor
    is never copied; it is upcast to float32 only if it is not already.
    """
    targets = F.pad(input_ids[:, 1:], (0, 1), value=-100)
    return F.cross_entropy(
        logits.float().view(-1, logits.shape[-1]),
        targets.reshape(-1),
        reduction="none",
        ignore_index=-100,
    ).view(input_ids.shape)


def weighted_loss(
    logits: torch.Tensor, input_ids: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Weighted mean CE over targets. ``classes`` is ``[batch, seq]`` (padding = USER_AUDIO).

    The target of position ``i`` is token ``i+1``, so its weight is that of class ``i+1``.
    """
    w = F.pad(weights.to(logits.device)[classes[:, 1:].long()], (0, 1))
    ce = token_losses(logits, input_ids)
    return (ce * w).sum() / w.sum().clamp_min(1e-8)


def channel_loss_sums(
    logits: torch.Tensor, input_ids: torch.Tensor, classes: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Unweighted CE sums and counts per channel, for held-out per-channel losses."""
    ce = token_losses(logits, input_ids)
    tgt = F.pad(classes[:, 1:], (0, 1), value=int(TokenClass.USER_AUDIO))
    out = {}
    for name, members in (("text", TEXT_CHANNEL), ("audio", AUDIO_CHANNEL)):
        mask = torch.zeros_like(tgt, dtype=torch.bool)
        for c in members:
            mask |= tgt == c
        out[f"{name}_sum"] = (ce * mask).sum()
        out[f"{name}_count"] = mask.sum().to(ce.dtype)
    return out
