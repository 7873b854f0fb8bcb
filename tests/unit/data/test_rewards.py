"""Behaviour rewards: exact values on hand-made timelines, and the reference scoring 0."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bayling_duplex.data.build import _meta_json
from bayling_duplex.data.rewards import Reference, RewardWeights, window_reward, window_times
from bayling_duplex.format.interleave import FormatSpec, interleave, split_channels
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import Response, Timeline, UserSegment
from bayling_duplex.format.vocab import DuplexVocab

# B=4 frames, T=2 slots, 80 ms frames: a block is 0.32 s; slot j of block k starts at
# ((k+1)·4 + 2j)·0.08 s, so slot 2 (block 1) at 0.64 s, slot 4 at 0.96 s, slot 6 at 1.28 s.
LAYOUT = BlockLayout(frames_per_block=4, slots_per_block=2)
VOCAB = DuplexVocab(
    silence_id=50, speak_id=51, pad_id=52, epad_id=53, audio_start_id=100, num_audio=40,
    vocab_size=140,
)  # fmt: skip
S, A, P, E = 50, 51, 52, 53
W = RewardWeights()


def score(ref, prompt, window, d, words=()):
    return window_reward(ref, prompt, window, d, VOCAB, LAYOUT, W, words)


# a question on frames [0, 8) (ends at 0.64 s); the reference answers in slot 2 (0.64 s)
TURN = Reference(((0, 8, "turn"),), ((2, 8, False),))


def test_window_times_reads_starts_stops_and_words():
    open0, starts, stops, words = window_times([S, A], [10, E, S, A], 1, VOCAB, LAYOUT)
    assert open0 and starts == [pytest.approx(1.12)] and stops == [pytest.approx(0.8)]
    assert words == [10]


@pytest.mark.parametrize(
    ("window", "onset", "text", "total"),
    [
        ([A, 10, 11, P], 0.0, 0.0, 0.0),  # the reference itself
        ([S, S, A, 10], -0.32, -0.5, -0.32 - 0.2 * 0.5),  # one block late, half the words
        ([S, S, S, S], -(1.28 - 0.64) - 0.5, -1.0, -1.14 - 0.2),  # no start: censored
    ],
)
def test_onset_reward_is_the_delay_past_the_reference_start(window, onset, text, total):
    r = score(TURN, [S, S], window, 1, words=[10, 11])
    assert r.components["onset"] == pytest.approx(onset)
    assert r.components["text"] == pytest.approx(text)
    assert r.total == pytest.approx(total)
    assert r.components["false_start"] == 0 and r.components["early_stop"] == 0


def test_a_start_inside_the_users_turn_is_a_false_start_and_the_onset_still_counts():
    # the user speaks on [0, 12) (a pause inside it is still the turn); the reference starts
    # at slot 4 (0.96 s); starting at slot 2 (0.64 s) is inside the turn
    ref = Reference(((0, 12, "turn"),), ((4, 9, False),))
    r = score(ref, [S, S], [A, 10, 11, 12], 1, words=[10])
    assert r.components["false_start"] == -1.0
    # the early response is still open at the reference start: no start after the turn's end
    assert r.components["onset"] == pytest.approx(-(1.28 - 0.96) - 0.5)
    assert r.components["text"] == 0.0
    assert r.total == pytest.approx(-1.0 - 0.82)
    assert score(ref, [S, S], [S, S, A, 10], 1, words=[10]).total == 0.0


# an answer from slot 2, interrupted by a user turn at frame 14 (1.12 s); the format cuts
# it at frame 16, its [EPAD] in slot 6 (1.28 s)
INTERRUPTED = Reference(((0, 8, "turn"), (14, 20, "turn")), ((2, 6, True),))
PLAYING = [S, S, A, 10, 11, 12]  # blocks 0-2: the answer is open


@pytest.mark.parametrize(
    ("window", "stop"),
    [
        ([E, S, S, S], 0.0),  # stops where the reference does
        ([13, E, S, S], -(1.44 - 1.28)),  # one slot later
        ([13, 14, 15, 16], -(1.92 - 1.28) - 0.5),  # never in the window: censored
    ],
)
def test_stop_reward_is_the_delay_past_the_reference_cut(window, stop):
    r = score(INTERRUPTED, PLAYING, window, 3)
    assert r.components["stop"] == pytest.approx(stop)
    assert r.components["early_stop"] == 0.0
    assert r.total == pytest.approx(stop)


def test_stopping_at_a_backchannel_is_an_early_stop():
    # the answer runs to slot 10 (1.92 s); a backchannel on frames [14, 16)
    ref = Reference(((0, 8, "turn"), (14, 16, "backchannel")), ((2, 10, False),))
    cut = score(ref, PLAYING, [E, S, S, S], 3)
    assert cut.components["early_stop"] == -1.0 and cut.total == -1.0
    assert "early_stop (backchannel)" in cut.events
    kept = score(ref, PLAYING, [13, 14, 15, 16], 3)
    assert kept.total == 0.0 and kept.components["stop"] == 0.0


def test_weights_scale_components_and_refuse_negatives():
    ref = Reference(((0, 12, "turn"),), ((4, 9, False),))
    w = RewardWeights(false_start=3.0, onset=0.0, text=0.0)
    r = window_reward(ref, [S, S], [A, 10, 11, 12], 1, VOCAB, LAYOUT, w)
    assert r.total == pytest.approx(-3.0)
    with pytest.raises(ValueError, match="rewards"):
        RewardWeights(stop=-1.0)


def _timeline():
    """Two turns, the second interrupting the answer to the first, and a backchannel."""
    codes = [0] * 40
    for s, e in ((1, 6), (22, 27), (14, 16)):
        codes[s:e] = [7] * (e - s)
    return Timeline(
        "x",
        40,
        tuple(codes),
        (UserSegment(1, 6), UserSegment(14, 16, "backchannel"), UserSegment(22, 27)),
        (Response(8, 24, "a b c d", (9,) * 16, True), Response(28, 36, "e f", (9,) * 8)),
    )


def test_the_reference_scores_zero_in_every_window():
    t = _timeline()
    spec = FormatSpec(LAYOUT, (0,))
    seq = interleave(t, [[10, 11, 12, 13], [14, 15]], spec, VOCAB)
    slots = split_channels(seq.input_ids, LAYOUT, VOCAB).text_slots
    ref = Reference.from_row(json.loads(_meta_json(t)), slots, VOCAB)
    assert ref.responses[0][2] and not ref.responses[1][2]
    T = LAYOUT.slots_per_block
    judged = set()
    for d in range(1, seq.num_blocks - 2):
        window = slots[d * T : (d + 2) * T]
        words = window_times(slots[: d * T], window, d, VOCAB, LAYOUT)[3]
        r = score(ref, slots[: d * T], window, d, words)
        assert r.total == 0.0, (d, r)
        judged.update(e.split("@")[0] for e in r.events)
    assert {"onset", "stop"} <= judged  # the windows did judge something


def test_reference_refuses_meta_that_disagrees_with_the_text_channel():
    with pytest.raises(ValueError, match="responses"):
        Reference.from_row({"user_segments": [], "responses": [[8, 12, 0]]}, np.full(8, S), VOCAB)
