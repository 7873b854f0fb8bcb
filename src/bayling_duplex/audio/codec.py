"""The one module that turns speech (or its stand-in) into 12.5 Hz codes.

Two codecs share one small interface (``name``, ``num_codes``, ``silence_codes``):

* :class:`ToyCodec` — **a stand-in for speech, not speech.** It turns *text*
  into codes so that every stage runs anywhere in seconds with no audio and
  no model: each word lasts ``1 + len(word) // 2`` frames (longer words speak
  longer), its codes are a stable hash of the word and the frame index, and a
  one-frame pause follows each word but the last (two after a comma). Code 0
  is digital silence; every other code is a word code. Nothing marks the end
  of an utterance or tells a question from a statement: a turn ends where its
  last word ends, and only the silence after it (and what was said) can tell
  a listener that it ended. A model trained on it learns the *timing*
  behaviour of the duplex format from silence and lexical content, not
  speech. (Version 1 ended every utterance with a reserved prosody code, and
  models learned to answer on that code alone: see docs/data.md.)
* :class:`GlmSpeechCodec` — GLM-4-Voice's 12.5 Hz Whisper-VQ tokenizer
  (``speech_tokenizer.py``) for real audio: 16 kHz waveforms in, one code per
  80 ms (1280 samples) out. The audio tokenizing command
  (``python -m bayling_duplex.speech``) and waveform-level synthesis
  (``mixer.py``) reach the tokenizer only through it. Its silence pattern is
  *measured* (:func:`silence_pattern`), never assumed.

A third codec with the same interface lives in ``units.py``: ``UnitCodec``,
log-mel k-means units fit in-process (no download), whose silence is measured
the same way.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from os import PathLike
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from bayling_duplex.audio.whisper_vq import SpeechTokenizer

log = logging.getLogger(__name__)

SILENCE_CODE = 0
FIRST_WORD_CODE = 1  # every code but digital silence is a word code
_WORD = re.compile(r"[A-Za-z0-9'’-]+|[?.!,;:]")


@dataclass(frozen=True)
class ToyCodec:
    """Text → toy 12.5 Hz codes. Deterministic; see the module docstring."""

    num_codes: int = 256

    def __post_init__(self) -> None:
        if self.num_codes <= FIRST_WORD_CODE + 8:
            raise ValueError(
                f"the toy codec needs more than {FIRST_WORD_CODE + 8} codes, got {self.num_codes}"
            )

    name = "toy-v2"

    @property
    def silence_codes(self) -> tuple[int, ...]:
        return (SILENCE_CODE,)

    def word_codes(self, word: str) -> list[int]:
        n = 1 + len(word) // 2
        span = self.num_codes - FIRST_WORD_CODE
        out = []
        for j in range(n):
            h = hashlib.blake2b(f"{word.lower()}|{j}".encode(), digest_size=4).digest()
            out.append(FIRST_WORD_CODE + int.from_bytes(h, "little") % span)
        return out

    def encode(self, text: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """``(codes, word_ends)``: the utterance's codes and the frame offset after each word's pause.

        The codes end with the last word's codes (no pause, no marker). ``word_ends``
        excludes the end of the utterance: they are the places where a hesitation
        pause could be inserted.
        """
        codes: list[int] = []
        ends: list[int] = []
        for piece in _WORD.findall(text):
            if piece in "?.!":
                continue
            if piece in ",;:":
                codes.append(SILENCE_CODE)
                continue
            codes.extend(self.word_codes(piece))
            codes.append(SILENCE_CODE)
            ends.append(len(codes))
        while codes and codes[-1] == SILENCE_CODE:
            codes.pop()  # the utterance ends where its last word ends
        if not codes:
            return (), ()
        return tuple(codes), tuple(e for e in ends if e < len(codes))


# --------------------------------------------------------------------------- GLM-4-Voice


@dataclass(frozen=True)
class SilencePattern:
    """The codes a tokenizer emits for digital silence: silent frame ``f`` gets ``codes[f % len(codes)]``."""

    codes: tuple[int, ...]
    agreement: float  # share of the measured frames the pattern predicts (1.0: exactly periodic)
    measured_frames: int  # frames the pattern was read from (edges excluded)


def silence_pattern(
    codes: Sequence[int],
    max_period: int = 16,
    skip_head: int = 2,
    skip_tail: int = 1,
    tolerance: float = 0.02,
) -> SilencePattern:
    """The repeating pattern in the codes of a long stretch of digital silence.

    The first ``skip_head`` and last ``skip_tail`` codes are left out: they see the
    convolutions' zero padding, not silence. For each period ``p ≤ max_period`` the
    pattern takes, at each phase ``f % p``, the most common code (ties: the
    smallest); its agreement is the share of frames it predicts. The shortest
    period within ``tolerance`` of the best agreement wins, so an exactly periodic
    input gives its true period. Phases are absolute frame indices, as
    ``FormatSpec.silence`` reads the pattern.
    """
    first, stop = skip_head, len(codes) - skip_tail
    if stop - first < 2:
        raise ValueError(
            f"{len(codes)} codes leave fewer than 2 after skipping {skip_head}+{skip_tail} edge codes"
        )
    frames = range(first, stop)
    found: list[tuple[int, float, tuple[int, ...]]] = []
    for period in range(1, min(max_period, len(frames) // 2) + 1):
        pattern, hits = [], 0
        for phase in range(period):
            counts = Counter(codes[f] for f in frames if f % period == phase)
            code, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            pattern.append(int(code))
            hits += n
        found.append((period, hits / len(frames), tuple(pattern)))
        if hits == len(frames):
            break
    best = max(agreement for _, agreement, _ in found)
    _, agreement, pattern = next(f for f in found if f[1] >= best - tolerance)
    return SilencePattern(pattern, round(agreement, 6), len(frames))


class MeasuredSilence:
    """Silence codes *measured* from a codec: mix into a class with ``encode(wav)``,
    ``frame_rate_hz``, ``samples_per_frame`` and ``name``."""

    def measure_silence(self, seconds: float = 30.0) -> SilencePattern:
        """Encode ``seconds`` of digital silence (zeros) and read its repeating pattern."""
        import numpy as np

        frames = max(8, round(seconds * self.frame_rate_hz))
        codes = self.encode(np.zeros(frames * self.samples_per_frame, dtype=np.float32))
        pattern = silence_pattern(codes)
        if pattern.agreement < 1.0:
            log.warning(
                "%s: the codes of digital silence are not periodic: the best pattern "
                "(%d codes) predicts %.1f%% of %d frames",
                self.name,
                len(pattern.codes),
                100 * pattern.agreement,
                pattern.measured_frames,
            )
        return pattern

    @cached_property
    def silence(self) -> SilencePattern:
        return self.measure_silence()

    @property
    def silence_codes(self) -> tuple[int, ...]:
        return self.silence.codes


class GlmSpeechCodec(MeasuredSilence):
    """GLM-4-Voice's 12.5 Hz speech tokenizer behind the codec interface.

    Waveforms are mono float32 at :attr:`sample_rate` (16 kHz); a waveform of
    ``n`` samples gives ``ceil(n / samples_per_frame)`` codes (per 30 s window, so
    whole frames add up exactly). Build one with :meth:`load`.
    """

    name = "glm4voice-12.5hz"  # recipe.CodecConfig(kind="glm4voice").name

    def __init__(self, tokenizer: SpeechTokenizer, batch_size: int = 64) -> None:
        from bayling_duplex.audio.whisper_vq import SAMPLE_RATE

        self.tokenizer = tokenizer
        self.batch_size = batch_size  # 30 s windows per forward pass
        self.sample_rate = SAMPLE_RATE
        hop = tokenizer.feature_extractor.hop_length
        self.samples_per_frame = tokenizer.model.frames_per_code * hop  # 1280 as released

    @classmethod
    def load(
        cls, path: str | PathLike[str], device: str | None = None, batch_size: int = 64
    ) -> GlmSpeechCodec:
        """Load a ``glm-4-voice-tokenizer`` folder; ``device`` defaults to CUDA when present."""
        import torch

        from bayling_duplex.audio.whisper_vq import load_speech_tokenizer

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return cls(load_speech_tokenizer(path, device=device), batch_size)

    @property
    def num_codes(self) -> int:
        return int(self.tokenizer.model.codebook.num_embeddings)

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.samples_per_frame

    @property
    def device(self) -> str:
        return str(self.tokenizer.model.codebook.weight.device)

    def load_audio(self, path: str | PathLike[str], channel: int | None = None) -> np.ndarray:
        """An audio file (any rate) as mono float32 at 16 kHz; ``channel`` keeps one channel."""
        from bayling_duplex.audio.whisper_vq import load_audio

        return load_audio(path, self.sample_rate, channel)

    def encode_many(self, wavs: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
        """Codes of many 16 kHz waveforms, batched across them (the output does not depend on the batching)."""
        from bayling_duplex.audio.whisper_vq import tokenize_waveforms

        tok = self.tokenizer
        out = tokenize_waveforms(tok.model, tok.feature_extractor, wavs, self.batch_size)
        return [tuple(c) for c in out]

    def encode(self, wav: np.ndarray) -> tuple[int, ...]:
        """Codes of one 16 kHz waveform ``(samples,)``."""
        return self.encode_many([wav])[0]
