"""The learned unit codec on synthetic speech: frame counts, determinism, files, silence, purity.

The audio is built from numpy, no TTS: "phones" are harmonic tones shaped by
formant-like resonances and bands of shaped noise, strung into utterances with
digital silence between them.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter

import numpy as np
import pytest
import torch

from bayling_duplex.audio.units import (
    UNITS_VERSION,
    UnitCodec,
    UnitCodecConfig,
    read_codec_json,
)

SR = 16_000
SPF = 1280
CONFIG = UnitCodecConfig(num_codes=32, iters=15, seed=0)
# name: (f0 Hz, formants Hz) for voiced phones, (None, (low Hz, high Hz)) for noise bands
PHONES = {
    "a": (120.0, (700.0, 1200.0)),
    "i": (210.0, (300.0, 2300.0)),
    "u": (160.0, (320.0, 800.0)),
    "e": (260.0, (500.0, 1900.0)),
    "s": (None, (4500.0, 7500.0)),
    "h": (None, (1200.0, 2800.0)),
}


def phone(name: str, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """One phone at about -20 dBFS; pitch and level jitter from ``rng``."""
    n = round(seconds * SR)
    f0, shape = PHONES[name]
    if f0 is None:
        spectrum = np.fft.rfft(rng.normal(size=n))
        freqs = np.fft.rfftfreq(n, 1 / SR)
        spectrum[(freqs < shape[0]) | (freqs > shape[1])] = 0
        wav = np.fft.irfft(spectrum, n)
    else:
        f0 *= rng.uniform(0.97, 1.03)
        t = np.arange(n) / SR
        harmonics = np.arange(f0, 7000.0, f0)
        gain = sum(np.exp(-0.5 * ((harmonics - f) / 120.0) ** 2) for f in shape) + 0.02
        phases = rng.uniform(0, 2 * np.pi, len(harmonics))
        wav = (gain[:, None] * np.sin(2 * np.pi * harmonics[:, None] * t + phases[:, None])).sum(0)
    wav *= 0.1 * rng.uniform(0.7, 1.3) / np.sqrt(np.mean(wav**2))
    return wav.astype(np.float32)


def utterance(rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[int, int, str]]]:
    """Phones back to back, then digital silence; ``(wav, [(start, stop, phone)])`` in samples."""
    pieces, spans, at = [], [], 0
    for _ in range(rng.integers(4, 8)):
        name = str(rng.choice(list(PHONES)))
        piece = phone(name, rng.uniform(0.16, 0.4), rng)
        pieces.append(piece)
        spans.append((at, at + len(piece), name))
        at += len(piece)
    pieces.append(np.zeros(round(rng.uniform(0.4, 1.0) * SR), np.float32))
    return np.concatenate(pieces), spans


def pure_frames(spans: list[tuple[int, int, str]], back: int = 240) -> dict[int, str]:
    """Frames whose samples (and the window's look-back) lie inside one phone."""
    out = {}
    for start, stop, name in spans:
        for f in range(math.ceil((start + back) / SPF), (stop // SPF)):
            out[f] = name
    return out


@pytest.fixture(scope="module")
def corpus() -> list[tuple[np.ndarray, list[tuple[int, int, str]]]]:
    rng = np.random.default_rng(1234)
    return [utterance(rng) for _ in range(40)]


@pytest.fixture(scope="module")
def wavs(corpus) -> list[np.ndarray]:
    return [w for w, _ in corpus]


@pytest.fixture(scope="module")
def codec(wavs) -> UnitCodec:
    return UnitCodec.fit(wavs, CONFIG)


def test_interface(codec: UnitCodec, wavs) -> None:
    assert (codec.sample_rate, codec.samples_per_frame, codec.frame_rate_hz) == (SR, SPF, 12.5)
    assert codec.num_codes == 32
    assert re.fullmatch(rf"units-v{UNITS_VERSION}-32-[0-9a-f]{{12}}", codec.name)
    assert codec.fitted_on["clips"] == len(wavs)
    assert codec.fitted_on["frames"] == sum(math.ceil(len(w) / SPF) for w in wavs)
    assert codec.fitted_on["seconds"] == pytest.approx(sum(len(w) for w in wavs) / SR, abs=1e-3)
    counts = codec.unit_counts(wavs[:5])
    assert counts.shape == (32,) and counts.sum() == sum(math.ceil(len(w) / SPF) for w in wavs[:5])


@pytest.mark.parametrize("n", [0, 1, 1279, 1280, 1281, 2 * 1280, 5000])
def test_one_code_per_started_frame(codec: UnitCodec, n: int) -> None:
    wav = np.random.default_rng(n).normal(0, 0.1, n).astype(np.float32)
    codes = codec.encode(wav)
    assert len(codes) == math.ceil(n / SPF)
    assert all(0 <= c < codec.num_codes for c in codes)
    assert codec.features(wav).shape == (math.ceil(n / SPF), 2 * CONFIG.n_mels)


def test_encode_many_equals_encode(codec: UnitCodec, wavs) -> None:
    some = [*wavs[:4], np.zeros(0, np.float32), wavs[5][:3000]]
    assert codec.encode_many(some) == [codec.encode(w) for w in some]


def test_fit_is_deterministic(codec: UnitCodec, wavs) -> None:
    again = UnitCodec.fit(wavs, CONFIG)
    assert again.fingerprint == codec.fingerprint
    assert torch.equal(again.centroids, codec.centroids)
    other = UnitCodec.fit(wavs, UnitCodecConfig(num_codes=32, iters=15, seed=1))
    assert other.fingerprint != codec.fingerprint


def test_max_frames_subsamples(wavs) -> None:
    small = UnitCodec.fit(wavs, CONFIG, max_frames=400)
    assert small.fitted_on["frames"] == 400
    assert UnitCodec.fit(wavs, CONFIG, max_frames=400).fingerprint == small.fingerprint


def test_save_load_roundtrip(codec: UnitCodec, wavs, tmp_path) -> None:
    folder = codec.save(tmp_path / "units")
    meta = read_codec_json(folder)
    assert meta["name"] == codec.name and meta["fingerprint"] == codec.fingerprint
    assert meta["version"] == UNITS_VERSION and meta["config"]["num_codes"] == 32
    assert meta["silence_codes"] == list(codec.silence_codes)
    assert meta["fitted_on"] == codec.fitted_on
    loaded = UnitCodec.load(folder)
    assert loaded.fingerprint == codec.fingerprint and loaded.name == codec.name
    assert loaded.encode_many(wavs[:5]) == codec.encode_many(wavs[:5])
    assert sorted(p.name for p in folder.iterdir()) == ["codec.json", "units.pt"]


def test_tampered_folders_are_refused(codec: UnitCodec, tmp_path) -> None:
    folder = codec.save(tmp_path / "units")
    tensors = torch.load(folder / "units.pt", weights_only=True)
    tensors["centroids"][3, 0] += 0.5
    torch.save(tensors, folder / "units.pt")
    with pytest.raises(ValueError, match=codec.fingerprint) as error:
        UnitCodec.load(folder)
    assert str(folder) in str(error.value)

    folder = codec.save(tmp_path / "json")
    meta = json.loads((folder / "codec.json").read_text())
    meta["config"]["seed"] = 7
    (folder / "codec.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=codec.fingerprint):
        UnitCodec.load(folder)
    meta["config"]["seed"] = CONFIG.seed
    meta["fingerprint"] = "0" * 12
    (folder / "codec.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=codec.fingerprint):
        UnitCodec.load(folder)


def test_missing_files(codec: UnitCodec, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match=r"codec\.json"):
        UnitCodec.load(tmp_path / "nowhere")
    folder = codec.save(tmp_path / "units")
    (folder / "units.pt").unlink()
    with pytest.raises(FileNotFoundError, match=r"units\.pt"):
        UnitCodec.load(folder)


def test_digital_silence_has_its_own_units(codec: UnitCodec, corpus) -> None:
    pattern = codec.silence
    assert len(set(pattern.codes)) <= 2 and pattern.agreement >= 0.9
    assert codec.silence_codes == pattern.codes
    phone_units = set()
    for wav, spans in corpus:
        codes = codec.encode(wav)
        phone_units |= {codes[f] for f in pure_frames(spans)}
    assert not phone_units & set(pattern.codes)


def test_phones_get_their_own_units(codec: UnitCodec, corpus) -> None:
    by_unit: dict[int, Counter] = {}
    for wav, spans in corpus:
        codes = codec.encode(wav)
        for f, name in pure_frames(spans).items():
            by_unit.setdefault(codes[f], Counter())[name] += 1
    total = sum(sum(c.values()) for c in by_unit.values())
    purity = sum(max(c.values()) for c in by_unit.values()) / total
    assert purity >= 0.9, purity
    owners = {c.most_common(1)[0][0] for c in by_unit.values()}
    assert owners == set(PHONES)  # every phone is the main phone of some unit


def test_noisy_silence_is_not_digital_silence(codec: UnitCodec) -> None:
    hiss = np.random.default_rng(0).normal(0, 0.01, 10 * SR).astype(np.float32)  # -40 dBFS
    codes = codec.encode(hiss)
    assert sum(c in codec.silence_codes for c in codes) == 0


def test_concatenation_changes_at_most_the_join_frame(codec: UnitCodec, wavs) -> None:
    a = wavs[0][: (len(wavs[0]) // SPF) * SPF]
    a[-3 * SPF :] = np.random.default_rng(1).normal(0, 0.1, 3 * SPF)  # the join is not silent
    b = wavs[1]
    joined = codec.encode(np.concatenate([a, b]))
    apart = codec.encode(a) + codec.encode(b)
    assert len(joined) == len(apart)
    changed = [f for f, (x, y) in enumerate(zip(joined, apart, strict=True)) if x != y]
    assert set(changed) <= {len(a) // SPF}


def test_decode_diagnostic(codec: UnitCodec, wavs) -> None:
    codes = codec.encode(wavs[2])[:20]
    audio = codec.decode_diagnostic(codes)
    assert audio.dtype == np.float32 and audio.shape == (len(codes) * SPF,)
    assert np.isfinite(audio).all() and np.abs(audio).max() > 0
    assert codec.decode_diagnostic([]).shape == (0,)
    with pytest.raises(ValueError, match="codes must lie"):
        codec.decode_diagnostic([codec.num_codes])


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"num_codes": 1}, "codec.num_codes"),
        ({"n_mels": 0}, "codec.n_mels"),
        ({"n_mels": 1000}, "codec.n_mels"),
        ({"hop_ms": 7.0}, "codec.hop_ms"),
        ({"hop_ms": 0.0}, "codec.hop_ms"),
        ({"win_ms": 5.0}, "codec.win_ms"),
        ({"win_ms": 25.03}, "codec.win_ms"),
        ({"iters": 0}, "codec.iters"),
        ({"seed": -1}, "codec.seed"),
    ],
)
def test_config_validation_names_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=re.escape(key)):
        UnitCodecConfig(**kwargs)


def test_fit_needs_enough_frames() -> None:
    with pytest.raises(ValueError, match=r"codec\.num_codes"):
        UnitCodec.fit([np.zeros(10 * SPF, np.float32)], CONFIG)
    with pytest.raises(ValueError, match="at least one"):
        UnitCodec.fit([], CONFIG)
