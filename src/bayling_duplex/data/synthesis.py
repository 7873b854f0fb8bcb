"""Script → timeline: place scripted speech on a timeline by the rules of format §6.

Scenario families:

* ``turn_taking`` — each answer starts at the first block boundary at or
  after the user's turn end (+ a sampled gap), never before frame ``B``.
* ``interruption`` — the next user turn starts at a sampled point of an
  answer; the answer is cut where the next output block begins
  (``e' = (u_s // B + 1)·B``) and marked interrupted; the interrupting turn is
  then answered by the turn-taking rule. ``interruption_heard_frames`` > 1 cuts
  later, outside the contract (an experiment; off by default).
* ``backchannel`` — a short listener response ("uh-huh") during an answer,
  which does not cut it.
* ``hesitation`` — a pause inside a user turn (at a word end), in which no
  answer starts.

All randomness comes from a generator seeded by the record id, so a record's
timeline does not depend on sharding or worker count. Where a placement would
put an ``<|assistant|>`` in or before the previous ``[EPAD]`` slot (rare:
answer text running far past its speech, or a very short interrupting turn),
the answer moves to the next block boundary.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field

from bayling_duplex.format.interleave import FormatSpec, num_blocks_for, place_responses
from bayling_duplex.format.records import (
    RecordError,
    Response,
    Script,
    ScriptTurn,
    Timeline,
    UserSegment,
)

SCENARIOS = ("turn_taking", "interruption", "backchannel", "hesitation")


@dataclass
class ScenarioMix:
    """Relative weights of the scenario families (they need not sum to 1)."""

    turn_taking: float = 0.5
    interruption: float = 0.5
    backchannel: float = 0.0
    hesitation: float = 0.0

    def __post_init__(self) -> None:
        ws = self.weights()
        if any(w < 0 for w in ws.values()) or sum(ws.values()) <= 0:
            raise ValueError(f"synthesis.mix weights must be >= 0 with a positive sum, got {ws}")

    def weights(self) -> dict[str, float]:
        return {s: float(getattr(self, s)) for s in SCENARIOS}


@dataclass
class SynthesisConfig:
    """Timing ranges, in seconds (sampled uniformly), and the scenario mix."""

    mix: ScenarioMix = field(default_factory=ScenarioMix)
    # mix: sample one scenario per script by weight; each: one timeline per scenario of positive weight
    mode: str = "mix"
    lead_silence_s: list[float] = field(default_factory=lambda: [0.2, 1.2])
    between_turns_s: list[float] = field(default_factory=lambda: [0.4, 1.6])
    answer_gap_s: list[float] = field(default_factory=lambda: [0.0, 0.0])
    interrupt_at: list[float] = field(
        default_factory=lambda: [0.2, 0.7]
    )  # share of the answer's speech
    # an interrupted answer is cut at the first block boundary by which this many frames of
    # the interrupting turn have been heard. 1 is format §6's rule (e' = (u_s // B + 1)·B);
    # more is an experiment outside the contract (docs/data.md, "Interruption cuts later")
    interruption_heard_frames: int = 1
    backchannel_at: list[float] = field(
        default_factory=lambda: [0.15, 0.6]
    )  # share of the answer's speech
    hesitation_pause_s: list[float] = field(default_factory=lambda: [0.6, 1.6])
    # which user turns of a hesitation dialogue get a pause: one (drawn at random) or all
    hesitation_turns: str = "one"
    tail_silence_s: list[float] = field(default_factory=lambda: [0.8, 2.0])
    max_blocks: int = 75  # 60 s at 10 frames per block
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("mix", "each"):
            raise ValueError(f"synthesis.mode must be 'mix' or 'each', got {self.mode!r}")
        if self.hesitation_turns not in ("one", "all"):
            raise ValueError(
                f"synthesis.hesitation_turns must be 'one' or 'all', got {self.hesitation_turns!r}"
            )
        for name in (
            "lead_silence_s",
            "between_turns_s",
            "answer_gap_s",
            "interrupt_at",
            "backchannel_at",
            "hesitation_pause_s",
            "tail_silence_s",
        ):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1] or lo_hi[0] < 0:
                raise ValueError(
                    f"synthesis.{name} must be [low, high] with 0 <= low <= high, got {lo_hi}"
                )
        if not (self.interrupt_at[0] >= 0 and self.interrupt_at[1] < 1):
            raise ValueError("synthesis.interrupt_at must lie in [0, 1)")
        if self.interruption_heard_frames < 1:
            raise ValueError(
                "synthesis.interruption_heard_frames must be >= 1 (1: format §6's cut), "
                f"got {self.interruption_heard_frames}"
            )
        if self.max_blocks <= 1:
            raise ValueError("synthesis.max_blocks must be > 1")

    def scenarios_for(self, rng: random.Random) -> list[str]:
        """The scenario(s) to synthesise for one script."""
        ws = self.mix.weights()
        if self.mode == "each":
            return [s for s in SCENARIOS if ws[s] > 0]
        names = [s for s in SCENARIOS if ws[s] > 0]
        return [rng.choices(names, weights=[ws[s] for s in names])[0]]


def record_rng(seed: int, record_id: str, scenario: str = "") -> random.Random:
    h = hashlib.blake2b(f"{seed}|{record_id}|{scenario}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(h, "little"))


def _frames(rng: random.Random, lo_hi: list[float], frame_rate_hz: float) -> int:
    return round(rng.uniform(*lo_hi) * frame_rate_hz)


def _with_pause(turn: ScriptTurn, pause: int, rng: random.Random, spec: FormatSpec, at_frame: int):
    """``turn``'s user codes with ``pause`` frames of silence inserted at a word end."""
    ends = [e for e in turn.user_word_ends if 0 < e < len(turn.user_codes)]
    cut = rng.choice(ends) if ends else len(turn.user_codes) // 2
    silence = spec.silence(at_frame + cut, at_frame + cut + pause)
    return turn.user_codes[:cut] + tuple(int(c) for c in silence) + turn.user_codes[cut:]


def synthesize(
    script: Script,
    answer_ids: list[list[int]],
    scenario: str,
    cfg: SynthesisConfig,
    spec: FormatSpec,
    backchannels: tuple[tuple[str, tuple[int, ...]], ...] = (),
) -> Timeline:
    """Place ``script`` on a timeline as ``scenario``.

    ``answer_ids[i]`` are the text ids of turn ``i``'s answer (needed to know
    where its ``[EPAD]`` lands). An interruption needs two turns (the build
    borrows the next script's first turn for single-turn scripts: see
    :func:`with_partner`). Turns that would push the dialogue past
    ``cfg.max_blocks`` are dropped from the end; if even the first does not fit
    the script is rejected (reason ``too_long``).
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}")
    turns = list(script.turns)
    ids = list(answer_ids)
    if len(ids) != len(turns):
        raise ValueError(f"{len(turns)} turns but {len(ids)} answer id lists")
    if scenario == "interruption" and len(turns) < 2:
        raise RecordError(script.id, "too_few_turns", "an interruption needs a second user turn")
    min_turns = 2 if scenario == "interruption" else 1
    # the user's turns follow each other, so a timeline is at least as long as their codes
    # together: the turns past max_blocks cannot fit and are dropped before placing any
    # (the same result as dropping them one by one, without placing a long script n times)
    budget, total, fit = cfg.max_blocks * spec.layout.frames_per_block, 0, 0
    for turn in turns:
        total += len(turn.user_codes)
        if total > budget:
            break
        fit += 1
    del turns[max(fit, min_turns) :], ids[max(fit, min_turns) :]
    while turns:
        t = _place(script.id, turns, ids, scenario, cfg, spec, backchannels)
        placed = place_responses(t, ids[: len(t.responses)], spec.layout)
        if num_blocks_for(t, placed, spec.layout) <= cfg.max_blocks:
            return t
        if len(turns) <= min_turns:
            break
        turns.pop()
        ids.pop()
    raise RecordError(script.id, "too_long", f"does not fit in {cfg.max_blocks} blocks")


def with_partner(script: Script, partner: ScriptTurn) -> Script:
    """``script`` with ``partner`` appended as its interrupting turn (single-turn corpora)."""
    return Script(script.id, (*script.turns, partner))


def _place(rid, turns, ids, scenario, cfg, spec, backchannels) -> Timeline:
    layout = spec.layout
    B, rate = layout.frames_per_block, layout.frame_rate_hz
    rng = record_rng(cfg.seed, rid, scenario)
    n = len(turns)
    cut_after = rng.randrange(n - 1) if scenario == "interruption" and n >= 2 else -1
    pause_in = rng.randrange(n) if scenario == "hesitation" else -1
    bc_in = rng.randrange(n) if scenario == "backchannel" and backchannels else -1

    user: dict[int, int] = {}
    segments: list[UserSegment] = []
    responses: list[Response] = []
    prev_epad_slot = -1
    u_start = _frames(rng, cfg.lead_silence_s, rate)
    end = 0
    for i, turn in enumerate(turns):
        ucodes = turn.user_codes
        if i == pause_in or (pause_in >= 0 and cfg.hesitation_turns == "all"):
            ucodes = _with_pause(
                turn, max(1, _frames(rng, cfg.hesitation_pause_s, rate)), rng, spec, u_start
            )
        for j, c in enumerate(ucodes):
            user[u_start + j] = c
        u_end = u_start + len(ucodes)
        segments.append(UserSegment(u_start, u_end, "turn", turn.user_text))
        # turn-taking rule: first block boundary at or after u_end + gap, never before B
        s = max(B, -(-(u_end + _frames(rng, cfg.answer_gap_s, rate)) // B) * B)
        while layout.slot_index_of_frame(s) <= prev_epad_slot:
            s += B
        codes = turn.assistant_codes
        e = s + len(codes)
        interrupted = False
        if i == cut_after:
            frac = rng.uniform(*cfg.interrupt_at)
            u_s = min(e - 1, s + round(frac * (e - s)))
            cut = -(-(u_s + cfg.interruption_heard_frames) // B) * B  # 1: (u_s // B + 1)·B
            if cut < e:
                codes, e, interrupted = codes[: cut - s], cut, True
            next_start = u_s
        else:
            next_start = e + _frames(rng, cfg.between_turns_s, rate)
            if i == bc_in:
                bc_text, bc_codes = backchannels[rng.randrange(len(backchannels))]
                at = s + round(rng.uniform(*cfg.backchannel_at) * (e - s))
                if at + len(bc_codes) < e:
                    for j, c in enumerate(bc_codes):
                        user[at + j] = c
                    segments.append(UserSegment(at, at + len(bc_codes), "backchannel", bc_text))
        responses.append(Response(s, e, turn.assistant_text, tuple(codes), interrupted))
        a = layout.slot_index_of_frame(s)
        p = layout.slot_index_of_frame(e)
        prev_epad_slot = max(p, a + 1) if interrupted else max(p, a + len(ids[i]) + 1)
        end = max(end, e, u_end, layout.slot_start_frame(prev_epad_slot) + 1)
        u_start = max(next_start, u_end)
    num_frames = end + max(1, _frames(rng, cfg.tail_silence_s, rate))
    user_codes = spec.silence(0, num_frames).tolist()  # then the speech over it
    for f, c in user.items():
        user_codes[f] = c
    segments.sort(key=lambda seg: seg.start_frame)
    scenario_label = scenario
    if scenario == "interruption" and not any(r.interrupted for r in responses):
        scenario_label = "turn_taking"  # the sampled point fell in the answer's last block
    if scenario == "backchannel" and not any(s.kind == "backchannel" for s in segments):
        scenario_label = "turn_taking"
    return Timeline(
        rid, num_frames, tuple(user_codes), tuple(segments), tuple(responses), scenario_label
    )
