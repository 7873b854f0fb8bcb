"""A learned 12.5 Hz unit codec: log-mel features pooled to 80 ms frames, clustered by k-means.

It sits behind the same interface as the other codecs (``name``, ``num_codes``,
``silence_codes``; ``sample_rate``, ``samples_per_frame``, ``frame_rate_hz``,
``encode``, ``encode_many``) and needs no download: :meth:`UnitCodec.fit` learns it
in seconds from the audio at hand, :meth:`UnitCodec.save` / :meth:`UnitCodec.load`
keep it in a folder whose ``codec.json`` carries a fingerprint of the tensors.

Frame ``f`` of a waveform describes samples ``[f * 1280, (f + 1) * 1280)``: its
feature is the mean and the standard deviation of the log-mel spectrum over the
frame's 8 hops (10 ms each). STFT window ``j`` ends where hop ``j`` ends, so a
frame never looks ahead; it looks back ``win - hop`` samples (15 ms), which is why
encoding two clips joined on a frame boundary changes at most the first frame of
the second. A waveform of ``n`` samples gives ``ceil(n / 1280)`` codes (its tail
padded with zeros).

The k-means is hand-written (k-means++ seeding from a seeded ``torch.Generator``,
Lloyd iterations over row chunks, empty clusters re-seeded from the farthest
points): a ~40-line torch loop instead of adding scikit-learn to a CPU-only
install. The same waveforms and config give the same centroids and fingerprint
on one machine; another BLAS or CPU may differ in the last bits, so ship the
fitted folder rather than refitting it.

Silence is *measured*, as for GLM-4-Voice: :attr:`UnitCodec.silence` encodes
30 s of digital silence. A noisy channel's silence (room noise, a -40 dBFS hiss)
falls on other units, many of which also occur in speech, so a mixer must
measure silence on the channel as mixed, never assume the digital-silence units.
:meth:`UnitCodec.decode_diagnostic` plays the units back (each unit's mean mel,
Griffin-Lim): not intelligible, a way to hear what the units capture.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from os import PathLike
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from bayling_duplex.audio.codec import MeasuredSilence

log = logging.getLogger(__name__)

UNITS_VERSION = 1  # bump when the features or the file layout change
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = 1280  # 80 ms: 12.5 Hz
TENSORS_FILE = "units.pt"
META_FILE = "codec.json"
_LOG_FLOOR = 1e-6  # log(mel + floor): digital silence gets a finite, constant feature
_FEATURE_CHUNK_FRAMES = 750  # 60 s per STFT call bounds memory for long waveforms
_ASSIGN_CHUNK_ROWS = 8192  # rows × num_codes distances per chunk (8 MB at 256 codes)


@dataclass(frozen=True)
class UnitCodecConfig:
    """How the unit codec's features are computed and its k-means is fit."""

    num_codes: int = 256  # k-means units
    n_mels: int = 64  # mel bins; the feature has 2 * n_mels dims (mean, std)
    win_ms: float = 25.0  # STFT window
    hop_ms: float = 10.0  # STFT hop: 8 hops per 80 ms frame
    iters: int = 25  # Lloyd iterations (fewer if the assignment stops changing)
    seed: int = 0  # k-means++ seeding and frame subsampling

    def __post_init__(self) -> None:
        def whole(name: str, value: object, low: int) -> None:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"codec.{name} must be an integer ≥ {low}, got {value!r}")

        whole("num_codes", self.num_codes, 2)
        whole("n_mels", self.n_mels, 1)
        whole("iters", self.iters, 1)
        whole("seed", self.seed, 0)
        hop = self.hop_ms * SAMPLE_RATE / 1000
        if not (hop > 0 and hop == int(hop) and SAMPLES_PER_FRAME % int(hop) == 0):
            raise ValueError(
                f"codec.hop_ms must split the 80 ms frame into whole hops of whole samples "
                f"(e.g. 5, 10, 16, 20), got {self.hop_ms!r}"
            )
        win = self.win_ms * SAMPLE_RATE / 1000
        if not (win == int(win) and hop <= win <= hop + SAMPLES_PER_FRAME):
            raise ValueError(
                f"codec.win_ms must be whole samples between hop_ms and hop_ms + 80, "
                f"got {self.win_ms!r}"
            )
        if self.n_mels > int(win) // 2 + 1:
            raise ValueError(
                f"codec.n_mels must not exceed the {int(win) // 2 + 1} STFT bins, got {self.n_mels}"
            )

    @property
    def hop_samples(self) -> int:
        return round(self.hop_ms * SAMPLE_RATE / 1000)

    @property
    def win_samples(self) -> int:
        return round(self.win_ms * SAMPLE_RATE / 1000)

    @property
    def hops_per_frame(self) -> int:
        return SAMPLES_PER_FRAME // self.hop_samples

    @property
    def dims(self) -> int:
        return 2 * self.n_mels


@lru_cache(maxsize=8)
def _frontend(config: UnitCodecConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``(window (win,), mel filterbank (win // 2 + 1, n_mels))`` for ``config``."""
    from torchaudio.functional import melscale_fbanks

    win = config.win_samples
    fbank = melscale_fbanks(win // 2 + 1, 0.0, SAMPLE_RATE / 2, config.n_mels, SAMPLE_RATE)
    return torch.hann_window(win), fbank.float()


def _log_mel_hops(segment: torch.Tensor, config: UnitCodecConfig) -> torch.Tensor:
    """Log-mel ``(hops, n_mels)`` of a segment padded on the left by ``win - hop`` samples."""
    window, fbank = _frontend(config)
    win, hop = config.win_samples, config.hop_samples
    spec = torch.stft(segment, win, hop, win, window, center=False, return_complex=True)
    power = spec.real.square() + spec.imag.square()  # (bins, hops)
    return torch.log(power.T @ fbank + _LOG_FLOOR)


def log_mel_frames(wav: np.ndarray, config: UnitCodecConfig) -> torch.Tensor:
    """Features ``(ceil(len(wav) / 1280), 2 * n_mels)`` float32 of a 16 kHz mono waveform.

    Row ``f`` is the mean, then the standard deviation, of the log-mel spectrum over
    the hops of samples ``[f * 1280, (f + 1) * 1280)``; see the module docstring.
    """
    x = np.asarray(wav, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"expected a mono waveform (samples,), got shape {x.shape}")
    frames = -(-len(x) // SAMPLES_PER_FRAME)
    out = torch.empty(frames, config.dims)
    back = config.win_samples - config.hop_samples
    with torch.inference_mode():
        padded = torch.nn.functional.pad(
            torch.from_numpy(np.require(x, requirements="W")),  # TTS clips are read-only
            (back, frames * SAMPLES_PER_FRAME - len(x)),
        )
        for start in range(0, frames, _FEATURE_CHUNK_FRAMES):
            stop = min(frames, start + _FEATURE_CHUNK_FRAMES)
            segment = padded[start * SAMPLES_PER_FRAME : stop * SAMPLES_PER_FRAME + back]
            hops = _log_mel_hops(segment, config).view(stop - start, config.hops_per_frame, -1)
            std, mean = torch.std_mean(hops, dim=1, correction=0)
            out[start:stop, : config.n_mels] = mean
            out[start:stop, config.n_mels :] = std
    return out


def _nearest(x: torch.Tensor, centroids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, squared distance)`` of each row's nearest centroid, over row chunks."""
    c_sq = centroids.square().sum(1)
    index = torch.empty(len(x), dtype=torch.long)
    dist = torch.empty(len(x))
    for start in range(0, len(x), _ASSIGN_CHUNK_ROWS):
        rows = x[start : start + _ASSIGN_CHUNK_ROWS]
        d = c_sq - 2 * rows @ centroids.T + rows.square().sum(1, keepdim=True)
        best, arg = d.min(1)
        index[start : start + len(rows)] = arg
        dist[start : start + len(rows)] = best.clamp_min(0)
    return index, dist


def kmeans(
    x: torch.Tensor, k: int, iters: int, generator: torch.Generator, progress: bool = False
) -> torch.Tensor:
    """Centroids ``(k, dims)`` of the rows of ``x`` ``(n, dims)``: k-means++ seeding, then Lloyd."""
    n = len(x)
    centroids = torch.empty(k, x.shape[1])
    centroids[0] = x[torch.randint(n, (1,), generator=generator)]
    d2 = (x - centroids[0]).square().sum(1)
    for j in range(1, k):  # k-means++: draw each next seed with probability ∝ squared distance
        if d2.sum() > 0:
            pick = torch.multinomial(d2, 1, generator=generator)
        else:  # fewer distinct rows than k: duplicates, re-seeded below if they stay empty
            pick = torch.randint(n, (1,), generator=generator)
        centroids[j] = x[pick]
        d2 = torch.minimum(d2, (x - centroids[j]).square().sum(1))
    steps = tqdm(range(iters), desc="k-means", unit="iter", disable=not progress)
    previous, x64 = None, x.double()  # float64 sums: exact enough to be order-insensitive
    for _ in steps:
        assign, dist = _nearest(x, centroids)
        if previous is not None and torch.equal(assign, previous):
            steps.close()  # converged: no centroid would move
            break
        previous = assign
        counts = torch.bincount(assign, minlength=k)
        sums = torch.zeros(k, x.shape[1], dtype=torch.float64).index_add_(0, assign, x64)
        filled = counts > 0
        centroids[filled] = (sums[filled] / counts[filled, None]).float()
        empty = (~filled).nonzero().flatten()
        if len(empty):  # re-seed empty clusters on the points their centroids explain worst
            centroids[empty] = x[dist.topk(len(empty)).indices]
    return centroids


class UnitCodec(MeasuredSilence):
    """Log-mel k-means units at 12.5 Hz behind the codec interface; see the module docstring.

    Build one with :meth:`fit` or :meth:`load`. ``mean`` and ``std`` ``(2 * n_mels,)``
    standardise the features, ``centroids`` ``(num_codes, 2 * n_mels)`` live in the
    standardised space, ``unit_mels`` ``(num_codes, n_mels)`` is each unit's mean
    log-mel (for :meth:`decode_diagnostic`; derived from the centroids when omitted).
    """

    sample_rate = SAMPLE_RATE
    samples_per_frame = SAMPLES_PER_FRAME
    frame_rate_hz = SAMPLE_RATE / SAMPLES_PER_FRAME

    def __init__(
        self,
        config: UnitCodecConfig,
        mean: torch.Tensor,
        std: torch.Tensor,
        centroids: torch.Tensor,
        unit_mels: torch.Tensor | None = None,
        fitted_on: dict | None = None,
    ) -> None:
        k, dims = config.num_codes, config.dims
        if unit_mels is None:
            unit_mels = (centroids * std + mean)[:, : config.n_mels]
        expected = {
            "mean": (mean, (dims,)),
            "std": (std, (dims,)),
            "centroids": (centroids, (k, dims)),
            "unit_mels": (unit_mels, (k, config.n_mels)),
        }
        for key, (tensor, shape) in expected.items():
            if tuple(tensor.shape) != shape:
                raise ValueError(f"{key} must have shape {shape}, got {tuple(tensor.shape)}")
        self.config = config
        self.mean, self.std, self.centroids, self.unit_mels = (
            t.detach().to(torch.float32).contiguous().clone()
            for t in (mean, std, centroids, unit_mels)
        )
        self.fitted_on = dict(fitted_on or {})

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "mean": self.mean,
            "std": self.std,
            "centroids": self.centroids,
            "unit_mels": self.unit_mels,
        }

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @cached_property
    def fingerprint(self) -> str:
        """sha256[:12] over the version, the config and the tensors' bytes."""
        h = hashlib.sha256(f"units-v{UNITS_VERSION}".encode())
        h.update(json.dumps(dataclasses.asdict(self.config), sort_keys=True).encode())
        for key, tensor in self.tensors().items():
            h.update(f"{key}{tuple(tensor.shape)}".encode())
            h.update(tensor.numpy().tobytes())
        return h.hexdigest()[:12]

    @property
    def name(self) -> str:
        return f"units-v{UNITS_VERSION}-{self.num_codes}-{self.fingerprint}"

    def features(self, wav: np.ndarray) -> torch.Tensor:
        """Unstandardised features ``(ceil(len(wav) / 1280), 2 * n_mels)`` of a 16 kHz waveform."""
        return log_mel_frames(wav, self.config)

    def encode(self, wav: np.ndarray) -> tuple[int, ...]:
        """Codes of one 16 kHz mono waveform ``(samples,)``: ``ceil(samples / 1280)`` of them."""
        feats = self.features(wav)
        if not len(feats):
            return ()
        with torch.inference_mode():
            index, _ = _nearest((feats - self.mean) / self.std, self.centroids)
        return tuple(index.tolist())

    def encode_many(self, wavs: Sequence[np.ndarray]) -> list[tuple[int, ...]]:
        """Codes of many waveforms; each as :meth:`encode` gives it (frames are independent)."""
        return [self.encode(w) for w in wavs]

    def unit_counts(self, wavs: Sequence[np.ndarray]) -> np.ndarray:
        """How often each unit occurs in ``wavs``: int64 ``(num_codes,)``."""
        counts = np.zeros(self.num_codes, dtype=np.int64)
        for codes in self.encode_many(wavs):
            counts += np.bincount(np.asarray(codes, dtype=np.int64), minlength=self.num_codes)
        return counts

    @classmethod
    def fit(
        cls,
        wavs: Sequence[np.ndarray],
        config: UnitCodecConfig | None = None,
        max_frames: int | None = None,
        progress: bool = False,
    ) -> UnitCodec:
        """Learn the units from 16 kHz mono float32 waveforms.

        Features of every frame are standardised (mean and std over frames) and
        clustered; ``max_frames`` caps the frames clustered (a seeded random subset).
        """
        config = config or UnitCodecConfig()
        if not wavs:
            raise ValueError("fit needs at least one waveform")
        feats = torch.cat([log_mel_frames(w, config) for w in wavs])
        generator = torch.Generator().manual_seed(config.seed)
        with torch.inference_mode():
            if max_frames is not None and len(feats) > max_frames:
                keep = torch.randperm(len(feats), generator=generator)[:max_frames].sort().values
                feats = feats[keep]
            if len(feats) < config.num_codes:
                raise ValueError(
                    f"{len(feats)} frames are too few to fit codec.num_codes={config.num_codes} units"
                )
            std, mean = torch.std_mean(feats, dim=0, correction=0)
            std = std.clamp_min(1e-5)
            x = (feats - mean) / std
            centroids = kmeans(x, config.num_codes, config.iters, generator, progress)
            # each unit's mean log-mel over the frames it encodes (unused units: the centroid's)
            assign, _ = _nearest(x, centroids)
            counts = torch.bincount(assign, minlength=config.num_codes)
            mels = feats[:, : config.n_mels].double()
            sums = torch.zeros(config.num_codes, config.n_mels, dtype=torch.float64)
            sums.index_add_(0, assign, mels)
            unit_mels = (centroids * std + mean)[:, : config.n_mels]
            used = counts > 0
            unit_mels[used] = (sums[used] / counts[used, None]).float()
        fitted_on = {
            "clips": len(wavs),
            "seconds": round(sum(len(w) for w in wavs) / SAMPLE_RATE, 3),
            "frames": len(x),
        }
        return cls(config, mean, std, centroids, unit_mels, fitted_on)

    def save(self, folder: str | PathLike[str]) -> Path:
        """Write ``units.pt`` (plain tensors) and ``codec.json`` into ``folder``; returns it."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / f".{TENSORS_FILE}.tmp"
        torch.save(self.tensors(), tmp)
        os.replace(tmp, out / TENSORS_FILE)
        meta = {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "version": UNITS_VERSION,
            "config": dataclasses.asdict(self.config),
            "fitted_on": self.fitted_on,
            "silence_codes": list(self.silence_codes),
        }
        tmp = out / f".{META_FILE}.tmp"
        tmp.write_text(json.dumps(meta, indent=2) + "\n")
        os.replace(tmp, out / META_FILE)  # written last: its presence means the folder is whole
        return out

    @classmethod
    def load(cls, folder: str | PathLike[str]) -> UnitCodec:
        """The codec saved in ``folder``; refuses tensors whose fingerprint ``codec.json`` does not name."""
        path = Path(folder)
        meta = read_codec_json(path)
        if not (path / TENSORS_FILE).is_file():
            raise FileNotFoundError(f"{path} is not a unit codec folder: {TENSORS_FILE} is missing")
        if meta.get("version") != UNITS_VERSION:
            raise ValueError(
                f"{path}: unit codec version {meta.get('version')!r}, this code reads {UNITS_VERSION}"
            )
        fields = {f.name for f in dataclasses.fields(UnitCodecConfig)}
        raw = meta.get("config", {})
        if set(raw) != fields:
            raise ValueError(f"{path}: codec.json config keys {sorted(raw)} != {sorted(fields)}")
        tensors = torch.load(path / TENSORS_FILE, map_location="cpu", weights_only=True)
        names = {"mean", "std", "centroids", "unit_mels"}
        if not isinstance(tensors, dict) or set(tensors) != names:
            raise ValueError(f"{path / TENSORS_FILE} must hold exactly the tensors {sorted(names)}")
        codec = cls(UnitCodecConfig(**raw), **tensors, fitted_on=meta.get("fitted_on"))
        if codec.fingerprint != meta.get("fingerprint") or codec.name != meta.get("name"):
            raise ValueError(
                f"{path}: codec.json names fingerprint {meta.get('fingerprint')!r} but the config "
                f"and tensors give {codec.fingerprint!r}: the folder was altered or mixed up"
            )
        return codec

    def decode_diagnostic(self, codes: Sequence[int], n_iter: int = 32) -> np.ndarray:
        """What the units sound like: float32 16 kHz ``(len(codes) * 1280,)``. Not intelligible.

        Each code's mean log-mel, held for its 8 hops, is mapped back to a linear
        magnitude spectrogram (pseudo-inverse of the mel filterbank) and phased by
        Griffin-Lim (deterministic zero-phase start).
        """
        from torchaudio.transforms import GriffinLim

        index = torch.as_tensor(list(codes), dtype=torch.long)
        if not len(index):
            return np.zeros(0, dtype=np.float32)
        if index.min() < 0 or index.max() >= self.num_codes:
            raise ValueError(f"codes must lie in [0, {self.num_codes}), got {index.tolist()}")
        cfg = self.config
        _, fbank = _frontend(cfg)
        with torch.inference_mode():
            mel = (self.unit_mels[index].exp() - _LOG_FLOOR).clamp_min(0)
            mel = mel.repeat_interleave(cfg.hops_per_frame, dim=0)
            mel = torch.cat([mel, mel[-1:]])  # a centred STFT of L samples has L / hop + 1 hops
            power = (mel @ torch.linalg.pinv(fbank)).clamp_min(0)  # (hops, bins)
            griffin_lim = GriffinLim(
                n_fft=cfg.win_samples,
                win_length=cfg.win_samples,
                hop_length=cfg.hop_samples,
                power=1.0,
                n_iter=n_iter,
                rand_init=False,
                length=len(index) * SAMPLES_PER_FRAME,
            )
            wav = griffin_lim(power.sqrt().T)
        return wav.numpy().astype(np.float32, copy=True)


def read_codec_json(folder: str | PathLike[str]) -> dict:
    """A saved unit codec's ``codec.json`` (name, fingerprint, config …) without its tensors."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{Path(folder)} is not a unit codec folder: {META_FILE} is missing"
        )
    return json.loads(path.read_text())
