"""Behaviour metrics of full-duplex decoding (format §8), as pure functions.

Input per dialogue: the user's segments (what was played to the model, in
frames) and the responses read off the generated text channel
(:func:`bayling_duplex.format.interleave.response_events`). Times come from slots:
slot ``j`` of output block ``k`` starts at ``((k+1)·B + j·B/T) × 80 ms``.

* onset of a user turn — start time of the first ``<|assistant|>`` after the turn began;
* SR@3s — the onset lies in ``[turn end, turn end + 3 s]``; early start
  (onset before the end) and no response are reported apart;
* ISR@2s — the response playing at an interruption's onset has its ``[EPAD]``
  at most 2 s after that onset; overlap is ``[EPAD]`` time minus onset;
* backchannel robustness — the response playing when a backchannel starts
  is not cut by it: it is still playing one block (``B`` frames) after the
  backchannel's onset, past the boundary where an interruption at that onset
  would have cut it (judged only where the reference answer runs past that
  boundary, so a natural end cannot pass for a cut);
* hesitation robustness — no response starts inside the pause of a turn; its false
  ends count the responses that start in ``[pause start, turn end)``.

:func:`judge_times` does the scoring on response times in seconds, so anything
that answers in time (the model, or the VAD cascade of
:mod:`bayling_duplex.eval.vad_baseline`) is scored the same way; :func:`judge`
reads the times off the text channel's slots and calls it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from bayling_duplex.format.interleave import ResponseEvent
from bayling_duplex.format.layout import BlockLayout


@dataclass(frozen=True)
class EvalItem:
    """One evaluation dialogue: what the user says where (frames) and what is expected."""

    id: str
    scenario: str  # turn_taking, interruption, backchannel, hesitation
    num_frames: int
    turns: tuple[tuple[int, int], ...]  # user turns [start, end) in frames
    answer_keys: tuple[str, ...] = ()  # per turn: the reference answer to find in the text
    backchannel: tuple[int, int] | None = None
    pause: tuple[int, int] | None = None  # hesitation pause [start, end) inside turns[0]
    answer_end: int | None = None  # frame where the reference answer to turns[0] ends
    requested: str | None = None  # the set it was built for (None: the same as scenario)
    relabelled: str | None = None  # why synthesis placed it as ``scenario`` instead
    answer_s: tuple[float, ...] = ()  # per turn: the reference answer's duration (seconds)
    # per turn: frames of a lead-in before the question proper (0: none; empty: unknown)
    lead_in_frames: tuple[int, ...] = ()


@dataclass
class DialogueOutcome:
    id: str
    scenario: str
    onset_s: float | None = None  # of the first turn
    turn_end_s: float = 0.0
    latency_s: float | None = None
    taken: str = "none"  # success, early, late, none
    interrupted_ok: bool | None = None
    overlap_s: float | None = None
    speaking_at_interruption: bool | None = None
    backchannel_kept: bool | None = None
    hesitation_kept: bool | None = None
    false_ends: int | None = None  # responses starting in [pause start, turn end); None: no pause
    correct: bool | None = None
    extra: dict = field(default_factory=dict)


def event_times(
    events: list[ResponseEvent], layout: BlockLayout
) -> list[tuple[float, float | None, ResponseEvent]]:
    return [
        (
            layout.slot_start_s(e.speak_slot),
            layout.slot_start_s(e.epad_slot) if e.epad_slot is not None else None,
            e,
        )
        for e in events
    ]


# One response in time: (start_s, end_s, text_ids). end_s None: it never stopped;
# text_ids None: its content is not judged.
ResponseTimes = tuple[float, float | None, Sequence[int] | None]


def judge(
    item: EvalItem,
    events: list[ResponseEvent],
    is_correct,
    layout: BlockLayout,
    window_s: float = 3.0,
    isr_s: float = 2.0,
) -> DialogueOutcome:
    """Score one decoded dialogue. ``is_correct(key, text_ids)`` checks an answer."""
    times = [(s, e, ev.text_ids) for s, e, ev in event_times(events, layout)]
    return judge_times(item, times, is_correct, layout, window_s, isr_s)


def judge_times(
    item: EvalItem,
    responses: Sequence[ResponseTimes],
    is_correct: Callable[[str, Sequence[int]], bool] | None,
    layout: BlockLayout,
    window_s: float = 3.0,
    isr_s: float = 2.0,
) -> DialogueOutcome:
    """Score one dialogue from its responses in time, in order of start.

    ``responses``: ``(start_s, end_s | None, text_ids | None)`` per response, seconds
    from frame 0; ``end_s`` None: it never stopped. ``is_correct(key, text_ids)`` checks
    the answer to the first turn; where the responder's content is not modelled
    (``is_correct`` None, or the first response's ``text_ids`` None) ``correct`` stays
    None. ``layout`` gives the frame length and the block boundaries of the
    backchannel cut.
    """
    fr = layout.frame_s
    out = DialogueOutcome(item.id, item.scenario)
    t_start, t_end = item.turns[0][0] * fr, item.turns[0][1] * fr
    out.turn_end_s = t_end
    first = next(((s, e, ids) for s, e, ids in responses if s >= t_start), None)
    if item.answer_keys and is_correct is not None:
        out.correct = False  # until a response shows the answer
    if first is not None:
        out.onset_s = first[0]
        out.latency_s = first[0] - t_end
        out.taken = (
            "early" if first[0] < t_end else ("success" if first[0] <= t_end + window_s else "late")
        )
        if item.answer_keys and is_correct is not None:
            out.correct = None if first[2] is None else is_correct(item.answer_keys[0], first[2])
    if item.scenario == "interruption" and len(item.turns) > 1:
        u_s = item.turns[1][0] * fr
        playing = next(
            ((s, e) for s, e, _ in responses if s <= u_s and (e is None or e > u_s)), None
        )
        out.speaking_at_interruption = playing is not None
        B = layout.frames_per_block
        onset = item.turns[1][0]
        out.extra["interruption_frames_before_cut"] = int((onset // B + 1) * B - onset)
        if playing is not None:
            stop = playing[1]
            out.overlap_s = None if stop is None else stop - u_s
            out.interrupted_ok = stop is not None and stop - u_s <= isr_s
    if item.backchannel is not None:
        B = layout.frames_per_block
        cut = (item.backchannel[0] // B + 1) * B  # where an interruption would cut (format §6)
        b_s = item.backchannel[0] * fr
        playing = next(
            ((s, e) for s, e, _ in responses if s <= b_s and (e is None or e > b_s)), None
        )
        if playing is not None and (item.answer_end is None or item.answer_end > cut):
            # still playing one block after the onset: a block-aligned model that stops at
            # the cut, or a cascade that stops any time within that block, was cut by it
            out.backchannel_kept = playing[1] is None or playing[1] > b_s + B * fr
            # frames of it heard before the cut: all a block-aligned model has to go on
            out.extra["backchannel_frames_before_cut"] = int(cut - item.backchannel[0])
            out.extra["backchannel_frames"] = int(item.backchannel[1] - item.backchannel[0])
    if item.lead_in_frames:
        out.extra["lead_in"] = "yes" if item.lead_in_frames[0] else "no"
    if item.pause is not None:
        p_s = item.pause[0] * fr
        out.false_ends = sum(p_s <= s < t_end for s, _, _ in responses)
        out.hesitation_kept = out.false_ends == 0
        out.extra["pause_frames"] = int(item.pause[1] - item.pause[0])
        if item.lead_in_frames:
            lead = item.lead_in_frames[0]
            at = item.pause[0] - item.turns[0][0]  # frames of the turn spoken before it
            out.extra["pause_place"] = (
                "bare_question" if not lead else ("after_lead_in" if at <= lead else "in_question")
            )
    return out


def _rate(xs: list[bool]) -> float | None:
    return round(float(np.mean(xs)), 4) if xs else None


def _stats(xs: list[float]) -> dict | None:
    if not xs:
        return None
    a = np.asarray(xs)
    return {
        "mean": round(float(a.mean()), 3),
        "median": round(float(np.median(a)), 3),
        "p90": round(float(np.percentile(a, 90)), 3),
        "n": len(xs),
    }


def _round(iv: list[float] | None, digits: int) -> list[float] | None:
    return None if iv is None else [round(iv[0], digits), round(iv[1], digits)]


def _den(n: int, over: str, of: int | None = None) -> dict:
    d = {"n": n, "over": over}
    if of is not None:
        d["of"] = of
    return d


def summarize(outcomes: list[DialogueOutcome], resamples: int = 2000, seed: int = 0) -> dict:
    """Aggregate figures over all dialogues (each metric over the dialogues it applies to).

    ``denominators[metric]`` says what each figure is over: ``n`` dialogues (``of``
    so many in its set where only some are judged) and, in words, which ones.
    ``intervals[metric]`` is its 95 % percentile bootstrap interval ``[low, high]`` over
    those same dialogues (:func:`bootstrap_interval`, ``resamples`` and ``seed`` as given,
    recorded in ``bootstrap``), None where there are none: of the rate, or for
    ``latency_s`` and ``overlap_s`` of the mean (seconds), for ``hesitation_false_ends``
    of the false ends per dialogue."""
    turns = [o for o in outcomes if o.scenario in ("turn_taking", "hesitation", "backchannel")]
    inter = [o for o in outcomes if o.scenario == "interruption"]
    applicable = [o for o in inter if o.speaking_at_interruption]
    silent = len(inter) - len(applicable)
    successes = [o.latency_s for o in turns if o.taken == "success"]
    overlaps = [o.overlap_s for o in applicable if o.overlap_s is not None]
    bcs = [o for o in outcomes if o.scenario == "backchannel"]
    bc_judged = [o.backchannel_kept for o in outcomes if o.backchannel_kept is not None]
    hes_judged = [o.hesitation_kept for o in outcomes if o.hesitation_kept is not None]
    false_ends = [o.false_ends for o in outcomes if o.false_ends is not None]
    keyed = [o.correct for o in outcomes if o.correct is not None]
    by_set = {
        s: sum(o.scenario == s for o in turns) for s in ("turn_taking", "backchannel", "hesitation")
    }
    turn_sets = ", ".join(f"{k} {v}" for k, v in by_set.items() if v) or "none"

    def iv(xs: Sequence[float], digits: int = 4) -> list[float] | None:
        return _round(bootstrap_interval(xs, resamples=resamples, seed=seed), digits)

    intervals = {
        "SR@3s": iv([o.taken == "success" for o in turns]),
        "early_start_rate": iv([o.taken == "early" for o in turns]),
        "late_rate": iv([o.taken == "late" for o in turns]),
        "no_response_rate": iv([o.taken == "none" for o in turns]),
        "latency_s": iv(successes, 3),  # the mean, rounded like it
        "speaking_at_onset_rate": iv([bool(o.speaking_at_interruption) for o in inter]),
        "not_speaking_at_onset_rate": iv([not o.speaking_at_interruption for o in inter]),
        "ISR@2s": iv([bool(o.interrupted_ok) for o in applicable]),
        "overlap_s": iv(overlaps, 3),
        "backchannel_robustness": iv(bc_judged),
        "hesitation_robustness": iv(hes_judged),
        "hesitation_false_ends": iv(false_ends),  # per dialogue
        "answer_accuracy": iv(keyed),
    }
    return {
        "dialogues": len(outcomes),
        "turn_taking": {
            "n": len(turns),
            "by_set": by_set,
            "SR@3s": _rate([o.taken == "success" for o in turns]),
            "early_start_rate": _rate([o.taken == "early" for o in turns]),
            "late_rate": _rate([o.taken == "late" for o in turns]),
            "no_response_rate": _rate([o.taken == "none" for o in turns]),
            "counts": {
                k: sum(o.taken == k for o in turns) for k in ("success", "early", "late", "none")
            },
            "latency_s": _stats(successes),
        },
        "interruption": {
            "n": len(inter),
            "speaking_at_onset": len(applicable),
            "not_speaking_at_onset": silent,
            "speaking_at_onset_rate": _rate([bool(o.speaking_at_interruption) for o in inter]),
            "not_speaking_at_onset_rate": _rate([not o.speaking_at_interruption for o in inter]),
            "ISR@2s": _rate([bool(o.interrupted_ok) for o in applicable]),
            "stopped_within_2s": sum(bool(o.interrupted_ok) for o in applicable),
            "never_stopped": sum(o.overlap_s is None for o in applicable),
            "overlap_s": _stats(overlaps),
        },
        "backchannel_robustness": _rate(bc_judged),
        "hesitation_robustness": _rate(hes_judged),
        "hesitation_false_ends": {
            "total": sum(false_ends),
            "per_dialogue": round(sum(false_ends) / len(false_ends), 4) if false_ends else None,
            "n": len(false_ends),
        },
        "answer_accuracy": _rate(keyed),
        "denominators": {
            "SR@3s": _den(len(turns), f"first user turns of the dialogues ({turn_sets})"),
            "latency_s": _den(len(successes), "SR@3s successes", len(turns)),
            "speaking_at_onset_rate": _den(len(inter), "interruption dialogues"),
            "ISR@2s": _den(
                len(applicable),
                "interruption dialogues with a response playing at the onset "
                f"({silent} came while the model was not speaking and are not judged)",
                len(inter),
            ),
            "overlap_s": _den(
                len(overlaps), "ISR@2s dialogues whose response stopped at all", len(applicable)
            ),
            "backchannel_robustness": _den(
                len(bc_judged),
                "backchannel dialogues with a response playing at the backchannel whose "
                "reference answer runs past the cut",
                len(bcs),
            ),
            "hesitation_robustness": _den(len(hes_judged), "hesitation dialogues"),
            "hesitation_false_ends": _den(
                len(false_ends),
                "dialogues with a hesitation pause (responses starting between the pause's "
                "start and the turn's end)",
            ),
            "answer_accuracy": _den(len(keyed), "dialogues with an answer key (first turn)"),
        },
        "intervals": intervals,
        "by_evidence": by_evidence(outcomes, resamples, seed),
        "bootstrap": {
            "level": 0.95,
            "resamples": resamples,
            "seed": seed,
            "method": "percentile bootstrap over each figure's dialogues",
        },
    }


# frames of a backchannel heard before the cut (of a block of 10: 1-3 is under a quarter
# second of speech) and hesitation pauses by length (frames of 80 ms)
EVIDENCE_BINS = {
    "backchannel_frames_before_cut": ((1, 3), (4, 6), (7, None)),
    "pause_frames": ((0, 10), (11, 15), (16, None)),
}
# and by what was said before the silence (the speech demo's lead-ins): a hesitation pause
# right after a lead-in ("let me ask you something | what is ..."), inside a question a
# lead-in came before, or inside a bare question (its second half); a turn-taking turn
# with or without a lead-in
EVIDENCE_KINDS = {
    "pause_place": ("after_lead_in", "in_question", "bare_question"),
    "lead_in": ("yes", "no"),
}


def by_evidence(outcomes: list[DialogueOutcome], resamples: int = 2000, seed: int = 0) -> dict:
    """Backchannel robustness by the frames of the backchannel heard before the block
    boundary where an interruption at its onset would cut (all a block-aligned model has
    to tell it from an interruption); hesitation robustness by the pause's length and by
    where it falls (:data:`EVIDENCE_KINDS`); SR@3s of the turn-taking set by whether the
    turn starts with a lead-in: ``{figure: {bin label: {"rate", "interval", "n"}}}``.
    Outcomes without the extras (another judge, a source without lead-ins) are left out
    of that breakdown; a breakdown no outcome has is left out."""
    bc = [o for o in outcomes if o.backchannel_kept is not None]
    hes = [o for o in outcomes if o.hesitation_kept is not None]
    tt = [o for o in outcomes if o.scenario == "turn_taking"]
    judged = [
        ("backchannel_robustness", "backchannel_frames_before_cut",
         [(o.extra.get("backchannel_frames_before_cut"), o.backchannel_kept) for o in bc]),
        ("hesitation_robustness", "pause_frames",
         [(o.extra.get("pause_frames"), o.hesitation_kept) for o in hes]),
        ("hesitation_robustness", "pause_place",
         [(o.extra.get("pause_place"), o.hesitation_kept) for o in hes]),
        ("SR@3s turn_taking", "lead_in",
         [(o.extra.get("lead_in"), o.taken == "success") for o in tt]),
    ]  # fmt: skip
    out: dict = {}

    def cell(xs: list[bool]) -> dict:
        iv = bootstrap_interval(xs, resamples=resamples, seed=seed)
        return {"rate": _rate(xs), "interval": _round(iv, 4), "n": len(xs)}

    for figure, key, pairs in judged:
        bins = {}
        if key in EVIDENCE_BINS:
            for lo, hi in EVIDENCE_BINS[key]:
                xs = [
                    ok for k, ok in pairs if k is not None and k >= lo and (hi is None or k <= hi)
                ]
                bins[f"{key} {lo}-{hi}" if hi is not None else f"{key} >= {lo}"] = cell(xs)
        elif any(k is not None for k, _ in pairs):
            for kind in EVIDENCE_KINDS[key]:
                bins[f"{key} {kind}"] = cell([ok for k, ok in pairs if k == kind])
        if bins:
            out.setdefault(figure, {}).update(bins)
    return out


def length_cue(
    items: Sequence[EvalItem], recall: float = 0.9, resamples: int = 2000, seed: int = 0
) -> dict | None:
    """How well the *length* of the speech heard before a silence tells a hesitation pause
    from a turn's end (a property of the evaluation set, not of a model). Every dialogue's
    first user turn gives a turn end (the frames spoken in the whole turn, a pause left
    out); each hesitation dialogue gives a pause too (the frames of its turn spoken before
    the pause). Returned: the AUC of that count as a turn-end score, and the share of pauses
    a length-only rule keeps (does not answer in) at the threshold that answers ``recall``
    of the turn ends, each with a 95 % bootstrap interval over dialogues. A set where this
    rule keeps nearly all pauses can be passed by counting frames, without hearing that the
    turn is unfinished. None without hesitation dialogues."""
    rows = []  # (turn end's speech frames, pause's speech frames or nan)
    for it in items:
        if not it.turns:
            continue
        start, end = it.turns[0]
        if it.pause is None:
            rows.append((end - start, np.nan))
        else:
            p0, p1 = it.pause
            rows.append((end - start - (p1 - p0), p0 - start))
    a = np.asarray(rows, dtype=float).reshape(-1, 2)
    if not np.isfinite(a[:, 1]).any():
        return None

    def stats(x: np.ndarray) -> tuple[float, float]:
        ends, pause = x[:, 0], x[np.isfinite(x[:, 1]), 1]
        if not len(pause):
            return np.nan, np.nan
        auc = float(
            (ends[:, None] > pause[None, :]).mean() + 0.5 * (ends[:, None] == pause[None, :]).mean()
        )
        thr = np.quantile(ends, 1 - recall)
        return auc, float((pause < thr).mean())

    auc, kept = stats(a)
    rng = np.random.default_rng(seed)
    boot = np.array([stats(a[rng.integers(0, len(a), len(a))]) for _ in range(resamples)])
    lo, hi = np.nanpercentile(boot, [2.5, 97.5], axis=0)
    pauses = a[np.isfinite(a[:, 1]), 1]
    return {
        "dialogues": len(a),
        "pauses": len(pauses),
        "auc": round(auc, 4),
        "auc_interval95": [round(float(lo[0]), 4), round(float(hi[0]), 4)],
        "recall": recall,
        "pauses_kept": round(kept, 4),
        "pauses_kept_interval95": [round(float(lo[1]), 4), round(float(hi[1]), 4)],
        "pause_speech_frames": _stats(pauses.tolist()),
        "turn_speech_frames": _stats(a[:, 0].tolist()),
    }


def bootstrap_interval(
    values: Sequence[float],
    stat: str = "mean",
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """The ``level`` percentile bootstrap interval ``[low, high]`` of ``stat`` (``"mean"`` or
    ``"median"``) of ``values``, one value per dialogue (a rate: 0/1 or bools).

    The dialogues are resampled with replacement ``resamples`` times from a numpy Generator
    seeded with ``seed``, so the same call gives the same interval. Vectorised: all resamples
    at once, in chunks of at most 2**22 draws. None for no values; a constant list (a rate
    of 0 or 1) gives ``[v, v]``."""
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    reduce = {"mean": np.mean, "median": np.median}.get(stat)
    if reduce is None:
        raise ValueError(f"stat must be 'mean' or 'median', got {stat!r}")
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return None
    rng = np.random.default_rng(seed)
    chunk = max(1, 2**22 // v.size)  # caps the (resamples, n) index array's memory
    est = np.concatenate(
        [
            reduce(v[rng.integers(0, v.size, size=(min(chunk, resamples - i), v.size))], axis=1)
            for i in range(0, resamples, chunk)
        ]
    )
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(est, [tail, 100 - tail])
    return [float(lo), float(hi)]


def paired_difference(
    a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0
) -> dict:
    """Means (rates, for bools) of two paired lists (the same dialogues, in the same order) and
    the difference ``b − a`` with its 95 % bootstrap interval: the dialogues are resampled
    with replacement (seeded) and both lists take the same resampled indices, i.e. the
    bootstrap of the per-dialogue differences."""
    if len(a) != len(b):
        raise ValueError(f"paired lists differ in length: {len(a)} != {len(b)}")
    if not len(a):
        return {"n": 0, "a": None, "b": None, "difference": None, "interval95": None}
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    iv = bootstrap_interval(y - x, resamples=resamples, seed=seed)
    return {
        "n": len(x),
        "a": round(float(x.mean()), 4),
        "b": round(float(y.mean()), 4),
        "difference": round(float(y.mean() - x.mean()), 4),
        "interval95": _round(iv, 4),
    }
