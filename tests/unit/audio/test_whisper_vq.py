"""GLM-4-Voice speech tokenizer: released key names, 12.5 Hz length arithmetic, causality, VQ lookup.

A tiny random model with the released structure (causal convolutions, 4 s
block-causal attention, average pooling by 4 after the last kept layer, EMA
buffers) is saved in the released file layout and loaded back strictly.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF
from transformers import WhisperFeatureExtractor

from bayling_duplex.audio.whisper_vq import (
    SAMPLE_RATE,
    SpeechTokenizer,
    WhisperVQConfig,
    WhisperVQEncoder,
    attention_bias,
    load_audio,
    load_speech_tokenizer,
    nearest_code,
    read_state_dict,
    tokenize_files,
    tokenize_waveform,
    tokenize_waveforms,
)

# The released glm-4-voice-tokenizer config.json, the keys that shape the encoder.
RELEASED_CONFIG = {
    "num_mel_bins": 128,
    "d_model": 1280,
    "encoder_layers": 32,
    "encoder_attention_heads": 20,
    "encoder_ffn_dim": 5120,
    "max_source_positions": 1500,
    "activation_function": "gelu",
    "pooling_kernel_size": 4,
    "pooling_type": "avg",
    "pooling_position": 16,
    "quantize_vocab_size": 16384,
    "quantize_position": 16,
    "quantize_encoder_only": True,
    "quantize_causal_encoder": False,
    "quantize_causal_block_size": 200,
    "quantize_ema_decay": 0.99,
    "encoder_causal_attention": False,
    "encoder_causal_convolution": True,
    "skip_language_detection": True,
}
TINY_CONFIG = {
    **RELEASED_CONFIG,
    "d_model": 64,
    "encoder_layers": 4,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "pooling_position": 2,
    "quantize_position": 2,
    "quantize_vocab_size": 32,
}

# Key names of the reference WhisperVQEncoder with quantize_encoder_only=True and an
# EMA decay: no final layer_norm, layers only below quantize_position, EMA buffers kept.
TOP_KEYS = (
    "conv1.weight",
    "conv1.bias",
    "conv2.weight",
    "conv2.bias",
    "embed_positions.weight",
    "codebook.weight",
    "embed_positions2.weight",
    "ema_count",
    "ema_weight",
)
LAYER_KEYS = (
    "self_attn.k_proj.weight",  # k_proj has no bias in Whisper
    "self_attn.v_proj.weight",
    "self_attn.v_proj.bias",
    "self_attn.q_proj.weight",
    "self_attn.q_proj.bias",
    "self_attn.out_proj.weight",
    "self_attn.out_proj.bias",
    "self_attn_layer_norm.weight",
    "self_attn_layer_norm.bias",
    "fc1.weight",
    "fc1.bias",
    "fc2.weight",
    "fc2.bias",
    "final_layer_norm.weight",
    "final_layer_norm.bias",
)


def released_keys(n_layers: int) -> set[str]:
    return set(TOP_KEYS) | {f"layers.{i}.{k}" for i in range(n_layers) for k in LAYER_KEYS}


def signal(n_samples: int, seed: int, gain: float = 1.0) -> np.ndarray:
    """Noise plus a gated tone: enough structure for varied codes."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_samples) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * (180 + 40 * seed) * t) * (np.sin(2 * np.pi * 0.7 * t) > 0)
    return (gain * (0.05 * rng.standard_normal(n_samples) + tone)).astype(np.float32)


def save_tiny(folder: Path, **overrides: object) -> Path:
    torch.manual_seed(0)
    model = WhisperVQEncoder(WhisperVQConfig.from_dict({**TINY_CONFIG, **overrides}))
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("glm-4-voice-tokenizer-tiny"))


@pytest.fixture(scope="module")
def tiny(tiny_dir: Path) -> SpeechTokenizer:
    return load_speech_tokenizer(tiny_dir)


def codes(tok: SpeechTokenizer, wav: np.ndarray) -> list[int]:
    return tokenize_waveform(tok.model, tok.feature_extractor, wav)


def test_released_structure_has_released_keys_and_shapes() -> None:
    with torch.device("meta"):
        model = WhisperVQEncoder(WhisperVQConfig.from_dict(RELEASED_CONFIG))
    state = model.state_dict()
    assert set(state) == released_keys(16)
    assert state["conv1.weight"].shape == (1280, 128, 3)
    assert state["codebook.weight"].shape == (16384, 1280)
    assert state["embed_positions.weight"].shape == (1500, 1280)
    assert state["embed_positions2.weight"].shape == (375, 1280)
    assert state["ema_weight"].shape == (16384, 1280)
    assert model.frames_per_code == 8  # 80 ms of 10 ms mel frames


def test_config_reads_released_json_and_ignores_decoder_keys() -> None:
    config = WhisperVQConfig.from_dict({**RELEASED_CONFIG, "decoder_layers": 32, "max_length": 448})
    assert config.pooling_kernel_size == 4
    assert not config.causal_attention
    with pytest.raises(ValueError, match="quantize_vocab_size"):
        WhisperVQConfig.from_dict({**RELEASED_CONFIG, "quantize_vocab_size": None})


def test_loads_strictly_by_released_key_names(tiny_dir: Path, tmp_path: Path) -> None:
    assert set(read_state_dict(tiny_dir)) == released_keys(2)
    tok = load_speech_tokenizer(tiny_dir)
    assert set(tok.model.state_dict()) == released_keys(2)
    assert not tok.model.training

    state = read_state_dict(tiny_dir)
    bad = save_tiny(tmp_path / "bad")
    torch.save({**state, "layer_norm.weight": torch.ones(64)}, bad / "pytorch_model.bin")
    (bad / "model.safetensors").unlink()
    with pytest.raises(RuntimeError, match=r"layer_norm\.weight"):
        load_speech_tokenizer(bad)


def test_bin_checkpoint_gives_the_same_codes(
    tiny: SpeechTokenizer, tiny_dir: Path, tmp_path: Path
) -> None:
    folder = save_tiny(tmp_path / "bin")
    (folder / "model.safetensors").unlink()
    torch.save(read_state_dict(tiny_dir), folder / "pytorch_model.bin")
    wav = signal(20_000, seed=3)
    assert codes(load_speech_tokenizer(folder), wav) == codes(tiny, wav)


def test_one_code_per_80ms(tiny: SpeechTokenizer) -> None:
    # a window of L samples gives ceil(L / 1280) codes: 25 for 2 s, 13 for a lone 1 s
    two_s = codes(tiny, signal(2 * SAMPLE_RATE, seed=0))
    assert len(two_s) == 25
    assert len(codes(tiny, signal(SAMPLE_RATE, seed=0))) == 13
    assert len(codes(tiny, signal(1, seed=0))) == 1
    assert codes(tiny, np.zeros(0, dtype=np.float32)) == []

    # 31 s spans two windows (30 s + 1 s), tokenized independently: 375 + 13 codes
    wav = signal(31 * SAMPLE_RATE, seed=1)
    long = codes(tiny, wav)
    assert len(long) == 375 + math.ceil(SAMPLE_RATE / 1280)
    assert long[:375] == codes(tiny, wav[: 30 * SAMPLE_RATE])
    assert long[375:] == codes(tiny, wav[30 * SAMPLE_RATE :])
    assert all(0 <= c < 32 for c in long)
    assert len(set(long)) > 1


def test_deterministic_and_batch_invariant(tiny: SpeechTokenizer) -> None:
    wavs = [signal(n, seed=i) for i, n in enumerate((32_000, 16_000, 12_345, 70_000))]
    single = [codes(tiny, w) for w in wavs]
    assert single == [codes(tiny, w) for w in wavs]
    assert tokenize_waveforms(tiny.model, tiny.feature_extractor, wavs, batch_size=3) == single
    assert codes(tiny, torch.from_numpy(wavs[0])) == single[0]


def test_block_causal_earlier_blocks_ignore_appended_audio(tiny: SpeechTokenizer) -> None:
    # Released: causal convolutions, attention full inside 4 s blocks and causal across
    # them, so the codes of a whole first block do not depend on what follows. The tail
    # is quieter so that the extractor's per-window log-mel ceiling (max - 8) is unchanged.
    prefix = signal(4 * SAMPLE_RATE, seed=5)
    tail = signal(3 * SAMPLE_RATE, seed=6, gain=0.1)
    alone = codes(tiny, prefix)
    assert len(alone) == 50 and len(set(alone)) > 1
    assert codes(tiny, np.concatenate([prefix, tail]))[:50] == alone


def test_causal_attention_option_is_causal_per_code(tmp_path: Path) -> None:
    tok = load_speech_tokenizer(save_tiny(tmp_path / "causal", encoder_causal_attention=True))
    prefix = signal(2 * SAMPLE_RATE, seed=7)
    tail = signal(SAMPLE_RATE, seed=8, gain=0.1)
    alone = codes(tok, prefix)
    assert codes(tok, np.concatenate([prefix, tail]))[:25] == alone


def test_attention_bias_block_causal_grid() -> None:
    valid = torch.tensor([[1, 1, 1, 1, 1, 0]])
    allowed = attention_bias(valid, causal=False, block_size=2, dtype=torch.float32) == 0
    expected = torch.tensor(
        [
            [1, 1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 0, 0],
            [1, 1, 1, 1, 1, 0],  # last key is padding
            [1, 1, 1, 1, 1, 0],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(allowed[0, 0], expected)
    causal = attention_bias(valid, causal=True, block_size=2, dtype=torch.float32) == 0
    assert torch.equal(causal[0, 0], torch.ones(6, 6, dtype=torch.bool).tril())


def brute_force_nearest(hidden: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    flat = hidden.reshape(-1, hidden.shape[-1]).double()
    out = []
    for x in flat:
        dists = [float(((x - c.double()) ** 2).sum()) for c in codebook]
        out.append(min(range(len(dists)), key=dists.__getitem__))  # first index on ties
    return torch.tensor(out).reshape(hidden.shape[:-1])


def test_codebook_lookup_is_l2_nearest_neighbour(tiny: SpeechTokenizer) -> None:
    gen = torch.Generator().manual_seed(0)
    codebook = torch.randn(32, 8, generator=gen)
    codebook[5] = codebook[3]  # a duplicate row: ties go to the first index
    hidden = torch.randn(2, 7, 8, generator=gen)
    hidden[0, 0] = codebook[3] + 1e-3
    hidden[1, 1] = 10 * codebook[9]  # far out along a row: L2, not cosine, decides
    expected = brute_force_nearest(hidden, codebook)
    assert torch.equal(nearest_code(hidden, codebook), expected)
    assert expected[0, 0] == 3

    extractor = tiny.feature_extractor
    features = extractor(
        [signal(32_000, seed=2)],
        sampling_rate=SAMPLE_RATE,
        return_attention_mask=True,
        return_tensors="pt",
    )
    out = tiny.model(features["input_features"], features["attention_mask"])
    assert out.token_ids.shape == out.token_mask.shape == (1, 375)
    assert int(out.token_mask.sum()) == 25
    assert torch.equal(
        out.token_ids, brute_force_nearest(out.hidden_states, tiny.model.codebook.weight)
    )


def test_load_audio_downmixes_and_resamples(tiny: SpeechTokenizer, tmp_path: Path) -> None:
    rate = 22_050
    left = signal(rate, seed=1)
    right = signal(rate, seed=2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), rate, subtype="FLOAT")
    wav = load_audio(path)
    assert wav.dtype == np.float32 and wav.shape == (SAMPLE_RATE,)
    expected = AF.resample(torch.from_numpy((left + right) / 2), rate, SAMPLE_RATE).numpy()
    np.testing.assert_allclose(wav, expected, atol=1e-6)
    assert tokenize_files(tiny, [path, path], batch_size=1) == [codes(tiny, wav)] * 2
