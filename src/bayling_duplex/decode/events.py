"""What decoding produces: events per block, the decoded dialogue and its sequence.

Torch-free (numpy only), so reports and servers can read results without a model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import DuplexVocab

STOP_MAX_EPAD = "max_epad"  # the max_epad-th [EPAD] was decoded
STOP_EOS = "eos"  # <|endoftext|> was decoded in the text channel
STOP_END_OF_INPUT = "end_of_input"  # the user audio ran out
_REASONS = {1: STOP_MAX_EPAD, 2: STOP_EOS}


# --------------------------------------------------------------------------- events
# ``block`` is the output block k; ``slot`` the text slot j in it (flat index k·T + j).
# Block k's text and audio describe frames [(k+1)B, (k+2)B): see format §3.


@dataclass(frozen=True)
class Onset:
    """``<|assistant|>``: a response starts in this slot."""

    block: int
    slot: int


@dataclass(frozen=True)
class TextToken:
    """A response's text token (any text-channel id that is not a control token or EOS)."""

    block: int
    slot: int
    token_id: int


@dataclass(frozen=True)
class Epad:
    """``[EPAD]``: the response's speech ends in this slot."""

    block: int
    slot: int


@dataclass(frozen=True)
class AudioBlock:
    """The assistant's ``B`` speech codes of block ``block``."""

    block: int
    codes: tuple[int, ...]


@dataclass(frozen=True)
class Stop:
    """Decoding ended after block ``block``: ``reason`` is one of the ``STOP_*`` keys."""

    block: int
    reason: str


Event = Onset | TextToken | Epad | AudioBlock | Stop


@dataclass(frozen=True)
class DecodeResult:
    """One decoded dialogue; arrays cover the ``num_blocks`` blocks that were decoded."""

    num_blocks: int  # K
    user_codes: np.ndarray  # int64 [K·B], the user frames [0, K·B) that were fed
    text_ids: np.ndarray  # int64 [K·T], the text channel
    assistant_codes: np.ndarray  # int64 [K·B], assistant frames [B, (K+1)·B)
    events: tuple[Event, ...]
    stop_reason: str  # one of the STOP_* keys


def result_to_sequence(result: DecodeResult, vocab: DuplexVocab, layout: BlockLayout) -> np.ndarray:
    """The interleaved ids ``U_k X_k A_k`` of what was decoded, int64 ``[K·(2B+T)]``.

    Feed it to :func:`bayling_duplex.format.interleave.split_channels` /
    :func:`~bayling_duplex.format.interleave.response_events` to score a decode.
    """
    B, T = layout.frames_per_block, layout.slots_per_block
    K = result.num_blocks
    return np.concatenate(
        [
            result.user_codes.reshape(K, B) + vocab.audio_start_id,
            result.text_ids.reshape(K, T),
            result.assistant_codes.reshape(K, B) + vocab.audio_start_id,
        ],
        axis=1,
    ).reshape(-1)


def text_events(block: int, ids: Sequence[int], vocab: DuplexVocab) -> list[Event]:
    """The events of one block's text channel ``ids`` (``T`` ids, slot order)."""
    controls = {vocab.silence_id, vocab.pad_id}
    events: list[Event] = []
    for slot, tok in enumerate(ids):
        if tok == vocab.speak_id:
            events.append(Onset(block, slot))
        elif tok == vocab.epad_id:
            events.append(Epad(block, slot))
        elif tok not in controls and tok != vocab.eos_id:
            events.append(TextToken(block, slot, int(tok)))
    return events
