"""Preference pairs for the DPO stage: the same content with right and wrong timing (docs/dpo.md).

A pair sits at a *decision point* of a :class:`~bayling_duplex.format.records.Timeline`:
a user turn's end (start speaking now), an interruption's onset (stop now), a
backchannel (keep speaking) or a hesitation pause (keep listening). With ``d``
the decision block and ``N`` the window:

* **prompt** — the interleaved sequence of blocks ``[0, d)`` (format §3), so it
  always ends on a block boundary and is the same for both sides;
* **chosen** — blocks ``[d, d+N)`` of the timeline as it is;
* **rejected** — blocks ``[d, d+N)`` after the timeline was perturbed and
  interleaved again: same user audio, same answer text and speech, wrong timing.

Perturbations (``k`` blocks, drawn from ``PairConfig.shift_blocks``):

* ``late_start`` — the response starts ``k`` blocks after the correct start;
* ``early_start`` — it starts ``k`` blocks earlier, speaking into the user's
  turn (never before frame ``B``, the previous response's ``[EPAD]`` or the
  turn's first frame);
* ``hesitation_start`` — it starts in a pause inside the user's turn, where the
  turn-taking rule would put it if the pause were the turn's end;
* ``late_stop`` — an interrupted response keeps playing ``k`` blocks into the
  interruption, its extra speech taken from the uncut answer;
* ``backchannel_stop`` — the response is cut at a backchannel as if it were an
  interruption.

A moved response obeys the interruption rule of format §6 (a user turn that
starts while it plays cuts it), so a rejected side is a timeline the
interleaver accepts. Each side gets a scored-token mask: 1 on the model's own
tokens (text channel and assistant audio), 0 on user audio, which is never a
target. Pure functions only: records and ids in, arrays out; a pair that cannot
be made raises :class:`~bayling_duplex.format.records.RecordError` with a reason key.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from bayling_duplex.data.synthesis import SCENARIOS, SynthesisConfig, synthesize, with_partner
from bayling_duplex.format.interleave import (
    DuplexSequence,
    FormatSpec,
    TokenClass,
    interleave,
    place_responses,
)
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordError, Response, Script, ScriptTurn, Timeline
from bayling_duplex.format.vocab import DuplexVocab

PERTURBATIONS = ("late_start", "early_start", "hesitation_start", "late_stop", "backchannel_stop")
# the synthesis scenario a perturbation needs; None: any scenario of the recipe's mix
SCENARIO_OF: dict[str, str | None] = {
    "late_start": None,
    "early_start": None,
    "hesitation_start": "hesitation",
    "late_stop": "interruption",
    "backchannel_stop": "backchannel",
}
# what a side's log-probability sums over (user audio never: it is not the model's)
SCORED_CLASSES: dict[str, tuple[TokenClass, ...]] = {
    # the timing tokens: [SILENCE], <|assistant|>, [PAD], [EPAD]
    "timing": (TokenClass.SILENCE_SLOT, TokenClass.CONTROL),
    # the whole text channel
    "text": (TokenClass.SILENCE_SLOT, TokenClass.CONTROL, TokenClass.TEXT),
    # text channel and assistant audio
    "all": tuple(c for c in TokenClass if c != TokenClass.USER_AUDIO),
}


@dataclass
class PerturbationMix:
    """Relative weights of the perturbations (they need not sum to 1; 0 turns one off)."""

    late_start: float = 1.0
    early_start: float = 1.0
    hesitation_start: float = 0.5
    late_stop: float = 1.0
    backchannel_stop: float = 0.5

    def __post_init__(self) -> None:
        ws = self.weights()
        if any(w < 0 for w in ws.values()) or sum(ws.values()) <= 0:
            raise ValueError(f"pairs.make.mix weights must be >= 0 with a positive sum, got {ws}")

    def weights(self) -> dict[str, float]:
        return {p: float(getattr(self, p)) for p in PERTURBATIONS}


@dataclass
class PairConfig:
    """How pairs are made: which perturbations, the window ``N`` and the shift ``k``."""

    mix: PerturbationMix = field(default_factory=PerturbationMix)
    window_blocks: int = 2  # N: blocks after the decision point in chosen and rejected
    shift_blocks: list[int] = field(default_factory=lambda: [1, 2])  # k, uniform in [low, high]
    min_pause_s: float = 0.5  # silence inside a user turn at least this long is a hesitation pause
    # which of the model's tokens the log-probabilities sum over: timing (the control and
    # silence slots: the same content is never pushed down in the wrong place), text, all
    score: str = "timing"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window_blocks < 1:
            raise ValueError(f"pairs.make.window_blocks must be >= 1, got {self.window_blocks}")
        lo_hi = list(self.shift_blocks)
        if len(lo_hi) != 2 or not 1 <= lo_hi[0] <= lo_hi[1]:
            raise ValueError(
                f"pairs.make.shift_blocks must be [low, high] with 1 <= low <= high, got {lo_hi}"
            )
        if self.min_pause_s <= 0:
            raise ValueError(f"pairs.make.min_pause_s must be positive, got {self.min_pause_s}")
        if self.score not in SCORED_CLASSES:
            raise ValueError(
                f"pairs.make.score must be one of {tuple(SCORED_CLASSES)}, got {self.score!r}"
            )

    def sample_kind(self, rng: random.Random) -> str:
        ws = self.mix.weights()
        names = [p for p in PERTURBATIONS if ws[p] > 0]
        return rng.choices(names, weights=[ws[p] for p in names])[0]

    def sample_shift(self, rng: random.Random) -> int:
        return rng.randint(self.shift_blocks[0], self.shift_blocks[1])


@dataclass(frozen=True)
class DecisionPoint:
    """Where a timing decision is made: ``frame`` is the event (turn end, onset, pause start)."""

    kind: str  # one of PERTURBATIONS
    response: int  # index of the response whose timing the rejected side changes
    frame: int
    end_frame: int | None = None  # hesitation: the pause's end


@dataclass(frozen=True)
class PreferencePair:
    """One pair. Lengths: prompt ``d·(2B+T)``, each side ``N·(2B+T)`` (ids and masks alike)."""

    id: str
    kind: str
    decision_block: int  # d
    shift_blocks: int  # k (hesitation: how many blocks early the start in the pause is)
    prompt_ids: np.ndarray  # int64
    chosen_ids: np.ndarray  # int64
    rejected_ids: np.ndarray  # int64
    chosen_mask: np.ndarray  # int8, 1 on scored tokens
    rejected_mask: np.ndarray  # int8


# --------------------------------------------------------------------------- masks


def scored_mask(classes: np.ndarray, score: str = "timing") -> np.ndarray:
    """1 on the tokens a side's log-probability sums over (:data:`SCORED_CLASSES`), 0 elsewhere;
    always 0 on user audio."""
    return np.isin(classes, SCORED_CLASSES[score]).astype(np.int8)


# --------------------------------------------------------------------------- decision points


def _turns(t: Timeline):
    return [s for s in t.user_segments if s.kind == "turn"]


def _turn_before(t: Timeline, frame: int):
    """The last user turn that started before ``frame``."""
    before = [s for s in _turns(t) if s.start_frame < frame]
    return before[-1] if before else None


def _silent_runs(codes: Sequence[int], lo: int, hi: int, silence: set[int], min_len: int):
    """``[start, end)`` runs of silence codes of at least ``min_len`` frames strictly inside ``[lo, hi)``."""
    runs, start = [], None
    for f in range(lo, hi):
        quiet = int(codes[f]) in silence
        if quiet and start is None:
            start = f
        elif not quiet and start is not None:
            if f - start >= min_len and start > lo:
                runs.append((start, f))
            start = None
    return runs  # a run reaching hi is the turn's end, not a pause


def decision_points(
    t: Timeline, kind: str, spec: FormatSpec, min_pause_s: float = 0.5
) -> list[DecisionPoint]:
    """Every point of ``t`` where perturbation ``kind`` applies (feasibility is checked later)."""
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r}; one of {PERTURBATIONS}")
    points = []
    for i, r in enumerate(t.responses):
        if kind in ("late_start", "early_start"):
            turn = _turn_before(t, r.start_frame)
            if turn is not None and turn.end_frame <= r.start_frame:
                points.append(DecisionPoint(kind, i, turn.end_frame))
        elif kind == "late_stop" and r.interrupted:
            onset = next(
                (s for s in _turns(t) if r.start_frame <= s.start_frame < r.end_frame), None
            )
            if onset is not None:
                points.append(DecisionPoint(kind, i, onset.start_frame))
        elif kind == "backchannel_stop":
            for s in t.user_segments:
                if s.kind == "backchannel" and r.start_frame <= s.start_frame < r.end_frame:
                    points.append(DecisionPoint(kind, i, s.start_frame))
        elif kind == "hesitation_start":
            turn = _turn_before(t, r.start_frame)
            if turn is None or turn.end_frame > r.start_frame:
                continue
            min_len = max(1, round(min_pause_s * spec.layout.frame_rate_hz))
            silence = set(spec.silence_codes)
            for p_s, p_e in _silent_runs(
                t.user_codes, turn.start_frame, turn.end_frame, silence, min_len
            ):
                points.append(DecisionPoint(kind, i, p_s, p_e))
    return points


# --------------------------------------------------------------------------- perturbations


def _moved(t: Timeline, i: int, start: int, full: Sequence[int], layout: BlockLayout) -> Timeline:
    """Response ``i`` replayed from ``start`` with its uncut speech, cut by any user turn that
    starts while it plays (format §6: ``e' = (u_s // B + 1)·B``)."""
    B = layout.frames_per_block
    r = t.responses[i]
    end = start + len(full)
    onset = next((s.start_frame for s in _turns(t) if start <= s.start_frame < end), None)
    if onset is not None:
        end = min(end, (onset // B + 1) * B)
    moved = Response(start, end, r.text, tuple(full[: end - start]), end < start + len(full))
    return _with_response(t, i, moved)


def _with_response(t: Timeline, i: int, r: Response) -> Timeline:
    return replace(t, responses=(*t.responses[:i], r, *t.responses[i + 1 :]))


def _impossible(t: Timeline, detail: str) -> RecordError:
    return RecordError(t.id, "perturbation_impossible", detail)


def perturb(
    t: Timeline,
    text_ids: list[list[int]],
    full_codes: list[Sequence[int]],
    point: DecisionPoint,
    shift_blocks: int,
    layout: BlockLayout,
) -> tuple[Timeline, int, int]:
    """The rejected timeline, the decision block ``d`` and the shift in blocks for ``point``.

    The shift is ``shift_blocks``, except where the timeline fixes it: how many
    blocks early a start in a pause is, how far a late stop got before the answer's
    natural end (blocks begun), how much a backchannel cut removes (whole blocks).

    ``full_codes[i]`` is response ``i``'s uncut speech (for a response that was not
    cut, its codes). Raises :class:`RecordError` (``perturbation_impossible`` or
    ``no_uncut_codes``) when the perturbation cannot be applied here.
    """
    B = layout.frames_per_block
    i, k = point.response, shift_blocks
    r = t.responses[i]
    full = full_codes[i]
    prev_epad = place_responses(t, text_ids, layout)[i - 1].epad_slot if i > 0 else -1

    def check_start(start: int) -> None:
        if start < B:
            raise _impossible(t, f"responses[{i}] would start at frame {start} < B={B}")
        if layout.slot_index_of_frame(start) <= prev_epad:
            raise _impossible(t, f"responses[{i}] would start before the previous [EPAD]")

    if point.kind == "late_start":
        start = r.start_frame + k * B
        if any(r.start_frame < s.start_frame <= start for s in _turns(t)):
            raise _impossible(t, f"a later start of responses[{i}] falls into the next user turn")
        return _moved(t, i, start, full, layout), r.start_frame // B - 1, k
    if point.kind in ("early_start", "hesitation_start"):
        turn = _turn_before(t, r.start_frame)
        if point.kind == "early_start":
            start = r.start_frame - k * B
            if start <= turn.start_frame or start >= turn.end_frame:
                raise _impossible(t, f"{k} blocks earlier is not inside the user's turn")
        else:
            start = max(B, -(-point.frame // B) * B)  # the turn-taking rule, at the pause
            if start >= point.end_frame or start >= r.start_frame:
                raise _impossible(t, "no block boundary inside the pause")
        check_start(start)
        return _moved(t, i, start, full, layout), start // B - 1, (r.start_frame - start) // B
    if point.kind == "late_stop":
        end = min(r.end_frame + k * B, r.start_frame + len(full))
        if end <= r.end_frame:
            raise RecordError(
                t.id,
                "no_uncut_codes",
                f"responses[{i}]'s speech after its cut is unknown (synthesise from scripts)",
            )
        longer = Response(
            r.start_frame,
            end,
            r.text,
            tuple(full[: end - r.start_frame]),
            end < r.start_frame + len(full),
        )
        return _with_response(t, i, longer), r.end_frame // B - 1, -(-(end - r.end_frame) // B)
    if point.kind == "backchannel_stop":
        cut = (point.frame // B + 1) * B
        if cut >= r.end_frame:
            raise _impossible(t, "the response ends in the backchannel's block: nothing to cut")
        shorter = Response(r.start_frame, cut, r.text, r.codes[: cut - r.start_frame], True)
        return _with_response(t, i, shorter), cut // B - 1, (r.end_frame - cut) // B
    raise ValueError(f"unknown perturbation {point.kind!r}")


# --------------------------------------------------------------------------- pairs


def _window_sequence(
    t: Timeline,
    text_ids: list[list[int]],
    num_blocks: int,
    spec: FormatSpec,
    vocab: DuplexVocab,
) -> DuplexSequence:
    """``t`` interleaved over at least ``num_blocks`` blocks, responses starting past them dropped.

    Dropping is safe: a response whose ``<|assistant|>`` slot lies in block
    ``num_blocks`` or later puts nothing into the earlier blocks.
    """
    layout = spec.layout
    B, T = layout.frames_per_block, layout.slots_per_block
    keep = [
        j
        for j, r in enumerate(t.responses)
        if layout.slot_index_of_frame(r.start_frame) < num_blocks * T
    ]
    n = max(t.num_frames, num_blocks * B)
    user = tuple(t.user_codes) + tuple(int(c) for c in spec.silence(t.num_frames, n))
    short = replace(t, num_frames=n, user_codes=user, responses=tuple(t.responses[j] for j in keep))
    return interleave(short, [text_ids[j] for j in keep], spec, vocab)


def make_pair(
    t: Timeline,
    text_ids: list[list[int]],
    full_codes: list[Sequence[int]],
    point: DecisionPoint,
    shift_blocks: int,
    spec: FormatSpec,
    vocab: DuplexVocab,
    cfg: PairConfig,
) -> PreferencePair:
    """The pair of ``t`` at ``point``; raises :class:`RecordError` for a pair that cannot be made."""
    rejected_t, d, k = perturb(t, text_ids, full_codes, point, shift_blocks, spec.layout)
    if d < 1:
        raise RecordError(t.id, "empty_prompt", f"decision block {d}: nothing to condition on")
    L, N = spec.layout.block_len, cfg.window_blocks
    good = _window_sequence(t, text_ids, d + N, spec, vocab)
    bad = _window_sequence(rejected_t, text_ids, d + N, spec, vocab)
    if not (
        np.array_equal(good.input_ids[: d * L], bad.input_ids[: d * L])
        and np.array_equal(good.classes[: d * L], bad.classes[: d * L])
    ):
        raise RecordError(t.id, "prompt_differs", f"the perturbation reaches before block {d}")
    win = slice(d * L, (d + N) * L)
    pair = PreferencePair(
        id=f"{t.id}:{point.kind}:{point.response}",
        kind=point.kind,
        decision_block=d,
        shift_blocks=k,
        prompt_ids=good.input_ids[: d * L],
        chosen_ids=good.input_ids[win],
        rejected_ids=bad.input_ids[win],
        chosen_mask=scored_mask(good.classes[win], cfg.score),
        rejected_mask=scored_mask(bad.classes[win], cfg.score),
    )
    check_pair(pair, spec.layout)
    return pair


def check_pair(pair: PreferencePair, layout: BlockLayout) -> None:
    """The invariants of any pair, hand-built or made; raises :class:`RecordError` with a reason."""
    L, B = layout.block_len, layout.frames_per_block

    def fail(reason: str, detail: str) -> RecordError:
        return RecordError(pair.id, reason, detail)

    if len(pair.prompt_ids) == 0:
        raise fail("empty_prompt", "the prompt holds no block")
    if len(pair.prompt_ids) % L:
        raise fail(
            "prompt_not_block_aligned",
            f"prompt length {len(pair.prompt_ids)} is not a multiple of 2B+T={L}",
        )
    n = len(pair.chosen_ids)
    if n == 0 or n % L or len(pair.rejected_ids) != n:
        raise fail(
            "window_not_whole_blocks",
            f"chosen {n} / rejected {len(pair.rejected_ids)} tokens: not the same whole blocks",
        )
    if len(pair.chosen_mask) != n or len(pair.rejected_mask) != n:
        raise fail("mask_length", "a mask's length differs from its ids'")
    if np.array_equal(pair.chosen_ids, pair.rejected_ids):
        raise fail("identical", "chosen equals rejected")
    user = (np.arange(n) % L) < B
    if not np.array_equal(pair.chosen_ids[user], pair.rejected_ids[user]):
        raise fail("user_audio_differs", "the two sides hear different user audio")
    if pair.chosen_mask[user].any() or pair.rejected_mask[user].any():
        raise fail("user_audio_scored", "a mask scores user audio")
    if not pair.chosen_mask.any() and not pair.rejected_mask.any():
        raise fail("nothing_scored", "neither side has a scored token")


def pair_from_timeline(
    t: Timeline,
    text_ids: list[list[int]],
    full_codes: list[Sequence[int]],
    kind: str,
    spec: FormatSpec,
    vocab: DuplexVocab,
    cfg: PairConfig,
    rng: random.Random,
) -> tuple[PreferencePair | None, list[RecordError]]:
    """One pair of ``kind`` from ``t``: its decision points are tried in random order.

    Returns the first pair that can be made (or None) and the failures met on the
    way, so a build can count them by reason.
    """
    points = decision_points(t, kind, spec, cfg.min_pause_s)
    rng.shuffle(points)
    failures: list[RecordError] = []
    if not points:
        failures.append(RecordError(t.id, "no_decision_point", f"no point for {kind}"))
    for point in points:
        try:
            pair = make_pair(
                t, text_ids, full_codes, point, cfg.sample_shift(rng), spec, vocab, cfg
            )
            return pair, failures
        except RecordError as e:
            failures.append(e)
    return None, failures


def pair_from_script(
    script: Script,
    text_ids: list[list[int]],
    cfg: PairConfig,
    synthesis: SynthesisConfig,
    spec: FormatSpec,
    vocab: DuplexVocab,
    rng: random.Random,
    backchannels: tuple[tuple[str, tuple[int, ...]], ...] = (),
    partner: tuple[ScriptTurn, list[int]] | None = None,
    render=None,
) -> tuple[PreferencePair | None, list[RecordError]]:
    """Synthesise ``script`` for a perturbation drawn from ``cfg.mix`` and make its pair.

    The uncut answers are the script's own speech, so a late stop plays the
    answer's real continuation. ``text_ids[i]`` are turn ``i``'s answer ids;
    ``partner`` (a turn and its answer ids) interrupts a single-turn script.
    ``render(t, script, ids)`` gives the timeline its codes from mixed audio (the
    real-speech demo: the user channel is the codec's reading of the microphone).
    """
    kind = cfg.sample_kind(rng)
    scenario = SCENARIO_OF[kind]
    if scenario is None:
        ws = synthesis.mix.weights()
        names = [s for s in SCENARIOS if ws[s] > 0]
        scenario = rng.choices(names, weights=[ws[s] for s in names])[0]
    if scenario == "interruption" and len(script.turns) < 2 and partner is not None:
        script, text_ids = with_partner(script, partner[0]), [*text_ids, partner[1]]
    try:
        t = synthesize(script, text_ids, scenario, synthesis, spec, backchannels)
        if render is not None:
            t = render(t, script, text_ids)
    except RecordError as e:
        return None, [e]
    full = [turn.assistant_codes for turn in script.turns[: len(t.responses)]]
    return pair_from_timeline(t, text_ids[: len(t.responses)], full, kind, spec, vocab, cfg, rng)


# --------------------------------------------------------------------------- picture


def render_pair(pair: PreferencePair, layout: BlockLayout, token_text: Callable[[int], str]) -> str:
    """The text channel of the window, chosen beside rejected, one row per block (Markdown)."""
    B, T, L = layout.frames_per_block, layout.slots_per_block, layout.block_len
    rows = [
        f"{pair.id}: {pair.kind}, k={pair.shift_blocks}, prompt = blocks [0, {pair.decision_block})",
        "",
        "| block k | chosen X_k | rejected X_k |",
        "|---|---|---|",
    ]
    for n in range(len(pair.chosen_ids) // L):
        x = slice(n * L + B, n * L + B + T)
        chosen = " ".join(token_text(int(i)) for i in pair.chosen_ids[x])
        rejected = " ".join(token_text(int(i)) for i in pair.rejected_ids[x])
        rows.append(f"| {pair.decision_block + n} | {chosen} | {rejected} |")
    return "\n".join(rows)
