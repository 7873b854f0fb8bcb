"""Behaviour rewards of a decoded window against the reference timeline (docs/dpo.md §2b).

An on-policy pair (:mod:`bayling_duplex.data.onpolicy`) compares continuations of
the same prompt over blocks ``[d, d+N)``. Each continuation is scored here from
its text channel alone: where its responses start and stop, in seconds, against
the reference timeline's user segments and responses (the timing the format's
rules give the dialogue, format §6). Pure functions, no model.

Times: slot ``j`` of output block ``k`` starts at ``((k+1)·B + j·B/T)`` frames
(format §8), so the window's slots span ``[(d+1)·B, (d+N+1)·B)`` frames. A
reference event is *judged in the window* when the reaction to it falls inside
that span (the gold response's start, or its ``[EPAD]``), so every window judges
only the decisions it can show. The components (each ``<= 0``; the reference's
own window scores 0 on every one):

* ``onset`` — a user turn's answer: ``-(t - g)`` seconds for a start at ``t`` after
  the reference start ``g`` (never rewarded for being earlier than ``g``, as long as
  it comes after the turn's end); no start in the window: ``-(window end - g)
  - late_penalty``;
* ``false_start`` — ``-1`` per response that starts while the user is inside a turn
  (an early start, or a start in a hesitation pause);
* ``stop`` — an interruption: ``-(t - g)`` seconds for the ``[EPAD]`` at ``t`` after the
  reference's cut ``g``; none in the window: ``-(window end - g) - late_penalty``;
* ``early_stop`` — ``-1`` for a response that stops before the reference response
  ends with no interruption yet (a backchannel taken for a turn is the common case;
  ``backchannel`` in :attr:`WindowReward.events` says whether one came first);
* ``text`` — ``-(1 - kept)``, ``kept`` the share of the reference window's answer
  tokens the continuation also writes (multiset overlap), where the reference
  writes any.

The total is the weighted sum (:class:`RewardWeights`).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.vocab import DuplexVocab

COMPONENTS = ("onset", "false_start", "stop", "early_stop", "text")


@dataclass
class RewardWeights:
    """Weights of the reward components (0 turns one off) and the censoring penalty."""

    onset: float = 1.0  # per second of answer delay past the reference start
    false_start: float = 1.0  # per response started inside a user turn
    stop: float = 1.0  # per second of stop delay past the reference cut
    early_stop: float = 1.0  # per response stopped before the reference end
    text: float = 0.2  # per share of the reference window's answer tokens missing
    late_penalty: float = 0.5  # added (seconds) when the window shows no start / no stop at all

    def __post_init__(self) -> None:
        bad = {k: v for k, v in self.as_dict().items() if v < 0}
        if bad:
            raise ValueError(f"pairs.onpolicy.rewards: weights must be >= 0, got {bad}")

    def as_dict(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in (*COMPONENTS, "late_penalty")}


@dataclass(frozen=True)
class Reference:
    """The reference timeline's timing: what the continuations are judged against.

    ``user_segments``: ``(start, end, kind)`` in frames, kind ``turn`` or ``backchannel``;
    ``responses``: ``(speak_slot, epad_slot, interrupted)``, the flat text-channel slots of
    each reference response's ``<|assistant|>`` and ``[EPAD]`` (``None``: never closed)."""

    user_segments: tuple[tuple[int, int, str], ...]
    responses: tuple[tuple[int, int | None, bool], ...]

    @classmethod
    def from_row(cls, meta: dict, text_slots: Sequence[int], vocab: DuplexVocab) -> Reference:
        """From a built row: its ``meta`` (:func:`bayling_duplex.data.build._meta_json`) and
        its text channel (where the format put each ``<|assistant|>`` and ``[EPAD]``)."""
        from bayling_duplex.format.interleave import response_events

        events = response_events(text_slots, vocab)
        flags = [bool(i) for _, _, i in meta["responses"]]
        if len(flags) != len(events):
            raise ValueError(
                f"meta lists {len(flags)} responses, the text channel holds {len(events)}"
            )
        return cls(
            tuple((int(s), int(e), str(k)) for s, e, k in meta["user_segments"]),
            tuple((ev.speak_slot, ev.epad_slot, f) for ev, f in zip(events, flags, strict=True)),
        )


@dataclass
class WindowReward:
    """One continuation's reward: the total, each component (unweighted) and what was judged."""

    total: float
    components: dict[str, float] = field(default_factory=dict)
    events: list[str] = field(default_factory=list)  # e.g. "onset@1.60s", "backchannel"

    def right(self, tolerance: float) -> bool:
        """Within ``tolerance`` of the reference's own score (0)."""
        return self.total >= -tolerance


def window_times(
    prompt_slots: Sequence[int],
    window_slots: Sequence[int],
    d: int,
    vocab: DuplexVocab,
    layout: BlockLayout,
) -> tuple[bool, list[float], list[float], list[int]]:
    """``(open_at_start, starts_s, stops_s, words)`` of a window's text channel.

    ``open_at_start``: a response of the prompt has no ``[EPAD]`` yet. ``starts_s`` /
    ``stops_s``: the times of the window's ``<|assistant|>`` / ``[EPAD]`` slots that open /
    close a response (a second ``<|assistant|>`` inside a response and an ``[EPAD]`` with
    none open are ignored, as :func:`~bayling_duplex.format.interleave.response_events`
    does); ``words``: the text tokens written inside responses."""
    T = layout.slots_per_block
    is_open = False
    for tok in np.asarray(prompt_slots).tolist():
        if tok == vocab.speak_id:
            is_open = True
        elif tok == vocab.epad_id:
            is_open = False
    open_at_start = is_open
    starts, stops, words = [], [], []
    controls = set(vocab.control_ids)
    for n, tok in enumerate(np.asarray(window_slots).tolist()):
        t = layout.slot_start_s(d * T + n)
        if tok == vocab.speak_id and not is_open:
            is_open = True
            starts.append(t)
        elif tok == vocab.epad_id and is_open:
            is_open = False
            stops.append(t)
        elif is_open and tok not in controls and not vocab.is_audio(tok):
            words.append(int(tok))
    return open_at_start, starts, stops, words


def window_reward(
    ref: Reference,
    prompt_slots: Sequence[int],
    window_slots: Sequence[int],
    d: int,
    vocab: DuplexVocab,
    layout: BlockLayout,
    weights: RewardWeights,
    reference_words: Sequence[int] = (),
) -> WindowReward:
    """Score the text channel ``window_slots`` of blocks ``[d, d+N)`` after ``prompt_slots``
    (the text channel of blocks ``[0, d)``). ``reference_words``: the text tokens the
    reference writes in the same window (the ``text`` component; empty: not judged)."""
    B, T, fr = layout.frames_per_block, layout.slots_per_block, layout.frame_s
    N = len(window_slots) // T
    w0, w1 = (d + 1) * B * fr, (d + N + 1) * B * fr
    open0, starts, stops, words = window_times(prompt_slots, window_slots, d, vocab, layout)
    comp = dict.fromkeys(COMPONENTS, 0.0)
    events: list[str] = []
    turns = [(s * fr, e * fr) for s, e, k in ref.user_segments if k == "turn"]
    # false starts: inside a user turn
    n_false = sum(any(ts <= t < te for ts, te in turns) for t in starts)
    if n_false:
        comp["false_start"] = -float(n_false)
        events.append(f"false_start x{n_false}")
    for a_slot, e_slot, interrupted in ref.responses:
        g_start = layout.slot_start_s(a_slot)
        g_end = math.inf if e_slot is None else layout.slot_start_s(e_slot)
        # onset: the reference starts inside the window, after a user turn's end
        prior = [te for ts, te in turns if te <= g_start]
        if prior and w0 <= g_start < w1 and not open0:
            after = [t for t in starts if t >= prior[-1]]
            if after:
                comp["onset"] -= max(0.0, after[0] - g_start)
            else:
                comp["onset"] -= (w1 - g_start) + weights.late_penalty
            events.append(f"onset@{g_start:.2f}s")
        # the user turn that starts while it plays (an interruption), if any
        onset = next((ts for ts, _ in turns if g_start < ts < g_end), math.inf)
        # interruption: the reference's cut falls in the window
        if interrupted and w0 <= g_end < w1 and (open0 or any(t < g_end for t in starts)):
            after = [t for t in stops if t >= min(onset, g_end)]
            if after:
                comp["stop"] -= max(0.0, after[0] - g_end)
            else:
                comp["stop"] -= (w1 - g_end) + weights.late_penalty
            events.append(f"stop@{g_end:.2f}s")
        # a stop before the reference ends, with no interruption before it
        early = [t for t in stops if g_start < t < min(g_end, onset)]
        if early:
            comp["early_stop"] -= 1.0
            bc = any(
                k == "backchannel" and g_start <= s * fr <= early[0]
                for s, _, k in ref.user_segments
            )
            events.append("early_stop (backchannel)" if bc else "early_stop")
    if reference_words:
        want, got = Counter(reference_words), Counter(words)
        kept = sum((want & got).values()) / sum(want.values())
        comp["text"] = -(1.0 - kept)
    total = sum(getattr(weights, k) * v for k, v in comp.items())
    return WindowReward(round(total, 6), {k: round(v, 6) for k, v in comp.items()}, events)
