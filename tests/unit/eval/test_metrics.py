"""Behaviour metrics on hand-built responses, the evaluation sets, and the eval command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import TINY_MODEL

from bayling_duplex.eval.metrics import EvalItem, judge, length_cue, summarize
from bayling_duplex.format.interleave import FormatSpec, ResponseEvent
from bayling_duplex.format.layout import BlockLayout

L = BlockLayout(10, 5)  # slot = 2 frames = 0.16 s; slot k·5+j starts at ((k+1)·10 + 2j)·0.08 s


def ev(speak_slot: int, epad_slot: int | None, text=(7,)) -> ResponseEvent:
    return ResponseEvent(speak_slot, epad_slot, tuple(text))


def never_correct(key, ids) -> bool:
    return False


def test_slot_times():
    assert L.slot_start_s(0) == pytest.approx(0.8)
    assert L.slot_start_s(7) == pytest.approx((20 + 4) * 0.08)


@pytest.mark.parametrize(
    ("slot", "taken"),
    [(10, "success"), (9, "early"), (28, "success"), (29, "late"), (None, "none")],
)
def test_turn_taking_classes(slot, taken):
    # turn [5, 30): ends at 2.4 s = slot 10 (block 2, slot 0); the 3 s window ends at 5.4 s:
    # slot 28 starts at (60 + 6)·0.08 = 5.28 s, slot 29 at 5.44 s
    item = EvalItem("t", "turn_taking", 100, ((5, 30),))
    events = [] if slot is None else [ev(slot, slot + 3)]
    assert judge(item, events, never_correct, L).taken == taken


def test_response_before_the_turn_is_not_its_onset():
    item = EvalItem("t", "turn_taking", 100, ((30, 40),))
    out = judge(item, [ev(0, 2), ev(15, 18)], never_correct, L)
    assert out.onset_s == pytest.approx(L.slot_start_s(15)) and out.taken == "success"


def test_interruption_success_and_overlap():
    # response playing from slot 10 (2.4 s); the user interrupts at frame 36 (2.88 s);
    # [EPAD] at slot 15 = the next block boundary (3.2 s): the fastest possible stop
    item = EvalItem("i", "interruption", 100, ((0, 18), (36, 55)))
    ok = judge(item, [ev(10, 15)], never_correct, L)
    assert ok.speaking_at_interruption and ok.interrupted_ok and ok.overlap_s == pytest.approx(0.32)
    assert ok.extra["interruption_frames_before_cut"] == 4  # frames 36..39 heard before the cut
    late = judge(
        item, [ev(10, 40)], never_correct, L
    )  # slot 40 = block 8: 7.2 s, 4.32 s after the onset
    assert late.interrupted_ok is False and late.overlap_s == pytest.approx(4.32)
    never = judge(item, [ev(10, None)], never_correct, L)
    assert never.interrupted_ok is False and never.overlap_s is None
    silent = judge(item, [], never_correct, L)
    assert silent.speaking_at_interruption is False and silent.interrupted_ok is None


def test_backchannel_and_hesitation():
    # backchannel at frame 30 (2.4 s): an interruption there would cut at frame 40 (3.2 s = slot 15)
    bc = EvalItem("b", "backchannel", 100, ((0, 18),), backchannel=(30, 33), answer_end=48)
    assert judge(bc, [ev(10, 40)], never_correct, L).backchannel_kept is True
    assert (
        judge(bc, [ev(10, 16)], never_correct, L).backchannel_kept is True
    )  # 3.36 s: past the cut
    cut = judge(bc, [ev(10, 15)], never_correct, L)
    assert cut.backchannel_kept is False  # stopped like a cut
    assert cut.extra["backchannel_frames_before_cut"] == 10  # onset on a boundary: a whole block
    assert cut.extra["backchannel_frames"] == 3
    late = EvalItem("l", "backchannel", 100, ((0, 18),), backchannel=(38, 41), answer_end=58)
    assert judge(late, [ev(10, 40)], never_correct, L).extra["backchannel_frames_before_cut"] == 2
    natural = EvalItem("n", "backchannel", 100, ((0, 18),), backchannel=(30, 33), answer_end=39)
    assert judge(natural, [ev(10, 15)], never_correct, L).backchannel_kept is None  # not telling
    hes = EvalItem("h", "hesitation", 100, ((0, 40),), pause=(12, 24))
    assert (
        judge(hes, [ev(10, 14)], never_correct, L).hesitation_kept is False
    )  # 2.4 s: inside the turn
    assert judge(hes, [ev(30, 34)], never_correct, L).hesitation_kept is True
    assert judge(hes, [], never_correct, L).extra["pause_frames"] == 12


def test_length_cue_scores_the_frames_spoken_before_a_silence():
    items = [
        EvalItem("t0", "turn_taking", 100, ((0, 20),)),  # a turn end after 20 frames
        EvalItem("t1", "turn_taking", 100, ((0, 30),)),
        # 40 frames with a 10-frame pause after 10: a pause after 10, an end after 30
        EvalItem("h0", "hesitation", 100, ((0, 40),), pause=(10, 20)),
        EvalItem("h1", "hesitation", 100, ((5, 35),), pause=(25, 30)),  # pause 20, end 25
    ]
    cue = length_cue(items, resamples=200)
    # ends 20, 30, 30, 25 against pauses 10 (below all four) and 20 (a tie, then three)
    assert cue["auc"] == 0.9375
    assert (cue["dialogues"], cue["pauses"]) == (4, 2)
    # answering 90 % of ends needs a threshold of 21.5 frames: both pauses stay silent
    assert cue["pauses_kept"] == 1.0
    # answering every end: a threshold of 20, so the pause after 20 frames is answered
    assert length_cue(items, recall=1.0, resamples=200)["pauses_kept"] == 0.5
    lo, hi = cue["auc_interval95"]
    assert 0 <= lo <= cue["auc"] <= hi <= 1
    assert cue["turn_speech_frames"]["n"] == 4 and cue["pause_speech_frames"]["mean"] == 15.0
    assert length_cue(items[:2]) is None  # no hesitation dialogue


def test_summary_rates():
    item = EvalItem("t", "turn_taking", 100, ((5, 30),), answer_keys=("x",))
    outs = [judge(item, [ev(10, 12)], lambda k, ids: True, L), judge(item, [], never_correct, L)]
    s = summarize(outs)
    assert s["turn_taking"]["SR@3s"] == 0.5 and s["turn_taking"]["no_response_rate"] == 0.5
    assert s["answer_accuracy"] == 0.5


def test_eval_sets_follow_the_synthesis_rules(tiny_backbone):
    from bayling_duplex.eval.dialogues import EvalSetConfig, build_eval_items

    _, tok, _ = tiny_backbone
    spec = FormatSpec(L, (0,))
    cfg = EvalSetConfig(turn_taking=3, interruption=3, backchannel=3, hesitation=3)
    items = build_eval_items(
        cfg, spec, lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
    )
    assert len(items) == 12
    for item, codes in items:
        assert len(codes) == item.num_frames and item.num_frames % 10 == 0
        assert item.num_frames >= item.turns[-1][1] + round(cfg.tail_s * 12.5)
        if item.scenario == "hesitation":
            s, e = item.pause
            assert (
                item.turns[0][0] < s < e < item.turns[0][1]
                and (codes[s:e] == 0).all()
                and e - s >= 7
            )
        if item.scenario == "backchannel":
            assert item.backchannel is not None
        if item.scenario == "interruption":
            assert len(item.turns) == 2
    again = build_eval_items(
        cfg, spec, lambda texts: tok(texts, add_special_tokens=False)["input_ids"]
    )
    assert [i.id for i, _ in again] == [i.id for i, _ in items]


def test_eval_command_on_untrained_model(tmp_path):
    args = [
        "checkpoint=untrained",
        "compare_untrained=false",
        "evalset.turn_taking=2",
        "evalset.interruption=2",
        "evalset.backchannel=1",
        "evalset.hesitation=1",
        "plots=4",
        "run.name=t",
        *TINY_MODEL,
    ]
    res = subprocess.run(
        [sys.executable, "-m", "bayling_duplex.eval", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "runs" / "eval" / "t"
    report = json.loads((out / "report.json").read_text())
    assert report["untrained"]["summary"]["dialogues"] == 6
    by_set = {d["scenario"]: d for d in report["untrained"]["dialogues"]}
    # the judge's own extras survive beside the item and the responses
    assert {"item", "responses", "pause_frames"} <= set(by_set["hesitation"]["extra"])
    if "interruption" in by_set:
        assert "interruption_frames_before_cut" in by_set["interruption"]["extra"]
    assert "SR@3s" in (out / "summary.md").read_text()
    assert (out / "latency.png").stat().st_size > 0 and (out / "timelines.png").stat().st_size > 0


def test_eval_without_checkpoint_says_how_to_train(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "bayling_duplex.eval", "run.name=t"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 2 and "python -m bayling_duplex.train sft" in res.stderr


def test_robustness_by_evidence_bins_the_judged_dialogues():
    from bayling_duplex.eval.metrics import DialogueOutcome
    from bayling_duplex.eval.report import markdown_summary

    def bc(i, before, kept):
        return DialogueOutcome(
            f"b{i}",
            "backchannel",
            backchannel_kept=kept,
            extra={"backchannel_frames_before_cut": before},
        )

    outs = [bc(0, 1, False), bc(1, 3, True), bc(2, 5, True), bc(3, 10, True),
            DialogueOutcome("h", "hesitation", hesitation_kept=False, false_ends=1,
                            extra={"pause_frames": 12}),
            DialogueOutcome("x", "backchannel")]  # fmt: skip
    s = summarize(outs)
    b = s["by_evidence"]["backchannel_robustness"]
    assert b["backchannel_frames_before_cut 1-3"] == {"rate": 0.5, "interval": [0.0, 1.0], "n": 2}
    assert b["backchannel_frames_before_cut 4-6"]["n"] == 1
    assert b["backchannel_frames_before_cut >= 7"]["rate"] == 1.0
    h = s["by_evidence"]["hesitation_robustness"]
    assert h["pause_frames 11-15"]["rate"] == 0.0 and h["pause_frames 0-10"]["n"] == 0
    md = markdown_summary({"model": s})
    assert (
        "| backchannel_robustness, backchannel_frames_before_cut 1-3 | 50.0 % [0.0, 100.0] (n=2) |"
        in md
    )
    assert "| hesitation_robustness, pause_frames 0-10 | – |" in md


def test_hesitation_and_turn_taking_by_what_came_before_the_silence():
    from bayling_duplex.eval.report import markdown_summary

    # turn [10, 60) with a lead-in of 12 frames: a pause at frame 22 (12 frames in) is
    # right after it, one at frame 30 inside the question; no lead-in: a bare question
    def hes(i, lead, pause_at, kept):
        item = EvalItem(f"h{i}", "hesitation", 100, ((10, 60),), pause=(pause_at, pause_at + 12),
                        lead_in_frames=(lead,))  # fmt: skip
        events = [] if kept else [ev(15, 18)]  # slot 15: frame 40 (3.2 s), in every pause
        return judge(item, events, never_correct, L)

    outs = [hes(0, 12, 22, True), hes(1, 12, 22, False), hes(2, 12, 30, False),
            hes(3, 0, 40, True), hes(4, 0, 40, True)]  # fmt: skip
    assert [o.extra["pause_place"] for o in outs] == [
        "after_lead_in",
        "after_lead_in",
        "in_question",
        "bare_question",
        "bare_question",
    ]
    tt = [judge(EvalItem(f"t{i}", "turn_taking", 100, ((5, 30),), lead_in_frames=(lead,)),
                [ev(slot, slot + 3)], never_correct, L)
          for i, (lead, slot) in enumerate([(6, 10), (6, 9), (0, 10)])]  # fmt: skip
    assert [o.extra["lead_in"] for o in tt] == ["yes", "yes", "no"]
    # a source without lead-ins (the toy codes) has no breakdown, not an all-"no" one
    plain = judge(EvalItem("p", "turn_taking", 100, ((5, 30),)), [], never_correct, L)
    assert "lead_in" not in plain.extra
    s = summarize(outs + tt + [plain])
    h = s["by_evidence"]["hesitation_robustness"]
    assert h["pause_place after_lead_in"] == {"rate": 0.5, "interval": [0.0, 1.0], "n": 2}
    assert h["pause_place in_question"]["rate"] == 0.0
    assert h["pause_place bare_question"]["rate"] == 1.0
    assert h["pause_frames 11-15"]["n"] == 5  # the length bins stay beside them
    sr = s["by_evidence"]["SR@3s turn_taking"]
    assert sr["lead_in yes"]["rate"] == 0.5 and sr["lead_in no"]["n"] == 1
    assert "| SR@3s turn_taking, lead_in yes | 50.0 %" in markdown_summary({"model": s})
    # without lead-in information the breakdowns are left out, the length bins are not
    bare = summarize([judge(EvalItem("q", "hesitation", 100, ((10, 60),), pause=(30, 42)),
                            [], never_correct, L)])  # fmt: skip
    assert "SR@3s turn_taking" not in bare["by_evidence"]
    assert list(bare["by_evidence"]["hesitation_robustness"]) == [
        "pause_frames 0-10",
        "pause_frames 11-15",
        "pause_frames >= 16",
    ]


def test_the_length_cue_is_a_check_line_in_words():
    from bayling_duplex.eval.report import check_lines

    items = [
        EvalItem("t0", "turn_taking", 100, ((0, 20),)),
        EvalItem("h0", "hesitation", 100, ((0, 40),), pause=(10, 20)),
    ]
    (line,) = check_lines({"hesitation_length_cue": length_cue(items, resamples=50)})
    assert line.startswith("hesitation length cue (no model; pauses: 1, first-turn ends: 2)")
    assert "AUC 1.000" in line and "keeps 100.0 % of the pauses" in line
