"""95 % bootstrap intervals in the summary and the paired comparison of two runs: seeded,
degenerate where they must be, fast; the summary's older figures unchanged."""

from __future__ import annotations

import dataclasses
import random
import time

import numpy as np
import pytest

from bayling_duplex.eval.comparison import FIGURES, compare
from bayling_duplex.eval.metrics import (
    DialogueOutcome,
    bootstrap_interval,
    paired_difference,
    summarize,
)
from bayling_duplex.eval.report import latency_label, markdown_summary, paired_table

D = DialogueOutcome


def outcomes() -> list[DialogueOutcome]:
    """A hand-made evaluation: every figure of the summary has a few dialogues."""
    return [
        D("t1", "turn_taking", 3.0, 2.5, 0.5, "success", correct=True),
        D("t2", "turn_taking", 4.2, 2.4, 1.8, "success", correct=False),
        D("t3", "turn_taking", 2.0, 2.4, -0.4, "early", correct=False),
        D("t4", "turn_taking", 6.0, 2.4, 3.6, "late", correct=True),
        D("t5", "turn_taking", None, 2.4, None, "none", correct=False),
        D("h1", "hesitation", 3.1, 2.8, 0.3, "success", hesitation_kept=True, false_ends=0),
        D("h2", "hesitation", 1.5, 2.8, -1.3, "early", hesitation_kept=False, false_ends=2),
        D("b1", "backchannel", 2.9, 2.4, 0.5, "success", backchannel_kept=True),
        D("b2", "backchannel", 3.0, 2.4, 0.6, "success", backchannel_kept=False),
        D("i1", "interruption", 2.9, 2.4, 0.5, "success", True, 0.4, True),
        D("i2", "interruption", 2.9, 2.4, 0.5, "success", False, 2.5, True),
        D("i3", "interruption", 2.9, 2.4, 0.5, "success", False, None, True),
        D("i4", "interruption", None, 2.4, None, "none", None, None, False),
    ]


# summarize(outcomes()) as computed before the intervals were added
BEFORE = {
    "dialogues": 13,
    "turn_taking": {
        "n": 9,
        "by_set": {"turn_taking": 5, "backchannel": 2, "hesitation": 2},
        "SR@3s": 0.5556,
        "early_start_rate": 0.2222,
        "late_rate": 0.1111,
        "no_response_rate": 0.1111,
        "counts": {"success": 5, "early": 2, "late": 1, "none": 1},
        "latency_s": {"mean": 0.74, "median": 0.5, "p90": 1.32, "n": 5},
    },
    "interruption": {
        "n": 4,
        "speaking_at_onset": 3,
        "not_speaking_at_onset": 1,
        "speaking_at_onset_rate": 0.75,
        "not_speaking_at_onset_rate": 0.25,
        "ISR@2s": 0.3333,
        "stopped_within_2s": 1,
        "never_stopped": 1,
        "overlap_s": {"mean": 1.45, "median": 1.45, "p90": 2.29, "n": 2},
    },
    "backchannel_robustness": 0.5,
    "hesitation_robustness": 0.5,
    "hesitation_false_ends": {"total": 2, "per_dialogue": 1.0, "n": 2},
    "answer_accuracy": 0.4,
    "denominators": {
        "SR@3s": {
            "n": 9,
            "over": "first user turns of the dialogues (turn_taking 5, "
            "backchannel 2, hesitation 2)",
        },
        "latency_s": {"n": 5, "over": "SR@3s successes", "of": 9},
        "speaking_at_onset_rate": {"n": 4, "over": "interruption dialogues"},
        "ISR@2s": {
            "n": 3,
            "over": "interruption dialogues with a response playing at the "
            "onset (1 came while the model was not speaking and are "
            "not judged)",
            "of": 4,
        },
        "overlap_s": {"n": 2, "over": "ISR@2s dialogues whose response stopped at all", "of": 3},
        "backchannel_robustness": {
            "n": 2,
            "over": "backchannel dialogues with a response "
            "playing at the backchannel whose "
            "reference answer runs past the cut",
            "of": 2,
        },
        "hesitation_robustness": {"n": 2, "over": "hesitation dialogues"},
        "hesitation_false_ends": {
            "n": 2,
            "over": "dialogues with a hesitation pause "
            "(responses starting between the pause's "
            "start and the turn's end)",
        },
        "answer_accuracy": {"n": 5, "over": "dialogues with an answer key (first turn)"},
    },
}

INTERVAL_KEYS = {
    "SR@3s",
    "early_start_rate",
    "late_rate",
    "no_response_rate",
    "latency_s",
    "speaking_at_onset_rate",
    "not_speaking_at_onset_rate",
    "ISR@2s",
    "overlap_s",
    "backchannel_robustness",
    "hesitation_robustness",
    "hesitation_false_ends",
    "answer_accuracy",
}


def flip_successes(outs: list[DialogueOutcome], ids=None) -> list[DialogueOutcome]:
    """The same dialogues with the successes (of ``ids``, or all) turned into no response."""
    return [
        dataclasses.replace(o, taken="none", onset_s=None, latency_s=None)
        if o.taken == "success" and (ids is None or o.id in ids)
        else o
        for o in outs
    ]


def many(n: int, seed: int = 0) -> list[DialogueOutcome]:
    rnd = random.Random(seed)
    outs = []
    for i in range(n):
        sc = ("turn_taking", "interruption", "backchannel", "hesitation")[i % 4]
        taken = rnd.choice(["success"] * 7 + ["early", "late", "none"])
        o = D(f"d{i}", sc, 3.0, 2.5, rnd.uniform(-1, 4), taken, correct=rnd.random() < 0.8)
        if sc == "interruption":
            o.speaking_at_interruption = rnd.random() < 0.8
            if o.speaking_at_interruption:
                o.overlap_s = rnd.uniform(0.1, 3)
                o.interrupted_ok = o.overlap_s <= 2
        if sc == "backchannel":
            o.backchannel_kept = rnd.random() < 0.7
        if sc == "hesitation":
            o.false_ends = rnd.choice([0, 0, 1, 2])
            o.hesitation_kept = o.false_ends == 0
        outs.append(o)
    return outs


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_is_seeded():
    values = np.random.default_rng(1).normal(size=50)
    first = bootstrap_interval(values, seed=3)
    assert bootstrap_interval(values, seed=3) == first
    assert bootstrap_interval(values, seed=4) != first
    assert bootstrap_interval(values, "median", seed=3) == bootstrap_interval(
        values, "median", seed=3
    )


@pytest.mark.parametrize("n", [1, 2, 7, 60, 300])
def test_interval_contains_the_estimate(n):
    rng = np.random.default_rng(n)
    for values in (rng.random(n) < 0.3, rng.exponential(size=n)):
        lo, hi = bootstrap_interval(values)
        assert lo <= values.mean() <= hi
        lo, hi = bootstrap_interval(values, "median")
        assert lo <= np.median(values) <= hi


def test_a_rate_of_0_or_1_has_a_point_interval_and_nothing_has_none():
    assert bootstrap_interval([True] * 40) == [1.0, 1.0]
    assert bootstrap_interval([False] * 40) == [0.0, 0.0]
    assert bootstrap_interval([2.5]) == [2.5, 2.5]
    assert bootstrap_interval([]) is None


@pytest.mark.parametrize(
    ("kw", "match"),
    [({"resamples": 0}, "resamples"), ({"level": 1.0}, "level"), ({"stat": "p90"}, "stat")],
)
def test_bad_bootstrap_arguments_fail_naming_them(kw, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_interval([1.0, 2.0], **kw)


def test_wider_at_a_higher_level_and_chunked_like_whole():
    values = np.random.default_rng(2).random(100)
    lo90, hi90 = bootstrap_interval(values, level=0.9)
    lo99, hi99 = bootstrap_interval(values, level=0.99)
    assert lo99 < lo90 < hi90 < hi99
    big = np.random.default_rng(3).random(50_000)  # 2**22 draws per chunk: 83 resamples
    lo, hi = bootstrap_interval(big, resamples=200)
    assert lo < big.mean() < hi and hi - lo < 0.01


def test_paired_difference_is_the_bootstrap_of_the_differences():
    a = [True] * 6 + [False] * 4
    b = [True] * 3 + [False] * 7
    d = paired_difference(a, b)
    assert (d["n"], d["a"], d["b"], d["difference"]) == (10, 0.6, 0.3, -0.3)
    iv = bootstrap_interval(np.subtract(b, a, dtype=float))
    assert d["interval95"] == [round(iv[0], 4), round(iv[1], 4)]
    assert d["interval95"][0] < -0.3 < d["interval95"][1] <= 0


# ----------------------------------------------------------------------------- summary


def test_summary_keeps_every_older_figure_and_adds_intervals():
    s = summarize(outcomes())
    added = ("intervals", "bootstrap", "by_evidence")  # figures added after BEFORE was taken
    assert {k: v for k, v in s.items() if k not in added} == BEFORE
    assert s["bootstrap"] == {
        "level": 0.95,
        "resamples": 2000,
        "seed": 0,
        "method": "percentile bootstrap over each figure's dialogues",
    }
    iv = s["intervals"]
    assert set(iv) == INTERVAL_KEYS
    tt, it = s["turn_taking"], s["interruption"]
    points = {
        "SR@3s": tt["SR@3s"],
        "early_start_rate": tt["early_start_rate"],
        "late_rate": tt["late_rate"],
        "no_response_rate": tt["no_response_rate"],
        "latency_s": tt["latency_s"]["mean"],
        "speaking_at_onset_rate": it["speaking_at_onset_rate"],
        "not_speaking_at_onset_rate": it["not_speaking_at_onset_rate"],
        "ISR@2s": it["ISR@2s"],
        "overlap_s": it["overlap_s"]["mean"],
        "backchannel_robustness": s["backchannel_robustness"],
        "hesitation_robustness": s["hesitation_robustness"],
        "hesitation_false_ends": s["hesitation_false_ends"]["per_dialogue"],
        "answer_accuracy": s["answer_accuracy"],
    }
    for key, point in points.items():
        lo, hi = iv[key]
        assert isinstance(lo, float) and isinstance(hi, float), key
        assert lo <= point <= hi, key
    assert iv["SR@3s"] == [0.2222, 0.8889]  # seed 0, 2000 resamples: pinned
    assert iv["latency_s"] == [0.4, 1.28]
    assert summarize(outcomes()) == s  # seeded: the same report twice
    assert summarize(outcomes(), resamples=500, seed=1)["bootstrap"]["seed"] == 1


def test_a_figure_without_dialogues_has_no_interval():
    s = summarize([D("t", "turn_taking", 3.0, 2.5, 0.5, "success")])
    iv = s["intervals"]
    assert iv["SR@3s"] == [1.0, 1.0] and iv["no_response_rate"] == [0.0, 0.0]
    for key in ("ISR@2s", "overlap_s", "backchannel_robustness", "hesitation_false_ends"):
        assert iv[key] is None, key
    assert summarize([])["intervals"] == dict.fromkeys(INTERVAL_KEYS)


def test_summarize_300_dialogues_takes_well_under_a_second():
    outs = many(300)
    summarize(outs)  # warm up numpy
    start = time.perf_counter()
    summarize(outs)
    assert time.perf_counter() - start < 0.5


# ----------------------------------------------------------------------------- compare


def test_identical_runs_differ_by_exactly_nothing():
    c = compare(outcomes(), outcomes())
    assert c["dialogues"] == 13 and c["unmatched"] == {"a": 0, "b": 0}
    assert set(c["figures"]) == set(FIGURES)
    n = {k: f["n"] for k, f in c["figures"].items()}
    assert n == {
        "SR@3s": 9,
        "early_start": 9,
        "hesitation_kept": 2,
        "hesitation_false_ends": 2,
        "backchannel_kept": 2,
        "ISR@2s": 3,
        "overlap_s": 2,
        "latency_s": 5,
        "answer_correct": 5,
    }
    for name, f in c["figures"].items():
        assert f["a"] == f["b"], name
        assert (f["difference"], f["interval95"], f["clear"]) == (0.0, [0.0, 0.0], False), name


def test_flipping_every_success_is_a_clear_loss_of_all_of_them():
    only_successes = [
        o for o in outcomes() if o.taken == "success" and o.scenario != "interruption"
    ]
    c = compare(only_successes, flip_successes(only_successes))
    sr = c["figures"]["SR@3s"]
    assert (sr["n"], sr["a"], sr["b"], sr["difference"]) == (5, 1.0, 0.0, -1.0)
    assert sr["interval95"] == [-1.0, -1.0] and sr["clear"] is True
    lat = c["figures"]["latency_s"]  # latency only where both succeeded: nowhere
    assert (lat["n"], lat["difference"], lat["interval95"], lat["clear"]) == (0, None, None, False)


def test_a_partial_flip_has_an_interval_around_the_difference():
    a = [D(f"t{i}", "turn_taking", 3.0, 2.5, 0.5, "success") for i in range(20)]
    b = flip_successes(a, {"t0", "t1", "t2", "t3", "t4"})
    sr = compare(a, b)["figures"]["SR@3s"]
    assert (sr["n"], sr["a"], sr["b"], sr["difference"]) == (20, 1.0, 0.75, -0.25)
    lo, hi = sr["interval95"]
    assert -1 <= lo < -0.25 < hi < 0 and sr["clear"] is True  # no dialogue improved
    assert compare(a, b, seed=0) == compare(a, b, seed=0)
    lat = compare(a, b)["figures"]["latency_s"]
    assert (lat["n"], lat["difference"], lat["interval95"]) == (15, 0.0, [0.0, 0.0])


def test_dialogues_pair_by_id_not_by_order():
    a = outcomes()
    b = flip_successes(a, {"t2"})[::-1][:-1]  # reversed, and without t1
    c = compare(a, b, names=("before", "after"))
    assert c["runs"] == {"a": "before", "b": "after"}
    assert c["dialogues"] == 12 and c["unmatched"] == {"a": 1, "b": 0}
    sr = c["figures"]["SR@3s"]
    assert (sr["n"], sr["a"], sr["b"]) == (8, 0.5, 0.375)  # the 8 turns held by both
    assert sr["difference"] == -0.125  # t2 flipped
    with pytest.raises(ValueError, match="repeated"):
        compare(a, [*a, a[0]])


# ----------------------------------------------------------------------------- report


def test_markdown_shows_every_rate_and_mean_with_its_interval():
    s = summarize(outcomes())
    md = markdown_summary({"m": s})
    assert "| turn-taking SR@3s | 55.6 % [22.2, 88.9] (n=9) |" in md
    assert "| latency mean / median (s) | 0.74 [0.40, 1.28] / 0.50 (5 of 9) |" in md
    assert "| interruption ISR@2s | 33.3 % [0.0, 100.0] (3 of 4) |" in md
    assert "| hesitation false ends per dialogue | 1.00 [0.00, 2.00] (n=2) |" in md
    assert "percentile bootstrap over the figure's dialogues (2000 resamples, seed 0)" in md
    old = {k: v for k, v in s.items() if k not in ("intervals", "bootstrap")}
    assert "| turn-taking SR@3s | 55.6 % (n=9) |" in markdown_summary({"old": old})
    assert latency_label("m", s) == "m: mean 0.74 s [0.40, 1.28] (successes)"
    assert latency_label("m", old) == "m: mean 0.74 s (successes)"


def test_paired_table_reads_as_figure_a_b_difference_and_clear():
    only_successes = [
        o for o in outcomes() if o.taken == "success" and o.scenario != "interruption"
    ]
    c = compare(only_successes, flip_successes(only_successes), names=("SFT", "DPO"))
    table = paired_table(c)
    assert table[0] == "| figure | SFT | DPO | difference DPO − SFT [95 % interval] | clear? |"
    assert (
        "| SR@3s success (n=5) | 100.0 % | 0.0 % | -100.0 points [-100.0, -100.0] | yes, worse |"
        in table
    )
    assert "| hesitation kept (n=1) | 100.0 % | 100.0 % | 0.0 points [0.0, 0.0] | no |" in table
    assert "| latency of successes (n=0) | – | – | – | no |" in table


def test_checks_name_the_clear_differences(tmp_path):
    from bayling_duplex.eval.report import check_lines, write_html

    only_successes = [
        o for o in outcomes() if o.taken == "success" and o.scenario != "interruption"
    ]
    lost = compare(only_successes, flip_successes(only_successes), names=("SFT", "DPO"))
    same = compare(only_successes, only_successes, names=("SFT", "DPO"))
    lines = check_lines({"paired": {"DPO vs SFT": lost, "again": same}})
    assert lines == [
        "paired comparison DPO vs SFT (5 dialogues in both): clear differences: "
        "SR@3s success -100.0 points [-100.0, -100.0] (yes, worse)",
        "paired comparison again (5 dialogues in both): no clear difference",
    ]
    page = write_html(
        tmp_path,
        {"m": summarize(only_successes)},
        images=(),
        checks={"paired": {"DPO vs SFT": lost}},
    ).read_text()
    assert "<h3>Paired: DPO vs SFT (5 dialogues in both)</h3>" in page
    assert "<td>-100.0 points [-100.0, -100.0]</td><td>yes, worse</td>" in page
