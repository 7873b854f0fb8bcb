"""Synthesis against the timing rules of format §6, on hand-made scripts.

Every range is pinned to one value (``fixed``) so each expected frame can be
worked out by hand; the determinism tests use the default (random) ranges.
"""

from __future__ import annotations

import pytest

from bayling_duplex.audio.codec import ToyCodec
from bayling_duplex.data.demo import backchannel_clips, demo_script
from bayling_duplex.data.synthesis import (
    SCENARIOS,
    ScenarioMix,
    SynthesisConfig,
    record_rng,
    synthesize,
    with_partner,
)
from bayling_duplex.format.interleave import (
    FormatSpec,
    check_timeline,
    num_blocks_for,
    place_responses,
)
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordError, Script, ScriptTurn, UserSegment

RATE = 12.5
SIL = 0  # silence code
U = 9  # user speech code
A = 11  # assistant speech code
NUM_AUDIO = 256
L5 = BlockLayout(10, 5)
L2 = BlockLayout(10, 2)


def frames(n: int) -> list[float]:
    """A range pinned to exactly ``n`` frames."""
    return [n / RATE, n / RATE]


def fixed(
    lead: int = 2,
    between: int = 5,
    gap: int = 0,
    tail: int = 10,
    interrupt_at: float = 0.5,
    backchannel_at: float = 0.5,
    pause: int = 10,
    max_blocks: int = 200,
    **kw,
) -> SynthesisConfig:
    return SynthesisConfig(
        lead_silence_s=frames(lead),
        between_turns_s=frames(between),
        answer_gap_s=frames(gap),
        tail_silence_s=frames(tail),
        interrupt_at=[interrupt_at, interrupt_at],
        backchannel_at=[backchannel_at, backchannel_at],
        hesitation_pause_s=frames(pause),
        max_blocks=max_blocks,
        **kw,
    )


def turn(n_user: int, n_asst: int, user=U, word_ends: tuple[int, ...] = ()) -> ScriptTurn:
    user_codes = tuple(user) if isinstance(user, range | tuple) else (user,) * n_user
    return ScriptTurn(user_codes, "a b c", (A,) * n_asst, "question", word_ends)


def ids_for(script: Script, n_words: int = 3) -> list[list[int]]:
    return [list(range(100, 100 + n_words)) for _ in script.turns]


def first_boundary_at_or_after(f: int, B: int) -> int:
    return max(B, -(-f // B) * B)


def answer_start(u_end: int, prev_epad_slot: int, layout: BlockLayout) -> int:
    """The turn-taking rule, plus the collision rule: the answer's ``<|assistant|>`` slot
    must come after the previous ``[EPAD]``, else it moves on by whole blocks."""
    s = first_boundary_at_or_after(u_end, layout.frames_per_block)
    while layout.slot_index_of_frame(s) <= prev_epad_slot:
        s += layout.frames_per_block
    return s


def assert_valid(t, ids, spec):
    """The synthesised record passes every §9 check (the interleaver's own)."""
    check_timeline(t, ids[: len(t.responses)], spec, NUM_AUDIO)


# --------------------------------------------------------------------------- turn-taking


@pytest.mark.parametrize("layout", [L5, L2], ids=lambda lay: lay.ratio)
@pytest.mark.parametrize(
    ("lead", "n_user", "gap", "start"),
    [
        (2, 17, 0, 20),  # ends at 19 -> next boundary 20 (format §7)
        (0, 20, 0, 20),  # ends exactly on a boundary: answer starts there
        (2, 18, 1, 30),  # 20 + gap 1 = 21 -> 30
        (2, 17, 10, 30),  # 19 + gap 10 = 29 -> 30
        (0, 3, 0, 10),  # ends at 3: never before frame B
        (1, 1, 0, 10),
    ],
)
def test_turn_taking_answer_starts_at_block_boundary(layout, lead, n_user, gap, start):
    spec = FormatSpec(layout, (SIL,))
    script = Script("tt", (turn(n_user, 13),))
    ids = ids_for(script)
    t = synthesize(script, ids, "turn_taking", fixed(lead=lead, gap=gap), spec)
    assert t.scenario == "turn_taking"
    u_end = lead + n_user
    assert t.user_segments == (UserSegment(lead, u_end, "turn", "question"),)
    assert t.user_codes[lead:u_end] == (U,) * n_user
    assert set(t.user_codes[:lead] + t.user_codes[u_end:]) <= {SIL}
    [r] = t.responses
    assert r.start_frame == start == first_boundary_at_or_after(u_end + gap, 10)
    assert (r.end_frame, r.codes, r.interrupted) == (start + 13, (A,) * 13, False)
    assert t.num_frames > r.end_frame
    assert_valid(t, ids, spec)


@pytest.mark.parametrize("layout", [L5, L2], ids=lambda lay: lay.ratio)
def test_turn_taking_over_several_turns(layout):
    spec = FormatSpec(layout, (SIL,))
    script = Script("tt3", (turn(7, 12), turn(11, 25), turn(4, 3)))
    ids = ids_for(script)
    t = synthesize(script, ids, "turn_taking", fixed(lead=3, between=5), spec)
    assert len(t.responses) == len(t.user_segments) == 3
    u_start = 3
    for seg, r, tr in zip(t.user_segments, t.responses, script.turns, strict=True):
        assert (seg.start_frame, seg.end_frame) == (u_start, u_start + len(tr.user_codes))
        assert r.start_frame == first_boundary_at_or_after(seg.end_frame, 10)
        assert r.codes == tr.assistant_codes and not r.interrupted
        u_start = r.end_frame + 5  # the next turn follows the answer after `between`
    assert_valid(t, ids, spec)


def test_answer_waits_for_previous_epad_slot():
    # 2 frames of speech but 20 words: its [EPAD] lies far past its speech; the next
    # answer moves block by block until its <|assistant|> slot is after that [EPAD]
    spec = FormatSpec(L5, (SIL,))
    script = Script("long-text", (turn(8, 2), turn(3, 5)))
    ids = [list(range(100, 120)), [100]]
    t = synthesize(script, ids, "turn_taking", fixed(lead=2, between=5), spec)
    r1, r2 = t.responses
    epad = place_responses(t, ids, L5)[0].epad_slot
    assert epad == L5.slot_index_of_frame(r1.start_frame) + 21
    assert r2.start_frame % 10 == 0
    assert L5.slot_index_of_frame(r2.start_frame) > epad
    assert L5.slot_index_of_frame(r2.start_frame - 10) <= epad  # the first such boundary
    assert_valid(t, ids, spec)


# --------------------------------------------------------------------------- interruption


def test_interruption_cuts_at_next_output_block():
    # answer [20, 50); the user cuts in at u_s = 20 + 0.5·30 = 35 (heard in block 3):
    # cut at (35 // 10 + 1)·10 = 40; the interrupting turn [35, 47) is answered at 50
    spec = FormatSpec(L5, (SIL,))
    t2_codes = tuple(range(40, 52))
    script = Script("int", (turn(17, 30), turn(0, 8, user=t2_codes)))
    ids = ids_for(script)
    t = synthesize(script, ids, "interruption", fixed(lead=2, interrupt_at=0.5), spec)
    assert t.scenario == "interruption"
    assert [(s.start_frame, s.end_frame) for s in t.user_segments] == [(2, 19), (35, 47)]
    assert t.user_codes[35:47] == t2_codes
    r1, r2 = t.responses
    assert (r1.start_frame, r1.end_frame, r1.interrupted) == (20, 40, True)
    assert r1.codes == (A,) * 20  # truncated to the speech actually played
    assert r1.text == "a b c"  # the full text: the interleaver does the cutting
    assert (r2.start_frame, r2.end_frame, r2.interrupted) == (50, 58, False)
    assert_valid(t, ids, spec)


@pytest.mark.parametrize("layout", [L5, L2], ids=lambda lay: lay.ratio)
@pytest.mark.parametrize("at", [0.0, 0.2, 0.34, 0.5, 0.69])
@pytest.mark.parametrize("n_asst", [7, 25, 30, 41])
def test_interruption_rule(layout, at, n_asst):
    B = layout.frames_per_block
    spec = FormatSpec(layout, (SIL,))
    asst = tuple(range(20, 20 + n_asst))
    script = Script("rule", (ScriptTurn((U,) * 17, "a b c", asst), turn(6, 9)))
    ids = ids_for(script)
    t = synthesize(script, ids, "interruption", fixed(lead=2, interrupt_at=at), spec)
    r1, r2 = t.responses
    s, e = 20, 20 + n_asst
    u_s = t.user_segments[1].start_frame
    assert s <= u_s < e  # the user starts while the assistant speaks
    cut = (u_s // B + 1) * B
    if cut < e:
        assert (r1.end_frame, r1.interrupted, r1.codes) == (cut, True, asst[: cut - s])
        assert t.scenario == "interruption"
    else:  # onset heard in the answer's last block: nothing to cut
        assert (r1.end_frame, r1.interrupted, r1.codes) == (e, False, asst)
        assert t.scenario == "turn_taking"
    # the interrupting turn is answered by the turn-taking rule
    epad = place_responses(t, ids, layout)[0].epad_slot
    assert r2.start_frame == answer_start(t.user_segments[1].end_frame, epad, layout)
    assert not r2.interrupted
    assert_valid(t, ids, spec)


@pytest.mark.parametrize("heard", [1, 4, 8, 10, 13])
@pytest.mark.parametrize("at", [0.2, 0.4, 0.6])
def test_interruption_heard_frames_moves_the_cut_to_a_later_boundary(heard, at):
    # answer [20, 80); the cut is the first block boundary by which `heard` frames of the
    # interrupting turn were heard; 1 is format §6's (u_s // B + 1)·B
    spec = FormatSpec(L5, (SIL,))
    script = Script("late", (turn(17, 60), turn(30, 6)))
    ids = ids_for(script)
    cfg = fixed(lead=2, interrupt_at=at, interruption_heard_frames=heard)
    t = synthesize(script, ids, "interruption", cfg, spec)
    r1 = t.responses[0]
    u_s = t.user_segments[1].start_frame
    assert r1.interrupted and r1.end_frame % 10 == 0
    assert u_s + heard <= r1.end_frame < u_s + heard + 10  # the first such boundary
    if heard == 1:
        assert r1.end_frame == (u_s // 10 + 1) * 10
    assert r1.codes == script.turns[0].assistant_codes[: r1.end_frame - 20]
    assert t.responses[1].start_frame >= t.user_segments[1].end_frame
    assert_valid(t, ids, spec)


def test_interruption_heard_frames_below_one_is_refused():
    with pytest.raises(ValueError, match=r"synthesis\.interruption_heard_frames"):
        SynthesisConfig(interruption_heard_frames=0)


def test_interruption_in_longer_scripts_cuts_exactly_one_answer():
    spec = FormatSpec(L5, (SIL,))
    codec = ToyCodec()
    for i in range(20):
        script = demo_script("train", i, 0, codec, min_turns=3, max_turns=4)
        ids = [list(range(100, 100 + len(x.assistant_text.split()))) for x in script.turns]
        t = synthesize(script, ids, "interruption", SynthesisConfig(), spec)
        cut = [k for k, r in enumerate(t.responses) if r.interrupted]
        assert len(cut) <= 1
        for k in cut:
            r, u_s = t.responses[k], t.user_segments[k + 1].start_frame
            assert r.start_frame <= u_s < r.end_frame
            assert r.end_frame == (u_s // 10 + 1) * 10
            assert len(r.codes) == r.end_frame - r.start_frame
        assert_valid(t, ids, spec)


def test_interruption_needs_two_turns():
    script = Script("single", (turn(10, 30),))
    with pytest.raises(RecordError) as e:
        synthesize(script, ids_for(script), "interruption", fixed(), FormatSpec(L5, (SIL,)))
    assert (e.value.reason, e.value.record_id) == ("too_few_turns", "single")
    # a borrowed partner turn makes it a valid interruption
    paired = with_partner(script, turn(5, 8))
    t = synthesize(paired, ids_for(paired), "interruption", fixed(), FormatSpec(L5, (SIL,)))
    assert t.id == "single" and t.responses[0].interrupted


# --------------------------------------------------------------------------- backchannel


def test_backchannel_inside_answer_does_not_cut_it():
    # answer [20, 50); "uh-huh" at 20 + 0.5·30 = 35 for 3 frames
    spec = FormatSpec(L5, (SIL,))
    script = Script("bc", (turn(17, 30),))
    ids = ids_for(script)
    clips = (("uh-huh.", (5, 6, 7)),)
    t = synthesize(script, ids, "backchannel", fixed(lead=2), spec, clips)
    assert t.scenario == "backchannel"
    assert t.user_segments == (
        UserSegment(2, 19, "turn", "question"),
        UserSegment(35, 38, "backchannel", "uh-huh."),
    )
    assert t.user_codes[35:38] == (5, 6, 7)
    [r] = t.responses
    assert (r.start_frame, r.end_frame, r.interrupted, r.codes) == (20, 50, False, (A,) * 30)
    assert_valid(t, ids, spec)


def test_backchannel_over_demo_scripts():
    spec = FormatSpec(L5, (SIL,))
    codec = ToyCodec()
    clips = backchannel_clips(codec)
    seen = 0
    for i in range(20):
        script = demo_script("train", i, 0, codec)
        ids = [list(range(100, 100 + len(x.assistant_text.split()))) for x in script.turns]
        t = synthesize(script, ids, "backchannel", SynthesisConfig(), spec, clips)
        assert not any(r.interrupted for r in t.responses)
        assert [r.codes for r in t.responses] == [x.assistant_codes for x in script.turns]
        for seg in t.user_segments:
            if seg.kind == "backchannel":
                seen += 1
                assert any(
                    r.start_frame <= seg.start_frame and seg.end_frame < r.end_frame
                    for r in t.responses
                )
        assert_valid(t, ids, spec)
    assert seen > 0


def test_backchannel_without_clips_is_plain_turn_taking():
    script = Script("bc0", (turn(17, 30),))
    t = synthesize(script, ids_for(script), "backchannel", fixed(), FormatSpec(L5, (SIL,)))
    assert t.scenario == "turn_taking"
    assert [s.kind for s in t.user_segments] == ["turn"]


# --------------------------------------------------------------------------- hesitation


@pytest.mark.parametrize("silence", [(SIL,), (3, 4, 5)])
def test_hesitation_pause_at_a_word_end(silence):
    spec = FormatSpec(L5, silence)
    words = tuple(range(20, 40))  # 20 distinct speech codes: the order must survive
    script = Script("hes", (ScriptTurn(words, "a b c", (A,) * 8, "q", (5, 12)),))
    ids = ids_for(script)
    t = synthesize(script, ids, "hesitation", fixed(lead=2, pause=10), spec)
    assert t.scenario == "hesitation"
    [seg] = t.user_segments
    assert (seg.start_frame, seg.end_frame, seg.kind) == (2, 32, "turn")  # spans the pause
    span = t.user_codes[2:32]
    cut = next(c for c in (5, 12) if span[c : c + 10] == tuple(spec.silence(2 + c, 12 + c)))
    assert span[:cut] + span[cut + 10 :] == words
    [r] = t.responses
    assert r.start_frame == 40  # no answer during the pause: only after the turn's end
    assert_valid(t, ids, spec)


def _demo_scripts(n: int = 20):
    """``(script, answer ids)`` of the first ``n`` toy demo training scripts."""
    codec = ToyCodec()
    for i in range(n):
        script = demo_script("train", i, 0, codec)
        yield script, [list(range(100, 100 + len(x.assistant_text.split()))) for x in script.turns]


def test_hesitation_over_demo_scripts():
    spec = FormatSpec(L5, (SIL,))
    for script, ids in _demo_scripts():
        t = synthesize(script, ids, "hesitation", SynthesisConfig(), spec)
        lengths = [s.end_frame - s.start_frame for s in t.user_segments]
        longer = [
            k
            for k, (n, x) in enumerate(zip(lengths, script.turns, strict=True))
            if n > len(x.user_codes)
        ]
        assert len(longer) == 1  # one turn holds the pause
        for seg, r in zip(t.user_segments, t.responses, strict=True):
            assert r.start_frame >= seg.end_frame  # no answer starts inside a turn
        k = longer[0]
        seg, x = t.user_segments[k], script.turns[k]
        codes = t.user_codes[seg.start_frame : seg.end_frame]
        pause = len(codes) - len(x.user_codes)
        cuts = [c for c in x.user_word_ends if codes[c : c + pause] == (SIL,) * pause]
        assert any(codes[:c] + codes[c + pause :] == x.user_codes for c in cuts)
        assert_valid(t, ids, spec)


def test_hesitation_turns_all_pauses_every_turn_and_one_stays_the_default():
    spec = FormatSpec(L5, (SIL,))
    for script, ids in _demo_scripts():
        every = synthesize(script, ids, "hesitation", SynthesisConfig(hesitation_turns="all"), spec)
        lengths = [s.end_frame - s.start_frame for s in every.user_segments]
        assert all(n > len(x.user_codes) for n, x in zip(lengths, script.turns, strict=True))
        for seg, r in zip(every.user_segments, every.responses, strict=True):
            assert r.start_frame >= seg.end_frame  # no answer inside any turn
        assert_valid(every, ids, spec)
        # the other scenarios draw no pause, whatever the key says
        plain = synthesize(
            script, ids, "turn_taking", SynthesisConfig(hesitation_turns="all"), spec
        )
        assert plain == synthesize(script, ids, "turn_taking", SynthesisConfig(), spec)
    assert SynthesisConfig().hesitation_turns == "one"


def test_hesitation_turns_refuses_other_values():
    with pytest.raises(ValueError, match=r"synthesis\.hesitation_turns"):
        SynthesisConfig(hesitation_turns="some")


# --------------------------------------------------------------------------- determinism, mix


def test_same_seed_and_id_give_the_same_timeline():
    spec = FormatSpec(L5, (SIL,))
    codec = ToyCodec()
    clips = backchannel_clips(codec)
    for i in range(5):
        script = demo_script("train", i, 0, codec)
        ids = [list(range(100, 100 + len(x.assistant_text.split()))) for x in script.turns]
        for scenario in SCENARIOS:
            cfg0, cfg1 = SynthesisConfig(seed=0), SynthesisConfig(seed=1)
            a = synthesize(script, ids, scenario, cfg0, spec, clips)
            b = synthesize(script, ids, scenario, SynthesisConfig(seed=0), spec, clips)
            c = synthesize(script, ids, scenario, cfg1, spec, clips)
            assert a == b
            assert a != c
            renamed = Script(script.id + "-x", script.turns)
            d = synthesize(renamed, ids, scenario, cfg0, spec, clips)
            assert d.user_codes != a.user_codes  # randomness is keyed by the record id
    assert record_rng(0, "x").random() == record_rng(0, "x").random()


def test_each_mode_gives_one_timeline_per_positive_scenario():
    cfg = fixed(
        mode="each",
        mix=ScenarioMix(turn_taking=1.0, interruption=0.5, backchannel=0.0, hesitation=2.0),
    )
    names = cfg.scenarios_for(record_rng(0, "e"))
    assert names == ["turn_taking", "interruption", "hesitation"]
    spec = FormatSpec(L5, (SIL,))
    script = Script("e", (turn(17, 30, word_ends=(5, 9)), turn(12, 8)))
    out = [synthesize(script, ids_for(script), s, cfg, spec) for s in names]
    assert [t.scenario for t in out] == names
    assert len({t.user_codes for t in out}) == 3


def test_mix_mode_picks_one_positive_scenario():
    cfg = SynthesisConfig(mix=ScenarioMix(turn_taking=0.0, interruption=1.0, hesitation=1.0))
    picks = [cfg.scenarios_for(record_rng(0, f"m{i}")) for i in range(200)]
    assert all(len(p) == 1 for p in picks)
    assert {p[0] for p in picks} == {"interruption", "hesitation"}
    with pytest.raises(ValueError):
        ScenarioMix(turn_taking=0.0, interruption=0.0)


# --------------------------------------------------------------------------- length


def _blocks(t, ids, layout):
    return num_blocks_for(t, place_responses(t, ids[: len(t.responses)], layout), layout)


def test_too_long_script_drops_trailing_turns():
    spec = FormatSpec(L5, (SIL,))
    script = Script("long", tuple(turn(8 + k, 12 + 3 * k) for k in range(4)))
    ids = ids_for(script)
    full = synthesize(script, ids, "turn_taking", fixed(), spec)
    assert len(full.responses) == 4
    prefix2 = Script("long", script.turns[:2])
    two = synthesize(prefix2, ids[:2], "turn_taking", fixed(), spec)
    k2 = _blocks(two, ids, L5)
    assert k2 < _blocks(full, ids, L5)
    cut = synthesize(script, ids, "turn_taking", fixed(max_blocks=k2), spec)
    assert cut == two  # the first two turns, placed exactly as on their own
    assert _blocks(cut, ids, L5) <= k2


def test_script_whose_first_turn_does_not_fit_is_rejected():
    spec = FormatSpec(L5, (SIL,))
    script = Script("huge", (turn(100, 10), turn(5, 5)))
    for scenario in ("turn_taking", "interruption", "hesitation"):
        with pytest.raises(RecordError) as e:
            synthesize(script, ids_for(script), scenario, fixed(max_blocks=5), spec)
        assert (e.value.reason, e.value.record_id) == ("too_long", "huge")


def test_interruption_never_drops_below_two_turns():
    spec = FormatSpec(L5, (SIL,))
    script = Script("pair", (turn(10, 30), turn(30, 30)))
    ids = ids_for(script)
    need = _blocks(synthesize(script, ids, "interruption", fixed(), spec), ids, L5)
    with pytest.raises(RecordError) as e:
        synthesize(script, ids, "interruption", fixed(max_blocks=need - 1), spec)
    assert e.value.reason == "too_long"
