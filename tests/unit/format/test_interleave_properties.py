"""Property tests of the interleaver over random valid timelines (format §3–§5, §9).

Timelines come from two sources: synthesis of random scripts (every scenario),
and direct construction of random records that respect the §9 rules. Each is
interleaved for ``10:5:10``, ``10:2:10`` and ``10:3:10`` (where ``T`` does not
divide ``B``) and checked against an oracle that places the text channel by
simulating the §4 rules slot by slot.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from bayling_duplex.data.synthesis import SCENARIOS, ScenarioMix, SynthesisConfig, synthesize
from bayling_duplex.format.interleave import (
    IGNORE_INDEX,
    FormatSpec,
    check_sequence,
    interleave,
    response_events,
    split_channels,
)
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import (
    RecordError,
    Response,
    Script,
    ScriptTurn,
    Timeline,
    UserSegment,
)
from bayling_duplex.format.vocab import text_row_count

LAYOUTS = [BlockLayout(10, 5), BlockLayout(10, 2), BlockLayout(10, 3)]
PROPS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def vocab(tiny_backbone):
    return tiny_backbone[2]


@pytest.fixture(scope="module")
def n_text(tiny_backbone):
    """Ids ``[0, n_text)`` are plain text tokens (below every special)."""
    return text_row_count(tiny_backbone[1])


# --------------------------------------------------------------------------- the oracle


def slot_of(f: int, layout: BlockLayout) -> int:
    """Format §4, written out: output block ``f // B - 1``, slot ``((f % B)·T) // B``."""
    B, T = layout.frames_per_block, layout.slots_per_block
    assert f >= B
    return (f // B - 1) * T + ((f % B) * T) // B


def expected_placement(r: Response, n_words: int, layout: BlockLayout) -> tuple[int, int, int]:
    """``(speak slot, [EPAD] slot, words kept)`` by filling slots one at a time (§4)."""
    a, p = slot_of(r.start_frame, layout), slot_of(r.end_frame, layout)
    last, kept = a, 0  # last slot taken, words placed
    for _ in range(n_words):
        if r.interrupted and last + 1 >= p:
            break  # would land in the [EPAD] slot or later: dropped
        last, kept = last + 1, kept + 1
    # [EPAD] in the slot of e, or (taken) the next free slot after the last kept token
    return a, max(p, last + 1), kept


def check_properties(t: Timeline, ids: list[list[int]], spec: FormatSpec, vocab) -> None:
    layout = spec.layout
    B, T, W = layout.frames_per_block, layout.slots_per_block, layout.block_len
    seq = interleave(t, ids, spec, vocab)
    check_sequence(seq, layout, vocab)

    expected = [
        expected_placement(r, len(x), layout) for r, x in zip(t.responses, ids, strict=True)
    ]
    K = max([-(-t.num_frames // B), 1] + [epad // T + 1 for _, epad, _ in expected])
    L = K * W
    assert seq.num_blocks == K
    assert len(seq.input_ids) == len(seq.classes) == len(seq.labels) == L == layout.seq_len(K)

    pos = np.arange(L) % W
    user_pos, text_pos = pos < B, (pos >= B) & (pos < B + T)
    assert np.array_equal(seq.labels == IGNORE_INDEX, user_pos)  # user audio, exactly
    audio = (seq.input_ids >= vocab.audio_start_id) & (seq.input_ids < vocab.audio_end_id)
    assert not audio[text_pos].any()
    assert audio[~text_pos].all()

    slots = split_channels(seq.input_ids, layout, vocab).text_slots
    n = len(t.responses)
    assert (slots == vocab.speak_id).sum() == (slots == vocab.epad_id).sum() == n

    events = response_events(slots, vocab)
    want = [(a, epad, tuple(x[:kept])) for (a, epad, kept), x in zip(expected, ids, strict=True)]
    assert [(e.speak_slot, e.epad_slot, e.text_ids) for e in events] == want
    assert [(p.speak_slot, p.epad_slot, p.kept_text) for p in seq.placements] == want

    inside = np.zeros(K * T, dtype=bool)
    for a, epad, kept in want:
        assert (slots[a + 1 + len(kept) : epad] == vocab.pad_id).all()
        inside[a : epad + 1] = True
    assert (slots[~inside] == vocab.silence_id).all()

    ch = split_channels(seq.input_ids, layout, vocab)
    assert ch.user_codes[: t.num_frames].tolist() == list(t.user_codes)
    assert np.array_equal(ch.user_codes[t.num_frames :], spec.silence(t.num_frames, K * B))
    speaking = np.zeros(K * B, dtype=bool)
    for r in t.responses:
        assert ch.assistant_codes[r.start_frame - B : r.end_frame - B].tolist() == list(r.codes)
        speaking[r.start_frame - B : r.end_frame - B] = True
    silence = spec.silence(B, (K + 1) * B)
    assert np.array_equal(ch.assistant_codes[~speaking], silence[~speaking])


# --------------------------------------------------------------------------- strategies


def _codes(rng: random.Random, n: int, num_audio: int) -> tuple[int, ...]:
    return tuple(rng.randrange(num_audio) for _ in range(n))


def _range(draw, hi: float) -> list[float]:
    lo, up = sorted(draw(st.tuples(st.floats(0, hi), st.floats(0, hi))))
    return [lo, up]


@st.composite
def synthesized(draw, layout: BlockLayout, num_audio: int, n_text: int):
    """A timeline synthesised from a random script, scenario and timing config."""
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    silence = _codes(rng, draw(st.integers(1, 3)), num_audio)
    spec = FormatSpec(layout, silence)
    turns, ids = [], []
    for _ in range(draw(st.integers(1, 4))):
        user = _codes(rng, draw(st.integers(1, 30)), num_audio)
        ends = tuple(draw(st.lists(st.integers(0, len(user)), max_size=4)))
        asst = _codes(rng, draw(st.integers(1, 40)), num_audio)
        turns.append(ScriptTurn(user, "text", asst, None, ends))
        ids.append([rng.randrange(n_text) for _ in range(draw(st.integers(1, 15)))])
    scenario = draw(st.sampled_from(SCENARIOS))
    if scenario == "interruption" and len(turns) < 2:
        scenario = "turn_taking"
    cfg = SynthesisConfig(
        mix=ScenarioMix(),
        lead_silence_s=_range(draw, 1.5),
        between_turns_s=_range(draw, 1.5),
        answer_gap_s=_range(draw, 1.5),
        interrupt_at=[0.0, draw(st.floats(0, 0.99))],
        backchannel_at=_range(draw, 1.0),
        hesitation_pause_s=_range(draw, 2.0),
        tail_silence_s=_range(draw, 2.0),
        max_blocks=draw(st.integers(8, 80)),
        seed=draw(st.integers(0, 1000)),
    )
    clips = tuple(
        (f"bc{i}", _codes(rng, draw(st.integers(1, 6)), num_audio))
        for i in range(draw(st.integers(0, 2)))
    )
    try:
        t = synthesize(Script("syn", tuple(turns)), ids, scenario, cfg, spec, clips)
    except RecordError as e:
        assert e.reason == "too_long"
        assume(False)
    return t, ids[: len(t.responses)], spec, cfg


@st.composite
def direct(draw, layout: BlockLayout, num_audio: int, n_text: int):
    """A random record built straight from the §9 rules (no synthesis)."""
    B = layout.frames_per_block
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    spec = FormatSpec(layout, _codes(rng, draw(st.integers(1, 3)), num_audio))
    responses, ids = [], []
    prev_end, prev_epad = 0, -1
    for _ in range(draw(st.integers(0, 4))):
        s = max(B, prev_end)
        while slot_of(s, layout) <= prev_epad:  # <|assistant|> after the previous [EPAD]
            s += 1
        s += draw(st.integers(0, 2 * B))
        e = s + draw(st.integers(1, 3 * B))
        r = Response(s, e, "text", _codes(rng, e - s, num_audio), draw(st.booleans()))
        words = [rng.randrange(n_text) for _ in range(draw(st.integers(1, 12)))]
        responses.append(r)
        ids.append(words)
        prev_end, prev_epad = e, expected_placement(r, len(words), layout)[1]
    last = max([r.end_frame for r in responses], default=1)
    num_frames = draw(st.integers(1, last + 2 * B))
    bounds = sorted(draw(st.sets(st.integers(0, num_frames), max_size=8)))
    segments = tuple(
        UserSegment(a, b, draw(st.sampled_from(["turn", "backchannel"])))
        for a, b in zip(bounds[::2], bounds[1::2], strict=False)
    )
    t = Timeline(
        "direct", num_frames, _codes(rng, num_frames, num_audio), segments, tuple(responses)
    )
    return t, ids, spec


# --------------------------------------------------------------------------- properties


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.ratio)
@PROPS
@given(data=st.data())
def test_synthesized_timelines(layout, data, vocab, n_text):
    t, ids, spec, cfg = data.draw(synthesized(layout, vocab.num_audio, n_text))
    event(f"scenario {t.scenario}, {len(t.responses)} responses")
    check_properties(t, ids, spec, vocab)
    B = layout.frames_per_block
    for r in t.responses:  # §6: answers start on block boundaries, never before B
        assert r.start_frame % B == 0 and r.start_frame >= B
    assert interleave(t, ids, spec, vocab).num_blocks <= cfg.max_blocks


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.ratio)
@PROPS
@given(data=st.data())
def test_direct_timelines(layout, data, vocab, n_text):
    t, ids, spec = data.draw(direct(layout, vocab.num_audio, n_text))
    check_properties(t, ids, spec, vocab)


@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: lay.ratio)
def test_slot_start_frame_inverts_slot_of_frame(layout):
    B = layout.frames_per_block
    for f in range(B, 20 * B):
        assert layout.slot_index_of_frame(f) == slot_of(f, layout)
    for i in range(10 * layout.slots_per_block):
        f = layout.slot_start_frame(i)
        assert slot_of(f, layout) == i
        assert f == B or slot_of(f - 1, layout) == i - 1  # the first frame of its slot
