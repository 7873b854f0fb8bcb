"""Evaluation dialogues built from held-out scripts: the user channel to play, and what to expect.

Four sets (format §8 and beyond): ``turn_taking`` (one question, answered in
time), ``interruption`` (a second question starts while the first answer
would be playing), ``backchannel`` (an "uh-huh" during the answer) and
``hesitation`` (a pause inside the question). Each dialogue is placed by the
same synthesis rules as the training data, then padded with ``tail_s`` of
silence so a late answer or a missing ``[EPAD]`` can still be seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from bayling_duplex.data.synthesis import SynthesisConfig, synthesize
from bayling_duplex.eval.metrics import EvalItem
from bayling_duplex.format.interleave import FormatSpec
from bayling_duplex.format.records import (
    RecordError,
    Script,
    ScriptTurn,
    read_jsonl,
    script_from_json,
)


@dataclass
class EvalSetConfig:
    source: str = "demo"  # demo (held-out demo questions) or scripts_jsonl (path)
    path: str | None = None
    split: str = "heldout"
    turn_taking: int = 100
    interruption: int = 100
    backchannel: int = 50
    hesitation: int = 50
    tail_s: float = 5.0
    seed: int = 1234
    num_codes: int = 256  # demo: the toy codec's code count (must match the training data)

    def __post_init__(self) -> None:
        if self.source not in ("demo", "scripts_jsonl"):
            raise ValueError(f"evalset.source must be demo or scripts_jsonl, got {self.source!r}")
        if self.source == "scripts_jsonl" and not self.path:
            raise ValueError(
                "evalset.path must name a scripts .jsonl when evalset.source=scripts_jsonl"
            )


def _turn_pool(cfg: EvalSetConfig) -> tuple[list[ScriptTurn], list[str], tuple]:
    """Held-out turns, their answer keys, and backchannel clips."""
    if cfg.source == "demo":
        from bayling_duplex.audio.codec import ToyCodec
        from bayling_duplex.data.demo import answer_key, backchannel_clips, demo_turn, qa_pairs

        codec = ToyCodec(cfg.num_codes)
        pairs = qa_pairs(cfg.split)
        return (
            [demo_turn(q, a, codec) for q, a in pairs],
            [answer_key(a) for _, a in pairs],
            backchannel_clips(codec),
        )
    turns = []
    for _, obj in read_jsonl(cfg.path):
        if isinstance(obj, dict):
            turns.extend(script_from_json(obj).turns)
    return turns, [t.assistant_text.rstrip(".") for t in turns], ()


def _longest_silence(codes: np.ndarray, lo: int, hi: int, silence: set[int]) -> tuple[int, int]:
    best, run_start, best_span = 0, None, (lo, lo)
    for f in range(lo, hi + 1):
        quiet = f < hi and int(codes[f]) in silence
        if quiet and run_start is None:
            run_start = f
        elif not quiet and run_start is not None:
            if f - run_start > best:
                best, best_span = f - run_start, (run_start, f)
            run_start = None
    return best_span


# why synthesis placed a dialogue of one set as another (data/synthesis.py falls back to
# turn-taking where the asked-for event cannot be placed)
RELABEL_REASONS = {
    ("interruption", "turn_taking"): (
        "the sampled interruption point fell in the answer's last block, so nothing was cut"
    ),
    ("backchannel", "turn_taking"): "the backchannel did not fit inside the answer",
}


@dataclass
class EvalSets:
    """The evaluation dialogues and, per requested set, what became of the request.

    ``counts[set]``: ``requested`` (the config's count), ``built`` (placed as asked),
    ``relabelled`` (placed as another scenario, which judges them: ``relabelled_to``
    and ``relabel_reasons``), ``excluded`` (not built: ``excluded_reasons``), and
    ``judged`` (dialogues judged as this set: the built ones and those relabelled
    into it from other sets, ``relabelled_from``). requested = built + relabelled + excluded.
    """

    items: list[tuple[EvalItem, np.ndarray]]
    counts: dict[str, dict]


def _empty_counts(requested: int) -> dict:
    return {
        "requested": requested,
        "built": 0,
        "relabelled": 0,
        "relabelled_to": {},
        "relabel_reasons": {},
        "excluded": 0,
        "excluded_reasons": {},
        "judged": 0,
        "relabelled_from": {},
    }


def _bump(d: dict, key: str, by: int = 1) -> None:
    d[key] = d.get(key, 0) + by


def build_eval_sets(cfg: EvalSetConfig, spec: FormatSpec, tokenize) -> EvalSets:
    """Every evaluation dialogue ``(item, user codes)`` and the per-set counts.

    ``tokenize(texts)`` gives text ids. A dialogue that synthesis places as another
    scenario is judged as that one and counted as relabelled (with the reason); one
    that cannot be placed at all (``too_long``), or a backchannel set without
    backchannel clips in the source, is counted as excluded."""
    turns, keys, clips = _turn_pool(cfg)
    if not turns:
        raise ValueError("the evaluation source holds no turns")
    rng = random.Random(cfg.seed)
    synth = SynthesisConfig(seed=cfg.seed)
    B = spec.layout.frames_per_block
    tail = round(cfg.tail_s * spec.layout.frame_rate_hz)
    out: list[tuple[EvalItem, np.ndarray]] = []
    plan = [
        ("turn_taking", cfg.turn_taking, 1),
        ("interruption", cfg.interruption, 2),
        ("backchannel", cfg.backchannel, 1),
        ("hesitation", cfg.hesitation, 1),
    ]
    counts = {scenario: _empty_counts(count) for scenario, count, _ in plan}
    for scenario, count, n_turns in plan:
        c = counts[scenario]
        if scenario == "backchannel" and not clips and count:
            c["excluded"] = count
            c["excluded_reasons"] = {"the evaluation source has no backchannel clips": count}
            continue
        for i in range(count):
            picks = [rng.randrange(len(turns)) for _ in range(n_turns)]
            script = Script(f"eval-{scenario}-{i:05d}", tuple(turns[p] for p in picks))
            ids = tokenize([t.assistant_text for t in script.turns])
            try:
                t = synthesize(script, ids, scenario, synth, spec, clips)
            except RecordError as e:
                c["excluded"] += 1
                _bump(c["excluded_reasons"], f"{e.reason}: {e.detail}")
                continue
            placed = t.scenario or scenario
            reason = None
            if placed == scenario:
                c["built"] += 1
            else:
                reason = RELABEL_REASONS.get((scenario, placed), f"synthesis placed it as {placed}")
                c["relabelled"] += 1
                _bump(c["relabelled_to"], placed)
                _bump(c["relabel_reasons"], reason)
                _bump(counts[placed]["relabelled_from"], scenario)
            counts[placed]["judged"] += 1
            user_turns = tuple(
                (s.start_frame, s.end_frame) for s in t.user_segments if s.kind == "turn"
            )
            end = max(t.num_frames, user_turns[-1][1] + tail)
            end = -(-end // B) * B
            codes = np.concatenate([np.asarray(t.user_codes), spec.silence(t.num_frames, end)])
            bc = next(
                ((s.start_frame, s.end_frame) for s in t.user_segments if s.kind == "backchannel"),
                None,
            )
            pause = None
            if placed == "hesitation":
                pause = _longest_silence(codes, *user_turns[0], set(spec.silence_codes))
            out.append(
                (
                    EvalItem(
                        script.id,
                        placed,
                        end,
                        user_turns,
                        tuple(keys[p] for p in picks),
                        bc,
                        pause,
                        t.responses[0].end_frame,
                        requested=scenario,
                        relabelled=reason,
                    ),
                    codes,
                )
            )
    return EvalSets(out, counts)


def build_eval_items(
    cfg: EvalSetConfig, spec: FormatSpec, tokenize
) -> list[tuple[EvalItem, np.ndarray]]:
    """``(item, user codes)`` for every evaluation dialogue (:func:`build_eval_sets` without
    the counts). ``tokenize(texts)`` gives text ids."""
    return build_eval_sets(cfg, spec, tokenize).items
