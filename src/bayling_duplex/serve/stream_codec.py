"""Speech codes of a live waveform, one block at a time, with the codec the checkpoint learnt.

The decoder needs ``B`` codes per block; audio arrives in pieces. A
:class:`StreamEncoder` is fed whole blocks of samples (``B × samples_per_frame``)
and encodes each with a bounded look-back into what came before:

* the learned unit codec (:class:`~bayling_duplex.audio.units.UnitCodec`) looks back
  only 15 ms into the previous frame, so one frame of look-back gives **exactly**
  the codes of encoding the whole recording at once (tested);
* any other codec with ``encode(wav)`` (GLM-4-Voice's Whisper-VQ tokenizer) is
  re-encoded over the last ``context_s`` seconds and the newest block's codes are
  kept. GLM-4-Voice's tokenizer attends within 4 s blocks, so no causal streaming
  form reproduces its whole-file codes exactly; 4 s of context is its own block.
"""

from __future__ import annotations

import numpy as np


class StreamEncoder:
    """Encodes consecutive blocks of one session's 16 kHz waveform; see the module docstring."""

    def __init__(self, codec, frames_per_block: int, context_samples: int | None = None) -> None:
        self.codec = codec
        self.B = frames_per_block
        self.spf = int(codec.samples_per_frame)
        self.block_samples = self.B * self.spf
        if context_samples is None:
            context_samples = self.spf if _exact_with_one_frame(codec) else 4 * 16_000
        self.context = max(0, int(context_samples))
        self._history = np.zeros(0, dtype=np.float32)
        self.blocks = 0

    def push_block(self, samples: np.ndarray) -> np.ndarray:
        """The ``B`` codes (int64) of the next block of ``block_samples`` float32 samples."""
        x = np.asarray(samples, dtype=np.float32).reshape(-1)
        if len(x) != self.block_samples:
            raise ValueError(f"a block is {self.block_samples} samples, got {len(x)}")
        wav = np.concatenate([self._history, x]) if len(self._history) else x
        codes = np.asarray(self.codec.encode(wav), dtype=np.int64)[-self.B :]
        if len(codes) != self.B:
            raise ValueError(f"{type(self.codec).__name__} gave {len(codes)} codes for a block")
        if self.context:
            self._history = wav[-self.context :].copy()
        self.blocks += 1
        return codes


def _exact_with_one_frame(codec) -> bool:
    from bayling_duplex.audio.units import UnitCodec

    # its STFT window looks back win - hop samples (15 ms), less than a frame
    return isinstance(codec, UnitCodec) and (
        codec.config.win_samples - codec.config.hop_samples <= codec.samples_per_frame
    )
