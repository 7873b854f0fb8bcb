"""The VAD cascade baseline: its state machine on hand-made decisions, judging on times,
both detectors on synthetic audio, and the whole baseline on two tiny dialogues.

What Silero VAD does on synthetic signals (measured with these generators): it never
fires on silence, white noise or a 440 Hz tone; on a *steady* voiced vowel (pulse train
at 120 Hz through fixed formants) it fires only at the onset after silence and decays
below 0.5 within ~0.5 s; on :func:`speech_like` syllables (gliding pitch, moving
formants) it fires within one hop of the onset every time, and over 30 seeds of 3 s
it calls a median 100 % of the hops speech (25 of 30 seeds >= 84 %, the worst 26 %),
ending within ~0.1 s of the end. The tests use seeds it detects fully. WebRTC's VAD
calls all of these speech, noise and tones included, and holds ~0.1 s after the end.
"""

from __future__ import annotations

import numpy as np
import pytest

from bayling_duplex.eval.metrics import EvalItem, event_times, judge, judge_times
from bayling_duplex.eval.vad_baseline import cascade_responses, run_vad_baselines
from bayling_duplex.format.interleave import ResponseEvent
from bayling_duplex.format.layout import BlockLayout

L = BlockLayout(10, 5)
SR = 16_000
HOP = 0.01  # hand-made decisions: one per 10 ms


def decisions(*spans: tuple[float, float], total_s: float) -> np.ndarray:
    """Speech in each ``[start_s, end_s)`` span, one decision per 10 ms hop."""
    out = np.zeros(round(total_s / HOP), dtype=bool)
    for s, e in spans:
        out[round(s / HOP) : round(e / HOP)] = True
    return out


def starts(resp):
    return [round(s, 6) for s, _ in resp]


# --------------------------------------------------------------------------- cascade_responses


def test_turn_end_then_silence_answers_after_the_threshold():
    resp = cascade_responses(decisions((1.0, 2.0), total_s=6), HOP, 0.5, [1.5])
    assert resp == [pytest.approx((2.5, 4.0))]
    resp = cascade_responses(decisions((1.0, 2.0), total_s=6), HOP, 0.8, [1.5])
    assert resp == [pytest.approx((2.8, 4.3))]


def test_threshold_rounds_up_to_whole_hops():
    speech = np.r_[np.ones(30, dtype=bool), np.zeros(60, dtype=bool)]  # 0.96 s at 32 ms hops
    resp = cascade_responses(speech, 0.032, 0.5, [1.0])
    assert resp[0][0] == pytest.approx(0.96 + 16 * 0.032)  # 0.5 s = 15.6 hops -> 16


def test_short_pause_no_response_long_pause_false_end():
    short = decisions((1.0, 2.0), (2.4, 3.0), total_s=6)  # 0.4 s pause < 0.5 s
    assert starts(cascade_responses(short, HOP, 0.5, [1.0])) == [3.5]
    # 0.7 s pause: a false end at 2.5 s; the user resuming at 2.7 s barges in at 2.9 s
    long = decisions((1.0, 2.0), (2.7, 3.5), total_s=6)
    resp = cascade_responses(long, HOP, 0.5, [5.0])
    assert resp[0] == pytest.approx((2.5, 2.9))
    assert resp[1][0] == pytest.approx(4.0)  # the resumed turn is answered too
    assert cascade_responses(long, HOP, 0.8, [5.0]) == [pytest.approx((4.3, 9.3))]


def test_barge_in_stops_at_the_right_time_and_blips_do_not():
    talk = decisions((1.0, 2.0), (3.0, 3.5), total_s=8)  # response from 2.5 s, user at 3.0 s
    assert cascade_responses(talk, HOP, 0.5, [3.0])[0] == pytest.approx((2.5, 3.2))
    blip = decisions((1.0, 2.0), (3.0, 3.19), total_s=8)  # 0.19 s < barge_in_s
    assert cascade_responses(blip, HOP, 0.5, [3.0]) == [pytest.approx((2.5, 5.5))]
    custom = cascade_responses(blip, HOP, 0.5, [3.0], barge_in_s=0.1)
    assert custom[0] == pytest.approx((2.5, 3.1))


def test_answer_durations_are_honoured_and_the_last_one_reused():
    three = decisions((0.5, 1.0), (2.0, 2.5), (4.0, 4.5), total_s=8)
    resp = cascade_responses(three, HOP, 0.5, [0.3, 0.7])
    assert resp == [
        pytest.approx((1.5, 1.8)),
        pytest.approx((3.0, 3.7)),
        pytest.approx((5.0, 5.7)),
    ]


def test_no_response_before_speech_nor_without_a_new_turn():
    assert cascade_responses(np.zeros(500, dtype=bool), HOP, 0.5, [1.0]) == []
    too_short = decisions((1.0, 1.09), total_s=4)  # under min_speech_s = 0.1 s
    assert cascade_responses(too_short, HOP, 0.5, [1.0]) == []
    # one turn, then a long silence: a single answer, not one per 0.5 s of silence
    assert len(cascade_responses(decisions((1.0, 2.0), total_s=20), HOP, 0.5, [1.0])) == 1


def test_a_response_runs_past_the_last_decision():
    assert cascade_responses(decisions((0.0, 1.0), total_s=2), HOP, 0.5, [4.0]) == [
        pytest.approx((1.5, 5.5))
    ]


# --------------------------------------------------------------------------- judge_times


def never(key, ids) -> bool:
    return False


@pytest.mark.parametrize(
    ("item", "events"),
    [
        (EvalItem("t", "turn_taking", 100, ((5, 30),), answer_keys=("x",)), [(10, 13), (30, 31)]),
        (EvalItem("t", "turn_taking", 100, ((5, 30),), answer_keys=("x",)), []),
        (EvalItem("i", "interruption", 100, ((0, 18), (36, 55))), [(10, 40)]),
        (EvalItem("i", "interruption", 100, ((0, 18), (36, 55))), [(10, None)]),
        (EvalItem("b", "backchannel", 100, ((0, 18),), backchannel=(30, 33)), [(10, 15)]),
        (EvalItem("h", "hesitation", 100, ((0, 40),), pause=(12, 24)), [(10, 14), (12, 16)]),
    ],
)
def test_judge_times_equals_judge(item, events):
    evs = [ResponseEvent(s, e, (7,)) for s, e in events]
    for check in (never, lambda k, ids: True):
        times = [(s, e, ev.text_ids) for s, e, ev in event_times(evs, L)]
        assert judge_times(item, times, check, L) == judge(item, evs, check, L)


def test_false_ends_count_responses_from_the_pause_to_the_turn_end():
    hes = EvalItem("h", "hesitation", 100, ((0, 40),), pause=(12, 24))  # 0.96 s .. 3.2 s
    out = judge_times(hes, [(0.5, 0.9, None), (1.2, 1.5, None), (2.0, 2.2, None)], None, L)
    assert out.false_ends == 2 and out.hesitation_kept is False
    assert out.correct is None  # content not modelled
    ok = judge_times(hes, [(3.2, 4.0, None)], None, L)  # at the turn end: not a false end
    assert ok.false_ends == 0 and ok.hesitation_kept is True
    plain = judge_times(EvalItem("t", "turn_taking", 100, ((5, 30),)), [(3.0, 4.0, None)], None, L)
    assert plain.false_ends is None


# --------------------------------------------------------------------------- detectors


def speech_like(dur_s: float, seed: int = 0) -> np.ndarray:
    """Syllables of a glottal pulse train's harmonics (F0 gliding round 130 Hz) shaped by
    two formant resonators whose centres move per syllable, at ~5 syllables/s."""
    rng = np.random.default_rng(seed)
    vowels = [(700, 1220), (300, 2300), (500, 900), (400, 1900), (650, 1700)]
    out, f0 = [], 130.0
    while sum(map(len, out)) < dur_s * SR:
        n = int(rng.uniform(0.12, 0.28) * SR)
        u = np.arange(n) / n
        f0_end = float(np.clip(f0 * rng.uniform(0.85, 1.1), 90, 200))
        pitch = f0 + (f0_end - f0) * u
        phase = 2 * np.pi * np.cumsum(pitch) / SR
        a, b = (vowels[i] for i in rng.choice(len(vowels), 2))
        formants = [(fa + (fb - fa) * u, bw) for fa, fb, bw in zip(a, b, (80, 100), strict=True)]
        y = np.zeros(n)
        for k in range(1, 40):
            fk = k * pitch
            gain = sum(
                1 / np.sqrt((1 - (fk / fc) ** 2) ** 2 + (fk * bw / fc**2) ** 2)
                for fc, bw in formants
            )
            y += (gain / k) * (fk < 5000) * np.sin(k * phase)
        out.append(y / np.abs(y).max() * np.sin(np.pi * u) ** 0.7 * rng.uniform(0.5, 1.0))
        f0 = f0_end
    y = np.concatenate(out)[: round(dur_s * SR)]
    return (0.3 * y / np.abs(y).max()).astype(np.float32)


def placed(total_s: float, *spans: tuple[float, float]) -> np.ndarray:
    wav = np.zeros(round(total_s * SR), dtype=np.float32)
    for k, (s, e) in enumerate(spans):
        wav[round(s * SR) : round(e * SR)] = speech_like(e - s, seed=k)
    return wav


@pytest.fixture(scope="module")
def silero():
    pytest.importorskip("silero_vad")
    from bayling_duplex.eval.vad_baseline import SileroVad

    return SileroVad()


@pytest.fixture(scope="module")
def webrtc():
    pytest.importorskip("webrtcvad")
    from bayling_duplex.eval.vad_baseline import WebrtcVad

    return WebrtcVad()


def speech_edges(hop_s, is_speech):
    idx = np.flatnonzero(is_speech)
    return idx[0] * hop_s, (idx[-1] + 1) * hop_s


@pytest.mark.parametrize("name", ["silero", "webrtc"])
def test_detectors_on_silence_and_hop_counts(name, request):
    det = request.getfixturevalue(name)
    hop_s, is_speech = det.speech(np.zeros(SR * 2 + 100, dtype=np.float32))
    assert hop_s == pytest.approx(0.032 if name == "silero" else 0.03)
    assert is_speech.dtype == bool and len(is_speech) == int(np.ceil((SR * 2 + 100) / (hop_s * SR)))
    assert not is_speech.any()
    assert len(det.speech(np.zeros(0, dtype=np.float32))[1]) == 0


@pytest.mark.parametrize("name", ["silero", "webrtc"])
def test_detectors_find_synthetic_speech(name, request):
    det = request.getfixturevalue(name)
    hop_s, is_speech = det.speech(placed(4.0, (1.0, 2.5)))
    start, end = speech_edges(hop_s, is_speech)
    assert 0.95 <= start <= 1.1 and 2.4 <= end <= 2.75
    assert is_speech[round(1.1 / hop_s) : round(2.4 / hop_s)].mean() > 0.9


def test_silero_ignores_noise_and_tones_webrtc_does_not(silero, webrtc):
    rng = np.random.default_rng(0)
    noise = (0.1 * rng.standard_normal(SR * 2)).astype(np.float32)
    tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(SR * 2) / SR)).astype(np.float32)
    for wav in (noise, tone):
        assert not silero.speech(wav)[1].any()
        assert webrtc.speech(wav)[1].mean() > 0.9


def test_silero_resets_its_state_per_waveform(silero):
    wav = placed(3.0, (0.5, 2.0))
    first = silero.probabilities(wav)
    silero.probabilities(placed(2.0, (0.0, 2.0)))
    assert np.array_equal(silero.probabilities(wav), first)


def test_silero_detects_synthesized_speech(silero):
    pytest.importorskip("espeakng_loader")
    tts = pytest.importorskip("bayling_duplex.audio.tts")
    wav = tts.synthesize("Could you tell me the way to the station, please?", tts.Voice()).wav
    padded = np.concatenate([np.zeros(SR, np.float32), wav, np.zeros(SR, np.float32)])
    hop_s, is_speech = silero.speech(padded)
    start, end = speech_edges(hop_s, is_speech)
    assert 0.9 <= start <= 1.3 and end >= 1.0 + 0.8 * len(wav) / SR
    assert is_speech.mean() > 0.3


# --------------------------------------------------------------------------- end to end


def test_run_vad_baselines_with_webrtc(webrtc):
    fr = L.frame_s
    # hesitation: speech 0.8-2.0 s, a 1.2 s pause, speech 3.2-4.8 s
    hes = EvalItem("h", "hesitation", 100, ((10, 60),), pause=(25, 40), answer_keys=("x",))
    # interruption: speech 0.8-2.4 s, answered ~0.5 s later; the user cuts in at 4.0 s
    inter = EvalItem("i", "interruption", 100, ((10, 30), (50, 70)))
    items = [
        (hes, placed(8.0, (10 * fr, 25 * fr), (40 * fr, 60 * fr))),
        (inter, placed(8.0, (10 * fr, 30 * fr), (50 * fr, 70 * fr))),
    ]
    res = run_vad_baselines(items, L, [[3.0], [3.0]], detectors=("webrtc",))
    assert set(res) == {"webrtc-500ms", "webrtc-800ms"}
    for name, r in res.items():
        o_hes, o_int = r["outcomes"]
        assert o_hes.false_ends == 1 and o_hes.taken == "early" and o_hes.correct is None
        assert o_int.speaking_at_interruption and o_int.interrupted_ok
        assert 0.15 <= o_int.overlap_s <= 0.3  # barge_in_s plus the VAD's onset lag
        th = 0.5 if name.endswith("500ms") else 0.8
        onset = o_int.extra["responses"][0][0]
        assert th - 0.05 <= onset - 30 * fr <= th + 0.2  # the VAD's hangover adds ~0.1 s
        s = r["summary"]
        assert s["hesitation_false_ends"] == {"total": 1, "per_dialogue": 1.0, "n": 1}
        assert s["answer_accuracy"] is None and s["interruption"]["ISR@2s"] == 1.0
        assert s["denominators"]["hesitation_false_ends"]["n"] == 1
