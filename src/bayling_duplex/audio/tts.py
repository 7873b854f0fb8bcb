"""Text to speech with eSpeak NG: 16 kHz waveforms and word onsets, cached and in parallel.

This is the only module that talks to the synthesizer. It drives eSpeak NG's C API
through ctypes from the ``espeakng-loader`` wheel (the shared library and its data).
**Licence:** eSpeak NG is GPL-3.0-or-later. It is loaded dynamically, for each
synthesis, and only here; it comes with the optional ``tts`` extra, and without it
every call that needs the engine raises :class:`TTSUnavailable`.

**One engine per process.** The library keeps global state, so a process holds at
most one instance, under a lock (threads take turns). It is loaded afresh for every
synthesis and unloaded after it: state left in the library by one message (a pitch
flutter phase, a speed applied late, a random generator seeded from the clock) would
change the next by a few ms, so only a fresh, seeded instance makes the same text and
voice give the same samples whatever ran before, in any process. Parallelise with
processes: :func:`synthesize_many` starts ``spawn`` workers. This module must be the
process's only user of ``libespeak-ng`` (a second user would keep it from unloading).

**What comes out.** eSpeak NG speaks at 22050 Hz; a numpy rational polyphase
resampler (windowed sinc, Kaiser window, 16 zero crossings, no torch so that
workers start fast) brings it to 16 kHz. The waveform is peak-normalised to 0.5,
quantised to int16 steps (so the cache round-trips it bit for bit) and trimmed to
20 ms around its first and last sample above 1e-3. A word is a whitespace-separated
token of the text; its onset is eSpeak's WORD event (ms; a clause's pause belongs to
the end of the clause before, so the next word's event is where its sound starts;
a number spoken as several words counts once). The same text and voice give identical
samples, so vary the voice (:class:`VoiceSampler`) to get variety.

**Speed:** on one core, loading and resampling included, ~540x real time for turns of
a few seconds (~6 ms per 3.5 s turn, loading dominates) and ~900x for long texts (26 s
of speech in 28 ms); a cache hit costs a file read.
**Memory:** eSpeak NG 1.52 never frees the voice it loads, ~3 KB per synthesis; the
workers of :func:`synthesize_many` are replaced every 10,000 items for that reason.
"""

from __future__ import annotations

import _ctypes
import ctypes
import hashlib
import importlib
import importlib.metadata
import json
import logging
import math
import multiprocessing
import os
import random
import tempfile
import threading
import zipfile
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from itertools import pairwise
from os import PathLike
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

TTS_VERSION = 1  # bump when the rendering (resampler, trimming, onsets, cache layout) changes
SAMPLE_RATE = 16_000
PEAK = 0.5  # peak amplitude after normalising
ENGLISH_VOICES = (
    "en", "en-us", "en-029", "en-GB-scotland", "en-GB-x-rp", "en-GB-x-gbclan",
    "en-GB-x-gbcwmd", "en-US-nyc",
)  # fmt: skip
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
RATE_WPM = (80, 450)  # eSpeak NG's accepted speaking rates
_SILENCE = 1e-3  # of full scale, after normalising: below it a sample counts as silence
_MARGIN_SAMPLES = 320  # 20 ms kept around the speech when trimming
_ZERO_CROSSINGS = 16  # resampler half-width, in zero crossings of the sinc
_ROLLOFF = 0.95  # resampler cutoff, as a fraction of the output Nyquist frequency
_KAISER_BETA = 8.0
_ITEMS_PER_WORKER = 10_000  # then the worker is replaced (eSpeak's leak, ~30 MB)
_PHASES_PER_BLOCK = 16  # resampler outputs per matrix block: few products, few zero taps
_INSTALL_HINT = (
    'install the tts extra: pip install -e ".[tts]" (it adds espeakng-loader; '
    "eSpeak NG is GPL-3.0-or-later, loaded dynamically by bayling_duplex.audio.tts only)"
)


class TTSUnavailable(RuntimeError):
    """eSpeak NG (the optional, GPL-3.0-or-later ``tts`` extra) is not installed or fails to load."""


@dataclass(frozen=True)
class Voice:
    """An eSpeak NG voice: language voice, variant (``m1``-``m7``, ``f1``-``f5`` or none), prosody."""

    name: str = "en-us"  # one of ENGLISH_VOICES for English; `en-gb` is refused by eSpeak
    variant: str = ""  # "" or a file of espeak-ng-data/voices/!v (m1..m7, f1..f5, ...)
    rate: int = 170  # words per minute, RATE_WPM
    pitch: int = 50  # base pitch, 0..100
    range: int = 50  # pitch range, 0 (monotone)..100

    def __post_init__(self) -> None:
        for part in ("name", "variant"):
            value = getattr(self, part)
            if not isinstance(value, str) or "+" in value or any(c.isspace() for c in value):
                raise ValueError(f"voice {part} must be a string without '+' or spaces: {value!r}")
        if not self.name:
            raise ValueError("voice name is empty")
        for part, (low, high) in (("rate", RATE_WPM), ("pitch", (0, 100)), ("range", (0, 100))):
            value = getattr(self, part)
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise ValueError(f"voice {part} must be an integer in [{low}, {high}]: {value!r}")

    @property
    def espeak_name(self) -> str:
        """The name eSpeak NG takes: ``"en-us+f3"``, or ``"en-us"`` without a variant."""
        return f"{self.name}+{self.variant}" if self.variant else self.name

    def key(self) -> str:
        """Every field in one stable string, for caches and fingerprints."""
        return f"{self.espeak_name}|rate={self.rate}|pitch={self.pitch}|range={self.range}"

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> Voice:
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown voice fields {sorted(unknown)} in {d!r}")
        return cls(**d)


@dataclass(frozen=True, eq=False)
class Utterance:
    """Synthesized speech. ``eq=False``: compare waveforms with ``np.array_equal``."""

    wav: np.ndarray  # (samples,) float32 at SAMPLE_RATE, peak PEAK, read-only
    word_onsets: tuple[float, ...]  # seconds into wav, one per word of text.split(), non-decreasing
    text: str
    voice: Voice

    def __post_init__(self) -> None:
        if self.wav.ndim != 1 or self.wav.dtype != np.float32:
            raise ValueError(f"wav must be 1-D float32, got {self.wav.dtype} {self.wav.shape}")
        if any(b < a for a, b in pairwise(self.word_onsets)):
            raise ValueError(f"word onsets decrease: {self.word_onsets}")

    @property
    def seconds(self) -> float:
        return len(self.wav) / SAMPLE_RATE


@dataclass
class VoiceSampler:
    """Draws voices from a seeded ``random.Random``: names and variants uniformly, prosody in
    inclusive integer ranges. The same generator state gives the same voices."""

    names: list[str] = field(default_factory=lambda: list(ENGLISH_VOICES))
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))  # "" = no variant
    rate: tuple[int, int] = (150, 200)
    pitch: tuple[int, int] = (30, 70)
    range: tuple[int, int] = (30, 80)

    def __post_init__(self) -> None:
        if not self.names or not self.variants:
            raise ValueError("a voice sampler needs at least one name and one variant")
        for name in self.names:
            for variant in self.variants:
                Voice(name, variant)  # checks the spelling; eSpeak is asked by check_voice
        for part in ("rate", "pitch", "range"):
            low, high = getattr(self, part)
            Voice(**{part: low})  # in eSpeak's range
            Voice(**{part: high})
            if low > high:
                raise ValueError(f"voice sampler {part} range is empty: {(low, high)}")

    def sample(self, rng: random.Random) -> Voice:
        return Voice(
            name=rng.choice(self.names),
            variant=rng.choice(self.variants),
            rate=rng.randint(*self.rate),
            pitch=rng.randint(*self.pitch),
            range=rng.randint(*self.range),
        )


# --------------------------------------------------------------------------- the engine

# speak_lib.h (espeak-ng, API revision 12)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_POS_CHARACTER = 1
_CHARS_UTF8, _SSML = 0x01, 0x10
_EVENT_LIST_TERMINATED, _EVENT_WORD = 0, 1
_INITIALIZE_DONT_EXIT = 0x8000  # fail, not exit(), when the data is missing
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT``: positions are 1-based characters of the submitted text, markup included."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms from the start of this message's audio
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event)
)


def _import_loader():
    try:
        return importlib.import_module("espeakng_loader")
    except ImportError as e:
        raise TTSUnavailable(f"eSpeak NG is not installed: {_INSTALL_HINT}") from e


class _Engine:
    """eSpeak NG freshly loaded, in synchronous mode (``espeak_Synth`` returns when all the
    audio has gone through the callback); :meth:`close` terminates and unloads it.

    Loading costs ~0.5 ms and buys determinism: the library keeps state from one message
    to the next that no call resets (a function-static pitch-flutter phase, a speed set
    lazily, a random generator seeded from the clock at initialisation), so a long-lived
    instance speaks the same text a few ms differently each time. Freshly loaded and
    seeded, the same text and voice give the same samples whatever ran before.
    """

    def __init__(self) -> None:
        loader = _import_loader()
        self.data_path = Path(loader.get_data_path())
        try:
            lib = ctypes.CDLL(loader.get_library_path())
        except OSError as e:
            raise TTSUnavailable(f"eSpeak NG failed to load ({e}); {_INSTALL_HINT}") from e
        i, u, ptr = ctypes.c_int, ctypes.c_uint, ctypes.c_void_p
        lib.espeak_Initialize.argtypes = [i, i, ctypes.c_char_p, i]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [i, i, i]
        lib.espeak_Synth.argtypes = [ptr, ctypes.c_size_t, u, i, u, u, ptr, ptr]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib = lib
        self.native_rate = lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(self.data_path).encode(), _INITIALIZE_DONT_EXIT
        )
        if self.native_rate <= 0:
            self.close()
            raise TTSUnavailable(f"eSpeak NG failed to initialise from {self.data_path}")
        lib.espeak_ng_SetRandSeed(0)
        self._chunks: list[np.ndarray] = []
        self._words: list[tuple[int, int]] = []  # (text_position, audio_position ms)
        # kept on self: if collected, the library would call freed memory
        self._callback = _SynthCallback(self._on_synth)
        lib.espeak_SetSynthCallback(self._callback)

    def close(self) -> None:
        self._lib.espeak_Terminate()
        _dlclose(self._lib._handle)  # the next load starts from the library's initial state
        del self._lib

    def _on_synth(self, wav, num_samples: int, events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            if events[i].type == _EVENT_WORD:
                self._words.append((events[i].text_position, events[i].audio_position))
            i += 1
        return 0  # continue

    def set_voice(self, voice: Voice) -> None:
        # eSpeak accepts an unknown variant silently (and speaks without it): check the file
        known = not voice.variant or (self.data_path / "voices" / "!v" / voice.variant).is_file()
        if not known or self._lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != 0:
            raise ValueError(f"eSpeak NG refuses voice {voice.espeak_name!r}")
        for param, value in (
            (_PARAM_RATE, voice.rate),
            (_PARAM_PITCH, voice.pitch),
            (_PARAM_RANGE, voice.range),
        ):
            self._lib.espeak_SetParameter(param, value, 0)

    def speak(self, ssml: str, voice: Voice) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """(int16 samples at ``native_rate``, WORD events as (text_position, ms))."""
        self.set_voice(voice)
        data = ssml.encode("utf-8")
        flags = _CHARS_UTF8 | _SSML
        if self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, flags, None, None):
            raise RuntimeError(f"espeak_Synth failed on {ssml!r}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return samples, self._words


_dlclose = getattr(_ctypes, "dlclose", None) or _ctypes.FreeLibrary  # POSIX or Windows
_ENGINE_LOCK = threading.Lock()


@contextmanager
def _engine() -> Iterator[_Engine]:
    """The process's one engine, freshly loaded and held under the lock for one call."""
    with _ENGINE_LOCK:
        engine = _Engine()
        try:
            yield engine
        finally:
            engine.close()


def check_voice(voice: Voice) -> None:
    """Raise ``ValueError`` naming the voice when eSpeak NG refuses it (``en-gb``, a missing
    variant)."""
    with _engine() as engine:
        engine.set_voice(voice)


# --------------------------------------------------------------------------- rendering


@lru_cache(maxsize=4)
def _polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """Windowed-sinc taps, one row per output phase ``(n * down) % up``: ``(up, 2 * half)``.
    Row ``r`` weighs input samples ``floor(t) - half + 1 .. floor(t) + half`` at ``t = n * down / up``."""
    cutoff = _ROLLOFF * min(1.0, up / down) / 2  # cycles per input sample
    half = math.ceil(_ZERO_CROSSINGS / (2 * cutoff))
    offsets = np.arange(-half + 1, half + 1)
    tau = np.arange(up)[:, None] / up - offsets[None, :]  # t - j, in input samples
    window = np.i0(_KAISER_BETA * np.sqrt(np.clip(1 - (tau / half) ** 2, 0, 1)))
    taps = 2 * cutoff * np.sinc(2 * cutoff * tau) * window
    return taps / taps.sum(axis=1, keepdims=True), half  # unit gain at DC in every phase


@lru_cache(maxsize=4)
def _polyphase_plan(up: int, down: int) -> tuple[int, int, list[tuple[int, int, np.ndarray]]]:
    """The filter as blocks of a banded matrix. Output ``q * up + r`` reads padded input
    ``q * down + c`` for ``c`` in ``b_r + 1 .. b_r + 2 * half``, ``b_r = r * down // up``, with the
    taps of phase ``r * down % up``. Returns (half, columns per row ``q``, blocks
    ``(c_lo, c_hi, matrix (c_hi - c_lo, outputs))`` over consecutive ``r``)."""
    taps, half = _polyphase_filter(up, down)
    r = np.arange(up)
    first, phase = (r * down) // up + 1, (r * down) % up
    blocks = []
    for r0 in range(0, up, _PHASES_PER_BLOCK):
        rs = r[r0 : r0 + _PHASES_PER_BLOCK]
        lo, hi = int(first[rs[0]]), int(first[rs[-1]]) + 2 * half
        matrix = np.zeros((hi - lo, len(rs)))
        for j, ri in enumerate(rs):
            matrix[first[ri] - lo : first[ri] - lo + 2 * half, j] = taps[phase[ri]]
        blocks.append((lo, hi, matrix))
    return half, int(first[-1]) + 2 * half, blocks


def _resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Exact rational resampling of ``x`` (1-D) by a polyphase windowed sinc, float64 out,
    ``ceil(len(x) * rate_out / rate_in)`` samples. Output ``n`` sits at input time
    ``n * rate_in / rate_out``. The rows ``q`` of ``up`` outputs are a few small matrix
    products over a strided view of the input."""
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    half, width, blocks = _polyphase_plan(up, down)
    n_out = -(-len(x) * up // down)
    rows = -(-n_out // up)
    xp = np.zeros((rows - 1) * down + width)
    xp[half : half + len(x)] = x
    view = np.lib.stride_tricks.as_strided(
        xp, shape=(rows, width), strides=(down * xp.itemsize, xp.itemsize), writeable=False
    )
    out = np.empty((rows, up))
    col = 0
    for lo, hi, matrix in blocks:
        out[:, col : col + matrix.shape[1]] = view[:, lo:hi] @ matrix
        col += matrix.shape[1]
    return out.reshape(-1)[:n_out]


def _ssml(words: list[str], pauses: dict[int, int]) -> tuple[str, list[int]]:
    """The text eSpeak gets, and where each word starts in it (0-based characters)."""
    parts: list[str] = []
    starts: list[int] = []
    pos = 0
    for i, word in enumerate(words):
        escaped = word.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        piece = f" {escaped}" if i else escaped
        starts.append(pos + len(piece) - len(escaped))
        if i in pauses:
            piece += f' <break time="{pauses[i]}ms"/>'
        parts.append(piece)
        pos += len(piece)
    return "".join(parts), starts


def _onset_samples(events: list[tuple[int, int]], starts: list[int], first: int) -> list[int]:
    """One onset per word, in samples at SAMPLE_RATE before trimming, from the WORD events
    (``text_position`` 1-based, ``ms``) and the words' 0-based ``starts`` in the submitted
    text. ``first``: the first sound, for text where eSpeak reports no word at all."""
    onsets: list[int | None] = [None] * len(starts)
    for text_position, ms in events:
        i = bisect_right(starts, text_position - 1) - 1  # the word holding the character
        if i >= 0 and onsets[i] is None:  # a number spoken as several words: the first
            onsets[i] = round(ms * SAMPLE_RATE / 1000)
    # a word eSpeak gives no event (a lone dash, an '&') takes the next word's onset
    following: int | None = None
    for i in reversed(range(len(onsets))):
        following = onsets[i] = following if onsets[i] is None else onsets[i]
    filled, preceding = [], first
    for onset in onsets:
        preceding = preceding if onset is None else onset
        filled.append(preceding)
    return filled


@lru_cache(maxsize=256)
def _render(
    text: str, voice: Voice, pauses: tuple[tuple[int, int], ...]
) -> tuple[np.ndarray, tuple[float, ...]]:
    """(read-only int16 samples at SAMPLE_RATE, trimmed; word onsets in seconds)."""
    words = text.split()
    ssml, starts = _ssml(words, dict(pauses))
    with _engine() as engine:
        native, events = engine.speak(ssml, voice)
        native_rate = engine.native_rate
    y = _resample(native / 32768.0, native_rate, SAMPLE_RATE)
    peak = float(np.abs(y).max()) if y.size else 0.0
    if peak == 0.0:
        raise ValueError(f"eSpeak NG spoke nothing for {text!r}")
    samples = np.round(y * (PEAK * 32768 / peak)).astype(np.int16)
    active = np.flatnonzero(np.abs(samples) > _SILENCE * 32768)
    onsets = _onset_samples(events, starts, int(active[0]))
    start = max(0, int(active[0]) - _MARGIN_SAMPLES)
    end = min(len(samples), int(active[-1]) + 1 + _MARGIN_SAMPLES)
    samples = samples[start:end].copy()
    samples.setflags(write=False)
    return samples, tuple(min(max(o - start, 0), end - start - 1) / SAMPLE_RATE for o in onsets)


def _utterance(samples: np.ndarray, onsets: tuple[float, ...], text: str, voice: Voice):
    wav = (samples / np.float32(32768)).astype(np.float32)
    wav.setflags(write=False)  # shared by the in-process cache
    return Utterance(wav, onsets, text, voice)


def _check_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"nothing to synthesize: {text!r}")


def synthesize(text: str, voice: Voice, pause_ms: dict[int, int] | None = None) -> Utterance:
    """Speak ``text`` with ``voice``: one :class:`Utterance` at 16 kHz.

    ``pause_ms`` ``{word_index: ms}`` inserts an SSML ``<break>`` after that word of
    ``text.split()`` (a hesitation pause inside a turn; eSpeak also ends the clause there,
    adding ~0.1 s of its own); a pause after the last word is trimmed away. The same
    arguments give identical samples; results are memoised in-process.
    """
    _check_text(text)
    n_words = len(text.split())
    pauses = tuple(sorted((pause_ms or {}).items()))
    for i, ms in pauses:
        if not (isinstance(i, int) and 0 <= i < n_words and isinstance(ms, int) and ms >= 0):
            raise ValueError(f"pause_ms needs {{word index < {n_words}: ms ≥ 0}}, got {pause_ms}")
    return _utterance(*_render(text, voice, pauses), text, voice)


# --------------------------------------------------------------------------- many, cached


@lru_cache(maxsize=1)
def _loader_version() -> str:
    try:
        return importlib.metadata.version("espeakng-loader")
    except importlib.metadata.PackageNotFoundError as e:
        raise TTSUnavailable(f"eSpeak NG is not installed: {_INSTALL_HINT}") from e


def _cache_key(text: str, voice: Voice) -> str:
    return json.dumps([TTS_VERSION, _loader_version(), voice.key(), text], ensure_ascii=False)


def _cache_path(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{hashlib.sha256(key.encode()).hexdigest()[:40]}.npz"


def _read_cache(path: Path, key: str) -> tuple[np.ndarray, tuple[float, ...]] | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            if str(f["key"]) != key:
                return None
            return f["samples"], tuple(float(t) for t in f["word_onsets"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        log.warning("unreadable speech cache file %s (%s): synthesizing again", path, e)
        return None


def _write_cache(path: Path, key: str, samples: np.ndarray, onsets: tuple[float, ...]) -> None:
    """Atomically: a temporary file in the same folder, then ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, samples=samples, word_onsets=np.asarray(onsets), key=np.array(key))
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _render_item(item: tuple[str, Voice]) -> tuple[np.ndarray, tuple[float, ...]]:
    return _render(item[0], item[1], ())


def synthesize_many(
    items: Sequence[tuple[str, Voice]],
    workers: int = 1,
    cache_dir: str | PathLike | None = None,
    progress: bool = False,
    desc: str = "speech synthesis",
) -> list[Utterance]:
    """:func:`synthesize` for each ``(text, voice)``, in order.

    ``workers > 1`` synthesizes in that many ``spawn`` processes (each its own engine);
    ``cache_dir`` keeps one ``.npz`` per item (int16 samples, onsets), named by a hash
    of text, voice, ``TTS_VERSION`` and the espeakng-loader version: a hit skips the
    engine, a write is atomic. Repeated items are synthesized once.
    """
    for text, _ in items:
        _check_text(text)
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    unique = list(dict.fromkeys((text, voice) for text, voice in items))
    keys = {item: _cache_key(*item) for item in unique} if cache is not None else {}
    done: dict[tuple[str, Voice], tuple[np.ndarray, tuple[float, ...]]] = {}
    with tqdm(total=len(unique), desc=desc, unit="utt", disable=not progress) as bar:
        if cache is not None:
            for item in unique:
                hit = _read_cache(_cache_path(cache, keys[item]), keys[item])
                if hit is not None:
                    done[item] = hit
            bar.update(len(done))
        todo = [item for item in unique if item not in done]
        n_procs = min(workers, len(todo))
        # fresh workers every _ITEMS_PER_WORKER items each: eSpeak NG leaks ~3 KB per
        # synthesis (max_tasks_per_child would do it, but it hangs on Python 3.11)
        batch = max(1, len(todo)) if n_procs <= 1 else n_procs * _ITEMS_PER_WORKER
        for lo in range(0, len(todo), batch):
            part = todo[lo : lo + batch]
            with ExitStack() as stack:
                if n_procs <= 1:
                    results: Iterator = map(_render_item, part)
                else:
                    context = multiprocessing.get_context("spawn")  # a C library's state
                    pool = stack.enter_context(ProcessPoolExecutor(n_procs, mp_context=context))
                    stack.callback(pool.shutdown, cancel_futures=True)  # on an error too
                    chunk = max(1, min(32, len(part) // (4 * n_procs)))
                    results = pool.map(_render_item, part, chunksize=chunk)
                for item, (samples, onsets) in zip(part, results, strict=True):
                    if cache is not None:
                        _write_cache(_cache_path(cache, keys[item]), keys[item], samples, onsets)
                    done[item] = samples, onsets
                    bar.update()
    return [_utterance(*done[(text, voice)], text, voice) for text, voice in items]
