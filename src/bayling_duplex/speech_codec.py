"""The one module that turns speech (or its stand-in) into 12.5 Hz codes.

Two codecs share one small interface (``name``, ``num_codes``, ``silence_codes``):

* :class:`ToyCodec` — **a stand-in for speech, not speech.** It turns *text*
  into codes so that every stage runs anywhere in seconds with no audio and
  no model: each word lasts ``1 + len(word) // 2`` frames (longer words speak
  longer), its codes are a stable hash of the word and the frame index, a
  one-frame pause follows each word (two after a comma), and an utterance
  ends with a prosody code that tells a question (rising, code 1) from a
  statement (falling, code 2). Code 0 is digital silence. A model trained on
  it learns the *timing* behaviour of the duplex format, not speech.
* The GLM-4-Voice Whisper-VQ tokenizer (``speech_tokenizer.py``) for real
  audio, wrapped by :func:`glm_codec` for the batch tokenizing command.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

SILENCE_CODE = 0
RISING_CODE = 1  # ends a question
FALLING_CODE = 2  # ends a statement
FIRST_WORD_CODE = 8  # codes [3, 8) are reserved
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

    name = "toy-v1"

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

        ``word_ends`` excludes the end of the utterance: they are the places
        where a hesitation pause could be inserted.
        """
        codes: list[int] = []
        ends: list[int] = []
        final = FALLING_CODE
        for piece in _WORD.findall(text):
            if piece in "?.!":
                final = RISING_CODE if piece == "?" else FALLING_CODE
                continue
            if piece in ",;:":
                codes.append(SILENCE_CODE)
                continue
            codes.extend(self.word_codes(piece))
            codes.append(SILENCE_CODE)
            ends.append(len(codes))
        if not codes:
            return (), ()
        codes[-1] = final  # the last word's pause becomes the prosody frame
        return tuple(codes), tuple(ends[:-1])
