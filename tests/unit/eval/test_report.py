"""What every report says it measured: the checkpoint, the sets as requested and as built
(relabelled, excluded), each metric's denominator; both models in the timeline plot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import TINY_MODEL, compose_conf, save_tiny_sft

from bayling_duplex.eval.metrics import EvalItem, judge, summarize
from bayling_duplex.format.interleave import FormatSpec, ResponseEvent
from bayling_duplex.format.layout import BlockLayout

L = BlockLayout(10, 5)


def ev(speak_slot: int, epad_slot: int | None) -> ResponseEvent:
    return ResponseEvent(speak_slot, epad_slot, (7,))


def never(key, ids) -> bool:
    return False


def tokenize_with(tok):
    return lambda texts: tok(texts, add_special_tokens=False)["input_ids"]


def test_every_metric_states_its_denominator():
    inter = EvalItem("i", "interruption", 100, ((0, 18), (36, 55)))
    outs = [
        judge(inter, [ev(10, 15)], never, L),  # speaking at the onset, stops in time
        judge(inter, [ev(10, 40)], never, L),  # speaking, stops late
        judge(inter, [ev(10, None)], never, L),  # speaking, never stops
        judge(inter, [], never, L),  # silent at the onset: not judged by ISR
        judge(EvalItem("t", "turn_taking", 100, ((5, 30),)), [ev(10, 12)], never, L),
    ]
    s = summarize(outs)
    it, den = s["interruption"], s["denominators"]
    assert (it["n"], it["speaking_at_onset"], it["not_speaking_at_onset"]) == (4, 3, 1)
    assert it["not_speaking_at_onset_rate"] == 0.25 and it["never_stopped"] == 1
    assert it["ISR@2s"] == pytest.approx(1 / 3, abs=1e-4) and it["stopped_within_2s"] == 1
    assert (den["ISR@2s"]["n"], den["ISR@2s"]["of"]) == (3, 4)
    assert "1 came while the model was not speaking" in den["ISR@2s"]["over"]
    assert (den["overlap_s"]["n"], den["overlap_s"]["of"]) == (2, 3)
    assert den["SR@3s"]["n"] == 1 and "turn_taking 1" in den["SR@3s"]["over"]
    assert s["turn_taking"]["counts"] == {"success": 1, "early": 0, "late": 0, "none": 0}
    assert den["latency_s"] == {"n": 1, "of": 1, "over": "SR@3s successes"}


def test_sets_count_requested_built_relabelled_and_excluded(tiny_backbone):
    from bayling_duplex.eval.dialogues import EvalSetConfig, build_eval_sets

    _, tok, _ = tiny_backbone
    cfg = EvalSetConfig(turn_taking=10, interruption=100, backchannel=20, hesitation=5)
    sets = build_eval_sets(cfg, FormatSpec(L, (0,)), tokenize_with(tok))
    c = sets.counts
    for name, n in (("turn_taking", 10), ("interruption", 100), ("backchannel", 20)):
        assert (
            c[name]["requested"]
            == n
            == c[name]["built"] + c[name]["relabelled"] + c[name]["excluded"]
        )
    # an interruption whose sampled point falls in the answer's last block cuts nothing:
    # synthesis places it as turn-taking; it is counted, with the reason, not hidden
    moved = c["interruption"]["relabelled"]
    assert moved > 0 and c["interruption"]["relabelled_to"] == {"turn_taking": moved}
    assert "last block" in next(iter(c["interruption"]["relabel_reasons"]))
    assert c["turn_taking"]["relabelled_from"]["interruption"] == moved
    judged = {s: sum(i.scenario == s for i, _ in sets.items) for s in c}
    assert judged == {s: c[s]["judged"] for s in c}
    assert judged["interruption"] == c["interruption"]["built"] == 100 - moved
    relabelled = [i for i, _ in sets.items if i.requested != i.scenario]
    assert len(relabelled) == sum(c[s]["relabelled"] for s in c)
    assert all(i.relabelled for i in relabelled)


def test_sets_without_backchannel_clips_are_excluded_not_dropped(tiny_backbone, tmp_path):
    from bayling_duplex.audio.codec import ToyCodec
    from bayling_duplex.data.demo import demo_script
    from bayling_duplex.eval.dialogues import EvalSetConfig, build_eval_sets
    from bayling_duplex.format.records import script_to_json, write_jsonl

    _, tok, _ = tiny_backbone
    path = tmp_path / "scripts.jsonl"
    write_jsonl(path, [script_to_json(demo_script("heldout", i, 0, ToyCodec())) for i in range(3)])
    cfg = EvalSetConfig(
        source="scripts_jsonl",
        path=str(path),
        turn_taking=2,
        interruption=0,
        backchannel=4,
        hesitation=0,
    )
    c = build_eval_sets(cfg, FormatSpec(L, (0,)), tokenize_with(tok)).counts["backchannel"]
    assert (c["requested"], c["built"], c["excluded"]) == (4, 0, 4)
    assert c["excluded_reasons"] == {"the evaluation source has no backchannel clips": 4}


def _outcomes_for(items, offset: int):
    outs = []
    for item, _ in items:
        o = judge(item, [ev(10 + offset, 14 + offset)], never, L)
        o.extra = {"responses": [[L.slot_start_s(10 + offset), L.slot_start_s(14 + offset), "x"]]}
        outs.append(o)
    return outs


def test_summary_md_names_models_sets_and_denominators_and_plots_both(tiny_backbone, tmp_path):
    from bayling_duplex.eval.dialogues import EvalSetConfig, build_eval_sets
    from bayling_duplex.eval.report import timeline_plot, write_report

    _, tok, _ = tiny_backbone
    cfg = EvalSetConfig(turn_taking=2, interruption=12, backchannel=2, hesitation=2)
    sets = build_eval_sets(cfg, FormatSpec(L, (0,)), tokenize_with(tok))
    outcomes = {"sft": _outcomes_for(sets.items, 0), "dpo": _outcomes_for(sets.items, 5)}
    reports = {k: summarize(v) for k, v in outcomes.items()}
    models = {
        "sft": {"path": "/r/sft/a/final", "duplex_json": True, "stage": "sft", "data": "demo"}
        | {"init": None, "steps": 40, "format": FormatSpec().to_json()},
        "dpo": {"path": "/r/dpo/b/final", "duplex_json": True, "stage": "dpo", "data": "demo"}
        | {"init": "/r/sft/a/final", "steps": 2, "format": FormatSpec().to_json()},
    }
    write_report(tmp_path, reports, outcomes, sets.items, L, 4, sets.counts, models)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report) == {"sft", "dpo"}
    assert report["dpo"]["checkpoint"]["init"] == "/r/sft/a/final"
    assert report["sft"]["evalset"]["interruption"]["requested"] == 12
    md = (tmp_path / "summary.md").read_text()
    assert "`/r/sft/a/final` — stage sft, data demo, init –, 40 steps" in md
    assert "init `/r/sft/a/final`, 2 steps" in md
    inter = sets.counts["interruption"]
    assert f"| interruption | 12 | {inter['built']} | {inter['relabelled']}" in md
    assert "interruptions while not speaking (not in ISR)" in md
    assert f"({reports['sft']['denominators']['ISR@2s']['n']} of {inter['judged']})" in md
    assert "- ISR@2s: interruption dialogues with a response playing at the onset" in md
    rows = timeline_plot(tmp_path / "t.png", outcomes, sets.items, L, 4)
    assert rows == ["dpo", "sft", "user"]  # both models under the user's speech
    assert (tmp_path / "timelines.png").stat().st_size > 0


def _run_eval(cwd: Path, *args: str, name: str = "t") -> subprocess.CompletedProcess:
    common = [
        "evalset.turn_taking=2",
        "evalset.interruption=2",
        "evalset.backchannel=1",
        "evalset.hesitation=1",
        "plots=4",
        f"run.name={name}",
        *TINY_MODEL,
    ]
    return subprocess.run(
        [sys.executable, "-m", "bayling_duplex.eval", *common, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _summary(final: Path, **fields) -> None:
    (final.parent / "summary.json").write_text(json.dumps(fields))


def test_eval_records_the_checkpoint_latest_resolved_to(tmp_path):
    conf = compose_conf("eval", TINY_MODEL)
    runs = tmp_path / "runs" / "sft"
    # a throwaway run (0 steps) alone: "latest" refuses it and says why
    throwaway = save_tiny_sft(conf, tmp_path, runs / "zero" / "final")
    _summary(throwaway, steps=0, stopped_early=False, checkpoint=str(throwaway))
    res = _run_eval(tmp_path, "compare_untrained=false", name="refused")
    assert res.returncode == 2
    assert (
        "zero: 0 training steps" in res.stderr
        and "python -m bayling_duplex.train sft" in res.stderr
    )
    real = save_tiny_sft(conf, tmp_path, runs / "real" / "final")
    _summary(real, steps=12, stopped_early=False, checkpoint=str(real))
    _summary(throwaway, steps=0, stopped_early=False, checkpoint=str(throwaway))  # newest
    res = _run_eval(tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "runs" / "eval" / "t"
    report = json.loads((out / "report.json").read_text())
    ck = report["model"]["checkpoint"]
    assert ck["path"] == str(real.resolve())
    assert (ck["stage"], ck["data"], ck["init"], ck["steps"]) == ("sft", "demo", None, 12)
    assert report["untrained"]["checkpoint"]["untrained"] is True
    assert report["model"]["evalset"]["interruption"]["requested"] == 2
    md = (out / "summary.md").read_text()
    assert f"`{real.resolve()}` — stage sft, data demo, init –, 12 steps" in md
    assert "the untrained backbone (model.kind=tiny" in md
    assert "| set | requested | built | relabelled | excluded |" in md
    paired = report["model"]["checks"]["paired"]["model vs untrained"]
    assert paired["runs"] == {"a": "untrained", "b": "model"} and paired["dialogues"] == 6
    assert "### Paired: model vs untrained" in md


def test_eval_names_a_missing_checkpoint(tmp_path):
    res = _run_eval(tmp_path, "checkpoint=/nope")
    assert res.returncode == 2 and "no folder /nope" in res.stderr
    assert "Repo id" not in res.stderr


def test_dpo_before_after_report_names_both_checkpoints(tmp_path):
    from bayling_duplex.model.checkpoint import CheckpointMeta, write_meta
    from bayling_duplex.train.dpo import behaviour_before_after

    conf = compose_conf(
        "dpo",
        [
            *TINY_MODEL,
            "eval.evalset.turn_taking=2",
            "eval.evalset.interruption=2",
            "eval.evalset.backchannel=1",
            "eval.evalset.hesitation=1",
            "eval.plots=4",
        ],
    )
    init = save_tiny_sft(conf, tmp_path, tmp_path / "runs" / "sft" / "a" / "final")
    _summary(init, steps=30, checkpoint=str(init))
    run = tmp_path / "runs" / "dpo" / "b"
    final = save_tiny_sft(conf, tmp_path, run / "final")
    write_meta(final, CheckpointMeta(FormatSpec(), "demo_dpo", "dpo", str(init)))
    summary = {
        "init": str(init),
        "steps": 2,
        "train_pairs": 24,
        "train_seconds": 1.0,
        "pairs": {"train": {"kinds": {"late_start": 24}}},
    }
    result = behaviour_before_after(conf, init, final, FormatSpec(), run, summary)
    assert set(result) == {"sft", "dpo", "delta", "sr_isr_kept", "paired"}
    assert result["paired"]["dialogues"] == 6 and result["paired"]["runs"]["b"] == "DPO"
    report = json.loads((run / "report.json").read_text())
    assert report["sft"]["checkpoint"]["path"] == str(init.resolve())
    assert report["sft"]["checkpoint"]["steps"] == 30
    assert report["dpo"]["checkpoint"]["steps"] == 2  # this run's, not yet in summary.json
    assert report["dpo"]["checkpoint"]["init"] == str(init)
    md = (run / "summary.md").read_text()
    assert f"- before (SFT): `{init.resolve()}` (stage sft, data demo, 30 steps)" in md
    assert (
        f"- after (DPO): `{final.resolve()}` (stage dpo, data demo_dpo, init `{init}`, 2 steps)"
        in md
    )
    # the paired comparison: in report.json's checks and as a table in summary.md
    assert report["sft"]["checks"]["paired"]["DPO vs SFT"] == result["paired"]
    assert "| figure | SFT | DPO | difference DPO − SFT [95 % interval] | clear? |" in md
    assert "| SR@3s success (n=" in md and "% [" in md  # the metric table's intervals


def test_eval_warns_when_its_dialogues_are_not_held_out(tmp_path):
    conf = compose_conf("eval", TINY_MODEL)
    final = save_tiny_sft(conf, tmp_path, tmp_path / "runs" / "sft" / "m" / "final")
    _summary(final, steps=12, stopped_early=False, checkpoint=str(final))
    res = _run_eval(
        tmp_path, "compare_untrained=false", "evalset.split=train", "evalset.voice_split=train"
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout + res.stderr
    # the toy checkpoint has no codec and so no voices: only the questions are named
    assert (
        "evalset.split=train: these dialogues use training questions and lead-ins, so the "
        "figures are a diagnostic, not held-out results" in out
    )
    assert "voice_split=train" not in out
