"""The evaluation's report: report.json, summary.md and the plots (latency.png, timelines.png)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from bayling_duplex.eval.metrics import DialogueOutcome, EvalItem
from bayling_duplex.format.layout import BlockLayout


def flat_metrics(summary: dict, prefix: str = "behaviour") -> dict[str, float]:
    """The headline figures as flat ``name: value`` pairs for a training logger."""
    tt, it = summary["turn_taking"], summary["interruption"]
    pairs = {
        "SR@3s": tt["SR@3s"],
        "early_start": tt["early_start_rate"],
        "no_response": tt["no_response_rate"],
        "ISR@2s": it["ISR@2s"],
        "overlap_mean_s": (it["overlap_s"] or {}).get("mean"),
        "latency_mean_s": (tt["latency_s"] or {}).get("mean"),
        "accuracy": summary["answer_accuracy"],
    }
    return {f"{prefix}/{k}": float(v) for k, v in pairs.items() if v is not None}


def write_report(
    out: Path,
    reports: dict[str, dict],
    outcomes: dict[str, list[DialogueOutcome]],
    items: list[tuple[EvalItem, np.ndarray]],
    layout: BlockLayout,
    plots: int = 4,
) -> None:
    """``report.json``, ``summary.md``, ``latency.png`` and ``timelines.png`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        name: {"summary": rep, "dialogues": [asdict(o) for o in outcomes[name]]}
        for name, rep in reports.items()
    }
    (out / "report.json").write_text(json.dumps(payload, indent=1))
    (out / "summary.md").write_text(markdown_summary(reports))
    _plots(out, outcomes, items, layout, plots)


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f} %" if pct else f"{v:.2f}"


def markdown_summary(reports: dict[str, dict]) -> str:
    names = list(reports)
    rows = [
        ("turn-taking SR@3s", lambda r: _fmt(r["turn_taking"]["SR@3s"])),
        ("early-start rate", lambda r: _fmt(r["turn_taking"]["early_start_rate"])),
        ("no-response rate", lambda r: _fmt(r["turn_taking"]["no_response_rate"])),
        (
            "latency mean / median (s)",
            lambda r: (
                "–"
                if not r["turn_taking"]["latency_s"]
                else f"{r['turn_taking']['latency_s']['mean']:.2f} / {r['turn_taking']['latency_s']['median']:.2f}"
            ),
        ),
        (
            "speaking at interruption onset",
            lambda r: _fmt(r["interruption"]["speaking_at_onset_rate"]),
        ),
        ("interruption ISR@2s", lambda r: _fmt(r["interruption"]["ISR@2s"])),
        (
            "overlap mean / median / p90 (s)",
            lambda r: (
                "–"
                if not r["interruption"]["overlap_s"]
                else "{mean:.2f} / {median:.2f} / {p90:.2f}".format(
                    **r["interruption"]["overlap_s"]
                )
            ),
        ),
        ("backchannel robustness", lambda r: _fmt(r["backchannel_robustness"])),
        ("hesitation robustness", lambda r: _fmt(r["hesitation_robustness"])),
        ("answer accuracy", lambda r: _fmt(r["answer_accuracy"])),
        ("dialogues", lambda r: str(r["dialogues"])),
    ]
    lines = [
        "# Behaviour evaluation",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(get(reports[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"


def _plots(
    out: Path, outcomes: dict[str, list[DialogueOutcome]], items, layout: BlockLayout, n: int
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, outs in outcomes.items():
        lat = [o.latency_s for o in outs if o.latency_s is not None and o.scenario == "turn_taking"]
        if lat:
            ax.hist(lat, bins=np.arange(-3, 6.01, 0.16), alpha=0.6, label=name)
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(3, color="k", lw=0.8, ls="--")
    ax.set_xlabel("response onset − turn end (s)")
    ax.set_ylabel("dialogues")
    ax.set_title("Turn-taking latency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)

    name = next(iter(outcomes))
    chosen = []
    for scenario in ("turn_taking", "interruption", "backchannel", "hesitation"):
        chosen += [i for i, (it, _) in enumerate(items) if it.scenario == scenario][
            : max(1, n // 4)
        ]
    fig, axes = plt.subplots(len(chosen), 1, figsize=(9, 0.9 * len(chosen) + 0.6), squeeze=False)
    for ax, i in zip(axes[:, 0], chosen, strict=True):
        item, o = items[i][0], outcomes[name][i]
        fr = layout.frame_s
        for s, e in item.turns:
            ax.barh(1, (e - s) * fr, left=s * fr, color="tab:blue", height=0.6)
        if item.pause:  # the hesitation pause inside the turn
            ax.barh(
                1,
                (item.pause[1] - item.pause[0]) * fr,
                left=item.pause[0] * fr,
                color="white",
                height=0.62,
            )
        if item.backchannel:
            ax.barh(
                1,
                (item.backchannel[1] - item.backchannel[0]) * fr,
                left=item.backchannel[0] * fr,
                color="tab:cyan",
                height=0.6,
            )
        for start, stop, _ in o.extra["responses"]:
            end = stop if stop is not None else item.num_frames * fr
            ax.barh(0, end - start, left=start, color="tab:orange", height=0.6)
        ax.set_yticks([0, 1], ["model", "user"])
        ax.set_xlim(0, item.num_frames * fr)
        ax.set_title(
            f"{item.id} ({o.taken}{', ISR ok' if o.interrupted_ok else ''})", fontsize=8, loc="left"
        )
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out / "timelines.png", dpi=110)
    plt.close(fig)
