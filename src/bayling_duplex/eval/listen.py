"""Something to listen to: a few evaluation dialogues as stereo WAVs (user | assistant).

The assistant's channel here is a *rendering of its decoded text at its decoded
onsets*: each response read off the text channel (``outcome.extra["responses"]``,
``[start_s, end_s | None, text]``) is spoken by an injected ``say(text)`` (a TTS)
and placed at ``start_s``, cut at ``end_s``. It is not the model's own audio codes:
it lets a person hear *when* the model speaks and stops, and what it meant to say.
The optional ``<id>.codes.wav`` is the diagnostic rendering of the user channel's
unit codes, made by the caller (``codes_audio``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bayling_duplex.eval.metrics import DialogueOutcome, EvalItem

SCENARIOS = ("turn_taking", "interruption", "backchannel", "hesitation")
PEAK = 0.99  # the largest absolute sample written: 16-bit PCM must not clip


def _write_wav(path: Path, data: np.ndarray, sample_rate: int) -> None:
    """``data`` (``[samples]`` or ``[samples, channels]``, float) as 16-bit PCM, atomically.

    Every channel is scaled by the same factor when the peak exceeds :data:`PEAK`,
    so the balance between channels is kept."""
    import soundfile as sf

    data = np.asarray(data, dtype=np.float64)
    peak = float(np.abs(data).max()) if data.size else 0.0
    if peak > PEAK:
        data = data * (PEAK / peak)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        sf.write(tmp, data, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def stereo_wav(
    path: Path, user: np.ndarray, assistant: np.ndarray, sample_rate: int = 16000
) -> None:
    """A 16-bit stereo WAV: left the user's microphone, right the assistant.

    ``user`` and ``assistant`` are 1-D float waveforms at ``sample_rate``; the shorter
    is zero-padded to the longer; both are scaled by one factor if the peak exceeds 0.99."""
    user, assistant = np.ravel(user), np.ravel(assistant)
    n = max(len(user), len(assistant))
    both = np.zeros((n, 2), dtype=np.float64)
    both[: len(user), 0] = user
    both[: len(assistant), 1] = assistant
    _write_wav(path, both, sample_rate)


def render_assistant(
    responses: Sequence[Sequence],
    num_samples: int,
    say: Callable[[str], np.ndarray],
    sample_rate: int = 16000,
    fade_ms: float = 10,
) -> np.ndarray:
    """The assistant's channel re-synthesized from its decoded text: ``[num_samples]`` float32.

    This is a rendering of the decoded *text* at the decoded *onsets*, not of the
    model's own audio codes. Each response ``(start_s, end_s | None, text)`` with
    non-empty text is spoken by ``say(text)`` (float32 mono at ``sample_rate``) from
    sample ``round(start_s · sample_rate)``. Where the speech runs past ``end_s`` (the
    ``[EPAD]``), the next response's start or the dialogue's end, it is cut there, with
    a linear fade over the last ``fade_ms`` before the cut, so a barge-in sounds like
    one: speech that stops mid-word at the time the model stopped.
    """
    out = np.zeros(num_samples, dtype=np.float32)
    fade = max(1, round(fade_ms * sample_rate / 1000))
    spans = sorted(((float(r[0]), r[1], str(r[2] or "")) for r in responses), key=lambda r: r[0])
    for k, (start_s, end_s, text) in enumerate(spans):
        if not text.strip():
            continue
        begin = round(start_s * sample_rate)
        stop = num_samples
        if end_s is not None:
            stop = min(stop, round(float(end_s) * sample_rate))
        if k + 1 < len(spans):  # decoded responses never overlap; one voice if they did
            stop = min(stop, round(spans[k + 1][0] * sample_rate))
        if begin >= stop:
            continue
        wav = np.ravel(np.asarray(say(text), dtype=np.float32))
        clip = wav[: stop - begin].copy()
        if len(wav) > len(clip):  # cut: fade out rather than click
            m = min(fade, len(clip))
            clip[-m:] *= np.linspace(1.0, 0.0, m, endpoint=False, dtype=np.float32)
        out[begin : begin + len(clip)] = clip
    return out


def verdict(o: DialogueOutcome) -> str:
    """One line for a person: how the first turn was taken and what the scenario judged."""
    parts = [f"taken: {o.taken}"]
    if o.latency_s is not None:
        parts[0] += f", latency {o.latency_s:.2f} s"
    if o.speaking_at_interruption is not None:
        if not o.speaking_at_interruption:
            parts.append("interruption: came while not speaking (not judged)")
        elif o.overlap_s is None:
            parts.append("interruption: never stopped")
        else:
            ok = "within" if o.interrupted_ok else "later than"
            parts.append(f"interruption: stopped {o.overlap_s:.2f} s after its onset ({ok} 2 s)")
    if o.backchannel_kept is not None:
        parts.append(f"backchannel: {'kept talking' if o.backchannel_kept else 'cut by it'}")
    false_ends = getattr(o, "false_ends", None)  # newer outcomes count them
    if o.hesitation_kept is not None:
        parts.append(
            "hesitation: waited through the pause"
            if o.hesitation_kept
            else "hesitation: started in the pause"
            + (f" ({false_ends} false end{'s' * (false_ends != 1)})" if false_ends else "")
        )
    if o.correct is not None:
        parts.append(f"answer: {'correct' if o.correct else 'not found'}")
    return "; ".join(parts)


def pick(items: Sequence[EvalItem], n: int) -> list[int]:
    """About ``n`` indices, taken in turn from each scenario (file order within one)."""
    order = [*SCENARIOS, *dict.fromkeys(i.scenario for i in items if i.scenario not in SCENARIOS)]
    queues = [[i for i, it in enumerate(items) if it.scenario == s] for s in order]
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return chosen


def _file_stem(item_id: str, taken: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", item_id).strip(".") or "dialogue"
    base, k = stem, 1
    while stem in taken:
        k += 1
        stem = f"{base}-{k}"
    taken.add(stem)
    return stem


def write_listening(
    out_dir: Path,
    items_wavs: Sequence[tuple[EvalItem, np.ndarray]],
    outcomes: Sequence[DialogueOutcome],
    say: Callable[[str], np.ndarray],
    codes_audio: Callable[[int], np.ndarray] | None = None,
    n: int = 6,
    sample_rate: int = 16000,
) -> list[dict]:
    """``out_dir/audio/<id>.wav`` (and ``<id>.codes.wav``) for about ``n`` dialogues.

    ``items_wavs``: ``(item, user waveform at sample_rate)``; ``outcomes``: one model's
    outcomes in the same order; ``codes_audio(i)``: the diagnostic mono rendering of
    dialogue ``i``'s user unit codes. Returns, per written dialogue, ``id``, ``scenario``,
    ``index``, ``wav`` and ``codes_wav`` (paths relative to ``out_dir``, or None),
    ``verdict`` and ``responses``."""
    if len(items_wavs) != len(outcomes):
        raise ValueError(f"{len(items_wavs)} dialogues but {len(outcomes)} outcomes")
    out_dir = Path(out_dir)
    stems: set[str] = set()
    written = []
    for i in pick([it for it, _ in items_wavs], n):
        item, user = items_wavs[i]
        o = outcomes[i]
        if o.id != item.id:
            raise ValueError(f"outcome {i} is for {o.id!r}, the dialogue is {item.id!r}")
        responses = [list(r) for r in o.extra.get("responses", [])]
        stem = _file_stem(item.id, stems)
        wav = f"audio/{stem}.wav"
        user = np.ravel(user)
        stereo_wav(
            out_dir / wav,
            user,
            render_assistant(responses, len(user), say, sample_rate),
            sample_rate,
        )
        codes_wav = None
        if codes_audio is not None:
            codes_wav = f"audio/{stem}.codes.wav"
            _write_wav(out_dir / codes_wav, np.ravel(codes_audio(i)), sample_rate)
        written.append(
            {
                "id": item.id,
                "scenario": item.scenario,
                "index": i,
                "wav": wav,
                "codes_wav": codes_wav,
                "verdict": verdict(o),
                "responses": responses,
            }
        )
    return written
