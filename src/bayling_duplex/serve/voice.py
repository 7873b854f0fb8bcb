"""What a person hears from the assistant: one block of audio per decoded block.

Block ``k``'s audio covers session time ``[(k+1)·block_s, (k+2)·block_s)``, the
frames its text and codes describe (format §3), so a client plays the blocks back
to back. Three renderings, chosen by ``audio=`` (docs/serving.md):

* :class:`TextVoice` (``tts``, the real-speech default): the decoded *text*
  spoken from its decoded onset, as the evaluation's listening files do
  (:func:`bayling_duplex.eval.listen.render_assistant`) but streamed: the text
  arrives one slot at a time, so each finished word (a following token that starts
  a new word, punctuation, ``[PAD]``) is synthesized and queued behind what is
  already playing; ``[EPAD]`` cuts the speech at its slot with a short fade, and
  drops what was not yet said. Speech can lag the text, never run ahead of it.
* :class:`CodeVoice` (``vocoder``): the assistant's own speech codes through a
  decoder hook (GLM-4-Voice's flow + HiFT, :func:`bayling_duplex.audio.vocoder.render_audio`):
  each block is rendered with ``context_blocks`` blocks of codes before it and
  its own part kept, resampled to the wire's rate.
* :class:`NoVoice` (``none``): no audio frames; the events and codes still come.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from bayling_duplex.format.layout import BlockLayout

log = logging.getLogger("bayling_duplex.serve")

SILENCE, ONSET, TEXT, PAD, EPAD = "silence", "onset", "text", "pad", "epad"
_WORD_END = re.compile(r"[\s.,!?;:]")


@dataclass(frozen=True)
class Slot:
    """One text slot as the voice sees it: its kind and, for text, the new characters."""

    kind: str  # SILENCE, ONSET, TEXT, PAD or EPAD
    text: str = ""


class NoVoice:
    """No audio: :meth:`render` returns None."""

    name = "none"

    def render(self, slots: Sequence[Slot], codes: Sequence[int]) -> np.ndarray | None:
        return None


class TextVoice:
    """The decoded text re-synthesized at its decoded onsets, streamed; see the module docstring.

    ``say(text)`` returns float32 mono speech at ``sample_rate`` (``audio/tts.py``).
    """

    name = "tts"

    def __init__(
        self,
        say: Callable[[str], np.ndarray],
        layout: BlockLayout,
        sample_rate: int = 16_000,
        fade_ms: float = 10.0,
    ) -> None:
        self.say = say
        self.layout = layout
        self.block_samples = round(layout.block_s * sample_rate)
        self.slot_edges = [
            round(j * self.block_samples / layout.slots_per_block)
            for j in range(layout.slots_per_block + 1)
        ]
        self.fade = max(1, round(fade_ms * sample_rate / 1000))
        self.open = False  # inside a response (after its onset, before its [EPAD])
        self.pending = ""  # text received but not yet spoken
        self.queue: list[np.ndarray] = []  # synthesized speech not yet played

    def _speak(self, text: str) -> None:
        if not any(c.isalnum() for c in text):
            return  # punctuation alone: nothing to say (eSpeak NG says nothing for ".")
        try:
            wav = self.say(text.strip())
        except Exception as e:  # a text the synthesizer refuses costs its words, not the session
            log.warning("could not say %r (%s): silence instead", text, e)
            return
        self.queue.append(np.ravel(np.asarray(wav, dtype=np.float32)))

    def _finished_words(self) -> None:
        """Speak the pending text up to its last word end; keep the unfinished word."""
        last = None
        for m in _WORD_END.finditer(self.pending):
            last = m
        if last is not None and self.pending[: last.end()].strip():
            self._speak(self.pending[: last.end()])
            self.pending = self.pending[last.end() :]

    def _play(self, out: np.ndarray, start: int, stop: int) -> int:
        """Fill ``out[start:stop]`` from the queue; returns where the speech stopped."""
        pos = start
        while pos < stop and self.queue:
            head = self.queue[0]
            n = min(stop - pos, len(head))
            out[pos : pos + n] = head[:n]
            pos += n
            if n == len(head):
                self.queue.pop(0)
            else:
                self.queue[0] = head[n:]
        return pos

    def render(self, slots: Sequence[Slot], codes: Sequence[int]) -> np.ndarray:
        """The block's ``block_samples`` float32 samples, slot by slot."""
        out = np.zeros(self.block_samples, dtype=np.float32)
        played_to = 0
        for j, slot in enumerate(slots):
            start, stop = self.slot_edges[j], self.slot_edges[j + 1]
            if slot.kind == ONSET:
                self.open, self.pending, self.queue = True, "", []
            elif slot.kind == EPAD:
                if self.queue and played_to == start and start > 0:  # cut mid-speech: fade
                    m = min(self.fade, start)
                    out[start - m : start] *= np.linspace(1.0, 0.0, m, endpoint=False)
                self.open, self.pending, self.queue = False, "", []
            elif slot.kind == TEXT and self.open:
                self.pending += slot.text
                self._finished_words()
            elif slot.kind in (PAD, SILENCE) and self.open and self.pending:
                self._speak(self.pending)  # the text is done: say its last word
                self.pending = ""
            played_to = self._play(out, start, stop)
        return out


class CodeVoice:
    """The assistant's speech codes through a decoder hook; see the module docstring.

    ``render_codes(codes) -> (float32 samples, sample_rate)`` renders a run of codes
    (e.g. GLM-4-Voice's decoder); the block's share is its last ``B`` codes' worth.
    """

    name = "vocoder"

    def __init__(
        self,
        render_codes: Callable[[Sequence[int]], tuple[np.ndarray, int]],
        layout: BlockLayout,
        sample_rate: int = 16_000,
        context_blocks: int = 2,
    ) -> None:
        self.render_codes = render_codes
        self.layout = layout
        self.sample_rate = sample_rate
        self.block_samples = round(layout.block_s * sample_rate)
        self.context = max(0, context_blocks) * layout.frames_per_block
        self.history: list[int] = []

    def render(self, slots: Sequence[Slot], codes: Sequence[int]) -> np.ndarray:
        run = [*self.history, *codes]
        wav, rate = self.render_codes(run)
        wav = np.ravel(np.asarray(wav, dtype=np.float32))
        share = round(len(wav) * len(codes) / max(1, len(run)))
        block = wav[len(wav) - share :] if share else wav[:0]
        block = resample(block, rate, self.sample_rate)
        out = np.zeros(self.block_samples, dtype=np.float32)
        out[: min(len(block), self.block_samples)] = block[: self.block_samples]
        self.history = run[-self.context :] if self.context else []
        return out


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of float32 ``x`` (torchaudio); a no-op at equal rates."""
    if rate_in == rate_out or not len(x):
        return np.asarray(x, dtype=np.float32)
    import torch
    from torchaudio.functional import resample as _resample

    y = _resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), rate_in, rate_out)
    return y.numpy().astype(np.float32, copy=False)
