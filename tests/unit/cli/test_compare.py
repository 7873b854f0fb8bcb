"""``python -m bayling_duplex.cli.compare``: two reports paired by dialogue, refusals named."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from bayling_duplex.cli.compare import main
from bayling_duplex.eval.metrics import DialogueOutcome


def _report(folder, model: str, early: int, n: int = 40, first: int = 0):
    """An eval report whose ``model`` starts early in ``early`` of ``n`` turn-taking dialogues."""
    folder.mkdir(parents=True)
    dialogues = [
        asdict(DialogueOutcome(f"d{i}", "turn_taking", taken="early" if i < first + early else "success",
                               latency_s=None if i < first + early else 0.4))
        for i in range(first, first + n)
    ]  # fmt: skip
    report = {model: {"checkpoint": {"path": "x"}, "dialogues": dialogues}, "checks": {}}
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_two_eval_runs_are_paired_and_the_table_written(tmp_path, capsys):
    a = _report(tmp_path / "default", "model", 20)
    b = _report(tmp_path / "variant", "model", 5)
    main([str(a), str(b / "report.json"), "--out", str(tmp_path / "cmp.md")])
    text = capsys.readouterr().out
    assert "# variant/model − default/model, paired on 40 dialogues" in text
    assert (
        "| early start (down) | 40 | 50.00 | 12.50 | -37.50 pts [" in text and "**better**" in text
    )
    result = json.loads((tmp_path / "cmp.json").read_text())
    early = result["figures"]["early_start"]
    assert early["difference"] == pytest.approx(-15 / 40) and early["clear"]
    assert result["figures"]["latency_s"]["n"] == 20  # only where both succeeded


def test_a_dpo_report_is_read_as_its_dpo_model_and_the_same_report_twice_is_zero(tmp_path, capsys):
    a = _report(tmp_path / "dpo", "dpo", 10)
    main([str(a), str(a), "--b-model", "dpo"])
    out = capsys.readouterr().out
    assert (
        "B:dpo/dpo − A:dpo/dpo" in out
        and "| early start (down) | 40 | 25.00 | 25.00 | +0.00 pts" in out
    )


def test_missing_reports_unknown_models_and_disjoint_sets_fail_with_a_reason(tmp_path, capsys):
    a = _report(tmp_path / "a", "model", 1)
    far = _report(tmp_path / "far", "model", 1, first=100)
    for args, reason in [
        ([str(tmp_path / "none"), str(a)], "no report.json"),
        ([str(a), str(a), "--b-model", "untrained"], "no model 'untrained'"),
        ([str(a), str(far)], "share no dialogue"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2
        assert reason in capsys.readouterr().err
