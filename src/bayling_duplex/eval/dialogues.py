"""Evaluation dialogues built from held-out scripts: the user channel to play, and what to expect.

Four sets (format §8 and beyond): ``turn_taking`` (one question, answered in
time), ``interruption`` (a second question starts while the first answer
would be playing), ``backchannel`` (an "uh-huh" during the answer) and
``hesitation`` (a pause inside the question). Each dialogue is placed by the
same synthesis rules as the training data, then padded with ``tail_s`` of
silence so a late answer or a missing ``[EPAD]`` can still be seen.

Sources: ``demo`` (the held-out demo questions in the toy codec), ``scripts_jsonl``
(held-out scripts with codes) and ``speech_demo`` (the real-speech default: held-out
questions said by held-out voices, mixed with the noise of ``recipe``'s
``waveform`` settings but no echo — in evaluation the assistant's audio is the
model's own — and coded by the checkpoint's codec, the user channel whole; its
waveform is kept for the VAD baselines and the listening files).
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

SOURCES = ("auto", "demo", "scripts_jsonl", "speech_demo")


@dataclass
class EvalSetConfig:
    # auto: speech_demo for a checkpoint with a fitted codec, else demo; demo; scripts_jsonl
    # (path); speech_demo (held-out questions and voices)
    source: str = "auto"
    path: str | None = None
    recipe: str = "speech_demo"  # speech_demo: the recipe whose speech and noise settings to use
    split: str = "heldout"  # whose questions (and lead-ins); train: a diagnostic, not held out
    # speech_demo: whose voices; train: a diagnostic (seen voices), not a held-out figure
    voice_split: str = "heldout"
    turn_taking: int = 100
    interruption: int = 100
    backchannel: int = 50
    hesitation: int = 50
    tail_s: float = 5.0
    seed: int = 1234
    num_codes: int = 256  # demo: the toy codec's code count (must match the training data)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"evalset.source must be one of {SOURCES}, got {self.source!r}")
        for key in ("split", "voice_split"):
            if getattr(self, key) not in ("train", "heldout"):
                raise ValueError(
                    f"evalset.{key} must be train or heldout, got {getattr(self, key)!r}"
                )
        if self.source == "scripts_jsonl" and not self.path:
            raise ValueError(
                "evalset.path must name a scripts .jsonl when evalset.source=scripts_jsonl"
            )


class _CodeDialogues:
    """Dialogues whose user channel is composed in code space (the toy demo, scripts)."""

    def __init__(self, cfg: EvalSetConfig) -> None:
        self.cfg = cfg
        self.turns, self.keys, self.clips = self._pool()

    def _pool(self) -> tuple[list[ScriptTurn], list[str], tuple]:
        cfg = self.cfg
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

    def __len__(self) -> int:
        return len(self.turns)

    def script(self, rid: str, picks: list[int]) -> Script:
        return Script(rid, tuple(self.turns[p] for p in picks))

    def backchannels(self, rid: str) -> tuple:
        return self.clips

    def reset(self) -> None:
        """Nothing held per dialogue."""

    def user_channel(self, t, script, end: int, spec: FormatSpec, placed: str):
        codes = np.concatenate([np.asarray(t.user_codes), spec.silence(t.num_frames, end)])
        pause = None
        if placed == "hesitation":
            first = next(s for s in t.user_segments if s.kind == "turn")
            pause = _longest_silence(
                codes, first.start_frame, first.end_frame, set(spec.silence_codes)
            )
        return codes, None, pause


class _SpeechDialogues:
    """Held-out questions said by held-out voices, mixed and coded (data/speech_demo.py)."""

    def __init__(
        self, cfg: EvalSetConfig, codec, recipe, trim_end_frames: int = 0, drop_backchannels=False
    ) -> None:
        from bayling_duplex.data.demo import answer_key, qa_pairs
        from bayling_duplex.data.speech_demo import speech_pipeline

        if codec is None:
            raise ValueError("evalset.source=speech_demo needs the checkpoint's codec")
        self.cfg = cfg
        self.codec = codec
        self.pairs = qa_pairs(cfg.split)
        self.keys = [answer_key(a) for _, a in self.pairs]
        self.speech, self.mixer = speech_pipeline(recipe, codec, seed=cfg.seed)
        self.trim = trim_end_frames
        self.drop_backchannels = drop_backchannels

    def __len__(self) -> int:
        return len(self.pairs)

    def script(self, rid: str, picks: list[int]) -> Script:
        voice = self.speech.voice_for(self.cfg.voice_split, rid)
        return self.speech.make_script(rid, [self.pairs[p] for p in picks], voice, self.cfg.split)

    def backchannels(self, rid: str) -> tuple:
        return self.speech.backchannels(rid)

    def reset(self) -> None:
        """Drop the clips of the set just built."""
        self.speech.reset()

    def user_channel(self, t, script, end: int, spec: FormatSpec, placed: str):
        from dataclasses import replace

        pad = tuple(int(c) for c in spec.silence(t.num_frames, end))
        t = replace(t, num_frames=end, user_codes=t.user_codes + pad)
        mixed = self.mixer.mix(
            t, script, self.trim, echo=False, drop_backchannels=self.drop_backchannels
        )
        codes = np.asarray(self.codec.encode(mixed.user))
        pause = mixed.pauses[0] if placed == "hesitation" and mixed.pauses else None
        return codes, mixed.user, pause


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
    audio: list[np.ndarray] | None = None  # speech_demo: each item's user channel (16 kHz)


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


def build_eval_sets(
    cfg: EvalSetConfig,
    spec: FormatSpec,
    tokenize,
    codec=None,
    recipe=None,
    trim_end_frames: int = 0,
    only: tuple[str, ...] | None = None,
    drop_backchannels: bool = False,
) -> EvalSets:
    """Every evaluation dialogue ``(item, user codes)`` and the per-set counts.

    ``tokenize(texts)`` gives text ids. A dialogue that synthesis places as another
    scenario is judged as that one and counted as relabelled (with the reason); one
    that cannot be placed at all (``too_long``), or a backchannel set without
    backchannel clips in the source, is counted as excluded.

    ``speech_demo`` needs the checkpoint's ``codec`` and the ``recipe`` (a
    ``RecipeConfig``; default: the file ``cfg.recipe``) whose speech and noise settings
    it uses. ``trim_end_frames`` drops the last frames of speech of every user turn
    (the no-marker check; speech only); ``drop_backchannels`` leaves the backchannel
    clips out of the user's audio, timelines unchanged (the backchannel check; speech
    only); ``only`` builds only the named sets (the others' draws are still made, so the
    dialogues of a set do not depend on it)."""
    if cfg.source == "auto":
        from dataclasses import replace

        cfg = replace(cfg, source="speech_demo" if codec is not None else "demo")
    if cfg.source == "speech_demo":
        if recipe is None:
            from bayling_duplex.data.load import recipe_from_file

            recipe = recipe_from_file(cfg.recipe)
        source = _SpeechDialogues(cfg, codec, recipe, trim_end_frames, drop_backchannels)
    else:
        if trim_end_frames or drop_backchannels:
            raise ValueError(
                "trim_end_frames and drop_backchannels work on audio: evalset.source=speech_demo"
            )
        source = _CodeDialogues(cfg)
    if not len(source):
        raise ValueError("the evaluation source holds no turns")
    rng = random.Random(cfg.seed)
    synth = SynthesisConfig(seed=cfg.seed)
    B = spec.layout.frames_per_block
    tail = round(cfg.tail_s * spec.layout.frame_rate_hz)
    out: list[tuple[EvalItem, np.ndarray]] = []
    audio: list[np.ndarray] = []
    plan = [
        ("turn_taking", cfg.turn_taking, 1),
        ("interruption", cfg.interruption, 2),
        ("backchannel", cfg.backchannel, 1),
        ("hesitation", cfg.hesitation, 1),
    ]
    counts = {scenario: _empty_counts(count) for scenario, count, _ in plan}
    for scenario, count, n_turns in plan:
        c = counts[scenario]
        for i in range(count):
            picks = [rng.randrange(len(source)) for _ in range(n_turns)]
            if only is not None and scenario not in only:
                continue
            rid = f"eval-{scenario}-{i:05d}"
            script = source.script(rid, picks)
            clips = source.backchannels(rid) if scenario == "backchannel" else ()
            if scenario == "backchannel" and not clips:
                c["excluded"] += 1
                _bump(c["excluded_reasons"], "the evaluation source has no backchannel clips")
                continue
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
            codes, wav, pause = source.user_channel(t, script, end, spec, placed)
            bc = next(
                ((s.start_frame, s.end_frame) for s in t.user_segments if s.kind == "backchannel"),
                None,
            )
            out.append(
                (
                    EvalItem(
                        script.id,
                        placed,
                        end,
                        user_turns,
                        tuple(source.keys[p] for p in picks),
                        bc,
                        pause,
                        t.responses[0].end_frame,
                        requested=scenario,
                        relabelled=reason,
                        answer_s=tuple(
                            round(len(turn.assistant_codes) * spec.layout.frame_s, 3)
                            for turn in script.turns
                        ),
                        lead_in_frames=(
                            tuple(turn.user_lead_in_frames for turn in script.turns)
                            if cfg.source == "speech_demo"
                            else ()
                        ),
                    ),
                    codes,
                )
            )
            if wav is not None:
                audio.append(wav)
        source.reset()
    return EvalSets(out, counts, audio or None)


def build_eval_items(
    cfg: EvalSetConfig, spec: FormatSpec, tokenize, codec=None
) -> list[tuple[EvalItem, np.ndarray]]:
    """``(item, user codes)`` for every evaluation dialogue (:func:`build_eval_sets` without
    the counts). ``tokenize(texts)`` gives text ids."""
    return build_eval_sets(cfg, spec, tokenize, codec=codec).items
