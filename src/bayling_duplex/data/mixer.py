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
    cut_fade_ms: float = 10.0  # fade-out where an interrupted answer is cut

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"recipe.waveform.level must be one of {LEVELS}, got {self.level!r}")
        if self.level == "waveform" and not self.tokenizer:
            raise ValueError("recipe.waveform.tokenizer must name a glm-4-voice-tokenizer folder")
        if not 0 <= self.noise_prob <= 1:
            raise ValueError("recipe.waveform.noise_prob must lie in [0, 1]")
        if len(self.snr_db) != 2 or self.snr_db[0] > self.snr_db[1]:
            raise ValueError(f"recipe.waveform.snr_db must be [low, high], got {self.snr_db}")
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


# --------------------------------------------------------------------------- the mixer


def worker_device() -> str:
    """A CUDA device for this build worker (workers spread over the GPUs), else the CPU."""
    import multiprocessing as mp

    import torch

    if not torch.cuda.is_available():
        return "cpu"
    ident = mp.current_process()._identity  # (k,) in the k-th pool worker, () in the parent
    return f"cuda:{(ident[0] - 1 if ident else 0) % torch.cuda.device_count()}"


class WaveformMixer:
    """Renders synthesised timelines as audio and tokenizes them (see the module docstring).

    One per build worker: :meth:`for_recipe` loads the speech tokenizer,
    :meth:`index_shard` reads the clips of a shard's scripts, :meth:`render`
    turns a timeline of one of those scripts into its waveform-level version.
    """

    def __init__(self, cfg: WaveformConfig, codec, seed: int = 0, backchannels=None) -> None:
        self.cfg = cfg
        self.codec = codec
        self.seed = seed
        self.backchannels: dict[str, str] = dict(backchannels or {})  # text -> audio path
        self.turn_audio: dict = {}  # ScriptTurn -> (user path, assistant path)
        self._noise_files = (
            sorted(p for p in Path(cfg.noise_dir).rglob("*") if p.suffix in AUDIO_SUFFIXES)
            if cfg.noise_dir
            else []
        )
        if cfg.noise_dir and not self._noise_files:
            raise FileNotFoundError(f"recipe.waveform.noise_dir {cfg.noise_dir} holds no audio")
        self._audio = lru_cache(maxsize=64)(self._read)

    @classmethod
    def for_recipe(cls, recipe) -> WaveformMixer | None:
        """The mixer of ``recipe`` (a ``RecipeConfig``), or None at ``waveform.level: codes``."""
        cfg = getattr(recipe, "waveform", None)
        if cfg is None or cfg.level == "codes":
            return None
        from bayling_duplex.audio.codec import GlmSpeechCodec

        if recipe.codec.kind != "glm4voice":
            raise ValueError("recipe.waveform.level=waveform needs recipe.codec.kind=glm4voice")
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
        clips = {}
        if recipe.backchannels_path:
            for _, o in read_jsonl(recipe.backchannels_path):
                if isinstance(o, dict) and isinstance(o.get("audio"), str):
                    clips[o["text"]] = o["audio"]
        return cls(cfg, codec, recipe.synthesis.seed, clips)

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

    def _read(self, path: str) -> np.ndarray:
        return self.codec.load_audio(path)

    def _clip(self, rid: str, path: str) -> np.ndarray:
        if not Path(path).is_file():
            raise RecordError(rid, "missing_file", f"no such file: {path}")
        try:
            return self._audio(path)
        except Exception as e:
            raise RecordError(rid, "unreadable_audio", f"{path}: {e}") from None

    def placements(self, t: Timeline, script: Script) -> tuple[list[Placement], list[Placement]]:
        """The user and assistant channels' clips of timeline ``t`` of ``script``."""
        turn_segments = [s for s in t.user_segments if s.kind == "turn"]
        user, assistant = [], []
        for i, seg in enumerate(turn_segments):
            turn = script.turns[i]
            if turn not in self.turn_audio:
                raise RecordError(
                    t.id, "no_audio", f"turn {i} has no user_audio/assistant_audio in its script"
                )
            wav = self._clip(t.id, self.turn_audio[turn][0])
            pause = (seg.end_frame - seg.start_frame) - len(turn.user_codes)
            if pause <= 0:
                user.append(Placement(seg.start_frame, wav))
                continue
            codes = t.user_codes[seg.start_frame : seg.end_frame]
            cut = pause_cut(codes, turn.user_codes, turn.user_word_ends)
            split = cut * self.codec.samples_per_frame
            user.append(Placement(seg.start_frame, wav[:split]))
            user.append(Placement(seg.start_frame + cut + pause, wav[split:]))
        for seg in t.user_segments:
            if seg.kind == "backchannel":
                if seg.text not in self.backchannels:
                    raise RecordError(t.id, "no_audio", f"backchannel {seg.text!r} has no audio")
                user.append(
                    Placement(seg.start_frame, self._clip(t.id, self.backchannels[seg.text]))
                )
        for j, r in enumerate(t.responses):
            wav = self._clip(t.id, self.turn_audio[script.turns[j]][1])
            assistant.append(Placement(r.start_frame, wav, r.end_frame - r.start_frame))
        return user, assistant

    def _noise(self, n: int, rng: np.random.Generator) -> np.ndarray:
        if not self._noise_files:
            return rng.standard_normal(n).astype(np.float32)
        path = self._noise_files[int(rng.integers(len(self._noise_files)))]
        noise = self._audio(str(path))
        if noise.size == 0:
            return rng.standard_normal(n).astype(np.float32)
        start = int(rng.integers(len(noise)))
        return np.resize(np.roll(noise, -start), n)

    def render(self, t: Timeline, script: Script) -> Timeline:
        """Timeline ``t`` (synthesised from ``script``) with codes tokenized from its mixed audio."""
        spf = self.codec.samples_per_frame
        fade = round(self.cfg.cut_fade_ms * self.codec.sample_rate / 1000)
        user_p, assistant_p = self.placements(t, script)
        channels = {
            "user": mix_channel(user_p, t.num_frames, spf, fade),
            "assistant": mix_channel(assistant_p, t.num_frames, spf, fade),
        }
        rng = np.random.default_rng(
            record_rng(self.seed, t.id, f"noise|{t.scenario}").getrandbits(64)
        )
        if rng.random() < self.cfg.noise_prob:
            snr = rng.uniform(*self.cfg.snr_db)
            for name in self.cfg.noise_channels:
                clips = user_p if name == "user" else assistant_p
                speech = np.concatenate([p.wav for p in clips]) if clips else np.zeros(1)
                power = float(np.mean(np.square(speech, dtype=np.float64)))
                wav = channels[name]
                channels[name] = wav + scaled_noise(self._noise(len(wav), rng), power, snr)
        user_codes, assistant_codes = self.codec.encode_many(
            [channels["user"], channels["assistant"]]
        )
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
