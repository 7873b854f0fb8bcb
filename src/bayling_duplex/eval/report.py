"""The evaluation's report: report.json, summary.md, the plots (latency.png, timelines.png)
and, when asked, report.html (the same figures, the plots and players for a few dialogues)."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
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
    sets: dict[str, dict] | None = None,
    models: dict[str, dict] | None = None,
    listening: list[dict] | None = None,
    html: bool = False,
    checks: dict | None = None,
) -> None:
    """``report.json``, ``summary.md``, ``latency.png`` and ``timelines.png`` in ``out``.

    ``sets``: the per-set counts of :class:`~bayling_duplex.eval.dialogues.EvalSets`;
    ``models``: per report name, what was evaluated (for a checkpoint,
    :func:`bayling_duplex.model.checkpoint.describe`). Both are recorded beside every
    model's summary in report.json and shown in summary.md. With ``html`` or a
    ``listening`` list (:func:`bayling_duplex.eval.listen.write_listening`, its WAVs
    already in ``out``), ``report.html`` too (:func:`write_html`). ``checks``: named
    checks of the evaluation (the no-marker check), in report.json under the first
    report's entry, and in summary.md and report.html: ``checks["paired"]`` maps a name to
    a :func:`~bayling_duplex.eval.comparison.compare` result, shown as a table."""
    out.mkdir(parents=True, exist_ok=True)
    payload = {
        name: {
            "checkpoint": (models or {}).get(name),
            "evalset": sets,
            "summary": rep,
            "dialogues": [asdict(o) for o in outcomes[name]],
        }
        for name, rep in reports.items()
    }
    if checks and payload:
        payload[next(iter(payload))]["checks"] = checks
    (out / "report.json").write_text(json.dumps(payload, indent=1))
    (out / "summary.md").write_text(markdown_summary(reports, sets, models) + _checks_md(checks))
    _plots(out, outcomes, items, layout, plots, reports)
    if html or listening is not None:
        write_html(out, reports, sets, listening, checks=checks)


def check_lines(checks: dict | None) -> list[str]:
    """One line per check, in words."""
    lines = []
    nm = (checks or {}).get("no_marker")
    if nm:
        iv = nm.get("difference_interval95") or [None, None]
        lines.append(
            f"no-marker check ({nm['dialogues']} turn-taking dialogues): SR@3s "
            f"{_fmt(nm['SR@3s_as_built'])} as built, {_fmt(nm['SR@3s_last_frame_removed'])} "
            "with the last frame of every user turn's speech removed; difference "
            f"{_fmt(nm['difference'])} (95 % interval {_fmt(iv[0])} … {_fmt(iv[1])}); "
            f"{'passed' if nm['passed'] else 'FAILED'} (at most {nm['max_loss_points']} points lost)"
        )
    bc = (checks or {}).get("backchannel")
    if bc:
        iv = bc.get("robustness_causal_interval95") or [None, None]
        lines.append(
            f"backchannel check ({bc['dialogues']} judged backchannels, decoded again without "
            f"them): robustness {_fmt(bc['robustness_as_judged'])} as judged; of the "
            f"{bc['not_kept']} responses judged cut, {bc['natural_ends']} end at the same "
            f"time or earlier without the backchannel (not its doing), "
            f"{bc['cut_by_backchannel']} end later without it (cut by it)"
            + (
                f", {bc['differ_before_onset']} differ before its onset"
                if bc["differ_before_onset"]
                else ""
            )
            + f"; robustness counting only the cuts it caused {_fmt(bc['robustness_causal'])} "
            f"(95 % interval {_fmt(iv[0])} … {_fmt(iv[1])})"
        )
    lc = (checks or {}).get("hesitation_length_cue")
    if lc:
        iv, kv = lc["auc_interval95"], lc["pauses_kept_interval95"]
        lines.append(
            f"hesitation length cue (no model; pauses: {lc['pauses']}, first-turn ends: "
            f"{lc['dialogues']}): the frames spoken before a silence tell a pause "
            f"from a turn end with AUC "
            f"{lc['auc']:.3f} (95 % interval {iv[0]:.3f} … {iv[1]:.3f}); a rule that answers "
            f"{_fmt(lc['recall'])} of turn ends by that count alone keeps "
            f"{_fmt(lc['pauses_kept'])} of the pauses (95 % interval {_fmt(kv[0])} … "
            f"{_fmt(kv[1])}): hesitation robustness near that figure needs no more than counting"
        )
    for name, p in ((checks or {}).get("paired") or {}).items():
        clear = [
            f"{f['label']} {_difference(f)} ({_verdict(f)})"
            for f in p["figures"].values()
            if f["clear"]
        ]
        lines.append(
            f"paired comparison {name} ({p['dialogues']} dialogues in both): "
            + ("clear differences: " + "; ".join(clear) if clear else "no clear difference")
        )
    return lines


def _checks_md(checks: dict | None) -> str:
    lines = check_lines(checks)
    if not lines:
        return ""
    md = ["", "## Checks", "", *(f"- {x}" for x in lines)]
    for name, p in ((checks or {}).get("paired") or {}).items():
        md += ["", f"### Paired: {name}", "", *paired_table(p)]
    return "\n".join(md) + "\n"


def _num(kind: str, v: float) -> str:
    return f"{100 * v:.1f}" if kind == "rate" else f"{v:.2f}"


def _diff(f: dict, v: float | None, unit: bool = True) -> str:
    """A difference of figure ``f``: points for a rate, seconds for times, signed."""
    if v is None:
        return "–"
    text = f"{100 * v:+.1f}" if f["kind"] == "rate" else f"{v:+.2f}"
    text = text[1:] if float(text) == 0 else text  # no sign on a zero
    return text + ({"rate": " points", "s": " s"}.get(f["kind"], "") if unit else "")


def _difference(f: dict) -> str:
    """``b − a [low, high]`` of figure ``f`` of a paired comparison."""
    iv = f["interval95"]
    text = _diff(f, f["difference"])
    return text if iv is None else f"{text} [{_diff(f, iv[0], False)}, {_diff(f, iv[1], False)}]"


def _verdict(f: dict) -> str:
    if not f["clear"]:
        return "no"
    up = f["difference"] > 0
    return "yes, better" if up == (f["better"] == "up") else "yes, worse"


def paired_rows(p: dict) -> list[tuple[str, str, str, str, str]]:
    """Per figure of a :func:`~bayling_duplex.eval.comparison.compare` result: ``(figure (n),
    a, b, difference [interval], clear?)`` as text."""
    rows = []
    for f in p["figures"].values():

        def value(v, kind=f["kind"]):
            if v is None:
                return "–"
            return _num(kind, v) + {"rate": " %", "s": " s"}.get(kind, "")

        label = f"{f['label']} (n={f['n']})"
        rows.append((label, value(f["a"]), value(f["b"]), _difference(f), _verdict(f)))
    return rows


def paired_table(p: dict, a: str | None = None, b: str | None = None) -> list[str]:
    """A markdown table of a :func:`~bayling_duplex.eval.comparison.compare` result: figure |
    a | b | difference b − a [95 % interval] | clear? (the interval excludes 0)."""
    runs = p.get("runs", {})
    a, b = a or runs.get("a", "a"), b or runs.get("b", "b")
    lines = [
        f"| figure | {a} | {b} | difference {b} − {a} [95 % interval] | clear? |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in paired_rows(p)]
    unmatched = p.get("unmatched") or {}
    return [
        *lines,
        "",
        f"Paired by dialogue id over {p['dialogues']} dialogues in both runs "
        f"({unmatched.get('a', 0)} only in {a}, {unmatched.get('b', 0)} only in {b}); each "
        "figure over the dialogues it applies to in both; clear: the paired bootstrap "
        "interval excludes 0.",
    ]


def _fmt(v, pct: bool = True) -> str:
    if v is None:
        return "–"
    return f"{100 * v:.1f} %" if pct else f"{v:.2f}"


def _ci(r: dict, key: str, kind: str = "pct") -> str:
    """`` [low, high]``: the 95 % interval of metric ``key`` in report ``r`` (a rate in %,
    ``kind`` "s" or "per" in its own unit), or nothing where the report has none."""
    iv = (r.get("intervals") or {}).get(key)
    if iv is None:
        return ""
    if kind == "pct":
        return f" [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]"
    return f" [{iv[0]:.2f}, {iv[1]:.2f}]"


def _over(r: dict, key: str) -> str:
    """`` (n=…)`` or `` (n of m)``: the denominator of metric ``key`` in report ``r``."""
    d = r.get("denominators", {}).get(key)
    if d is None:
        return ""
    return f" ({d['n']} of {d['of']})" if "of" in d else f" (n={d['n']})"


def _model_line(name: str, m: dict | None) -> str:
    if m is None:
        return f"- **{name}**: not recorded"
    if m.get("untrained"):
        return f"- **{name}**: the untrained backbone ({m.get('backbone', '?')})"
    if m.get("baseline"):
        return f"- **{name}**: {m.get('backbone', '?')}"
    fmt = m.get("format") or {}
    layout = (
        f"{fmt['frames_per_block']}:{fmt['slots_per_block']}:{fmt['frames_per_block']}, "
        f"silence {fmt['silence_codes']}"
        if fmt
        else "?"
    )
    meta = (
        f"stage {m.get('stage') or '?'}, data {m.get('data') or '?'}, "
        f"init {('`' + m['init'] + '`') if m.get('init') else '–'}"
        if m.get("duplex_json")
        else f"no duplex.json (format from {m.get('format_from', 'the config')})"
    )
    steps = m.get("steps")
    return (
        f"- **{name}**: `{m['path']}` — {meta}, "
        f"{'?' if steps is None else steps} steps, format {layout}"
    )


def _set_rows(sets: dict[str, dict]) -> list[str]:
    lines = [
        "| set | requested | built | relabelled | excluded | judged as this set |",
        "|---|---|---|---|---|---|",
    ]
    notes = []
    for name, c in sets.items():
        moved = ", ".join(f"{n} → {to}" for to, n in c["relabelled_to"].items())
        came = ", ".join(f"+{n} from {frm}" for frm, n in c["relabelled_from"].items())
        lines.append(
            f"| {name} | {c['requested']} | {c['built']} | "
            f"{c['relabelled']}{f' ({moved})' if moved else ''} | {c['excluded']} | "
            f"{c['judged']}{f' ({came})' if came else ''} |"
        )
        notes += [f"- {name} relabelled ({n}): {why}" for why, n in c["relabel_reasons"].items()]
        notes += [f"- {name} excluded ({n}): {why}" for why, n in c["excluded_reasons"].items()]
    return lines + (["", *notes] if notes else [])


def markdown_summary(
    reports: dict[str, dict],
    sets: dict[str, dict] | None = None,
    models: dict[str, dict] | None = None,
) -> str:
    """summary.md: what was evaluated, the sets as requested and as built, the metric table
    (every figure with its 95 % interval in brackets, where the summary has one, and its
    denominator) and what each denominator counts."""
    names = list(reports)

    def rate(value, key: str, den: bool = True):
        return lambda r: _fmt(value(r)) + _ci(r, key) + (_over(r, key) if den else "")

    false_ends = any("hesitation_false_ends" in r for r in reports.values())
    rows = [
        ("turn-taking SR@3s", rate(lambda r: r["turn_taking"]["SR@3s"], "SR@3s")),
        (
            "early-start rate",
            rate(lambda r: r["turn_taking"]["early_start_rate"], "early_start_rate", False),
        ),
        ("late rate", rate(lambda r: r["turn_taking"].get("late_rate"), "late_rate", False)),
        (
            "no-response rate",
            rate(lambda r: r["turn_taking"]["no_response_rate"], "no_response_rate", False),
        ),
        (
            "latency mean / median (s)",
            lambda r: (
                "–"
                if not r["turn_taking"]["latency_s"]
                else f"{r['turn_taking']['latency_s']['mean']:.2f}{_ci(r, 'latency_s', 's')} / "
                f"{r['turn_taking']['latency_s']['median']:.2f}" + _over(r, "latency_s")
            ),
        ),
        (
            "speaking at interruption onset",
            rate(lambda r: r["interruption"]["speaking_at_onset_rate"], "speaking_at_onset_rate"),
        ),
        (
            "interruptions while not speaking (not in ISR)",
            lambda r: (
                "–"
                if "not_speaking_at_onset" not in r["interruption"]
                else f"{r['interruption']['not_speaking_at_onset']} of {r['interruption']['n']}"
                f" ({_fmt(r['interruption']['not_speaking_at_onset_rate'])}"
                f"{_ci(r, 'not_speaking_at_onset_rate')})"
            ),
        ),
        ("interruption ISR@2s", rate(lambda r: r["interruption"]["ISR@2s"], "ISR@2s")),
        (
            "overlap mean / median / p90 (s)",
            lambda r: (
                "–"
                if not r["interruption"]["overlap_s"]
                else f"{r['interruption']['overlap_s']['mean']:.2f}{_ci(r, 'overlap_s', 's')}"
                + " / {median:.2f} / {p90:.2f}".format(**r["interruption"]["overlap_s"])
                + _over(r, "overlap_s")
            ),
        ),
        (
            "backchannel robustness",
            rate(lambda r: r["backchannel_robustness"], "backchannel_robustness"),
        ),
        (
            "hesitation robustness",
            rate(lambda r: r["hesitation_robustness"], "hesitation_robustness"),
        ),
        *(
            [
                (
                    "hesitation false ends per dialogue",
                    lambda r: (
                        "–"
                        if (r.get("hesitation_false_ends") or {}).get("per_dialogue") is None
                        else f"{r['hesitation_false_ends']['per_dialogue']:.2f}"
                        + _ci(r, "hesitation_false_ends", "per")
                        + _over(r, "hesitation_false_ends")
                    ),
                )
            ]
            if false_ends
            else []
        ),
        ("answer accuracy", rate(lambda r: r["answer_accuracy"], "answer_accuracy")),
        ("dialogues", lambda r: str(r["dialogues"])),
    ]
    lines = ["# Behaviour evaluation", ""]
    if models:
        lines += ["## Models", "", *(_model_line(n, models.get(n)) for n in names), ""]
    if sets:
        lines += ["## Evaluation sets", "", *_set_rows(sets), ""]
    if models or sets:
        lines += ["## Metrics", ""]
    lines += [
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for label, get in rows:
        lines.append(f"| {label} | " + " | ".join(get(reports[n]) for n in names) + " |")
    boot = next((r["bootstrap"] for r in reports.values() if r.get("bootstrap")), None)
    if boot:
        lines += [
            "",
            f"In brackets: the {100 * boot['level']:.0f} % interval, a percentile bootstrap "
            f"over the figure's dialogues ({boot['resamples']} resamples, seed {boot['seed']}).",
        ]
    lines += _evidence_rows(reports)
    dens = reports[names[0]].get("denominators") if names else None
    if dens:
        lines += ["", "Denominators (n, or n of the set's dialogues):", ""]
        lines += [f"- {k}: {d['over']}" for k, d in dens.items()]
    return "\n".join(lines) + "\n"


def _evidence_rows(reports: dict[str, dict]) -> list[str]:
    """Backchannel and hesitation robustness by what the model could hear (metrics.by_evidence)."""
    names = [n for n, r in reports.items() if r.get("by_evidence")]
    if not names:
        return []
    first = reports[names[0]]["by_evidence"]
    lines = [
        "",
        "By evidence: backchannel robustness by the frames of the backchannel heard before "
        "the boundary where an interruption would cut (1-3: under a quarter second of it); "
        "hesitation robustness by the pause's length in frames and by where it falls (right "
        "after a lead-in, inside a question a lead-in came before, inside a bare question); "
        "SR@3s of the turn-taking set by whether the turn starts with a lead-in:",
        "",
        "| figure, bin | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for figure, bins in first.items():
        for label in bins:
            cells = []
            for n in names:
                b = reports[n]["by_evidence"].get(figure, {}).get(label)
                if not b or not b["n"]:
                    cells.append("–")
                    continue
                iv = b["interval"]
                ci = f" [{100 * iv[0]:.1f}, {100 * iv[1]:.1f}]" if iv else ""
                cells.append(f"{100 * b['rate']:.1f} %{ci} (n={b['n']})")
            lines.append(f"| {figure}, {label} | " + " | ".join(cells) + " |")
    return lines


MODEL_COLOURS = ("tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")


def latency_label(name: str, report: dict | None) -> str:
    """The latency plot's legend entry: the name, and the report's mean latency of the SR@3s
    successes with its 95 % interval where the report has them."""
    lat = (report or {}).get("turn_taking", {}).get("latency_s")
    if not lat:
        return name
    return f"{name}: mean {lat['mean']:.2f} s{_ci(report, 'latency_s', 's')} (successes)"


def _plots(
    out: Path,
    outcomes: dict[str, list[DialogueOutcome]],
    items,
    layout: BlockLayout,
    n: int,
    reports: dict[str, dict] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    for name, outs in outcomes.items():
        lat = [o.latency_s for o in outs if o.latency_s is not None and o.scenario == "turn_taking"]
        if lat:
            label = latency_label(name, (reports or {}).get(name))
            ax.hist(lat, bins=np.arange(-3, 6.01, 0.16), alpha=0.6, label=label)
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(3, color="k", lw=0.8, ls="--")
    ax.set_xlabel("response onset − turn end (s)")
    ax.set_ylabel("dialogues")
    ax.set_title("Turn-taking latency")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "latency.png", dpi=120)
    plt.close(fig)
    timeline_plot(out / "timelines.png", outcomes, items, layout, n)


def timeline_plot(
    path: Path, outcomes: dict[str, list[DialogueOutcome]], items, layout: BlockLayout, n: int
) -> list[str]:
    """User speech and every model's responses for a few dialogues per set; the row labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(outcomes)
    chosen = []
    for scenario in ("turn_taking", "interruption", "backchannel", "hesitation"):
        chosen += [i for i, (it, _) in enumerate(items) if it.scenario == scenario][
            : max(1, n // 4)
        ]
    rows = [*reversed(names), "user"]  # user on top, the models below in report order
    user_y = len(names)
    fig, axes = plt.subplots(
        len(chosen),
        1,
        figsize=(9, (0.45 * len(rows) + 0.45) * len(chosen) + 0.6),
        squeeze=False,
    )
    fr = layout.frame_s
    for ax, i in zip(axes[:, 0], chosen, strict=True):
        item = items[i][0]
        for s, e in item.turns:
            ax.barh(user_y, (e - s) * fr, left=s * fr, color="tab:blue", height=0.6)
        if item.pause:  # the hesitation pause inside the turn
            ax.barh(
                user_y,
                (item.pause[1] - item.pause[0]) * fr,
                left=item.pause[0] * fr,
                color="white",
                height=0.62,
            )
        if item.backchannel:
            ax.barh(
                user_y,
                (item.backchannel[1] - item.backchannel[0]) * fr,
                left=item.backchannel[0] * fr,
                color="tab:cyan",
                height=0.6,
            )
        verdicts = []
        for m, name in enumerate(names):
            o = outcomes[name][i]
            y = len(names) - 1 - m
            for start, stop, _ in o.extra.get("responses", []):
                end = stop if stop is not None else item.num_frames * fr
                ax.barh(
                    y,
                    end - start,
                    left=start,
                    color=MODEL_COLOURS[m % len(MODEL_COLOURS)],
                    height=0.6,
                )
            verdicts.append(f"{name}: {o.taken}{', ISR ok' if o.interrupted_ok else ''}")
        ax.set_yticks(range(len(rows)), rows)
        ax.set_ylim(-0.5, len(rows) - 0.5)
        ax.set_xlim(0, item.num_frames * fr)
        ax.set_title(f"{item.id} ({'; '.join(verdicts)})", fontsize=8, loc="left")
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return rows


# report.html: (label, the value in a summary, kind, its denominator's key, its interval's key)
HTML_ROWS = (
    ("SR@3s", ("turn_taking", "SR@3s"), "pct", "SR@3s", "SR@3s"),
    ("early start", ("turn_taking", "early_start_rate"), "pct", None, "early_start_rate"),
    ("no response", ("turn_taking", "no_response_rate"), "pct", None, "no_response_rate"),
    ("mean latency", ("turn_taking", "latency_s", "mean"), "s", "latency_s", "latency_s"),
    ("ISR@2s", ("interruption", "ISR@2s"), "pct", "ISR@2s", "ISR@2s"),
    (
        "speaking at interruption onset",
        ("interruption", "speaking_at_onset_rate"),
        "pct",
        "speaking_at_onset_rate",
        "speaking_at_onset_rate",
    ),
    ("mean overlap", ("interruption", "overlap_s", "mean"), "s", "overlap_s", "overlap_s"),
    (
        "backchannel robustness",
        ("backchannel_robustness",),
        "pct",
        "backchannel_robustness",
        "backchannel_robustness",
    ),
    (
        "hesitation robustness",
        ("hesitation_robustness",),
        "pct",
        "hesitation_robustness",
        "hesitation_robustness",
    ),
    (
        "hesitation false ends",  # shown only where a summary has them
        ("hesitation_false_ends", "per_dialogue"),
        "per",
        "hesitation_false_ends",
        "hesitation_false_ends",
    ),
    ("answer accuracy", ("answer_accuracy",), "pct", "answer_accuracy", "answer_accuracy"),
)
OPTIONAL_ROWS = {"hesitation false ends"}
PLOTS = (
    ("timelines.png", "Timelines: user speech and every model's responses in a few dialogues"),
    ("latency.png", "Histogram of turn-taking latency (response onset minus turn end)"),
)
STEREO_LABEL = (
    "left: user microphone · right: assistant (re-synthesized from its decoded text "
    "at its decoded onsets)"
)
CODES_LABEL = (
    "what the user channel's unit codes sound like (diagnostic: mean mel per unit + "
    "Griffin-Lim, not intelligible)"
)
CSS = """
body { font-family: system-ui, sans-serif; max-width: 64rem; margin: 1.5rem auto;
       padding: 0 1rem; color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; }
thead th { background: #f2f2f2; }
td { text-align: right; font-variant-numeric: tabular-nums; }
th[scope=row] { text-align: left; font-weight: normal; }
.n, .note { color: #777; font-size: 0.85em; }
.ci { color: #555; font-size: 0.85em; }
img { max-width: 100%; border: 1px solid #ddd; }
.dialogue { border-top: 1px solid #ddd; padding: 0.5rem 0; }
.dialogue h3 { margin: 0.3rem 0; font-size: 1rem; }
audio { width: 100%; max-width: 40rem; }
.missing { color: #b00; }
"""


def _value(r: dict, path: tuple[str, ...]):
    v = r
    for k in path:
        v = v.get(k) if isinstance(v, dict) else None
    return v


def _cell(r: dict, path: tuple[str, ...], kind: str, den: str | None, ci: str) -> str:
    v = _value(r, path)
    if v is None:
        return "<td>–</td>"
    text = {"pct": f"{100 * v:.1f} %", "s": f"{v:.2f} s", "per": f"{v:.2f} per dialogue"}[kind]
    n = _over(r, den) if den else ""
    iv = _ci(r, ci, kind)
    return (
        f"<td>{html.escape(text)}"
        + (f'<span class="ci">{html.escape(iv)}</span>' if iv else "")
        + (f'<span class="n">{html.escape(n)}</span>' if n else "")
        + "</td>"
    )


def _metric_table(reports: dict[str, dict]) -> list[str]:
    e = html.escape
    lines = [
        '<table class="metrics">',
        "<thead><tr><th>metric</th>"
        + "".join(f"<th>{e(n)}</th>" for n in reports)
        + "</tr></thead>",
        "<tbody>",
    ]
    for label, path, kind, den, ci in HTML_ROWS:
        if label in OPTIONAL_ROWS and all(path[0] not in r for r in reports.values()):
            continue
        cells = "".join(_cell(r, path, kind, den, ci) for r in reports.values())
        lines.append(f'<tr><th scope="row">{e(label)}</th>{cells}</tr>')
    cells = "".join(f"<td>{e(str(r.get('dialogues', '–')))}</td>" for r in reports.values())
    lines += [f'<tr><th scope="row">dialogues</th>{cells}</tr>', "</tbody>", "</table>"]
    boot = next((r["bootstrap"] for r in reports.values() if r.get("bootstrap")), None)
    if boot:
        lines.append(
            f'<p class="note">In brackets: the {100 * boot["level"]:.0f} % interval, a '
            "percentile bootstrap over the figure's dialogues "
            f"({boot['resamples']} resamples, seed {boot['seed']}).</p>"
        )
    return lines


def _paired_html(name: str, p: dict) -> list[str]:
    e = html.escape
    runs = p.get("runs", {})
    a, b = runs.get("a", "a"), runs.get("b", "b")
    head = ("figure", a, b, f"difference {b} − {a} [95 % interval]", "clear?")
    return [
        f"<h3>Paired: {e(name)} ({p['dialogues']} dialogues in both)</h3>",
        '<table class="paired">',
        "<thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
        *(
            f'<tr><th scope="row">{e(row[0])}</th>'
            + "".join(f"<td>{e(c)}</td>" for c in row[1:])
            + "</tr>"
            for row in paired_rows(p)
        ),
        "</tbody>",
        "</table>",
    ]


def _sets_table(sets: dict[str, dict]) -> list[str]:
    e = html.escape
    cols = ("requested", "built", "relabelled", "excluded", "judged")
    lines = [
        '<table class="sets">',
        "<thead><tr><th>set</th>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr></thead>",
        "<tbody>",
    ]
    notes = []
    for name, c in sets.items():
        moved = ", ".join(f"{n} → {to}" for to, n in c.get("relabelled_to", {}).items())
        came = ", ".join(f"+{n} from {frm}" for frm, n in c.get("relabelled_from", {}).items())
        extra = {"relabelled": moved, "judged": came}
        cells = "".join(
            f"<td>{e(str(c.get(k, '–')))}"
            + (f'<span class="n"> ({e(extra[k])})</span>' if extra.get(k) else "")
            + "</td>"
            for k in cols
        )
        lines.append(f'<tr><th scope="row">{e(name)}</th>{cells}</tr>')
        notes += [
            f"{name} relabelled ({n}): {why}" for why, n in c.get("relabel_reasons", {}).items()
        ]
        notes += [
            f"{name} excluded ({n}): {why}" for why, n in c.get("excluded_reasons", {}).items()
        ]
    lines += ["</tbody>", "</table>"]
    if notes:
        lines += ['<ul class="note">', *(f"<li>{e(n)}</li>" for n in notes), "</ul>"]
    return lines


def _src(rel: str) -> str:
    """A relative path as an attribute value: URL-quoted, then HTML-escaped."""
    from urllib.parse import quote

    return html.escape(quote(rel), quote=True)


def _player(out: Path, rel: str, label: str) -> list[str]:
    e = html.escape
    if not (out / rel).is_file():
        return [f'<p class="missing">{e(rel)} is missing</p>']
    return [
        "<figure>",
        f"<figcaption>{e(label)}</figcaption>",
        f'<audio controls preload="metadata" src="{_src(rel)}"></audio>',
        "</figure>",
    ]


def _dialogue(out: Path, d: dict) -> list[str]:
    e = html.escape
    model = f" · {d['model']}" if d.get("model") else ""
    lines = [
        '<section class="dialogue">',
        f'<h3>{e(str(d["id"]))} <span class="n">({e(str(d.get("scenario", "?")))}{e(model)})</span></h3>',
        f'<p class="verdict">{e(str(d.get("verdict", "")))}</p>',
        *_player(out, d["wav"], STEREO_LABEL),
    ]
    if d.get("codes_wav"):
        lines += _player(out, d["codes_wav"], CODES_LABEL)
    responses = d.get("responses") or []
    if responses:
        lines.append('<ol class="responses note">')
        for start, stop, text in responses:
            until = "no [EPAD]" if stop is None else f"{stop:.2f} s"
            lines.append(f"<li>{start:.2f} s → {e(until)}: {e(str(text))}</li>")
        lines.append("</ol>")
    return [*lines, "</section>"]


def write_html(
    out: Path,
    reports: dict[str, dict],
    sets: dict[str, dict] | None = None,
    listening: Sequence[dict] | None = None,
    images: Sequence[tuple[str, str]] = PLOTS,
    checks: dict | None = None,
) -> Path:
    """``out/report.html``: one self-contained page linking only to files in ``out``.

    The metric table of every name in ``reports`` (a :func:`~bayling_duplex.eval.metrics.summarize`
    output each; a missing figure shows "–"), the set counts, ``images`` (``(file, alt
    text)`` in ``out``) and, per ``listening`` dialogue, its verdict and players for its
    WAVs (a missing file is flagged, not linked). Every text is HTML-escaped."""
    e = html.escape
    body = ["<h1>Behaviour evaluation</h1>", "<h2>Metrics</h2>", *_metric_table(reports)]
    if checks:
        body += [
            "<h2>Checks</h2>",
            "<ul>",
            *(f"<li>{e(x)}</li>" for x in check_lines(checks)),
            "</ul>",
        ]
        for name, p in (checks.get("paired") or {}).items():
            body += _paired_html(name, p)
    if sets:
        body += ["<h2>Evaluation sets</h2>", *_sets_table(sets)]
    body.append("<h2>Plots</h2>")
    for file, alt in images:
        if (out / file).is_file():
            body.append(f'<figure><img src="{_src(file)}" alt="{e(alt, quote=True)}"></figure>')
        else:
            body.append(f'<p class="missing">{e(file)} is missing</p>')
    if listening:
        body += [
            "<h2>Listen</h2>",
            '<p class="note">The assistant channel is a rendering of the decoded text at the '
            "decoded onsets, cut where the model stopped; not the model's own audio.</p>",
        ]
        for d in listening:
            body += _dialogue(out, d)
    page = [
        "<!doctype html>",
        '<html lang="en">',
        '<head><meta charset="utf-8"><title>Behaviour evaluation</title>',
        f"<style>{CSS}</style></head>",
        "<body>",
        *body,
        "</body>",
        "</html>",
    ]
    path = out / "report.html"
    path.write_text("\n".join(page) + "\n", encoding="utf-8")
    return path
