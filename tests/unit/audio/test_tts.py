"""eSpeak NG through ctypes: determinism, voices, word onsets, pauses, trimming, the cache,
worker processes, the resampler, and the message when the GPL extra is missing."""

from __future__ import annotations

import random
import re
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from bayling_duplex.audio import tts
from bayling_duplex.audio.tts import (
    SAMPLE_RATE,
    TTSUnavailable,
    Utterance,
    Voice,
    VoiceSampler,
    check_voice,
    synthesize,
    synthesize_many,
)

TEXT = "Could you tell me the way to the station, please? It is not far from here."
NUMBERS = "I paid $1999 on 3/4/2020, don't you think? Well-known, e.g. the U.S.A. — fine."


def fresh(text: str, voice: Voice, pause_ms: dict[int, int] | None = None) -> Utterance:
    """Synthesize past the in-process memo, so the engine really runs."""
    tts._render.cache_clear()
    return synthesize(text, voice, pause_ms)


def active(wav: np.ndarray) -> np.ndarray:
    return np.flatnonzero(np.abs(wav) > 1e-3)


def test_same_text_and_voice_give_identical_samples():
    voice = Voice("en-us", "f3")
    first = fresh(TEXT, voice)
    fresh(NUMBERS, Voice("en-GB-x-rp", "m7", rate=260, pitch=10, range=90))  # other state
    again = fresh(TEXT, voice)
    assert np.array_equal(first.wav, again.wav) and first.word_onsets == again.word_onsets
    assert first.wav.dtype == np.float32 and not first.wav.flags.writeable
    assert np.array_equal(first.wav * 32768, np.round(first.wav * 32768))  # int16 steps


def test_voices_variants_and_prosody_change_the_audio():
    base = Voice("en-us")
    others = [
        Voice("en-us", "f3"),
        Voice("en-GB-scotland"),
        Voice("en-us", pitch=80),
        Voice("en-us", range=10),
    ]
    wav = synthesize(TEXT, base).wav
    for voice in others:
        other = synthesize(TEXT, voice).wav
        assert len(other) != len(wav) or not np.array_equal(other, wav), voice
    slow = synthesize(TEXT, Voice("en-us", rate=130))
    fast = synthesize(TEXT, Voice("en-us", rate=260))
    assert slow.seconds > 1.5 * fast.seconds


@pytest.mark.parametrize("text", [TEXT, NUMBERS, "Tom & Jerry <3 café > naïve résumé"])
def test_one_increasing_onset_per_word_inside_the_wav(text):
    utt = synthesize(text, Voice("en-us", "m3"))
    onsets = np.array(utt.word_onsets)
    assert len(onsets) == len(text.split())
    assert np.all(np.diff(onsets) >= 0) and 0 <= onsets[0] < 0.05
    assert onsets[-1] < utt.seconds - 0.1
    if text == TEXT:  # every word spoken: strictly increasing, ~2-6 words a second
        assert np.all(np.diff(onsets) > 0.05)
        assert 2 < len(onsets) / utt.seconds < 6


def test_ssml_characters_are_spoken_not_parsed():
    # unescaped, "<3 café >" would be swallowed as a tag
    plain = synthesize("three hearts café", Voice())
    marked = synthesize("<3 hearts café >", Voice())
    assert marked.seconds > 0.8 * plain.seconds


def test_a_pause_lengthens_the_utterance_and_the_gap_after_its_word():
    text = "one two three four five six"
    voice = Voice("en-us", "f2")
    plain = synthesize(text, voice)
    paused = synthesize(text, voice, pause_ms={2: 600})
    assert abs(paused.seconds - plain.seconds - 0.6) < 0.15
    gaps_plain, gaps_paused = np.diff(plain.word_onsets), np.diff(paused.word_onsets)
    assert abs(gaps_paused[2] - gaps_plain[2] - 0.6) < 0.15
    assert np.allclose(gaps_paused[:2], gaps_plain[:2], atol=0.03)
    with pytest.raises(ValueError, match="pause_ms"):
        synthesize(text, voice, pause_ms={6: 100})


def test_silence_is_trimmed_and_the_peak_normalised():
    for text in (TEXT, "... well, hello there!"):
        wav = synthesize(text, Voice("en-029")).wav
        edges = active(wav)
        assert edges[0] < 0.03 * SAMPLE_RATE and len(wav) - 1 - edges[-1] < 0.03 * SAMPLE_RATE
        assert np.abs(wav).max() == pytest.approx(0.5, abs=1e-4)


def test_empty_text_is_refused():
    for text in ("", "   \n\t"):
        with pytest.raises(ValueError, match="nothing to synthesize"):
            synthesize(text, Voice())
        with pytest.raises(ValueError, match="nothing to synthesize"):
            synthesize_many([("fine", Voice()), (text, Voice())])


def test_refused_voices_raise_naming_the_voice():
    for voice in (Voice("en-gb"), Voice("en-us", "zz"), Voice("xx-nowhere")):
        with pytest.raises(ValueError, match=re.escape(voice.espeak_name)):
            check_voice(voice)
        with pytest.raises(ValueError, match=re.escape(voice.espeak_name)):
            synthesize("hello", voice)
    for name in tts.ENGLISH_VOICES:
        check_voice(Voice(name, "f3"))
    for variant in tts.VARIANTS:
        check_voice(Voice("en-US-nyc", variant))


def test_voice_fields_key_and_json():
    voice = Voice("en-US-nyc", "f5", rate=200, pitch=20, range=70)
    assert voice.espeak_name == "en-US-nyc+f5" and Voice().espeak_name == "en-us"
    assert Voice.from_json(voice.to_json()) == voice
    variants = [Voice(), Voice(variant="m1"), Voice(rate=171), Voice(pitch=51), Voice(range=51)]
    assert len({v.key() for v in variants}) == len(variants)
    with pytest.raises(ValueError, match="unknown voice fields"):
        Voice.from_json({**voice.to_json(), "speed": 1})
    for bad in ({"rate": 30}, {"pitch": 101}, {"range": 2.5}, {"name": "en+f3"}, {"name": ""}):
        with pytest.raises(ValueError):
            Voice(**bad)


def test_voice_sampler_is_seeded_and_stays_in_its_ranges():
    sampler = VoiceSampler(names=["en-us", "en-029"], variants=["", "m2", "f4"])
    draw = [sampler.sample(random.Random(7)) for _ in range(2)]
    assert draw[0] == draw[1]
    rng = random.Random(3)
    voices = [sampler.sample(rng) for _ in range(200)]
    assert voices != [sampler.sample(random.Random(4)) for _ in range(200)]
    assert {v.name for v in voices} == {"en-us", "en-029"}
    assert {v.variant for v in voices} == {"", "m2", "f4"}
    assert all(150 <= v.rate <= 200 and 30 <= v.pitch <= 70 and 30 <= v.range <= 80 for v in voices)
    with pytest.raises(ValueError):
        VoiceSampler(names=[], variants=[""])
    with pytest.raises(ValueError):
        VoiceSampler(rate=(200, 150))
    with pytest.raises(ValueError):
        VoiceSampler(pitch=(0, 120))


def test_threads_share_the_one_engine_safely():
    items = [
        (f"Number {i} is here, then {i + 1}.", Voice("en-us", f"m{i % 7 + 1}")) for i in range(8)
    ]
    tts._render.cache_clear()
    with ThreadPoolExecutor(4) as pool:
        threaded = list(pool.map(lambda item: synthesize(*item), items))
    tts._render.cache_clear()
    for item, utt in zip(items, threaded, strict=True):
        assert np.array_equal(synthesize(*item).wav, utt.wav)


def test_synthesize_many_in_workers_equals_in_process_and_caches(tmp_path, monkeypatch):
    voices = [Voice("en-us", "f1", rate=160), Voice("en-GB-x-gbclan", "m4", pitch=60)]
    items = [(f"Sentence number {i}, spoken aloud.", voices[i % 2]) for i in range(6)]
    items.append(items[0])  # repeated: synthesized once
    local = synthesize_many(items)
    monkeypatch.setattr(tts, "_ITEMS_PER_WORKER", 2)  # two batches, two pools
    parallel = synthesize_many(items, workers=2, cache_dir=tmp_path / "cache", progress=True)
    assert [u.text for u in parallel] == [t for t, _ in items]
    for a, b in zip(local, parallel, strict=True):
        assert np.array_equal(a.wav, b.wav) and a.word_onsets == b.word_onsets
        assert a.voice == b.voice
    files = sorted((tmp_path / "cache").iterdir())
    assert len(files) == 6 and all(f.suffix == ".npz" for f in files)

    def no_engine(*args):
        raise AssertionError("a cache hit must not synthesize")

    monkeypatch.setattr(tts, "_render", no_engine)
    cached = synthesize_many(items, workers=2, cache_dir=tmp_path / "cache")
    for a, b in zip(parallel, cached, strict=True):
        assert np.array_equal(a.wav, b.wav) and a.word_onsets == b.word_onsets
    assert not cached[0].wav.flags.writeable


def test_a_corrupt_cache_file_is_synthesized_again(tmp_path):
    items = [("A file that was cut short.", Voice())]
    [first] = synthesize_many(items, cache_dir=tmp_path)
    [path] = tmp_path.iterdir()
    path.write_bytes(path.read_bytes()[:100])
    [again] = synthesize_many(items, cache_dir=tmp_path)
    assert np.array_equal(first.wav, again.wav)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # rewritten, no temp left


def test_missing_extra_raises_tts_unavailable_with_the_licence(monkeypatch):
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # import raises ImportError
    tts._render.cache_clear()
    with pytest.raises(TTSUnavailable, match=r"GPL-3\.0-or-later") as info:
        synthesize("hello", Voice())
    assert 'pip install -e ".[tts]"' in str(info.value)
    assert isinstance(info.value, RuntimeError)
    tts._render.cache_clear()


def test_resampler_keeps_the_band_and_removes_aliases():
    t = np.arange(22050) / 22050
    for hz, gain in ((1000, 1.0), (5000, 1.0), (9000, 0.0), (10500, 0.0)):
        y = tts._resample(np.sin(2 * np.pi * hz * t), 22050, SAMPLE_RATE)
        assert len(y) == SAMPLE_RATE
        middle = y[500:-500]
        ideal = gain * np.sin(2 * np.pi * hz * np.arange(SAMPLE_RATE) / SAMPLE_RATE)[500:-500]
        assert np.abs(middle - ideal).max() < 1e-3, hz
    assert len(tts._resample(np.ones(7), 22050, SAMPLE_RATE)) == 6  # ceil(7 * 320 / 441)
