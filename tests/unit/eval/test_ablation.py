"""The DPO ablation table: runs paired with the SFT and with the baseline run, refusals."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest

from bayling_duplex.cli.ablation import main
from bayling_duplex.eval.ablation import ablation, write_ablation
from bayling_duplex.eval.metrics import DialogueOutcome


def _run(folder, source, early: int, n: int = 40, sft="/runs/sft/a/final"):
    """A run whose DPO starts early in ``early`` of ``n`` turn-taking dialogues (SFT: 20)."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"pairs:\n  source: {source}\nrounds: 1\n")

    def outcomes(k):
        return [
            asdict(DialogueOutcome(f"d{i}", "turn_taking", taken="early" if i < k else "success",
                                   latency_s=None if i < k else 0.4))
            for i in range(n)
        ]  # fmt: skip

    report = {
        "sft": {"checkpoint": {"path": sft}, "dialogues": outcomes(20)},
        "dpo": {"checkpoint": {"path": str(folder / "final")}, "dialogues": outcomes(early)},
    }
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_each_run_is_paired_with_the_sft_and_with_the_gold_run(tmp_path):
    _run(tmp_path / "0", "gold", 20)
    _run(tmp_path / "1", "on_policy", 5)
    _run(tmp_path / "2", "mix", 10)
    out = write_ablation(tmp_path)
    result = json.loads((tmp_path / "ablation.json").read_text())
    assert result["baseline"] == "gold" and set(result["vs_baseline"]) == {"on_policy", "mix"}
    early = result["vs_sft"]["on_policy"]["figures"]["early_start"]
    assert early["difference"] == pytest.approx(-15 / 40) and early["clear"]
    same = result["vs_sft"]["gold"]["figures"]["early_start"]
    assert same["difference"] == 0 and not same["clear"]
    text = out.read_text()
    assert (
        "## Each run − gold" in text
        and "**better**" in text
        and "| early start (down) | 50.00 |" in text
    )


def test_runs_from_different_sft_checkpoints_or_without_reports_are_refused(tmp_path, capsys):
    a = _run(tmp_path / "a", "gold", 20)
    b = _run(tmp_path / "b", "mix", 20, sft="/runs/sft/other/final")
    with pytest.raises(ValueError, match="different SFT"):
        ablation([a, b])
    (tmp_path / "c").mkdir()
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), str(tmp_path / "c")])
    assert e.value.code == 2 and "no report.json" in capsys.readouterr().err
