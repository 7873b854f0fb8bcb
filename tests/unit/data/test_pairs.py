"""Preference pairs: hand-built pairs with exact ids and masks, each perturbation, bad pairs."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from bayling_duplex.data.pairs import (
    PERTURBATIONS,
    DecisionPoint,
    PairConfig,
    PerturbationMix,
    PreferencePair,
    check_pair,
    decision_points,
    make_pair,
    pair_from_script,
    render_pair,
)
from bayling_duplex.format.interleave import FormatSpec
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordError, Response, Timeline, UserSegment
from bayling_duplex.format.vocab import DuplexVocab

# A small layout keeps the grids readable: B=4 frames, T=2 slots, 10 tokens per block.
LAYOUT = BlockLayout(frames_per_block=4, slots_per_block=2)
SPEC = FormatSpec(LAYOUT, (0,))
VOCAB = DuplexVocab(
    silence_id=50,
    speak_id=51,
    pad_id=52,
    epad_id=53,
    audio_start_id=100,
    num_audio=40,
    vocab_size=140,
)
S, A, P, E = 50, 51, 52, 53  # [SILENCE] <|assistant|> [PAD] [EPAD]
U = 7  # user speech code (audio id 107)


def audio(*codes: int) -> list[int]:
    return [100 + c for c in codes]


def user(num_frames: int, spans: list[tuple[int, int]]) -> tuple[int, ...]:
    codes = [0] * num_frames
    for s, e in spans:
        codes[s:e] = [U] * (e - s)
    return tuple(codes)


def config(**kw) -> PairConfig:
    return PairConfig(window_blocks=kw.pop("window_blocks", 2), **kw)


def x_rows(ids: np.ndarray) -> list[list[int]]:
    """The text slots of each block of a window."""
    return [ids[k * 10 + 4 : k * 10 + 6].tolist() for k in range(len(ids) // 10)]


# One question on [1, 6); the answer "a b" (ids 10, 11) speaks code 9 on [8, 12).
TURN = Timeline(
    id="t",
    num_frames=16,
    user_codes=user(16, [(1, 6)]),
    user_segments=(UserSegment(1, 6),),
    responses=(Response(8, 12, "a b", (9,) * 4),),
)


def test_late_start_pair_has_exact_ids_and_masks():
    point = DecisionPoint("late_start", 0, 6)
    pair = make_pair(TURN, [[10, 11]], [(9,) * 4], point, 1, SPEC, VOCAB, config(score="all"))
    assert pair.decision_block == 1 and pair.shift_blocks == 1
    # block 0: U_0 = frames 0-3, X_0 silent, A_0 = frames 4-7 silent
    assert pair.prompt_ids.tolist() == [*audio(0, U, U, U), S, S, *audio(0, 0, 0, 0)]
    assert pair.chosen_ids.tolist() == [
        *audio(U, U, 0, 0), A, 10, *audio(9, 9, 9, 9),  # block 1: starts at once
        *audio(0, 0, 0, 0), 11, E, *audio(0, 0, 0, 0),  # block 2
    ]  # fmt: skip
    assert pair.rejected_ids.tolist() == [
        *audio(U, U, 0, 0), S, S, *audio(0, 0, 0, 0),  # block 1: still silent
        *audio(0, 0, 0, 0), A, 10, *audio(9, 9, 9, 9),  # block 2: one block late
    ]  # fmt: skip
    scored = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1] * 2  # user audio never, text + assistant audio
    assert pair.chosen_mask.tolist() == scored
    assert pair.rejected_mask.tolist() == scored


@pytest.mark.parametrize(
    ("score", "chosen", "rejected"),
    [
        # timing (default): only [SILENCE] <|assistant|> [PAD] [EPAD] count, not the answer
        ("timing", [[1, 0], [0, 1]], [[1, 1], [1, 0]]),
        ("text", [[1, 1], [1, 1]], [[1, 1], [1, 1]]),
    ],
)
def test_masks_by_score(score, chosen, rejected):
    point = DecisionPoint("late_start", 0, 6)
    pair = make_pair(TURN, [[10, 11]], [(9,) * 4], point, 1, SPEC, VOCAB, config(score=score))

    def mask(slots):  # user audio and assistant audio are 0 in both
        return [v for x in slots for v in (0, 0, 0, 0, *x, 0, 0, 0, 0)]

    assert pair.chosen_mask.tolist() == mask(chosen)
    assert pair.rejected_mask.tolist() == mask(rejected)


def test_early_start_speaks_into_the_turn():
    long_turn = Timeline(
        "e", 24, user(24, [(1, 14)]), (UserSegment(1, 14),), (Response(16, 20, "a", (9,) * 4),)
    )
    pair = make_pair(
        long_turn, [[10]], [(9,) * 4], DecisionPoint("early_start", 0, 14), 2, SPEC, VOCAB, config()
    )
    # the answer starts at 16 (block 3); two blocks early is frame 8, decided in block 1
    assert pair.decision_block == 1
    assert x_rows(pair.chosen_ids) == [[S, S], [S, S]]
    assert x_rows(pair.rejected_ids) == [[A, 10], [E, S]]
    # never before the turn began, frame B, or the previous [EPAD]
    with pytest.raises(RecordError) as err:
        make_pair(
            long_turn,
            [[10]],
            [(9,) * 4],
            DecisionPoint("early_start", 0, 14),
            4,
            SPEC,
            VOCAB,
            config(),
        )
    assert err.value.reason == "perturbation_impossible"


def interrupted(full: tuple[int, ...]) -> Timeline:
    """Answer 0 (speech ``full``) is cut at frame 12 by a turn at 9; answer 1 starts at 24."""
    return Timeline(
        "i",
        32,
        user(32, [(1, 6), (9, 21)]),
        (UserSegment(1, 6), UserSegment(9, 21)),
        (Response(8, 12, "a b c", full[:4], True), Response(24, 28, "d", (5,) * 4)),
    )


def test_late_stop_plays_the_uncut_answer_into_the_interruption():
    full = (11, 12, 13, 14, 15, 16, 17, 18, 19, 20)
    t = interrupted(full)
    point = decision_points(t, "late_stop", SPEC)[0]
    assert point == DecisionPoint("late_stop", 0, 9)
    pair = make_pair(t, [[10, 11, 12], [13]], [full, (5,) * 4], point, 1, SPEC, VOCAB, config())
    assert pair.decision_block == 2  # the interruption is heard in user block 2
    assert x_rows(pair.chosen_ids) == [[E, S], [S, S]]
    assert x_rows(pair.rejected_ids) == [[11, 12], [E, S]]  # text goes on, [EPAD] a block later
    # the extra block of speech is the answer's continuation, not a repeat
    assert pair.rejected_ids[6:10].tolist() == audio(15, 16, 17, 18)
    assert pair.chosen_ids[6:10].tolist() == audio(0, 0, 0, 0)


def test_late_stop_needs_the_uncut_speech():
    t = interrupted((11, 12, 13, 14))
    point = decision_points(t, "late_stop", SPEC)[0]
    with pytest.raises(RecordError) as err:
        make_pair(
            t,
            [[10, 11, 12], [13]],
            [t.responses[0].codes, (5,) * 4],
            point,
            1,
            SPEC,
            VOCAB,
            config(),
        )
    assert err.value.reason == "no_uncut_codes"


def test_backchannel_stop_cuts_the_answer_at_the_backchannel():
    t = Timeline(
        "b",
        28,
        user(28, [(1, 6), (10, 12)]),
        (UserSegment(1, 6), UserSegment(10, 12, "backchannel")),
        (Response(8, 20, "a b c d", (9,) * 12),),
    )
    (point,) = decision_points(t, "backchannel_stop", SPEC)
    pair = make_pair(t, [[10, 11, 12, 13]], [(9,) * 12], point, 1, SPEC, VOCAB, config())
    assert pair.decision_block == 2  # the backchannel is heard in user block 2
    assert x_rows(pair.chosen_ids) == [[11, 12], [13, P]]  # text, then [PAD] while speech plays
    assert x_rows(pair.rejected_ids) == [[E, S], [S, S]]


def test_hesitation_start_starts_in_the_pause():
    # a turn on [1, 18) with a pause on [6, 13); the answer starts at 20
    codes = user(32, [(1, 6), (13, 18)])
    t = Timeline("h", 32, codes, (UserSegment(1, 18),), (Response(20, 24, "a", (9,) * 4),))
    (point,) = decision_points(t, "hesitation_start", SPEC, min_pause_s=0.4)
    assert (point.frame, point.end_frame) == (6, 13)
    pair = make_pair(t, [[10]], [(9,) * 4], point, 1, SPEC, VOCAB, config())
    # the turn-taking rule at the pause would start at frame 8 (block 1)
    assert pair.decision_block == 1 and pair.shift_blocks == 3
    assert x_rows(pair.rejected_ids)[0] == [A, 10]
    assert x_rows(pair.chosen_ids) == [[S, S], [S, S]]


def test_no_turn_end_point_before_the_first_block():
    # the answer starts at frame B: the decision is in block 0 and there is no prompt
    t = Timeline(
        "z", 12, user(12, [(0, 3)]), (UserSegment(0, 3),), (Response(4, 8, "a", (9,) * 4),)
    )
    with pytest.raises(RecordError) as err:
        make_pair(
            t, [[10]], [(9,) * 4], DecisionPoint("late_start", 0, 3), 1, SPEC, VOCAB, config()
        )
    assert err.value.reason == "empty_prompt"


def hand_pair(**kw) -> PreferencePair:
    good = make_pair(
        TURN, [[10, 11]], [(9,) * 4], DecisionPoint("late_start", 0, 6), 1, SPEC, VOCAB, config()
    )
    fields = {f: getattr(good, f) for f in good.__dataclass_fields__}
    return PreferencePair(**{**fields, **kw})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"rejected_ids": None}, "identical"),
        ({"prompt_ids": np.arange(7)}, "prompt_not_block_aligned"),
        ({"prompt_ids": np.zeros(0, dtype=np.int64)}, "empty_prompt"),
        ({"chosen_mask": np.ones(20, dtype=np.int8)}, "user_audio_scored"),
        (
            {"chosen_mask": np.zeros(20, dtype=np.int8), "rejected_mask": np.zeros(20, np.int8)},
            "nothing_scored",
        ),
        ({"chosen_mask": np.ones(19, dtype=np.int8)}, "mask_length"),
        ({"rejected_ids": np.arange(15)}, "window_not_whole_blocks"),
    ],
)
def test_bad_pairs_are_rejected_with_their_reason(change, reason):
    if change.get("rejected_ids", 0) is None:
        change = {"rejected_ids": hand_pair().chosen_ids.copy()}
    with pytest.raises(RecordError) as err:
        check_pair(hand_pair(**change), LAYOUT)
    assert err.value.reason == reason


def test_user_audio_must_be_the_same_on_both_sides():
    bad = hand_pair().rejected_ids.copy()
    bad[0] += 1  # the first user frame of the window
    with pytest.raises(RecordError) as err:
        check_pair(hand_pair(rejected_ids=bad), LAYOUT)
    assert err.value.reason == "user_audio_differs"


@pytest.mark.parametrize(
    "bad",
    [
        {"window_blocks": 0},
        {"shift_blocks": [0, 2]},
        {"shift_blocks": [3, 1]},
        {"min_pause_s": 0},
        {"score": "audio"},
    ],
)
def test_pair_config_is_validated(bad):
    with pytest.raises(ValueError):
        PairConfig(**bad)
    with pytest.raises(ValueError, match="mix weights"):
        PerturbationMix(0, 0, 0, 0, 0)


def test_demo_pairs_hold_the_invariants(tiny_backbone):
    """Pairs made from demo scripts: every kind occurs, each passes the checks, masks hold timing."""
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import backchannel_clips, demo_script
    from bayling_duplex.data.synthesis import SynthesisConfig, record_rng
    from bayling_duplex.format.render import tokenizer_token_text

    _, tok, vocab = tiny_backbone
    spec = FormatSpec(BlockLayout(), (0,))
    codec, cfg = ToyCodec(256), PairConfig()
    kinds, reasons, last = Counter(), Counter(), None
    for i in range(150):
        script = demo_script("train", i, 0, codec)
        ids = tok([t.assistant_text for t in script.turns], add_special_tokens=False)["input_ids"]
        rng = record_rng(cfg.seed, script.id, "pairs")
        pair, errs = pair_from_script(
            script, ids, cfg, SynthesisConfig(), spec, vocab, rng, backchannel_clips(codec)
        )
        reasons.update(e.reason for e in errs)
        if pair is None:
            continue
        check_pair(pair, spec.layout)
        kinds[pair.kind] += 1
        last = pair
        for ids, mask in (
            (pair.chosen_ids, pair.chosen_mask),
            (pair.rejected_ids, pair.rejected_mask),
        ):
            assert set(ids[mask == 1].tolist()) <= set(vocab.control_ids)  # timing tokens only
        assert len(pair.chosen_ids) == cfg.window_blocks * spec.layout.block_len
    assert set(kinds) == set(PERTURBATIONS), kinds
    assert sum(kinds.values()) >= 130, (kinds, reasons)
    assert "prompt_differs" not in reasons
    # the picture of a pair shows both sides' text channel
    text = render_pair(last, spec.layout, tokenizer_token_text(tok, vocab))
    assert "chosen X_k" in text and "rejected X_k" in text


def test_the_same_record_gives_the_same_pair(tiny_backbone):
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import demo_script
    from bayling_duplex.data.synthesis import SynthesisConfig

    _, tok, vocab = tiny_backbone
    script = demo_script("train", 3, 0, ToyCodec(256))
    ids = tok([t.assistant_text for t in script.turns], add_special_tokens=False)["input_ids"]
    spec = FormatSpec(BlockLayout(), (0,))
    a, _ = pair_from_script(
        script, ids, PairConfig(), SynthesisConfig(), spec, vocab, random.Random(5)
    )
    b, _ = pair_from_script(
        script, ids, PairConfig(), SynthesisConfig(), spec, vocab, random.Random(5)
    )
    assert a is not None and a.id == b.id
    assert np.array_equal(a.rejected_ids, b.rejected_ids)
