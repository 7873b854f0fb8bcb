"""The interleaver against hand-built grids (format §7 and edge cases) and its checks."""

from __future__ import annotations

import numpy as np
import pytest

from bayling_duplex.format.interleave import (
    FormatSpec,
    TokenClass,
    check_sequence,
    interleave,
    response_events,
    split_channels,
)
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordError, Response, Timeline, UserSegment
from bayling_duplex.format.render import render_grid

# Text ids stand for whole words in these grids (one id per word, as the format
# document draws them). They lie in the tiny tokenizer's text range.
WORDS = {"The": 100, "time": 101, "is": 102, "9": 103, "PM.": 104, "a": 105, "b": 106, "c": 107}
SIL = 0  # silence code
SPEECH = 7  # every speech frame in these grids


@pytest.fixture(scope="module")
def vocab(tiny_backbone):
    return tiny_backbone[2]


def words(text: str) -> list[int]:
    return [WORDS[w] for w in text.split()]


def show(vocab):
    names = {
        vocab.silence_id: "[SILENCE]",
        vocab.speak_id: "<|assistant|>",
        vocab.pad_id: "[PAD]",
        vocab.epad_id: "[EPAD]",
    }
    inv = {v: k for k, v in WORDS.items()}
    return lambda t: names.get(t, inv.get(t, f"?{t}"))


def user_channel(num_frames: int, segments: list[tuple[int, int]]) -> tuple[int, ...]:
    codes = [SIL] * num_frames
    for s, e in segments:
        codes[s:e] = [SPEECH] * (e - s)
    return tuple(codes)


def response(s: int, e: int, text: str, interrupted: bool = False) -> Response:
    return Response(s, e, text, (SPEECH,) * (e - s), interrupted)


def x_rows(seq, layout, vocab) -> list[str]:
    T = layout.slots_per_block
    slots = split_channels(seq.input_ids, layout, vocab).text_slots
    f = show(vocab)
    return [" ".join(f(int(t)) for t in slots[k * T : (k + 1) * T]) for k in range(seq.num_blocks)]


def build(t: Timeline, texts: list[str], layout: BlockLayout, vocab):
    seq = interleave(t, [words(x) for x in texts], FormatSpec(layout, (SIL,)), vocab)
    check_sequence(seq, layout, vocab)
    return seq


WORKED = Timeline(
    id="worked-example",
    num_frames=70,
    user_codes=user_channel(70, [(2, 19), (37, 49)]),
    user_segments=(
        UserSegment(2, 19, "turn", "Hi, what time is it?"),
        UserSegment(37, 49, "turn", "Wait, Beijing time!"),
    ),
    responses=(response(20, 40, "The time is 9 PM.", True), response(50, 68, "9 PM.")),
)
L2 = BlockLayout(10, 2)


def test_worked_example_grid(vocab):
    """Format §7, exactly."""
    seq = build(WORKED, ["The time is 9 PM.", "9 PM."], L2, vocab)
    assert seq.num_blocks == 7
    assert x_rows(seq, L2, vocab) == [
        "[SILENCE] [SILENCE]",
        "<|assistant|> The",
        "time is",
        "[EPAD] [SILENCE]",
        "<|assistant|> 9",
        "PM. [EPAD]",
        "[SILENCE] [SILENCE]",
    ]
    grid = render_grid(seq, L2, vocab, show(vocab), WORKED)
    assert "| 3 | [30,40) turn 2 starts at 37 | [EPAD] [SILENCE] | [40,50) silence |" in grid
    assert "| 5 | [50,60) silence | PM. [EPAD] | [60,70) response 2 ends at 68 |" in grid


def test_worked_example_audio_and_labels(vocab):
    seq = build(WORKED, ["The time is 9 PM.", "9 PM."], L2, vocab)
    ch = split_channels(seq.input_ids, L2, vocab)
    assert ch.user_codes.tolist() == list(WORKED.user_codes)
    # assistant frames [10, 80): speech on [20,40) and [50,68)
    expect = [SIL] * 70
    expect[10:30] = [SPEECH] * 20
    expect[40:58] = [SPEECH] * 18
    assert ch.assistant_codes.tolist() == expect
    labels = seq.labels.reshape(7, 22)
    assert (labels[:, :10] == -100).all() and (labels[:, 10:] >= 0).all()
    cls = seq.classes.reshape(7, 22)
    assert cls[1, 10] == TokenClass.CONTROL and cls[1, 11] == TokenClass.TEXT
    assert cls[0, 12:].tolist() == [TokenClass.SILENT_AUDIO] * 10
    assert cls[1, 12:].tolist() == [TokenClass.SPEECH] * 10


def test_inverse_events_of_worked_example(vocab):
    seq = build(WORKED, ["The time is 9 PM.", "9 PM."], L2, vocab)
    ev = response_events(split_channels(seq.input_ids, L2, vocab).text_slots, vocab)
    assert [(e.speak_slot, e.epad_slot, e.text_ids) for e in ev] == [
        (2, 6, tuple(words("The time is"))),
        (8, 11, tuple(words("9 PM."))),
    ]


L5 = BlockLayout(10, 5)


def test_interruption_at_block_boundary(vocab):
    # answer [10, 40); user interrupts at 30 (first frame of block 3) -> heard in block 3,
    # cut where the next output block begins: e' = 40 = e, so nothing is cut
    t = Timeline(
        "b",
        50,
        user_channel(50, [(0, 9), (30, 45)]),
        (UserSegment(0, 9), UserSegment(30, 45)),
        (response(10, 40, "a b c", True),),
    )
    seq = build(t, ["a b c"], L5, vocab)
    # speak at slot 0, 3 words, [PAD] until the slot of frame 40 = (k=3, j=0) = 15
    rows = x_rows(seq, L5, vocab)
    assert rows[0] == "<|assistant|> a b c [PAD]"
    assert rows[1] == rows[2] == " ".join(["[PAD]"] * 5)
    assert rows[3] == "[EPAD] [SILENCE] [SILENCE] [SILENCE] [SILENCE]"


def test_response_shorter_than_a_slot(vocab):
    # speech on [20, 21): the [EPAD] slot equals the <|assistant|> slot; it moves on
    t = Timeline(
        "s", 30, user_channel(30, [(0, 5)]), (UserSegment(0, 5),), (response(20, 21, "a", True),)
    )
    seq = build(t, ["a"], L5, vocab)
    assert x_rows(seq, L5, vocab)[1] == "<|assistant|> [EPAD] [SILENCE] [SILENCE] [SILENCE]"
    t2 = Timeline(
        "s2", 30, user_channel(30, [(0, 5)]), (UserSegment(0, 5),), (response(20, 21, "a"),)
    )
    seq2 = build(t2, ["a"], L5, vocab)
    assert x_rows(seq2, L5, vocab)[1] == "<|assistant|> a [EPAD] [SILENCE] [SILENCE]"


def test_text_longer_than_speech_is_never_lost(vocab):
    # 2 frames of speech (one slot), 3 words: [EPAD] goes right after the last word,
    # crossing into the next block
    t = Timeline(
        "l", 20, user_channel(20, [(0, 5)]), (UserSegment(0, 5),), (response(16, 18, "a b c"),)
    )
    seq = build(t, ["a b c"], L5, vocab)
    rows = x_rows(seq, L5, vocab)
    assert rows[0] == "[SILENCE] [SILENCE] [SILENCE] <|assistant|> a"
    assert rows[1] == "b c [EPAD] [SILENCE] [SILENCE]"
    assert seq.num_blocks == 2


def test_text_cut_by_interruption(vocab):
    # speech [10, 16) is cut at 16 (slot 3): only the words in slots 1-2 are kept
    t = Timeline(
        "c",
        30,
        user_channel(30, [(0, 9), (14, 25)]),
        (UserSegment(0, 9), UserSegment(14, 25)),
        (response(10, 16, "a b c", True),),
    )
    seq = build(t, ["a b c"], L5, vocab)
    assert x_rows(seq, L5, vocab)[0] == "<|assistant|> a b [EPAD] [SILENCE]"
    assert seq.placements[0].kept_text == tuple(words("a b"))


def test_back_to_back_responses(vocab):
    # first [EPAD] at slot of frame 14 (=2); next starts at frame 16 (slot 3): allowed
    t = Timeline(
        "bb",
        30,
        user_channel(30, [(0, 9)]),
        (UserSegment(0, 9),),
        (response(10, 14, "a"), response(16, 20, "b")),
    )
    seq = build(t, ["a", "b"], L5, vocab)
    assert x_rows(seq, L5, vocab)[0] == "<|assistant|> a [EPAD] <|assistant|> b"
    assert x_rows(seq, L5, vocab)[1] == "[EPAD] [SILENCE] [SILENCE] [SILENCE] [SILENCE]"
    # starting in the [EPAD] slot itself collides and is rejected, not shifted
    bad = Timeline(
        "bb2",
        30,
        user_channel(30, [(0, 9)]),
        (UserSegment(0, 9),),
        (response(10, 14, "a"), response(14, 20, "b")),
    )
    with pytest.raises(RecordError) as e:
        build(bad, ["a", "b"], L5, vocab)
    assert e.value.reason == "slot_collision" and e.value.record_id == "bb2"


def test_backchannel_does_not_cut(vocab):
    t = Timeline(
        "bc",
        40,
        user_channel(40, [(0, 9), (20, 23)]),
        (UserSegment(0, 9), UserSegment(20, 23, "backchannel", "uh-huh")),
        (response(10, 30, "a b"),),
    )
    seq = build(t, ["a b"], L5, vocab)
    rows = x_rows(seq, L5, vocab)
    assert rows[0] == "<|assistant|> a b [PAD] [PAD]"
    assert rows[1] == "[PAD] [PAD] [PAD] [PAD] [PAD]"
    assert rows[2].startswith("[EPAD]")


def test_hesitation_pause_gets_silence(vocab):
    # turn [0, 25) with a pause [8, 16) inside: no response before the turn ends
    codes = list(user_channel(40, [(0, 8), (16, 25)]))
    t = Timeline("h", 40, tuple(codes), (UserSegment(0, 25),), (response(30, 36, "a"),))
    seq = build(t, ["a"], L5, vocab)
    rows = x_rows(seq, L5, vocab)
    assert rows[0] == rows[1] == " ".join(["[SILENCE]"] * 5)
    assert rows[2] == "<|assistant|> a [PAD] [EPAD] [SILENCE]"


def test_silence_pattern_follows_frame_index(vocab):
    spec = FormatSpec(L5, (3, 4))
    t = Timeline("p", 12, (3, 4) * 6, (), (response(10, 12, "a"),))
    seq = interleave(t, [words("a")], spec, vocab)
    ch = split_channels(seq.input_ids, L5, vocab)
    assert ch.user_codes.tolist()[:12] == [3, 4] * 6
    assert ch.user_codes.tolist()[12:] == [3, 4] * 4  # padded to K·B = 20 frames, pattern[f % 2]
    assert ch.assistant_codes.tolist()[2:] == [3, 4] * 9  # assistant frames 12.. are silent


@pytest.mark.parametrize(
    ("timeline", "texts", "reason"),
    [
        (Timeline("r1", 10, (0,) * 9, (), ()), [], "code_count"),
        (Timeline("r2", 20, (0,) * 19 + (99999,), (), ()), [], "code_out_of_range"),
        (
            Timeline("r3", 20, (0,) * 20, (), (response(5, 12, "a"),)),
            ["a"],
            "response_in_first_block",
        ),
        (Timeline("r4", 20, (0,) * 20, (), (Response(12, 15, "a", (1, 2)),)), ["a"], "code_count"),
        (Timeline("r5", 20, (0,) * 20, (), (response(12, 12, "a"),)), ["a"], "empty_speech"),
        (Timeline("r6", 20, (0,) * 20, (), (response(12, 15, ""),)), [""], "empty_text"),
        (
            Timeline("r7", 40, (0,) * 40, (), (response(20, 30, "a"), response(25, 35, "b"))),
            ["a", "b"],
            "response_order",
        ),
        (
            Timeline("r8", 20, (0,) * 20, (UserSegment(5, 9), UserSegment(8, 12)), ()),
            [],
            "segment_order",
        ),
        (Timeline("r9", 20, (0,) * 20, (UserSegment(9, 9),), ()), [], "empty_speech"),
        (Timeline("r10", 20, (0,) * 20, (UserSegment(9, 25),), ()), [], "segment_order"),
        (Timeline("r11", 0, (), (), ()), [], "empty_speech"),
    ],
)
def test_bad_timelines_are_rejected_with_reason(vocab, timeline, texts, reason):
    ids = [words(x) if x else [] for x in texts]
    with pytest.raises(RecordError) as e:
        interleave(timeline, ids, FormatSpec(L5, (0,)), vocab)
    assert e.value.reason == reason
    assert e.value.record_id == timeline.id


def test_sequence_checker_catches_breaches(vocab):
    seq = build(WORKED, ["The time is 9 PM.", "9 PM."], L2, vocab)
    broken = seq.input_ids.copy()
    broken[10] = vocab.audio_start_id  # audio id in a text slot
    from bayling_duplex.format.interleave import DuplexSequence

    with pytest.raises(ValueError, match="text slot"):
        check_sequence(DuplexSequence(broken, seq.classes, seq.num_blocks), L2, vocab)
    broken = seq.input_ids.copy()
    broken[np.where(broken == vocab.epad_id)[0][0]] = vocab.silence_id
    with pytest.raises(ValueError):
        check_sequence(DuplexSequence(broken, seq.classes, seq.num_blocks), L2, vocab)
