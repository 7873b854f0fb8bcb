"""Waveform-level synthesis: a synthesised timeline's audio mixed on two channels, then tokenized.

The default build composes *codes*: synthesis (format §6) places each clip's
codes on the timeline and fills the gaps with the silence pattern. At
``recipe.waveform.level: waveform`` the same timeline is rendered as audio
instead, and its codes are what the speech tokenizer makes of that audio:

1. the timeline comes from ``synthesis.synthesize`` as usual (frames);
2. each user clip is added to the user channel at sample ``start_frame × 1280``
   (16 kHz, 80 ms frames), a hesitation pause splitting the clip where synthesis
   inserted it, backchannel clips likewise; each answer clip goes to the
   assistant channel, cut after ``end_frame - start_frame`` frames with a short
   fade-out when it was interrupted;
3. optional noise at an SNR drawn per dialogue (``snr_db``) is added to the user
   channel (or the channels listed in ``noise_channels``);
4. both channels are tokenized whole: the user channel's codes replace
   ``user_codes``, and each response's codes are the assistant channel's codes on
   its frames.

So the codes carry what real two-channel audio would give: context across clip
boundaries, the tokenizer's own silence, noise. The clips come from the
``user_audio`` / ``assistant_audio`` paths that ``python -m bayling_duplex.speech
tokenize`` writes into each script turn; backchannel clips from an ``audio`` key
in ``recipe.backchannels_path``. Every random choice is seeded by the record id.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path

import numpy as np

from bayling_duplex.data.synthesis import record_rng
from bayling_duplex.format.records import (
    RecordError,
    Script,
    Timeline,
    read_jsonl,
    script_from_json,
)

log = logging.getLogger(__name__)
LEVELS = ("codes", "waveform")
CHANNELS = ("user", "assistant")
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power falls as 1/f^exponent
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


@dataclass
class WaveformConfig:
    """``recipe.waveform``: whether synthesis composes codes or mixes audio, and the noise."""

    level: str = "codes"  # codes: compose the scripts' codes; waveform: mix the audio, tokenize it
    tokenizer: str | None = None  # glm-4-voice-tokenizer folder (level=waveform)
    noise_prob: float = 0.0  # share of dialogues that get noise
    snr_db: list[float] = field(default_factory=lambda: [10.0, 30.0])  # [low, high], uniform
    noise_dir: str | None = (
        None  # noise recordings (wav/flac/ogg, searched recursively); None: white
    )
    noise_channels: list[str] = field(default_factory=lambda: ["user"])
    # generated noise (no noise_dir): its colour is drawn per dialogue from these
    noise_colours: list[str] = field(default_factory=lambda: ["white"])
    cut_fade_ms: float = 10.0  # fade-out where an interrupted answer is cut
    # an attenuated, delayed echo of the assistant in the user's microphone
    echo_prob: float = 0.0  # share of dialogues with an echo
    echo_db: list[float] = field(default_factory=lambda: [-30.0, -18.0])  # echo gain [low, high]
    echo_delay_ms: list[float] = field(default_factory=lambda: [20.0, 120.0])
    user_gain_db: list[float] = field(
        default_factory=lambda: [0.0, 0.0]
    )  # level of the user channel

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"recipe.waveform.level must be one of {LEVELS}, got {self.level!r}")
        for name in ("noise_prob", "echo_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"recipe.waveform.{name} must lie in [0, 1]")
        for name in ("snr_db", "echo_db", "echo_delay_ms", "user_gain_db"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or lo_hi[0] > lo_hi[1]:
                raise ValueError(f"recipe.waveform.{name} must be [low, high], got {lo_hi}")
        if self.echo_delay_ms[0] < 0:
            raise ValueError("recipe.waveform.echo_delay_ms must be >= 0")
        if bad := [c for c in self.noise_colours if c not in NOISE_COLOURS]:
            raise ValueError(
                f"recipe.waveform.noise_colours: unknown {bad}; use {list(NOISE_COLOURS)}"
            )
        if not self.noise_colours:
            raise ValueError("recipe.waveform.noise_colours must name at least one colour")
        if bad := [c for c in self.noise_channels if c not in CHANNELS]:
            raise ValueError(f"recipe.waveform.noise_channels: unknown {bad}; use {CHANNELS}")
        if self.cut_fade_ms < 0:
            raise ValueError("recipe.waveform.cut_fade_ms must be >= 0")


# --------------------------------------------------------------------------- pure mixing


@dataclass(frozen=True)
class Placement:
    """A clip on a channel: it starts at ``start_frame``; ``max_frames`` cuts it (None: whole)."""

    start_frame: int
    wav: np.ndarray  # float32 (samples,) at 16 kHz
    max_frames: int | None = None


def mix_channel(
    placements: list[Placement], num_frames: int, samples_per_frame: int, fade_samples: int = 0
) -> np.ndarray:
    """One channel of ``num_frames × samples_per_frame`` samples with the clips added in.

    A clip cut by ``max_frames`` fades out linearly over its last ``fade_samples``
    samples; anything past the channel's end is dropped.
    """
    out = np.zeros(num_frames * samples_per_frame, dtype=np.float32)
    for p in placements:
        wav = np.asarray(p.wav, dtype=np.float32)
        if p.max_frames is not None and len(wav) > p.max_frames * samples_per_frame:
            wav = wav[: p.max_frames * samples_per_frame].copy()
            n = min(fade_samples, len(wav))
            if n:
                wav[-n:] *= np.linspace(1.0, 0.0, n, dtype=np.float32)
        start = p.start_frame * samples_per_frame
        wav = wav[: max(0, len(out) - start)]
        out[start : start + len(wav)] += wav
    return out


def scaled_noise(noise: np.ndarray, speech_power: float, snr_db: float) -> np.ndarray:
    """``noise`` scaled so that ``10·log10(speech_power / noise_power) = snr_db``."""
    power = float(np.mean(np.square(noise, dtype=np.float64)))
    if power == 0.0 or speech_power == 0.0:
        return np.zeros_like(noise)
    gain = np.sqrt(speech_power / (power * 10.0 ** (snr_db / 10.0)))
    return (noise * gain).astype(np.float32)


def coloured_noise(n: int, colour: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of unit-variance noise whose power falls as ``1/f^k`` (white 0, pink 1, brown 2)."""
    white = rng.standard_normal(n)
    k = NOISE_COLOURS[colour]
    if k == 0.0 or n < 2:
        return white.astype(np.float32)
    spec = np.fft.rfft(white)
    f = np.arange(len(spec), dtype=np.float64)
    f[0] = 1.0
    noise = np.fft.irfft(spec / f ** (k / 2), n)
    return (noise / (noise.std() or 1.0)).astype(np.float32)


def pause_cut(
    segment_codes: tuple[int, ...], turn_codes: tuple[int, ...], preferred: tuple[int, ...] = ()
) -> int:
    """Where synthesis split a user turn for a hesitation pause (a frame offset into the turn).

    ``segment_codes`` are the timeline's codes of the whole segment (turn plus pause).
    The cut ``c`` is the offset whose prefix and suffix both match; among several
    (silence codes that equal their neighbours), ``preferred`` offsets come first.
    """
    pause = len(segment_codes) - len(turn_codes)
    n = len(turn_codes)

    def fits(c: int) -> bool:
        return segment_codes[:c] == turn_codes[:c] and segment_codes[c + pause :] == turn_codes[c:]

    for c in (*preferred, n // 2, *range(n + 1)):
        if 0 <= c <= n and fits(c):
            return c
    raise ValueError("the segment is not the turn with one pause inserted")


def turn_pauses(t: Timeline, script: Script) -> list[tuple[int, int] | None]:
    """For each user turn of synthesised timeline ``t`` (segments of kind ``turn``, in
    order): ``(cut, frames)`` of the hesitation pause synthesis put in it (the offset into
    the turn's speech and the pause's length), or None. ``t`` carries the codes as
    synthesis placed them (before a waveform render replaces them)."""
    out: list[tuple[int, int] | None] = []
    turns = [s for s in t.user_segments if s.kind == "turn"]
    for seg, turn in zip(turns, script.turns, strict=False):
        pause = (seg.end_frame - seg.start_frame) - len(turn.user_codes)
        if pause <= 0:
            out.append(None)
            continue
        codes = t.user_codes[seg.start_frame : seg.end_frame]
        out.append((pause_cut(codes, turn.user_codes, turn.user_word_ends), pause))
    return out


def hesitation_pauses(t: Timeline, script: Script) -> list[tuple[int, int]]:
    """The hesitation pauses of synthesised timeline ``t``, ``[start, end)`` in frames."""
    turns = [s for s in t.user_segments if s.kind == "turn"]
    return [
        (seg.start_frame + p[0], seg.start_frame + p[0] + p[1])
        for seg, p in zip(turns, turn_pauses(t, script), strict=False)
        if p is not None
    ]


# --------------------------------------------------------------------------- the mixer


def worker_device() -> str:
    """A CUDA device for this build worker (workers spread over the GPUs), else the CPU."""
    import multiprocessing as mp

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    ident = mp.current_process()._identity  # (k,) in the k-th pool worker, () in the parent
    return f"cuda:{(ident[0] - 1 if ident else 0) % torch.cuda.device_count()}"


class FileClips:
    """The clips of ``scripts_jsonl`` sources: the ``user_audio`` / ``assistant_audio`` paths
    that ``python -m bayling_duplex.speech tokenize`` writes into each script turn, and
    backchannel clips from an ``audio`` key in ``recipe.backchannels_path``."""

    def __init__(self, load_audio, backchannels: dict[str, str] | None = None) -> None:
        self.load_audio = load_audio
        self.backchannels: dict[str, str] = dict(backchannels or {})  # text -> audio path
        self.turn_audio: dict = {}  # ScriptTurn -> (user path, assistant path)
        self._audio = lru_cache(maxsize=64)(load_audio)

    def index_shard(self, path: str, byte_offset: int = 0, count: int | None = None) -> None:
        """Read the clip paths of the scripts on lines ``[byte_offset, +count)`` of ``path``.

        Turns are keyed by their :class:`~bayling_duplex.format.records.ScriptTurn`, so a
        turn borrowed from the next script (an interruption partner) is found too.
        Relative paths resolve against the scripts file's folder.
        """
        root = Path(path).resolve().parent
        self.turn_audio = {}
        for _, obj in read_jsonl(path, byte_offset, count):
            if not isinstance(obj, dict):
                continue
            try:
                script = script_from_json(obj)
            except RecordError:
                continue  # the build reports it
            for turn, raw in zip(script.turns, obj["turns"], strict=True):
                user, assistant = raw.get("user_audio"), raw.get("assistant_audio")
                if isinstance(user, str) and isinstance(assistant, str):
                    self.turn_audio[turn] = (str(root / user), str(root / assistant))

    def _clip(self, rid: str, path: str) -> np.ndarray:
        if not Path(path).is_file():
            raise RecordError(rid, "missing_file", f"no such file: {path}")
        try:
            return self._audio(path)
        except Exception as e:
            raise RecordError(rid, "unreadable_audio", f"{path}: {e}") from None

    def _paths(self, rid: str, turn) -> tuple[str, str]:
        if turn not in self.turn_audio:
            raise RecordError(
                rid, "no_audio", "a turn has no user_audio/assistant_audio in its script"
            )
        return self.turn_audio[turn]

    def user_clip(self, rid: str, turn) -> np.ndarray:
        return self._clip(rid, self._paths(rid, turn)[0])

    def assistant_clip(self, rid: str, turn) -> np.ndarray:
        return self._clip(rid, self._paths(rid, turn)[1])

    def backchannel_clip(self, rid: str, text: str) -> np.ndarray:
        if text not in self.backchannels:
            raise RecordError(rid, "no_audio", f"backchannel {text!r} has no audio")
        return self._clip(rid, self.backchannels[text])


@dataclass
class Mixed:
    """A timeline's two channels as mixed (before tokenizing), and where its pauses are."""

    user: np.ndarray
    assistant: np.ndarray
    pauses: list[tuple[int, int]]  # hesitation pauses [start, end) in frames
    snr_db: float | None = None
    echo_db: float | None = None


class WaveformMixer:
    """Renders synthesised timelines as audio and tokenizes them (see the module docstring).

    ``codec`` is any codec with ``encode_many``, ``sample_rate`` and ``samples_per_frame``
    (GLM-4-Voice's tokenizer, the learned unit codec); ``clips`` gives the clips of a
    record's turns and backchannels (:class:`FileClips` for scripts with audio paths,
    the speech demo for synthesized speech). :meth:`render` turns a timeline of a
    script into its waveform-level version; :meth:`mix` gives the audio itself.
    """

    def __init__(self, cfg: WaveformConfig, codec, clips, seed: int = 0) -> None:
        self.cfg = cfg
        self.codec = codec
        self.clips = clips
        self.seed = seed
        self._noise_files = (
            sorted(p for p in Path(cfg.noise_dir).rglob("*") if p.suffix in AUDIO_SUFFIXES)
            if cfg.noise_dir
            else []
        )
        if cfg.noise_dir and not self._noise_files:
            raise FileNotFoundError(f"recipe.waveform.noise_dir {cfg.noise_dir} holds no audio")
        # noise recordings belong to the mixer, whatever the clips come from
        self._noise_audio = lru_cache(maxsize=16)(self._read_noise)

    @classmethod
    def for_recipe(cls, recipe) -> WaveformMixer | None:
        """The mixer of a ``glm4voice`` ``recipe`` (a ``RecipeConfig``) at
        ``waveform.level: waveform``, or None at ``waveform.level: codes``. (The speech
        demo's mixer is built by :mod:`bayling_duplex.data.speech_demo`.)"""
        cfg = getattr(recipe, "waveform", None)
        if cfg is None or cfg.level == "codes" or recipe.codec.kind == "units":
            return None
        from bayling_duplex.audio.codec import GlmSpeechCodec

        if recipe.codec.kind != "glm4voice":
            raise ValueError("recipe.waveform.level=waveform needs recipe.codec.kind=glm4voice")
        if not cfg.tokenizer:
            raise ValueError("recipe.waveform.tokenizer must name a glm-4-voice-tokenizer folder")
        if bad := [s.kind for s in recipe.splits().values() if s.kind in ("demo", "hf_scripts")]:
            raise ValueError(
                f"recipe.waveform.level=waveform reads clips from scripts_jsonl sources, not {bad}"
            )
        codec = GlmSpeechCodec.load(cfg.tokenizer, device=worker_device())
        if abs(codec.frame_rate_hz - recipe.format.frame_rate_hz) > 1e-9:
            raise ValueError(
                f"the tokenizer makes {codec.frame_rate_hz} codes/s, "
                f"recipe.format.frame_rate_hz is {recipe.format.frame_rate_hz}"
            )
        if list(codec.silence_codes) != list(recipe.format.silence_codes):
            raise ValueError(
                f"recipe.format.silence_codes {list(recipe.format.silence_codes)[:8]} are not "
                f"this tokenizer's silence {list(codec.silence_codes)[:8]} (silence_codes.json "
                "was measured with another tokenizer?)"
            )
        bcs = {}
        if recipe.backchannels_path:
            for _, o in read_jsonl(recipe.backchannels_path):
                if isinstance(o, dict) and isinstance(o.get("audio"), str):
                    bcs[o["text"]] = o["audio"]
        return cls(cfg, codec, FileClips(codec.load_audio, bcs), recipe.synthesis.seed)

    def index_shard(self, path: str, byte_offset: int = 0, count: int | None = None) -> None:
        """Let the clip source read a shard's clip paths (file clips only)."""
        if hasattr(self.clips, "index_shard"):
            self.clips.index_shard(path, byte_offset, count)

    def placements(
        self,
        t: Timeline,
        script: Script,
        trim_end_frames: int = 0,
        drop_backchannels: bool = False,
    ) -> tuple[list[Placement], list[Placement], list[tuple[int, int]]]:
        """The user and assistant channels' clips of timeline ``t`` of ``script``, and the
        hesitation pauses [start, end) in frames. ``trim_end_frames`` drops each user
        turn's last frames of speech (the no-marker check: nothing at a turn's very end
        may be what tells that it ended); ``drop_backchannels`` leaves the backchannel
        clips out (the backchannel check: what the assistant does without them)."""
        spf = self.codec.samples_per_frame
        turn_segments = [s for s in t.user_segments if s.kind == "turn"]
        user, assistant, pauses = [], [], []
        for i, (seg, hes) in enumerate(zip(turn_segments, turn_pauses(t, script), strict=True)):
            turn = script.turns[i]
            wav = self.clips.user_clip(script.id, turn)
            if trim_end_frames:
                keep = max(1, len(turn.user_codes) - trim_end_frames) * spf
                wav = wav[: min(len(wav), keep)]
            if hes is None:
                user.append(Placement(seg.start_frame, wav))
                continue
            cut, pause = hes
            split = cut * spf
            user.append(Placement(seg.start_frame, wav[:split]))
            user.append(Placement(seg.start_frame + cut + pause, wav[split:]))
            pauses.append((seg.start_frame + cut, seg.start_frame + cut + pause))
        for seg in t.user_segments:
            if seg.kind == "backchannel" and not drop_backchannels:
                clip = self.clips.backchannel_clip(script.id, seg.text)
                user.append(Placement(seg.start_frame, clip))
        for j, r in enumerate(t.responses):
            wav = self.clips.assistant_clip(script.id, script.turns[j])
            assistant.append(Placement(r.start_frame, wav, r.end_frame - r.start_frame))
        return user, assistant, pauses

    def _read_noise(self, path: str) -> np.ndarray:
        from bayling_duplex.audio.whisper_vq import load_audio

        return load_audio(path, self.codec.sample_rate)

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if not self._noise_files:
            colours = self.cfg.noise_colours
            return coloured_noise(n, colours[int(rng.integers(len(colours)))], rng)
        path = self._noise_files[int(rng.integers(len(self._noise_files)))]
        noise = self._noise_audio(str(path))
        if noise.size == 0:
            return rng.standard_normal(n).astype(np.float32)
        start = int(rng.integers(len(noise)))
        return np.resize(np.roll(noise, -start), n)

    def mix(
        self,
        t: Timeline,
        script: Script,
        trim_end_frames: int = 0,
        echo: bool = True,
        drop_backchannels: bool = False,
    ) -> Mixed:
        """Timeline ``t``'s two channels: clips placed, the user's level, noise and echo drawn
        from a generator seeded by the record id (``echo=False``: no echo, as in evaluation,
        where the assistant's audio is the model's own and not known in advance).
        ``trim_end_frames`` and ``drop_backchannels``: :meth:`placements`; the noise is
        the same as without them."""
        spf = self.codec.samples_per_frame
        fade = round(self.cfg.cut_fade_ms * self.codec.sample_rate / 1000)
        user_p, assistant_p, pauses = self.placements(t, script, trim_end_frames, drop_backchannels)
        # the noise level follows the speech as spoken: trimming must not change the noise
        altered = trim_end_frames or drop_backchannels
        power_p = self.placements(t, script)[0] if altered else user_p
        user = mix_channel(user_p, t.num_frames, spf, fade)
        assistant = mix_channel(assistant_p, t.num_frames, spf, fade)
        rng = np.random.default_rng(
            record_rng(self.seed, t.id, f"noise|{t.scenario}").getrandbits(64)
        )
        gain_db = rng.uniform(*self.cfg.user_gain_db)
        power_p = [replace(p, wav=p.wav * np.float32(10 ** (gain_db / 20))) for p in power_p]
        user *= np.float32(10 ** (gain_db / 20))
        out = Mixed(user, assistant, pauses)
        if rng.random() < self.cfg.noise_prob:
            snr = rng.uniform(*self.cfg.snr_db)
            out.snr_db = round(float(snr), 2)
            for name in self.cfg.noise_channels:
                clips = power_p if name == "user" else assistant_p
                speech = np.concatenate([p.wav for p in clips]) if clips else np.zeros(1)
                power = float(np.mean(np.square(speech, dtype=np.float64)))
                wav = getattr(out, name)
                setattr(out, name, wav + scaled_noise(self._noise(len(wav), rng), power, snr))
        if rng.random() < self.cfg.echo_prob and echo:
            gain = rng.uniform(*self.cfg.echo_db)
            delay = round(rng.uniform(*self.cfg.echo_delay_ms) * self.codec.sample_rate / 1000)
            out.echo_db = round(float(gain), 2)
            echoed = np.zeros_like(out.user)
            echoed[delay:] = assistant[: len(assistant) - delay] if delay else assistant
            out.user = out.user + echoed * np.float32(10 ** (gain / 20))
        return out

    def render(self, t: Timeline, script: Script, trim_end_frames: int = 0) -> Timeline:
        """Timeline ``t`` (synthesised from ``script``) with codes tokenized from its mixed audio."""
        return self.tokenize(t, self.mix(t, script, trim_end_frames))

    def tokenize(self, t: Timeline, mixed: Mixed) -> Timeline:
        """``t`` with the codes of its mixed channels: the user channel's codes replace
        ``user_codes``, each response's codes are the assistant channel's on its frames."""
        user_codes, assistant_codes = self.codec.encode_many([mixed.user, mixed.assistant])
        if len(user_codes) != t.num_frames or len(assistant_codes) != t.num_frames:
            raise RecordError(
                t.id,
                "code_count",
                f"{t.num_frames} frames mixed, tokenizer gave {len(user_codes)}/{len(assistant_codes)}",
            )
        responses = tuple(
            replace(r, codes=tuple(assistant_codes[r.start_frame : r.end_frame]))
            for r in t.responses
        )
        return replace(t, user_codes=tuple(user_codes), responses=responses)
