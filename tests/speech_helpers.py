"""Tiny stand-ins for the speech path: a random GLM-4-Voice-shaped tokenizer and short WAV files."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from transformers import WhisperFeatureExtractor

from bayling_duplex.audio.whisper_vq import WhisperVQConfig, WhisperVQEncoder

SR = 16_000
# The released structure (causal convolutions, 4 s block-causal attention, average
# pooling by 4, EMA buffers) at toy width: 64 wide, 2 layers, 32 codes.
TINY_TOKENIZER = {
    "num_mel_bins": 128,
    "d_model": 64,
    "encoder_layers": 4,
    "encoder_attention_heads": 4,
    "encoder_ffn_dim": 128,
    "max_source_positions": 1500,
    "pooling_kernel_size": 4,
    "pooling_type": "avg",
    "pooling_position": 2,
    "quantize_vocab_size": 32,
    "quantize_position": 2,
    "quantize_encoder_only": True,
    "quantize_causal_block_size": 200,
    "quantize_ema_decay": 0.99,
    "encoder_causal_convolution": True,
}


def save_tiny_tokenizer(folder: Path, zero_positions: bool = False) -> Path:
    """A random tokenizer in the released file layout; ``zero_positions`` makes silence periodic."""
    torch.manual_seed(0)
    model = WhisperVQEncoder(WhisperVQConfig.from_dict(TINY_TOKENIZER))
    if zero_positions:
        with torch.no_grad():
            model.embed_positions.weight.zero_()
    model.save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=128).save_pretrained(str(folder))
    return folder


def voice(seconds: float, seed: int, sr: int = SR) -> np.ndarray:
    """A gated tone plus noise: speech-like enough to give varied codes."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * sr)) / sr
    tone = 0.3 * np.sin(2 * np.pi * (150 + 37 * seed) * t) * (np.sin(2 * np.pi * 3 * t) > -0.3)
    return (tone + 0.03 * rng.standard_normal(t.size)).astype(np.float32)


def write_wav(path: Path, wav: np.ndarray, sr: int = SR) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wav, sr, subtype="FLOAT")
    return path


@contextmanager
def one_torch_thread():
    """Torch on one thread: the tiny tokenizer is 30x faster so on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
