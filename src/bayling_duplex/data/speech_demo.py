"""The real-speech demo: the demo dialogues spoken by eSpeak NG voices, coded by a learned codec.

The default recipe (``data_recipes/speech_demo.yaml``). Questions and answers are
the demo corpus's (:mod:`bayling_duplex.data.demo`; the ``train`` and ``heldout``
splits share no question). Each dialogue's user speaks in one voice drawn, seeded
by the dialogue, from its split's voices: the ``train`` split from
``speech.voices`` × ``speech.variants``, the ``heldout`` split (and the evaluation)
from ``speech.heldout_voices`` × ``speech.heldout_variants``, which share neither a
voice nor a variant with training. The assistant speaks in one fixed voice.

Speech comes from :mod:`bayling_duplex.audio.tts` (the only module that talks to
the synthesizer), codes from the learned unit codec (:mod:`bayling_duplex.audio.units`),
which :func:`fit_codec` fits on the channels of training dialogues *as mixed*
(noise, echo, the codec's view of both channels' silence) and saves beside the
data. The build then composes a timeline from each clip's codes (format §6), mixes
the clips on it (:class:`~bayling_duplex.data.mixer.WaveformMixer`: hesitation pauses
cut a turn at a word onset, noise at a sampled SNR, an optional echo of the
assistant) and tokenizes each channel whole: the training codes are the codec's
reading of the audio, so nothing in them was planted in code space.

A :class:`SpeechDemo` lives in each build worker: it synthesizes and codes the
clips of the scripts it makes and serves them to the mixer (the mixer's clip
source), and drops them when the next shard starts.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayling_duplex.data.demo import BACKCHANNELS, _stable, demo_id, demo_picks
from bayling_duplex.format.records import RecordError, Script, ScriptTurn

log = logging.getLogger(__name__)
CODEC_DIR = "codec"  # the fitted codec's folder inside a built dataset

TRAIN_VOICES = ["en-us", "en", "en-029", "en-GB-scotland", "en-GB-x-rp", "en-US-nyc"]
TRAIN_VARIANTS = ["", "m1", "m2", "m3", "m4", "m5", "f1", "f2", "f3", "f4"]
HELDOUT_VOICES = ["en-GB-x-gbclan", "en-GB-x-gbcwmd"]
HELDOUT_VARIANTS = ["m6", "m7", "f5"]
# Lead-ins some user turns start with, said in one breath with the question (no
# punctuation, so no synthesizer pause inside): they spread a question's length, so the
# frames spoken before a silence no longer tell a hesitation pause from a turn's end
# (docs/evaluation.md, "The hesitation set's length cue"). Held-out turns use their own.
TRAIN_PREAMBLES = [
    "okay so tell me",
    "I was wondering about something",
    "can you tell me",
    "I would really like to know",
    "my next question for you is",
    "here is another one for you",
    "alright then I have one more question",
    "so I have been thinking about this",
]
HELDOUT_PREAMBLES = [
    "quick question for you",
    "let me ask you something",
    "now I am curious about this one",
]


@dataclass
class SpeechConfig:
    """``recipe.speech``: who speaks the demo dialogues (eSpeak NG voices)."""

    voices: list[str] = field(default_factory=lambda: list(TRAIN_VOICES))
    variants: list[str] = field(default_factory=lambda: list(TRAIN_VARIANTS))
    heldout_voices: list[str] = field(default_factory=lambda: list(HELDOUT_VOICES))
    heldout_variants: list[str] = field(default_factory=lambda: list(HELDOUT_VARIANTS))
    rate: list[int] = field(default_factory=lambda: [150, 200])  # words per minute, uniform
    pitch: list[int] = field(default_factory=lambda: [30, 70])
    range: list[int] = field(default_factory=lambda: [30, 80])
    # the share of user turns that start with a lead-in, and the lead-ins of each split
    preamble_prob: float = 0.5
    preambles: list[str] = field(default_factory=lambda: list(TRAIN_PREAMBLES))
    heldout_preambles: list[str] = field(default_factory=lambda: list(HELDOUT_PREAMBLES))
    assistant_voice: str = "en-us"
    assistant_variant: str = "f2"
    assistant_rate: int = 185

    def __post_init__(self) -> None:
        for name in ("voices", "variants", "heldout_voices", "heldout_variants"):
            if not getattr(self, name):
                raise ValueError(f"recipe.speech.{name} must not be empty")
        if not 0.0 <= self.preamble_prob <= 1.0:
            raise ValueError(
                f"recipe.speech.preamble_prob must be in [0, 1], got {self.preamble_prob}"
            )
        if self.preamble_prob > 0:
            for name in ("preambles", "heldout_preambles"):
                if not getattr(self, name):
                    raise ValueError(
                        f"recipe.speech.{name} must not be empty when preamble_prob > 0"
                    )
        pairs = (
            ("voices", "heldout_voices"),
            ("variants", "heldout_variants"),
            ("preambles", "heldout_preambles"),
        )
        for a, b in pairs:
            if shared := sorted(set(getattr(self, a)) & set(getattr(self, b))):
                raise ValueError(
                    f"recipe.speech.{b} shares {shared} with recipe.speech.{a}: "
                    "held-out voices must be unseen in training"
                )
        for name in ("rate", "pitch", "range"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"recipe.speech.{name} must be [low, high], got {lo_hi}")

    def sampler(self, split: str):
        from bayling_duplex.audio.tts import VoiceSampler

        held = split != "train"
        return VoiceSampler(
            names=list(self.heldout_voices if held else self.voices),
            variants=list(self.heldout_variants if held else self.variants),
            rate=tuple(self.rate),
            pitch=tuple(self.pitch),
            range=tuple(self.range),
        )

    def lead_in(self, split: str, rng: random.Random) -> str:
        """A lead-in for one user turn of ``split``, drawn with ``rng``: "" with probability
        1 − ``preamble_prob``."""
        if rng.random() >= self.preamble_prob:
            return ""
        pool = self.preambles if split == "train" else self.heldout_preambles
        return pool[rng.randrange(len(pool))]

    def assistant(self):
        from bayling_duplex.audio.tts import Voice

        return Voice(self.assistant_voice, self.assistant_variant, rate=self.assistant_rate)


def word_ends(onsets: tuple[float, ...], num_frames: int, frame_s: float) -> tuple[int, ...]:
    """Frame offsets where a pause can split an utterance: the frame boundary at or before
    each word onset but the first (so the cut falls in the gap before that word)."""
    ends = sorted({int(o / frame_s) for o in onsets[1:]})
    return tuple(e for e in ends if 0 < e < num_frames)


def pause_points(
    onsets: tuple[float, ...], num_frames: int, frame_s: float, lead_words: int = 0
) -> tuple[int, ...]:
    """Where a hesitation pause may go in a user turn: the :func:`word_ends` after a
    lead-in of ``lead_words`` words (at the question's first word or later), or in a turn
    without one, in its second half. So the frames spoken before a pause spread over the
    same range as whole turns' (docs/evaluation.md, "The hesitation set's length cue");
    all word ends where that leaves none."""
    ends = word_ends(onsets, num_frames, frame_s)
    first = question_start(onsets, frame_s, lead_words) or num_frames // 2
    return tuple(e for e in ends if e >= first) or ends


def question_start(onsets: tuple[float, ...], frame_s: float, lead_words: int) -> int:
    """The frame where the question proper starts after a lead-in of ``lead_words``
    words (the frame boundary at or before its first word's onset); 0 without one."""
    if lead_words and len(onsets) > lead_words:
        return int(onsets[lead_words] / frame_s)
    return 0


class LengthCodec:
    """Codes of the right length and nothing else (all 0): what the timelines of the
    dialogues a codec is *fitted on* are composed with, before any codec exists."""

    name = "length-only"
    num_codes = 1
    silence_codes = (0,)
    sample_rate = 16000
    samples_per_frame = 1280

    def encode(self, wav: np.ndarray) -> tuple[int, ...]:
        return (0,) * -(-len(wav) // self.samples_per_frame)

    def encode_many(self, wavs) -> list[tuple[int, ...]]:
        return [self.encode(w) for w in wavs]


class SpeechDemo:
    """Synthesizes and codes the demo dialogues' speech, and serves the clips to the mixer."""

    def __init__(self, cfg: SpeechConfig, codec, seed: int = 0, keep: int | None = None) -> None:
        """``keep``: hold the clips of only the ``keep`` scripts made last (None: until
        :meth:`reset`), for readers that go through many dialogues once."""
        self.cfg = cfg
        self.keep = keep
        self._made: dict[str, list[ScriptTurn]] = {}  # script id -> its turns, oldest first
        self.codec = codec
        self.seed = seed
        self.frame_s = codec.samples_per_frame / codec.sample_rate
        self._samplers = {s: cfg.sampler(s) for s in ("train", "heldout")}
        self._assistant = cfg.assistant()
        self._user: dict[tuple[str, ScriptTurn], np.ndarray] = {}
        self._answers: dict[str, tuple[np.ndarray, tuple[int, ...]]] = {}
        self._bcs: dict[str, dict[str, tuple[np.ndarray, tuple[int, ...]]]] = {}
        self.voices: dict[str, object] = {}  # script id -> its user's voice

    # ------------------------------------------------------------------ scripts

    def voice_for(self, split: str, rid: str):
        rng = random.Random(_stable(f"voice|{self.seed}|{rid}"))
        return self._samplers["train" if split == "train" else "heldout"].sample(rng)

    def script(self, split: str, index: int, min_turns: int = 2, max_turns: int = 3) -> Script:
        """Dialogue ``index`` of ``split`` (the demo's questions), spoken."""
        rid = demo_id(split, index)
        picks = demo_picks(split, index, self.seed, min_turns, max_turns)
        return self.make_script(rid, picks, self.voice_for(split, rid), split)

    def make_script(self, rid: str, pairs: list[tuple[str, str]], voice, split: str) -> Script:
        """The script of ``pairs`` said by ``voice``; some questions get a lead-in of
        ``split`` (seeded by ``rid``), which is part of the turn's user text."""
        from bayling_duplex.audio.tts import synthesize

        self._forget(rid)
        self.voices[rid] = voice
        rng = random.Random(_stable(f"lead-in|{self.seed}|{rid}"))
        turns = []
        for question, answer in pairs:
            lead = self.cfg.lead_in(split, rng)
            question = f"{lead} {question[0].lower()}{question[1:]}" if lead else question
            utt = synthesize(question, voice)
            codes = self.codec.encode(utt.wav)
            n_lead = len(lead.split())
            ends = pause_points(utt.word_onsets, len(codes), self.frame_s, n_lead)
            _, a_codes = self._answer(answer)
            turn = ScriptTurn(
                codes,
                answer,
                a_codes,
                question,
                ends,
                question_start(utt.word_onsets, self.frame_s, n_lead),
            )
            self._user[(rid, turn)] = utt.wav
            turns.append(turn)
        self._made[rid] = turns
        while self.keep is not None and len(self._made) > self.keep:
            self._forget(next(iter(self._made)))
        return Script(rid, tuple(turns))

    def _forget(self, rid: str) -> None:
        for turn in self._made.pop(rid, ()):
            self._user.pop((rid, turn), None)
        self._bcs.pop(rid, None)
        self.voices.pop(rid, None)

    def _answer(self, text: str) -> tuple[np.ndarray, tuple[int, ...]]:
        if text not in self._answers:
            from bayling_duplex.audio.tts import synthesize

            wav = synthesize(text, self._assistant).wav
            self._answers[text] = (wav, self.codec.encode(wav))
        return self._answers[text]

    def backchannels(self, rid: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """``(text, codes)`` of the listener responses, in the voice of dialogue ``rid``'s user."""
        if rid not in self._bcs:
            from bayling_duplex.audio.tts import synthesize

            voice = self.voices[rid]
            clips = {}
            for text in BACKCHANNELS:
                wav = synthesize(text, voice).wav
                clips[text] = (wav, self.codec.encode(wav))
            self._bcs[rid] = clips
        return tuple((text, codes) for text, (_, codes) in self._bcs[rid].items())

    def reset(self) -> None:
        """Drop the user clips (a new shard starts); answers are kept (one voice, few texts)."""
        self._user.clear()
        self._bcs.clear()
        self.voices.clear()
        self._made.clear()

    # ------------------------------------------------------------------ the mixer's clip source

    def user_clip(self, rid: str, turn: ScriptTurn) -> np.ndarray:
        return self._user[(rid, turn)]

    def assistant_clip(self, rid: str, turn: ScriptTurn) -> np.ndarray:
        return self._answer(turn.assistant_text)[0]

    def backchannel_clip(self, rid: str, text: str) -> np.ndarray:
        self.backchannels(rid)
        return self._bcs[rid][text][0]


def speech_pipeline(recipe, codec, seed: int | None = None, keep: int | None = None):
    """``(speech, mixer)``: the spoken dialogues of ``recipe`` (voices seeded by ``seed``,
    default the recipe's synthesis seed) and the mixer that places their clips, with the
    recipe's noise and echo, and codes the channels with ``codec``."""
    from bayling_duplex.data.mixer import WaveformMixer

    speech = SpeechDemo(recipe.speech, codec, recipe.synthesis.seed if seed is None else seed, keep)
    return speech, WaveformMixer(recipe.waveform, codec, speech, recipe.synthesis.seed)


# --------------------------------------------------------------------------- the codec


def fitting_audio(recipe, seconds: float, progress: bool = False) -> list[np.ndarray]:
    """Both channels, as mixed, of training dialogues (the recipe's train split, its
    scenario mix, noise and echo) until ``seconds`` of audio are collected."""
    from tqdm.auto import tqdm

    from bayling_duplex.data.synthesis import record_rng, synthesize
    from bayling_duplex.format.spec import FormatSpec

    codec = LengthCodec()
    spec = FormatSpec(recipe.format.spec_layout(), codec.silence_codes)  # placement only
    speech, mixer = speech_pipeline(recipe, codec)
    wavs, total, i = [], 0.0, 0
    bar = tqdm(total=round(seconds), desc="codec fitting audio", unit="s", disable=not progress)
    while total < seconds:
        script = speech.script("train", i)
        i += 1
        scenario = recipe.synthesis.scenarios_for(record_rng(recipe.synthesis.seed, script.id))[0]
        bcs = speech.backchannels(script.id) if scenario == "backchannel" else ()
        ids = [[0] * max(1, len(t.assistant_text) // 4) for t in script.turns]  # text length only
        try:
            t = synthesize(script, ids, scenario, recipe.synthesis, spec, bcs)
        except RecordError:  # a placement that does not fit: skip it (this is fitting audio)
            continue
        mixed = mixer.mix(t, script)
        wavs += [mixed.user, mixed.assistant]
        got = 2 * len(mixed.user) / codec.sample_rate
        total += got
        bar.update(round(got))
        speech.reset()
    bar.close()
    return wavs


def fit_codec(recipe, folder: str | Path, progress: bool = True):
    """Fit the recipe's unit codec on ``recipe.codec.fit_minutes`` of training audio as
    mixed, save it into ``folder`` and return it (loaded as saved)."""
    from bayling_duplex.audio.units import UnitCodec, UnitCodecConfig

    c = recipe.codec
    wavs = fitting_audio(recipe, 60.0 * c.fit_minutes, progress)
    cfg = UnitCodecConfig(num_codes=c.num_codes, iters=c.fit_iters, seed=c.fit_seed)
    codec = UnitCodec.fit(wavs, cfg, progress=progress)
    codec.save(folder)
    log.info(
        "fitted %s on %.1f min of mixed training audio; silence codes %s",
        codec.name,
        sum(len(w) for w in wavs) / codec.sample_rate / 60,
        list(codec.silence_codes),
    )
    return UnitCodec.load(folder)
