"""Input noise on the user's channel during SFT (``train.user_unit_swap``).

The default run all but memorises its 3000 dialogues (training loss 0.02 against a
held-out 0.54: docs/training.md, "The batch size"), and its held-out dialogues speak
with voices and questions it never heard. Each training step, this replaces a share of
the user's speech codes (positions of class ``USER_AUDIO`` that hold an audio id) by
user codes drawn at random from elsewhere in the same batch, so the replacements follow
the channel's own unit distribution, silence units included, and add no code the data
lacks. Only inputs change: user codes are never targets (format §5), and the
assistant's codes, which are, are left alone. With ``train.user_unit_swap_scope=speech``
only the frames inside the user's recorded speech segments, less the hesitation pauses
inside them, are replaced, by codes from the same frames: the silences, and so the pauses
and turn ends, stay as built. Held-out losses and every evaluation see
the data as built (:meth:`DuplexTrainer.evaluate` does not call this).

No kept library does this for token ids (audio augmentation libraries work on
waveforms and spectrograms; here the units are already fixed by the codec fitted with
the data), so it is written here: a mask and a gather.
"""

from __future__ import annotations

import torch

from bayling_duplex.format.interleave import TokenClass


def swap_user_units(
    input_ids: torch.Tensor,
    classes: torch.Tensor,
    share: float,
    audio_range: tuple[int, int],
    generator: torch.Generator,
    region: torch.Tensor | None = None,
) -> torch.Tensor:
    """``input_ids`` with about ``share`` of its user audio codes replaced (a new tensor).

    ``audio_range`` is ``(first audio id, one past the last)``; padding and the prompt's
    text ids are not audio ids, so they are never chosen nor used as replacements.
    ``region`` (bool, the shape of ``input_ids``): only these positions are replaced and
    only their codes replace them (``train.user_unit_swap_scope=speech``: the frames
    where the user speaks, so a pause keeps its silence). ``generator`` (CPU) makes the
    choice reproducible for a given seed and step order.
    """
    if share <= 0:
        return input_ids
    lo, hi = audio_range
    user = (classes == TokenClass.USER_AUDIO) & (input_ids >= lo) & (input_ids < hi)
    if region is not None:
        user &= region.to(user.device)
    where = user.nonzero(as_tuple=True)
    n = where[0].numel()
    if n == 0:
        return input_ids
    codes = input_ids[where]
    hit = (torch.rand(n, generator=generator) < share).to(codes.device)
    k = int(hit.sum())
    if k == 0:
        return input_ids
    source = torch.randint(n, (k,), generator=generator).to(codes.device)
    noised = codes.clone()
    noised[hit] = codes[source]
    out = input_ids.clone()
    out[where] = noised
    return out
