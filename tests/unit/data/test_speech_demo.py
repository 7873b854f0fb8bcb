"""The real-speech demo: voices held out, clips coded by the codec, channels mixed as asked."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("espeakng_loader")

from bayling_duplex.audio.units import UnitCodec, UnitCodecConfig
from bayling_duplex.data.mixer import WaveformConfig, WaveformMixer, coloured_noise
from bayling_duplex.data.recipe import CodecConfig, RecipeConfig
from bayling_duplex.data.speech_demo import (
    LengthCodec,
    SpeechConfig,
    SpeechDemo,
    pause_points,
    word_ends,
)
from bayling_duplex.data.synthesis import SynthesisConfig, synthesize
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.spec import FormatSpec


def test_held_out_voices_must_be_unseen() -> None:
    with pytest.raises(ValueError, match=r"heldout_voices shares \['en-us'\]"):
        SpeechConfig(heldout_voices=["en-us"])
    with pytest.raises(ValueError, match="heldout_variants shares"):
        SpeechConfig(heldout_variants=["m1"])
    with pytest.raises(ValueError, match=r"speech\.rate"):
        SpeechConfig(rate=[200, 100])


def test_word_ends_fall_on_the_frame_before_each_onset() -> None:
    # onsets 0.0, 0.30, 0.50, 0.95 s; 80 ms frames: boundaries at frames 3, 6, 11
    assert word_ends((0.0, 0.30, 0.50, 0.95), 15, 0.08) == (3, 6, 11)
    assert word_ends((0.0, 0.02), 5, 0.08) == ()  # a cut at frame 0 splits nothing
    assert word_ends((0.0, 0.9), 10, 0.08) == ()  # nor one at the very end


def test_pauses_go_after_the_lead_in_or_in_the_second_half() -> None:
    onsets = (0.0, 0.30, 0.50, 0.95, 1.30, 1.70)  # word ends at frames 3, 6, 11, 16, 21
    # a lead-in of 2 words: the question starts at word 3 (0.50 s, frame 6)
    assert pause_points(onsets, 25, 0.08, lead_words=2) == (6, 11, 16, 21)
    # no lead-in: the second half of 25 frames (frame 12 on)
    assert pause_points(onsets, 25, 0.08) == (16, 21)
    # nothing left there: every word end, as before
    assert pause_points((0.0, 0.30), 30, 0.08) == (3,)


def test_lead_ins_are_drawn_from_the_split_and_held_out_ones_never_train() -> None:
    import random

    with pytest.raises(ValueError, match=r"heldout_preambles shares \['so'\]"):
        SpeechConfig(preambles=["so", "tell me"], heldout_preambles=["so"])
    with pytest.raises(ValueError, match=r"speech\.preamble_prob"):
        SpeechConfig(preamble_prob=1.5)
    with pytest.raises(ValueError, match=r"speech\.preambles must not be empty"):
        SpeechConfig(preambles=[])
    assert SpeechConfig(preambles=[], preamble_prob=0.0).lead_in("train", random.Random(0)) == ""
    cfg = SpeechConfig()
    rng = random.Random(0)
    train = [cfg.lead_in("train", rng) for _ in range(2000)]
    held = [cfg.lead_in("heldout", rng) for _ in range(2000)]
    assert 0.45 < train.count("") / 2000 < 0.55  # preamble_prob 0.5
    assert set(train) - {""} == set(cfg.preambles)
    assert set(held) - {""} == set(cfg.heldout_preambles)


def test_voices_come_from_the_split_and_the_held_out_ones_never_train() -> None:
    demo = SpeechDemo(SpeechConfig(), LengthCodec(), seed=0)
    cfg = SpeechConfig()
    train = {demo.voice_for("train", f"t{i}") for i in range(300)}
    held = {demo.voice_for("heldout", f"h{i}") for i in range(300)}
    assert {v.name for v in train} <= set(cfg.voices)
    assert {v.variant for v in train} <= set(cfg.variants)
    assert {v.name for v in held} <= set(cfg.heldout_voices)
    assert {v.variant for v in held} <= set(cfg.heldout_variants)
    assert len({v.name for v in train}) == len(cfg.voices)  # every voice is used
    assert demo.voice_for("train", "t1") == demo.voice_for("train", "t1")  # seeded by the id


@pytest.fixture(scope="module")
def codec() -> UnitCodec:
    """A small codec fitted on a few synthesized dialogues' channels."""
    from bayling_duplex.data.speech_demo import fitting_audio

    recipe = _recipe()
    return UnitCodec.fit(fitting_audio(recipe, 60.0), UnitCodecConfig(num_codes=32, iters=8))


def speech_mixer(recipe: RecipeConfig, codec, demo: SpeechDemo) -> WaveformMixer:
    """The recipe's mixer over the clips ``demo`` already made."""
    return WaveformMixer(recipe.waveform, codec, demo, recipe.synthesis.seed)


def _recipe(**waveform) -> RecipeConfig:
    return RecipeConfig(
        codec=CodecConfig(kind="units", num_codes=32),
        waveform=WaveformConfig(level="waveform", **waveform),
    )


def test_a_script_is_spoken_and_its_clips_coded(codec) -> None:
    demo = SpeechDemo(SpeechConfig(), codec, seed=0)
    script = demo.script("heldout", 3)
    again = SpeechDemo(SpeechConfig(), codec, seed=0).script("heldout", 3)
    assert script == again  # deterministic in (seed, split, index)
    for turn in script.turns:
        wav = demo.user_clip(script.id, turn)
        assert turn.user_codes == codec.encode(wav)
        assert len(turn.user_codes) == -(-len(wav) // 1280)
        assert all(0 < e < len(turn.user_codes) for e in turn.user_word_ends)
        assert turn.assistant_codes == codec.encode(demo.assistant_clip(script.id, turn))
    bcs = demo.backchannels(script.id)  # in this dialogue's user's voice
    assert [t for t, _ in bcs] == ["uh-huh.", "mm-hmm.", "I see.", "right.", "okay."]
    demo.reset()
    with pytest.raises(KeyError):
        demo.user_clip(script.id, script.turns[0])


def test_a_lead_in_moves_the_pause_points_past_it(codec) -> None:
    from bayling_duplex.audio.tts import synthesize as tts

    always = SpeechConfig(preamble_prob=1.0)
    demo = SpeechDemo(always, codec, seed=0)
    script = demo.script("train", 0)
    for turn in script.turns:
        lead = next(p for p in always.preambles if turn.user_text.startswith(p + " "))
        n = len(lead.split())
        onsets = tts(turn.user_text, demo.voices[script.id]).word_onsets
        first = int(onsets[n] / demo.frame_s)
        assert turn.user_word_ends and min(turn.user_word_ends) >= first
        assert turn.user_lead_in_frames == first  # what the evaluation's breakdown reads
    # held-out turns take the held-out lead-ins, as part of the spoken text
    held = SpeechDemo(always, codec, seed=0).script("heldout", 0)
    assert all(
        any(t.user_text.startswith(p + " ") for p in always.heldout_preambles) for t in held.turns
    )
    never = SpeechDemo(SpeechConfig(preamble_prob=0.0), codec, seed=0).script("train", 0)
    assert all(t.user_text[0].isupper() for t in never.turns)
    assert all(t.user_lead_in_frames == 0 for t in never.turns)


def test_a_reader_of_many_dialogues_keeps_only_the_last_few(codec) -> None:
    demo = SpeechDemo(SpeechConfig(), codec, seed=0, keep=2)
    a, b, c = (demo.script("train", i) for i in range(3))
    assert demo.user_clip(c.id, c.turns[0]) is not None
    assert demo.user_clip(b.id, b.turns[0]) is not None and demo.backchannels(b.id)
    with pytest.raises(KeyError):
        demo.user_clip(a.id, a.turns[0])  # the oldest went
    assert set(demo.voices) == {b.id, c.id}


def _timeline(demo: SpeechDemo, scenario: str, index: int = 5, cfg=None, **script_kw):
    script = demo.script("train", index, **script_kw)
    spec = FormatSpec(BlockLayout(10, 5), demo.codec.silence_codes)
    ids = [[1, 2, 3]] * len(script.turns)
    bcs = demo.backchannels(script.id) if scenario == "backchannel" else ()
    return script, synthesize(script, ids, scenario, cfg or SynthesisConfig(), spec, bcs)


def test_the_mix_places_the_clips_cuts_the_pause_and_adds_an_echo(codec) -> None:
    demo = SpeechDemo(SpeechConfig(), codec, seed=0)
    script, t = _timeline(demo, "hesitation")
    clean = speech_mixer(_recipe(), codec, demo).mix(t, script)
    assert len(clean.user) == len(clean.assistant) == t.num_frames * 1280
    ((p0, p1),) = clean.pauses
    assert p1 > p0 and np.abs(clean.user[p0 * 1280 : p1 * 1280]).max() == 0.0  # a real pause
    first = t.user_segments[0]
    assert np.abs(clean.user[first.start_frame * 1280 :][:1280]).max() > 0.01  # speech there

    echoed = speech_mixer(_recipe(echo_prob=1.0, echo_db=[-6.0, -6.0]), codec, demo).mix(t, script)
    assert echoed.echo_db == -6.0
    leak = echoed.user - clean.user  # exactly the delayed, attenuated assistant
    gain = 10 ** (-6 / 20)
    lags = [np.dot(leak[d:], clean.assistant[: len(leak) - d]) for d in range(0, 2500, 16)]
    coarse = 16 * int(np.argmax(lags))
    near = range(max(0, coarse - 16), coarse + 17)
    delay = max(near, key=lambda d: np.dot(leak[d:], clean.assistant[: len(leak) - d]))
    assert 20 * 16 - 16 <= delay <= 120 * 16 + 16
    np.testing.assert_allclose(leak[delay:], gain * clean.assistant[: len(leak) - delay], atol=1e-5)
    assert (
        speech_mixer(_recipe(echo_prob=1.0), codec, demo).mix(t, script, echo=False).echo_db is None
    )


def test_the_mix_cuts_a_pause_in_every_turn_when_each_turn_has_one(codec) -> None:
    demo = SpeechDemo(SpeechConfig(), codec, seed=0)
    every = SynthesisConfig(hesitation_turns="all")
    script, t = _timeline(demo, "hesitation", cfg=every, min_turns=2, max_turns=2)
    mixed = speech_mixer(_recipe(), codec, demo).mix(t, script)
    assert len(mixed.pauses) == 2
    for (p0, p1), seg in zip(mixed.pauses, t.user_segments, strict=True):
        assert seg.start_frame < p0 < p1 < seg.end_frame
        assert np.abs(mixed.user[p0 * 1280 : p1 * 1280]).max() == 0.0


def test_noise_is_coloured_and_scaled_to_the_drawn_snr(codec) -> None:
    rng = np.random.default_rng(0)
    spectra = {}
    for colour in ("white", "pink", "brown"):
        x = coloured_noise(1 << 15, colour, rng)
        assert abs(x.std() - 1.0) < 2e-2
        p = np.abs(np.fft.rfft(x)) ** 2
        spectra[colour] = p[50:500].mean() / p[5000:8000].mean()  # low / high band
    assert spectra["white"] < 2 < spectra["pink"] < spectra["brown"]

    demo = SpeechDemo(SpeechConfig(), codec, seed=0)
    script, t = _timeline(demo, "turn_taking")
    cfg = {"noise_prob": 1.0, "snr_db": [10.0, 10.0]}
    clean = speech_mixer(_recipe(), codec, demo).mix(t, script)
    noisy = speech_mixer(_recipe(**cfg), codec, demo).mix(t, script)
    noise = noisy.user - clean.user
    speech = np.concatenate([demo.user_clip(script.id, turn) for turn in script.turns])
    snr = 10 * np.log10(np.mean(speech**2) / np.mean(noise**2))
    assert noisy.snr_db == 10.0 and abs(snr - 10.0) < 0.5


def test_trimming_removes_the_last_frame_of_each_turn(codec) -> None:
    demo = SpeechDemo(SpeechConfig(), codec, seed=0)
    script, t = _timeline(demo, "turn_taking")
    mixer = speech_mixer(_recipe(), codec, demo)
    full, _, _ = mixer.placements(t, script)
    cut, _, _ = mixer.placements(t, script, trim_end_frames=1)
    for p, q, turn in zip(full, cut, script.turns, strict=True):
        assert len(q.wav) == min(len(p.wav), (len(turn.user_codes) - 1) * 1280)
        np.testing.assert_array_equal(q.wav, p.wav[: len(q.wav)])


def test_dropping_backchannels_leaves_the_other_clips(codec) -> None:
    demo = SpeechDemo(SpeechConfig(), codec, seed=0)
    script, t = _timeline(demo, "backchannel")
    mixer = speech_mixer(_recipe(), codec, demo)
    full, assistant, _ = mixer.placements(t, script)
    quiet, assistant_q, _ = mixer.placements(t, script, drop_backchannels=True)
    n_bc = sum(s.kind == "backchannel" for s in t.user_segments)
    assert n_bc >= 1 and len(quiet) == len(full) - n_bc and len(assistant_q) == len(assistant)
    assert all(any(q is p or np.array_equal(q.wav, p.wav) for p in full) for q in quiet)


def test_pairs_of_the_speech_recipe_are_mixed_and_coded(codec, tiny_backbone) -> None:
    """Preference pairs read more spoken dialogues than the clip store keeps (8), and
    their user audio comes from the mixed microphone, as in the SFT build."""
    from bayling_duplex.data.pair_build import make_split_pairs
    from bayling_duplex.data.pairs import PairConfig
    from bayling_duplex.data.recipe import SourceConfig

    _, tok, vocab = tiny_backbone
    recipe = _recipe()
    recipe.train = SourceConfig(kind="demo", split="train", count=400)
    spec = FormatSpec(BlockLayout(10, 5), codec.silence_codes)
    rows, stats, _ = make_split_pairs(
        recipe.train, 30, recipe, PairConfig(), tok, vocab, spec, codec
    )
    assert stats["pairs"] == 30 and len(set(rows["kind"])) >= 3
    for prompt in rows["prompt_ids"]:
        user = np.asarray(prompt).reshape(-1, 25)[:, :10] - vocab.audio_start_id
        assert ((user >= 0) & (user < 32)).all()  # the 32-unit codec's codes
    assert stats["records"] >= 30


def test_noise_recordings_mix_into_spoken_dialogues(codec, tmp_path) -> None:
    """recipe.waveform.noise_dir works whatever the clips come from (the mixer reads it)."""
    import soundfile as sf

    t_s = np.arange(16000 * 2) / 16000
    sf.write(tmp_path / "hum.wav", 0.1 * np.sin(2 * np.pi * 440 * t_s), 16000)
    demo = SpeechDemo(SpeechConfig(), codec, seed=0)
    script, t = _timeline(demo, "turn_taking")
    clean = speech_mixer(_recipe(), codec, demo).mix(t, script)
    recipe = _recipe(noise_prob=1.0, snr_db=[10.0, 10.0], noise_dir=str(tmp_path))
    noise = speech_mixer(recipe, codec, demo).mix(t, script).user - clean.user
    spectrum = np.abs(np.fft.rfft(noise))
    assert abs(np.argmax(spectrum) * 16000 / len(noise) - 440) < 2  # the recording's hum
