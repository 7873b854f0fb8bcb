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
  is not cut by it: its ``[EPAD]`` comes after the block boundary where an
  interruption at that onset would have cut it (judged only where the reference
  answer runs past that boundary, so a natural end cannot pass for a cut);
* hesitation robustness — no response starts inside the pause of a turn.
"""

from __future__ import annotations

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


def judge(
    item: EvalItem,
    events: list[ResponseEvent],
    is_correct,
    layout: BlockLayout,
    window_s: float = 3.0,
    isr_s: float = 2.0,
) -> DialogueOutcome:
    """Score one decoded dialogue. ``is_correct(key, text_ids)`` checks an answer."""
    fr = layout.frame_s
    times = event_times(events, layout)
    out = DialogueOutcome(item.id, item.scenario)
    t_start, t_end = item.turns[0][0] * fr, item.turns[0][1] * fr
    out.turn_end_s = t_end
    first = next(((s, e, ev) for s, e, ev in times if s >= t_start), None)
    if item.answer_keys:
        out.correct = False  # until a response shows the answer
    if first is not None:
        out.onset_s = first[0]
        out.latency_s = first[0] - t_end
        out.taken = (
            "early" if first[0] < t_end else ("success" if first[0] <= t_end + window_s else "late")
        )
        if item.answer_keys:
            out.correct = is_correct(item.answer_keys[0], first[2].text_ids)
    if item.scenario == "interruption" and len(item.turns) > 1:
        u_s = item.turns[1][0] * fr
        playing = next(((s, e) for s, e, _ in times if s <= u_s and (e is None or e > u_s)), None)
        out.speaking_at_interruption = playing is not None
        if playing is not None:
            stop = playing[1]
            out.overlap_s = None if stop is None else stop - u_s
            out.interrupted_ok = stop is not None and stop - u_s <= isr_s
    if item.backchannel is not None:
        B = layout.frames_per_block
        cut = (item.backchannel[0] // B + 1) * B  # where an interruption would cut (format §6)
        b_s = item.backchannel[0] * fr
        playing = next(((s, e) for s, e, _ in times if s <= b_s and (e is None or e > b_s)), None)
        if playing is not None and (item.answer_end is None or item.answer_end > cut):
            out.backchannel_kept = playing[1] is None or playing[1] > cut * fr
    if item.pause is not None:
        p_s = item.pause[0] * fr
        out.hesitation_kept = not any(p_s <= s < t_end for s, _, _ in times)
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


def _den(n: int, over: str, of: int | None = None) -> dict:
    d = {"n": n, "over": over}
    if of is not None:
        d["of"] = of
    return d


def summarize(outcomes: list[DialogueOutcome]) -> dict:
    """Aggregate figures over all dialogues (each metric over the dialogues it applies to).

    ``denominators[metric]`` says what each figure is over: ``n`` dialogues (``of``
    so many in its set where only some are judged) and, in words, which ones."""
    turns = [o for o in outcomes if o.scenario in ("turn_taking", "hesitation", "backchannel")]
    inter = [o for o in outcomes if o.scenario == "interruption"]
    applicable = [o for o in inter if o.speaking_at_interruption]
    silent = len(inter) - len(applicable)
    successes = [o.latency_s for o in turns if o.taken == "success"]
    overlaps = [o.overlap_s for o in applicable if o.overlap_s is not None]
    bcs = [o for o in outcomes if o.scenario == "backchannel"]
    bc_judged = [o.backchannel_kept for o in outcomes if o.backchannel_kept is not None]
    hes_judged = [o.hesitation_kept for o in outcomes if o.hesitation_kept is not None]
    keyed = [o.correct for o in outcomes if o.correct is not None]
    by_set = {
        s: sum(o.scenario == s for o in turns) for s in ("turn_taking", "backchannel", "hesitation")
    }
    turn_sets = ", ".join(f"{k} {v}" for k, v in by_set.items() if v) or "none"
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
            "answer_accuracy": _den(len(keyed), "dialogues with an answer key (first turn)"),
        },
    }
