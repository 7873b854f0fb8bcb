"""A classic cascade baseline: a VAD on the user's microphone ends the turn, then it answers.

The cascade hears only the user channel. It decides that the user's turn is over
after ``end_silence_s`` of silence (0.5 s and 0.8 s by default, the usual settings
of voice assistants), starts its answer at that moment, and stops it as soon as the
VAD hears the user speak over it. Its responses are scored by
:func:`~bayling_duplex.eval.metrics.judge_times`, the same metrics as the model, so
a report can set the model's turn-taking, interruption, backchannel and hesitation
figures beside those of the pipeline it means to replace. Its answers' content is
not modelled: answer accuracy is None for it.

Two detectors: :class:`SileroVad` (a neural VAD, ~150× real time on one core) and
:class:`WebrtcVad` (WebRTC's GMM VAD, thousands × real time). Both need the ``vad``
extra (``pip install -e ".[vad]"``). :func:`cascade_responses` is the pure state
machine on their decisions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from typing import Protocol

import numpy as np

from bayling_duplex.eval.metrics import DialogueOutcome, EvalItem, judge_times, summarize
from bayling_duplex.format.layout import BlockLayout

SAMPLE_RATE = 16_000
_EXTRA_HINT = 'install the "vad" extra: pip install -e ".[vad]"'


class VadDetector(Protocol):
    """Speech / non-speech decisions on a 16 kHz waveform, one per hop."""

    name: str

    def speech(self, wav: np.ndarray) -> tuple[float, np.ndarray]:
        """``wav``: [n] float32 in [-1, 1] at 16 kHz. Returns ``(hop_s, is_speech)``:
        ``is_speech[i]`` (bool) covers ``[i·hop_s, (i+1)·hop_s)``; the last partial hop
        is zero-padded, so there are ``ceil(n / hop)`` decisions."""
        ...


def _mono16k(wav: np.ndarray) -> np.ndarray:
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"the VAD takes a mono waveform [n], got shape {wav.shape}")
    return wav


def _padded(wav: np.ndarray, hop: int) -> np.ndarray:
    return np.pad(wav, (0, -len(wav) % hop))


class SileroVad:
    """Silero VAD v6 (TorchScript, carried inside the wheel): a speech probability per
    512-sample chunk (32 ms) at 16 kHz, speech where it reaches ``threshold``.

    The model is loaded once per instance; its recurrent state is reset per waveform."""

    name = "silero"
    chunk = 512

    def __init__(self, threshold: float = 0.5) -> None:
        try:
            from silero_vad import load_silero_vad
        except ImportError as e:
            raise ImportError(f"SileroVad needs the silero-vad package: {_EXTRA_HINT}") from e
        self.threshold = threshold
        self.model = load_silero_vad(onnx=False)

    def probabilities(self, wav: np.ndarray) -> np.ndarray:
        """[ceil(n / 512)] float speech probabilities of ``wav`` (16 kHz float32)."""
        import torch

        wav = _padded(_mono16k(wav), self.chunk)
        if len(wav) == 0:
            return np.zeros(0, dtype=np.float32)
        self.model.reset_states()
        with torch.inference_mode():
            # audio_forward walks the 512-sample chunks inside TorchScript, carrying the state
            probs = self.model.audio_forward(torch.from_numpy(wav), SAMPLE_RATE)
        self.model.reset_states()
        return probs[0].numpy()

    def speech(self, wav: np.ndarray) -> tuple[float, np.ndarray]:
        return self.chunk / SAMPLE_RATE, self.probabilities(wav) >= self.threshold


class WebrtcVad:
    """WebRTC's VAD on 30 ms frames of 16-bit PCM at 16 kHz; ``aggressiveness`` 0–3
    (higher: fewer frames called speech)."""

    name = "webrtc"
    frame = 480  # 30 ms at 16 kHz

    def __init__(self, aggressiveness: int = 2) -> None:
        try:
            import webrtcvad
        except ImportError as e:
            raise ImportError(f"WebrtcVad needs the webrtcvad-wheels package: {_EXTRA_HINT}") from e
        self.vad = webrtcvad.Vad(aggressiveness)

    def speech(self, wav: np.ndarray) -> tuple[float, np.ndarray]:
        wav = _padded(_mono16k(wav), self.frame)
        pcm = (np.clip(wav, -1.0, 1.0) * 32767).astype("<i2")
        frames = pcm.reshape(-1, self.frame)
        out = np.fromiter(
            (self.vad.is_speech(f.tobytes(), SAMPLE_RATE) for f in frames),
            dtype=bool,
            count=len(frames),
        )
        return self.frame / SAMPLE_RATE, out


def make_detector(name: str) -> VadDetector:
    """``"silero"`` or ``"webrtc"`` with their default settings."""
    if name == "silero":
        return SileroVad()
    if name == "webrtc":
        return WebrtcVad()
    raise ValueError(f"unknown VAD {name!r}: choose 'silero' or 'webrtc'")


def _hops(seconds: float, hop_s: float) -> int:
    """Whole hops needed to reach ``seconds`` (at least one); the epsilon absorbs float error."""
    return max(1, math.ceil(seconds / hop_s - 1e-9))


def cascade_responses(
    is_speech: np.ndarray,
    hop_s: float,
    end_silence_s: float,
    answer_s: Sequence[float],
    min_speech_s: float = 0.1,
    barge_in_s: float = 0.2,
) -> list[tuple[float, float]]:
    """The cascade's responses ``(start_s, end_s)`` given VAD decisions, one per hop.

    The decisions are walked in time; decision ``i`` covers ``[i·hop_s, (i+1)·hop_s)``
    and is known at its end, ``(i+1)·hop_s``. Durations are counted in whole hops
    (rounded up), so times are exact to hop precision. The rules:

    1. *User turn start.* Before any response, and again after a response has ended by
       itself, the cascade waits for the user to speak: ``min_speech_s`` of consecutive
       speech starts a user turn. It never answers before one.
    2. *End of turn.* In a user turn, ``end_silence_s`` of continuous non-speech (any
       speech decision restarts the count) ends the turn at the moment the count is
       reached; the response starts then. So the latency after the user's last word
       is ``end_silence_s`` (plus the VAD's own lag), and a pause of the user longer
       than it is a false end.
    3. *Playing.* Response ``k`` plays for ``answer_s[k]`` seconds (the last value is
       reused when fewer are given). No new response starts while one plays.
    4. *Barge-in.* While it plays, ``barge_in_s`` of consecutive user speech stops it
       at the moment the count is reached. Any speech does: a backchannel as much as
       an interruption. The speech that stopped it is the next user turn (rule 2
       applies from there); after a natural end, rule 1 applies.

    A response may run past the last decision: it ends at its planned end.
    """
    if hop_s <= 0:
        raise ValueError(f"hop_s must be positive, got {hop_s}")
    if not answer_s:
        raise ValueError("answer_s needs at least one answer duration")
    is_speech = np.asarray(is_speech, dtype=bool)
    need_speech = _hops(min_speech_s, hop_s)
    need_silence = _hops(end_silence_s, hop_s)
    need_barge = _hops(barge_in_s, hop_s)
    responses: list[tuple[float, float]] = []
    state = "waiting"  # waiting (for a user turn) | listening (in a turn) | playing
    speech_run = silence_run = 0
    start = planned_end = 0.0
    for i, speech in enumerate(is_speech):
        t0, t1 = i * hop_s, (i + 1) * hop_s
        if state == "playing" and planned_end <= t0:  # it ended by itself before this hop
            responses.append((start, planned_end))
            state = "waiting"
        speech_run, silence_run = (speech_run + 1, 0) if speech else (0, silence_run + 1)
        if state == "playing":
            if speech_run >= need_barge and t1 < planned_end:
                responses.append((start, t1))  # barged in: the user's speech is the next turn
                state = "listening"
            continue
        if state == "waiting" and speech_run >= need_speech:
            state = "listening"
        elif state == "listening" and silence_run >= need_silence:
            k = min(len(responses), len(answer_s) - 1)
            start, planned_end = t1, t1 + float(answer_s[k])
            state = "playing"
    if state == "playing":
        responses.append((start, planned_end))
    return responses


def run_vad_baselines(
    items: list[tuple[EvalItem, np.ndarray]],
    layout: BlockLayout,
    answer_s: list[Sequence[float]],
    detectors: Sequence[str | VadDetector] = ("silero", "webrtc"),
    end_silence_s: Sequence[float] = (0.5, 0.8),
    progress: bool = False,
) -> dict[str, dict]:
    """Score the cascade with each detector and end-of-turn silence on the eval items.

    ``items``: per dialogue its :class:`EvalItem` and the user channel waveform
    ([n] float32, 16 kHz, sample 0 = frame 0). ``answer_s[d]``: the durations in
    seconds of the cascade's answers in dialogue ``d`` (e.g. the reference answers').
    Each detector runs once per dialogue; its decisions serve every threshold.

    Returns ``{"<detector>-<ms>ms": {"summary": summarize(...), "outcomes": [...]}}``,
    e.g. ``"silero-500ms"``; each outcome's ``extra`` holds the item and the
    responses ``[start_s, end_s, None]`` (the text is not modelled).
    """
    from tqdm.auto import tqdm

    if len(answer_s) != len(items):
        raise ValueError(f"answer_s has {len(answer_s)} entries for {len(items)} items")
    dets = [make_detector(d) if isinstance(d, str) else d for d in detectors]
    outcomes: dict[str, list[DialogueOutcome]] = {
        f"{d.name}-{round(th * 1000)}ms": [] for d in dets for th in end_silence_s
    }
    bar = tqdm(total=len(items) * len(dets), desc="VAD baselines", disable=not progress)
    for (item, wav), answers in zip(items, answer_s, strict=True):
        for det in dets:
            hop_s, is_speech = det.speech(wav)
            for th in end_silence_s:
                resp = cascade_responses(is_speech, hop_s, th, answers)
                times = [(s, e, None) for s, e in resp]
                o = judge_times(item, times, None, layout)
                o.extra |= {"item": asdict(item), "responses": [[s, e, None] for s, e in resp]}
                outcomes[f"{det.name}-{round(th * 1000)}ms"].append(o)
            bar.update(1)
    bar.close()
    return {name: {"summary": summarize(outs), "outcomes": outs} for name, outs in outcomes.items()}
