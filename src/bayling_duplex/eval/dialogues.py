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
from bayling_duplex.format.records import Script, ScriptTurn, read_jsonl, script_from_json


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


def build_eval_items(
    cfg: EvalSetConfig, spec: FormatSpec, tokenize
) -> list[tuple[EvalItem, np.ndarray]]:
    """``(item, user codes)`` for every evaluation dialogue. ``tokenize(texts)`` gives text ids."""
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
        ("backchannel", cfg.backchannel if clips else 0, 1),
        ("hesitation", cfg.hesitation, 1),
    ]
    for scenario, count, n_turns in plan:
        for i in range(count):
            picks = [rng.randrange(len(turns)) for _ in range(n_turns)]
            script = Script(f"eval-{scenario}-{i:05d}", tuple(turns[p] for p in picks))
            ids = tokenize([t.assistant_text for t in script.turns])
            t = synthesize(script, ids, scenario, synth, spec, clips)
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
            if scenario == "hesitation":
                pause = _longest_silence(codes, *user_turns[0], set(spec.silence_codes))
            out.append(
                (
                    EvalItem(
                        script.id,
                        t.scenario or scenario,
                        end,
                        user_turns,
                        tuple(keys[p] for p in picks),
                        bc,
                        pause,
                        t.responses[0].end_frame,
                    ),
                    codes,
                )
            )
    return out
