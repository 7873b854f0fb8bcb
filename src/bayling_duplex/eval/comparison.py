"""Paired comparison of two evaluations of the same dialogues (two checkpoints, or a model
and a baseline): each headline figure under both, the difference and its interval.

Pairing by dialogue id removes the dialogue-to-dialogue spread that two separate intervals
would carry: the bootstrap draws the same dialogues for both runs
(:func:`~bayling_duplex.eval.metrics.paired_difference`). A dialogue counts for a figure
only where the figure applies to it in both runs: latency only where both succeeded,
ISR@2s only where both were speaking at the interruption's onset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bayling_duplex.eval.metrics import DialogueOutcome, paired_difference

TURN_SETS = ("turn_taking", "hesitation", "backchannel")  # whose first turn SR@3s judges


@dataclass(frozen=True)
class PairedFigure:
    """One figure of :func:`compare`: the value of one dialogue's outcome (None where the
    figure does not apply to it), what it is in words, its kind and which way is better."""

    label: str
    value: Callable[[DialogueOutcome], float | None]
    kind: str  # rate (0–1), s (seconds), count (per dialogue)
    better: str  # up, down


def _flag(ok: bool) -> float:
    return 1.0 if ok else 0.0


def _turn(o: DialogueOutcome) -> bool:
    return o.scenario in TURN_SETS


def _speaking(o: DialogueOutcome) -> bool:
    return o.scenario == "interruption" and bool(o.speaking_at_interruption)


# Each figure over the dialogues :func:`~bayling_duplex.eval.metrics.summarize` computes it on.
FIGURES: dict[str, PairedFigure] = {
    "SR@3s": PairedFigure(
        "SR@3s success",
        lambda o: _flag(o.taken == "success") if _turn(o) else None,
        "rate",
        "up",
    ),
    "early_start": PairedFigure(
        "early start",
        lambda o: _flag(o.taken == "early") if _turn(o) else None,
        "rate",
        "down",
    ),
    "hesitation_kept": PairedFigure(
        "hesitation kept",
        lambda o: None if o.hesitation_kept is None else _flag(o.hesitation_kept),
        "rate",
        "up",
    ),
    "hesitation_false_ends": PairedFigure(
        "hesitation false ends per dialogue",
        lambda o: None if o.false_ends is None else float(o.false_ends),
        "count",
        "down",
    ),
    "backchannel_kept": PairedFigure(
        "backchannel kept",
        lambda o: None if o.backchannel_kept is None else _flag(o.backchannel_kept),
        "rate",
        "up",
    ),
    "ISR@2s": PairedFigure(
        "interruption stopped within 2 s",
        lambda o: _flag(bool(o.interrupted_ok)) if _speaking(o) else None,
        "rate",
        "up",
    ),
    "overlap_s": PairedFigure(
        "overlap",
        lambda o: o.overlap_s if _speaking(o) else None,
        "s",
        "down",
    ),
    "latency_s": PairedFigure(
        "latency of successes",
        lambda o: o.latency_s if _turn(o) and o.taken == "success" else None,
        "s",
        "down",
    ),
    "answer_correct": PairedFigure(
        "answer correct",
        lambda o: None if o.correct is None else _flag(o.correct),
        "rate",
        "up",
    ),
}


def _by_id(outcomes: list[DialogueOutcome], run: str) -> dict[str, DialogueOutcome]:
    got = {o.id: o for o in outcomes}
    if len(got) != len(outcomes):
        raise ValueError(f"run {run} has {len(outcomes) - len(got)} repeated dialogue ids")
    return got


def compare(
    outcomes_a: list[DialogueOutcome],
    outcomes_b: list[DialogueOutcome],
    resamples: int = 2000,
    seed: int = 0,
    *,
    names: tuple[str, str] = ("a", "b"),
) -> dict:
    """Every :data:`FIGURES` entry of run ``a`` and run ``b`` on the dialogues both hold.

    Returns ``{"runs": {"a": names[0], "b": names[1]}, "dialogues": matched, "unmatched":
    {"a": k, "b": m}, "figures": {name:
    {"label", "kind", "better", "n", "a", "b", "difference", "interval95", "clear"}},
    "bootstrap": {...}}``: ``a`` and ``b`` the figure's mean (a rate for 0/1 figures) over
    its ``n`` dialogues (those it applies to in both runs), ``difference`` ``b − a``,
    ``interval95`` the 95 % paired percentile bootstrap interval of the difference
    (``resamples``, ``seed``), ``clear`` whether that interval excludes 0. With ``n`` 0 the
    values are None and ``clear`` False. Dialogues are matched by id; a repeated id fails."""
    a, b = _by_id(outcomes_a, "a"), _by_id(outcomes_b, "b")
    both = [i for i in a if i in b]
    figures = {}
    for name, fig in FIGURES.items():
        pairs = [(fig.value(a[i]), fig.value(b[i])) for i in both]
        pairs = [(x, y) for x, y in pairs if x is not None and y is not None]
        d = paired_difference([x for x, _ in pairs], [y for _, y in pairs], resamples, seed)
        iv = d["interval95"]
        figures[name] = {
            "label": fig.label,
            "kind": fig.kind,
            "better": fig.better,
            **d,
            "clear": iv is not None and (iv[0] > 0 or iv[1] < 0),
        }
    return {
        "runs": {"a": names[0], "b": names[1]},
        "dialogues": len(both),
        "unmatched": {"a": len(a) - len(both), "b": len(b) - len(both)},
        "figures": figures,
        "bootstrap": {"level": 0.95, "resamples": resamples, "seed": seed, "paired_by": "id"},
    }
