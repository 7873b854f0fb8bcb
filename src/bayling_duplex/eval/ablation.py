"""A table of DPO runs from the same SFT checkpoint: each run against the SFT, and each run
against a baseline run, paired on the same held-out dialogues with 95 % intervals.

Input: the run folders of a sweep (``runs/dpo/sweeps/<name>/<n>``), each with the
``report.json`` the DPO stage writes (per-dialogue outcomes of ``sft`` and ``dpo``) and
its ``config.yaml``. Runs must share the SFT checkpoint and the evaluation dialogues
(matched by id); a run that differs is refused, naming it.
"""

from __future__ import annotations

import json
from pathlib import Path

from bayling_duplex.eval.comparison import FIGURES, compare
from bayling_duplex.eval.metrics import DialogueOutcome

# the figures of the bars, in table order
TABLE_FIGURES = (
    "latency_s",
    "early_start",
    "hesitation_false_ends",
    "overlap_s",
    "backchannel_kept",
    "SR@3s",
    "ISR@2s",
    "answer_correct",
)


def _outcomes(report: dict, label: str) -> list[DialogueOutcome]:
    return [DialogueOutcome(**d) for d in report[label]["dialogues"]]


def _label(run: Path) -> str:
    """The run's pair source and swept values, from its resolved config."""
    import yaml

    conf = (
        yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    )
    source = (conf.get("pairs") or {}).get("source", "?")
    rounds = conf.get("rounds", 1)
    return f"{source}" + (f" ×{rounds} rounds" if rounds and rounds > 1 else "")


def ablation(runs: list[Path], baseline: str | None = None, resamples: int = 2000) -> dict:
    """``{"runs": [...], "vs_sft": {label: compare}, "vs_baseline": {label: compare}}``.

    ``baseline``: the label of the run the others are compared with (default: the run whose
    pair source is ``gold``, else the first)."""
    loaded = []
    for run in runs:
        report_path = run / "report.json"
        if not report_path.is_file():
            raise FileNotFoundError(f"{run} has no report.json (a DPO run with eval.enabled)")
        report = json.loads(report_path.read_text())
        loaded.append((run, _label(run), report))
    if not loaded:
        raise FileNotFoundError("no runs given")
    sft_paths = {(r["sft"].get("checkpoint") or {}).get("path") for _, _, r in loaded}
    if len(sft_paths) > 1:
        raise ValueError(
            f"the runs start from different SFT checkpoints: {sorted(map(str, sft_paths))}"
        )
    labels = [label for _, label, _ in loaded]
    if len(set(labels)) != len(labels):
        labels = [f"{label} ({run.name})" for run, label, _ in loaded]
    base = baseline or next((lab for lab in labels if lab.startswith("gold")), labels[0])
    if base not in labels:
        raise ValueError(f"baseline {base!r} is none of the runs {labels}")
    dpo = {lab: _outcomes(r, "dpo") for lab, (_, _, r) in zip(labels, loaded, strict=True)}
    sft = _outcomes(loaded[0][2], "sft")
    vs_sft = {lab: compare(sft, o, resamples, names=("SFT", lab)) for lab, o in dpo.items()}
    vs_base = {
        lab: compare(dpo[base], o, resamples, names=(base, lab))
        for lab, o in dpo.items()
        if lab != base
    }
    for lab, c in vs_sft.items():
        if c["unmatched"]["a"] or c["unmatched"]["b"]:
            raise ValueError(
                f"run {lab} was evaluated on other dialogues than the SFT: {c['unmatched']}"
            )
    return {
        "runs": [
            {"label": lab, "path": str(run)}
            for lab, (run, _, _) in zip(labels, loaded, strict=True)
        ],
        "baseline": base,
        "vs_sft": vs_sft,
        "vs_baseline": vs_base,
    }


def difference_cell(f: dict) -> str:
    """One paired difference as a table cell: value [interval], **better**/**worse** if clear."""
    if f["difference"] is None:
        return "–"
    scale, unit = (100, " pts") if f["kind"] == "rate" else (1, "")
    lo, hi = f["interval95"]
    mark = ""
    if f["clear"]:
        better = (f["difference"] > 0) == (f["better"] == "up")
        mark = " **better**" if better else " **worse**"
    return f"{f['difference'] * scale:+.2f}{unit} [{lo * scale:+.2f}, {hi * scale:+.2f}]{mark}"


def markdown(result: dict) -> str:
    """The two tables: each run − SFT, and each run − the baseline run (paired, 95 %)."""
    first = next(iter(result["vs_sft"].values()))
    lines = [
        "# DPO ablation: pair sources from the same SFT checkpoint",
        "",
        f"{first['dialogues']} held-out dialogues, the same for every run; each cell is the paired "
        "difference with its 95 % bootstrap interval (rates in points); **better**/**worse** "
        "where the interval excludes 0.",
        "",
        "## Each run − SFT",
        "",
        "| figure | SFT | " + " | ".join(result["vs_sft"]) + " |",
        "|---|---|" + "---|" * len(result["vs_sft"]),
    ]
    for name in TABLE_FIGURES:
        f0 = first["figures"][name]
        scale = 100 if f0["kind"] == "rate" else 1
        sft = "–" if f0["a"] is None else f"{f0['a'] * scale:.2f}"
        cells = [difference_cell(c["figures"][name]) for c in result["vs_sft"].values()]
        lines.append(
            f"| {FIGURES[name].label} ({f0['better']}) | {sft} | " + " | ".join(cells) + " |"
        )
    if result["vs_baseline"]:
        lines += [
            "",
            f"## Each run − {result['baseline']}",
            "",
            "| figure | " + " | ".join(result["vs_baseline"]) + " |",
            "|---|" + "---|" * len(result["vs_baseline"]),
        ]
        for name in TABLE_FIGURES:
            cells = [difference_cell(c["figures"][name]) for c in result["vs_baseline"].values()]
            better = first["figures"][name]["better"]
            lines.append(f"| {FIGURES[name].label} ({better}) | " + " | ".join(cells) + " |")
    lines += ["", "Runs:", *[f"- {r['label']}: `{r['path']}`" for r in result["runs"]]]
    return "\n".join(lines) + "\n"


def write_ablation(
    sweep: Path, runs: list[Path] | None = None, baseline: str | None = None
) -> Path:
    """``ablation.json`` and ``ablation.md`` in ``sweep`` (its numbered job folders by default)."""
    sweep = Path(sweep)
    if runs is None:
        runs = sorted(
            (p for p in sweep.iterdir() if p.is_dir() and (p / "report.json").is_file()),
            key=lambda p: (len(p.name), p.name),
        )
    result = ablation(runs, baseline)
    (sweep / "ablation.json").write_text(json.dumps(result, indent=1))
    out = sweep / "ablation.md"
    out.write_text(markdown(result))
    return out
