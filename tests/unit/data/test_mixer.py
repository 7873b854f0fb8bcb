"""Waveform-level synthesis: clips at the right samples, cuts, pauses, noise, tokenized channels.

The last test runs a real build with ``recipe.waveform.level=waveform``: the
mixer's timelines go through the interleaver and its checks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from speech_helpers import one_torch_thread, save_tiny_tokenizer, voice, write_wav

from bayling_duplex.audio.codec import GlmSpeechCodec
from bayling_duplex.audio.tokenize import tokenize_manifest
from bayling_duplex.data import build
from bayling_duplex.data.mixer import (
    FileClips,
    Placement,
    WaveformConfig,
    WaveformMixer,
    mix_channel,
    pause_cut,
    scaled_noise,
)
from bayling_duplex.data.recipe import CodecConfig, FormatConfig, RecipeConfig, SourceConfig
from bayling_duplex.data.synthesis import ScenarioMix, SynthesisConfig, synthesize
from bayling_duplex.format.interleave import FormatSpec
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.format.records import RecordError, read_jsonl, script_from_json
from bayling_duplex.format.vocab import VocabConfig
from bayling_duplex.model.backbone import ModelConfig, backbone_source

SPF = 1280


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


# --------------------------------------------------------------------------- pure parts


def test_mix_channel_puts_each_clip_at_its_frames_sample_offset() -> None:
    a = np.arange(1, 2001, dtype=np.float32)  # 1.56 frames of samples
    b = np.full(1280, 0.5, dtype=np.float32)
    out = mix_channel([Placement(2, a), Placement(3, b)], num_frames=6, samples_per_frame=SPF)
    assert out.shape == (6 * SPF,) and out.dtype == np.float32
    assert not out[: 2 * SPF].any()
    np.testing.assert_array_equal(out[2 * SPF : 3 * SPF], a[:SPF])
    np.testing.assert_array_equal(out[3 * SPF : 3 * SPF + 720], a[SPF:] + 0.5)  # overlap adds
    np.testing.assert_array_equal(out[3 * SPF + 720 : 4 * SPF], b[720:])
    assert not out[4 * SPF :].any()
    # past the end of the channel: dropped
    tail = mix_channel([Placement(5, b), Placement(5, a)], 6, SPF)
    np.testing.assert_array_equal(tail[5 * SPF :], b + a[:SPF])


def test_a_cut_clip_stops_at_its_last_frame_with_a_fade() -> None:
    clip = np.ones(5 * SPF, dtype=np.float32)
    out = mix_channel([Placement(1, clip, max_frames=2)], 8, SPF, fade_samples=160)
    np.testing.assert_array_equal(out[SPF : 3 * SPF - 160], 1.0)
    fade = out[3 * SPF - 160 : 3 * SPF]
    assert fade[0] == 1.0 and fade[-1] == 0.0 and np.all(np.diff(fade) < 0)
    assert not out[3 * SPF :].any()
    assert clip.min() == 1.0  # the source clip is untouched
    uncut = mix_channel([Placement(0, clip, max_frames=9)], 8, SPF, fade_samples=160)
    assert uncut[5 * SPF - 1] == 1.0  # shorter than max_frames: no fade


def test_noise_is_scaled_to_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    speech = voice(2.0, 1)
    power = float(np.mean(speech.astype(np.float64) ** 2))
    for snr in (0.0, 12.5, 30.0):
        noise = scaled_noise(rng.standard_normal(40_000).astype(np.float32), power, snr)
        got = 10 * np.log10(power / np.mean(noise.astype(np.float64) ** 2))
        assert abs(got - snr) < 1e-3
    assert not scaled_noise(np.zeros(10, np.float32), power, 10.0).any()


def test_pause_cut_finds_where_synthesis_split_the_turn() -> None:
    turn = (5, 6, 7, 8, 9, 10)
    for cut in range(len(turn) + 1):
        segment = (*turn[:cut], 0, 0, 0, *turn[cut:])
        assert pause_cut(segment, turn, preferred=(cut,)) == cut
    # silence codes equal to their neighbours make cuts 2 and 3 both fit: the preferred one wins
    turn = (5, 6, 0, 8)
    assert pause_cut((5, 6, 0, 0, 0, 8), turn, preferred=(3,)) == 3
    with pytest.raises(ValueError):
        pause_cut((1, 2, 3, 4, 5), (9, 9), ())


def test_waveform_config_is_validated() -> None:
    assert WaveformConfig().level == "codes"
    with pytest.raises(ValueError, match="level"):
        WaveformConfig(level="audio")
    with pytest.raises(ValueError, match="noise_channels"):
        WaveformConfig(noise_channels=["left"])
    with pytest.raises(ValueError, match="snr_db"):
        WaveformConfig(snr_db=[30.0, 10.0])


def test_for_recipe_is_off_at_codes_level_and_refuses_what_it_cannot_mix() -> None:
    recipe = RecipeConfig()  # the demo: toy codec, demo source
    assert WaveformMixer.for_recipe(recipe) is None  # no waveform field: codes
    recipe.waveform = WaveformConfig()
    assert WaveformMixer.for_recipe(recipe) is None  # level: codes
    recipe.waveform = WaveformConfig(level="waveform", tokenizer="tok")
    with pytest.raises(ValueError, match=r"codec\.kind=glm4voice"):
        WaveformMixer.for_recipe(recipe)
    recipe.codec = CodecConfig(kind="glm4voice")
    with pytest.raises(ValueError, match="scripts_jsonl"):
        WaveformMixer.for_recipe(recipe)
    recipe.waveform = WaveformConfig(level="waveform")
    with pytest.raises(ValueError, match="tokenizer"):
        WaveformMixer.for_recipe(recipe)


# --------------------------------------------------------------------------- rendering


@pytest.fixture(scope="module")
def scripts(tmp_path_factory) -> dict:
    """Three dialogues tokenized by the command: the scripts file, its codec and clips."""
    root = tmp_path_factory.mktemp("mix")
    tok = save_tiny_tokenizer(root / "tok")
    codec = GlmSpeechCodec.load(tok, "cpu")
    clips = {}
    for i, (u, a) in enumerate([(1.4, 2.6), (1.1, 1.9), (0.9, 3.0), (1.3, 1.6)]):
        clips[f"u{i}"] = write_wav(root / "wav" / f"u{i}.wav", voice(u, 2 * i))
        clips[f"a{i}"] = write_wav(root / "wav" / f"a{i}.wav", voice(a, 2 * i + 1))

    def turn(i: int, text: str) -> dict:
        return {
            "user_audio": f"wav/u{i}.wav",
            "user_text": f"question {i}",
            "assistant_text": text,
            "assistant_audio": f"wav/a{i}.wav",
            "user_words": [{"start_s": 0.1, "end_s": 0.4}, {"start_s": 0.6, "end_s": 0.8}],
        }

    rows = [
        {"id": "two-turns", "turns": [turn(0, "The time is nine."), turn(1, "Nine pm.")]},
        {"id": "one-turn", "turns": [turn(2, "Four.")]},
        {"id": "another", "turns": [turn(3, "Yes, of course.")]},
    ]
    manifest = root / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = root / "sources" / "demo.scripts.jsonl"
    report = tokenize_manifest(manifest, out, codec, progress=False)
    assert report.written == 3
    return {"path": out, "codec": codec, "tok": tok, "clips": clips}


def spec_of(codec) -> FormatSpec:
    return FormatSpec(BlockLayout(10, 5), codec.silence_codes)


def load_scripts(path: Path):
    return [script_from_json(o) for _, o in read_jsonl(path)]


def mixer_for(scripts, **cfg) -> WaveformMixer:
    wcfg = WaveformConfig(level="waveform", tokenizer=str(scripts["tok"]), **cfg)
    codec = scripts["codec"]
    mixer = WaveformMixer(wcfg, codec, FileClips(codec.load_audio), seed=0)
    mixer.index_shard(str(scripts["path"]))
    return mixer


def test_render_tokenizes_the_mixed_channels_of_an_interruption(scripts) -> None:
    codec, clips = scripts["codec"], scripts["clips"]
    script = load_scripts(scripts["path"])[0]
    cfg = SynthesisConfig(interrupt_at=[0.5, 0.6])
    t = synthesize(script, [[1, 2, 3], [4, 5]], "interruption", cfg, spec_of(codec))
    assert t.responses[0].interrupted
    got = mixer_for(scripts).render(t, script)

    # the same mix built by hand from the clips and the timeline's frames
    u0, u1 = (codec.load_audio(clips[k]) for k in ("u0", "u1"))
    a0, a1 = (codec.load_audio(clips[k]) for k in ("a0", "a1"))
    n = t.num_frames * SPF
    user, agent = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for seg, wav in zip(t.user_segments, (u0, u1), strict=True):
        user[seg.start_frame * SPF : seg.start_frame * SPF + len(wav)] += wav
    r0, r1 = t.responses
    cut = (r0.end_frame - r0.start_frame) * SPF
    agent[r0.start_frame * SPF : r0.end_frame * SPF] = a0[:cut]
    agent[r0.end_frame * SPF - 160 : r0.end_frame * SPF] *= np.linspace(1, 0, 160)
    agent[r1.start_frame * SPF : r1.start_frame * SPF + len(a1)] += a1
    want_user, want_agent = codec.encode_many([user, agent])

    assert got.user_codes == want_user and len(got.user_codes) == t.num_frames
    assert [r.codes for r in got.responses] == [
        want_agent[r.start_frame : r.end_frame] for r in t.responses
    ]
    assert len(got.responses[0].codes) == r0.end_frame - r0.start_frame  # cut
    # timing and text are the synthesised ones; only codes change
    assert got.user_segments == t.user_segments and got.num_frames == t.num_frames
    assert [(r.start_frame, r.end_frame, r.text, r.interrupted) for r in got.responses] == [
        (r.start_frame, r.end_frame, r.text, r.interrupted) for r in t.responses
    ]
    assert got.user_codes != t.user_codes  # silence and context differ from composed codes


def test_render_splits_a_hesitating_turn_and_adds_seeded_noise(scripts) -> None:
    codec, clips = scripts["codec"], scripts["clips"]
    scripts_list = load_scripts(scripts["path"])
    script = scripts_list[1]  # one turn: hesitation splits its clip
    t = synthesize(script, [[7, 8]], "hesitation", SynthesisConfig(), spec_of(codec))
    seg = t.user_segments[0]
    turn = script.turns[0]
    pause = seg.end_frame - seg.start_frame - len(turn.user_codes)
    assert pause > 0
    cut = pause_cut(t.user_codes[seg.start_frame : seg.end_frame], turn.user_codes)
    assert cut in turn.user_word_ends
    clean = mixer_for(scripts).render(t, script)
    u2 = codec.load_audio(clips["u2"])
    user = np.zeros(t.num_frames * SPF, np.float32)
    user[seg.start_frame * SPF : (seg.start_frame + cut) * SPF] = u2[: cut * SPF]
    rest = u2[cut * SPF :]
    start = (seg.start_frame + cut + pause) * SPF
    user[start : start + len(rest)] = rest
    assert clean.user_codes == codec.encode(user)

    noisy = mixer_for(scripts, noise_prob=1.0, snr_db=[0.0, 0.0]).render(t, script)
    again = mixer_for(scripts, noise_prob=1.0, snr_db=[0.0, 0.0]).render(t, script)
    assert noisy == again  # seeded by the record id
    assert noisy.user_codes != clean.user_codes
    assert noisy.responses == clean.responses  # noise on the user channel only


def test_render_reports_a_turn_without_audio(scripts) -> None:
    script = load_scripts(scripts["path"])[1]
    t = synthesize(script, [[7]], "turn_taking", SynthesisConfig(), spec_of(scripts["codec"]))
    mixer = mixer_for(scripts)
    mixer.clips.turn_audio = {}
    with pytest.raises(RecordError) as err:
        mixer.render(t, script)
    assert err.value.reason == "no_audio"


# --------------------------------------------------------------------------- the build hook


def test_build_with_the_waveform_hook(scripts, tiny_cache, tmp_path, monkeypatch) -> None:
    """A build at waveform level: the mixed timelines are built."""
    codec = scripts["codec"]
    recipe = RecipeConfig(
        name="wave",
        train=SourceConfig(kind="scripts_jsonl", path=str(scripts["path"]), count=None),
        format=FormatConfig(silence_codes=list(codec.silence_codes)),
        codec=CodecConfig(kind="glm4voice"),
        synthesis=SynthesisConfig(
            mode="each", mix=ScenarioMix(turn_taking=1.0, interruption=1.0), max_blocks=40
        ),
        shard_size=3,
        max_reject_share=0.0,
    )
    recipe.waveform = WaveformConfig(level="waveform", tokenizer=str(scripts["tok"]))
    rendered: dict = {}
    timelines = build._timelines

    def recording(record, recipe, partner):  # keeps what the build's mixer rendered
        out = timelines(record, recipe, partner)
        rendered.update({(t.id, t.scenario): t for t, _, _ in out})
        return out

    monkeypatch.setattr(build, "_timelines", recording)
    tok_dir = str(backbone_source(ModelConfig(), tiny_cache))
    manifest = build.run_build(recipe, tok_dir, VocabConfig(), tmp_path / "wave", 1, progress=False)

    train = manifest["splits"]["train"]
    assert manifest["status"] == "ok" and train["rejected"] == 0
    assert train["sequences"] == 6 and train["scenarios"] == {"turn_taking": 3, "interruption": 3}
    rows = build.load_split(tmp_path / "wave", "train")
    from bayling_duplex.format.vocab import extend_tokenizer, resolve_vocab
    from bayling_duplex.model.backbone import load_tokenizer

    tok = load_tokenizer(tok_dir)
    extend_tokenizer(tok, VocabConfig())
    vocab = resolve_vocab(tok, VocabConfig())
    for row in rows:
        t = rendered[(row["id"], row["scenario"])]
        ids = np.asarray(row["input_ids"]).reshape(row["num_blocks"], 25)
        user = (ids[:, :10].reshape(-1) - vocab.audio_start_id)[: t.num_frames]
        assert user.tolist() == list(t.user_codes)  # the mixed channel's codes were built
