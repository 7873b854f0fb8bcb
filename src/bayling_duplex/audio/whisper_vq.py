"""GLM-4-Voice's 12.5 Hz speech tokenizer: waveform → discrete speech codes.

The released ``glm-4-voice-tokenizer`` is the first half of a Whisper-large
encoder with a vector quantiser inside it (class ``WhisperVQEncoder``): 16 kHz
audio → 128 log-mel bins at 100 Hz → two convolutions (the second strides by 2,
50 Hz) → ``pooling_position`` transformer layers → average pooling by 4
(12.5 Hz, one code per 80 ms) → nearest codebook row by squared L2 distance (no
normalisation, not cosine). Its released ``config.json`` sets

* ``quantize_encoder_only=True``, ``quantize_position=16``, ``pooling_position=16``:
  only layers 0–15 exist; pooling and quantisation both follow layer 16;
* ``pooling_kernel_size=4``, ``pooling_type="avg"``, ``quantize_vocab_size=16384``;
* ``encoder_causal_convolution=True`` (left padding only) and
  ``encoder_causal_attention=False``, ``quantize_causal_encoder=False``, with
  ``quantize_causal_block_size=200``: attention is *block*-causal, bidirectional
  inside each 4 s block (200 frames at 50 Hz) and causal across blocks;
* ``quantize_ema_decay=0.99``: the checkpoint carries the training-only EMA
  buffers ``ema_count`` and ``ema_weight``, so the module registers them too.

This module keeps the released state-dict key names, so the checkpoint loads with
``load_state_dict(strict=True)``; the layers are transformers'
``WhisperEncoderLayer``. Only the inference path to code ids is implemented.
Long audio is cut into 30 s windows that are tokenized independently, as
GLM-4-Voice's ``extract_speech_token`` does. This is the only module of the
package that talks to a speech tokenizer.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn
from transformers import WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoderLayer

SAMPLE_RATE = 16_000
# The released tokenizer cuts audio into 30 s windows (Whisper's receptive field:
# 1500 positions at 50 Hz) and tokenizes each one on its own.
WINDOW_SAMPLES = 30 * SAMPLE_RATE
POOLING_TYPES = ("max", "avg")


@dataclass(frozen=True)
class WhisperVQConfig:
    """The keys of a ``WhisperVQConfig`` ``config.json`` that the code ids depend on.

    Defaults are those of the reference ``WhisperVQConfig`` / ``WhisperConfig``, so a
    file that omits a key means what it meant there. Decoder, generation and
    training-only keys (``quantize_commit_coefficient``, ``quantize_loss_scale``,
    ``quantize_restart_interval``, ``scale_embedding``, which the reference encoder
    never applies) are ignored on reading.
    """

    num_mel_bins: int = 80
    d_model: int = 384
    encoder_layers: int = 4
    encoder_attention_heads: int = 6
    encoder_ffn_dim: int = 1536
    # positions at 50 Hz, so 1500 ⇒ 30 s windows at most
    max_source_positions: int = 1500
    activation_function: str = "gelu"
    # frames averaged (or maxed) into one code after layer ``pooling_position`` (1-based; 0 = never)
    pooling_kernel_size: int | None = None
    pooling_type: str = "max"
    pooling_position: int = 0
    # codebook size; quantisation follows layer ``quantize_position`` (1-based)
    quantize_vocab_size: int | None = None
    quantize_position: int = 16
    # True: the checkpoint holds only the layers before the quantiser and no final layer norm
    quantize_encoder_only: bool = False
    # causal self-attention in the layers before the quantiser
    quantize_causal_encoder: bool = False
    # block-causal attention: full inside blocks of this many 50 Hz frames, causal across
    quantize_causal_block_size: int | None = None
    # not None: the checkpoint carries the EMA buffers ema_count and ema_weight
    quantize_ema_decay: float | None = None
    # causal self-attention in every layer
    encoder_causal_attention: bool = False
    # left-only padding in conv1 and conv2
    encoder_causal_convolution: bool = False
    # decoder-side (language token) option; read so a config round-trips, no effect here
    skip_language_detection: bool = False

    def __post_init__(self) -> None:
        if self.quantize_vocab_size is None or self.quantize_vocab_size < 1:
            raise ValueError("quantize_vocab_size must be set: this config has no quantiser")
        if self.d_model % self.encoder_attention_heads:
            raise ValueError(
                f"d_model {self.d_model} is not divisible by {self.encoder_attention_heads} heads"
            )
        if self.pooling_type not in POOLING_TYPES:
            raise ValueError(
                f"pooling_type must be one of {POOLING_TYPES}, got {self.pooling_type!r}"
            )
        if self.pooling_kernel_size is not None and self.pooling_kernel_size < 1:
            raise ValueError(
                f"pooling_kernel_size must be positive, got {self.pooling_kernel_size}"
            )
        if not 1 <= self.quantize_position <= self.encoder_layers:
            raise ValueError(
                f"quantize_position must be in [1, encoder_layers={self.encoder_layers}], "
                f"got {self.quantize_position}"
            )
        if not 0 <= self.pooling_position <= self.quantize_position:
            raise ValueError(
                f"pooling_position must be in [0, quantize_position={self.quantize_position}], "
                f"got {self.pooling_position}"
            )

    @property
    def causal_attention(self) -> bool:
        """Whether the layers before the quantiser use plain causal attention."""
        return self.encoder_causal_attention or self.quantize_causal_encoder

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WhisperVQConfig:
        """Read the known keys of a ``config.json`` dict; every other key is ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def from_pretrained(cls, path: str | PathLike[str]) -> WhisperVQConfig:
        """Read ``<path>/config.json``."""
        return cls.from_dict(json.loads((Path(path) / "config.json").read_text()))

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` dict, tagged as the released files are."""
        return {"architectures": ["WhisperVQEncoder"], "model_type": "whisper", **asdict(self)}

    def layer_config(self) -> WhisperConfig:
        """The transformers ``WhisperConfig`` that ``WhisperEncoderLayer`` is built from."""
        config = WhisperConfig(
            num_mel_bins=self.num_mel_bins,
            d_model=self.d_model,
            encoder_layers=self.encoder_layers,
            encoder_attention_heads=self.encoder_attention_heads,
            encoder_ffn_dim=self.encoder_ffn_dim,
            max_source_positions=self.max_source_positions,
            activation_function=self.activation_function,
        )
        config._attn_implementation = "sdpa"
        return config


class CausalConv1d(nn.Conv1d):
    """A ``Conv1d`` padded on the left only, so output frame t sees input frames ≤ t.

    Same parameters (and state-dict keys) as ``nn.Conv1d``; ``(B, C_in, T)`` →
    ``(B, C_out, ceil(T / stride))`` for kernel 3.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.left_padding = self.dilation[0] * (kernel_size - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, (self.left_padding, 0)))


def attention_bias(
    valid: torch.Tensor, causal: bool, block_size: int | None, dtype: torch.dtype
) -> torch.Tensor:
    """Additive self-attention mask of the released encoder, 0 = attend, dtype minimum = blocked.

    ``valid`` is ``(B, S)`` (True for real frames). With ``causal`` the mask is plain
    causal and ignores padding (the reference hands SDPA ``is_causal`` and no mask;
    padding only ever follows real frames). Otherwise keys must be valid, and with
    ``block_size`` a query also only sees keys that are earlier or in its own block.
    Returns ``(B, 1, S, S)``, or ``(B, 1, 1, S)`` for the key-padding-only case.
    """
    batch, length = valid.shape
    pos = torch.arange(length, device=valid.device)
    if causal:
        allowed = (pos[None, :] <= pos[:, None]).expand(batch, 1, length, length)
    elif block_size is not None:
        same_block = pos[None, :] // block_size == pos[:, None] // block_size
        allowed = (pos[None, :] <= pos[:, None]) | same_block
        allowed = (allowed[None] & valid[:, None, :].bool()).unsqueeze(1)
    else:
        allowed = valid.bool()[:, None, None, :]
    bias = torch.zeros(allowed.shape, dtype=dtype, device=valid.device)
    return bias.masked_fill(~allowed, torch.finfo(dtype).min)


def nearest_code(hidden: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index of the nearest codebook row by squared Euclidean distance, first index on ties.

    ``hidden`` is ``(..., D)``, ``codebook`` ``(V, D)``; returns ``(...)`` int64. The
    distance is expanded as ``|c|² + |x|² − 2 x·c`` like the reference, but always in
    float32 (the reference uses the model dtype, which is float32 as released).
    """
    flat = hidden.reshape(-1, hidden.shape[-1]).float()
    codes = codebook.float()
    dist = torch.addmm(
        codes.square().sum(dim=1) + flat.square().sum(dim=1, keepdim=True),
        flat,
        codes.t(),
        beta=1.0,
        alpha=-2.0,
    )
    return dist.argmin(dim=1).reshape(hidden.shape[:-1])


@dataclass(frozen=True)
class VQEncoderOutput:
    """Codes of a batch of feature windows, at 12.5 Hz for the released config."""

    token_ids: torch.Tensor  # (B, N) int64 in [0, quantize_vocab_size)
    token_mask: torch.Tensor  # (B, N) bool, False for codes of padding
    hidden_states: torch.Tensor  # (B, N, D) the quantiser's input


class WhisperVQEncoder(nn.Module):
    """The Whisper encoder of GLM-4-Voice's tokenizer, up to its vector quantiser.

    Submodule names follow the released ``WhisperVQEncoder`` so its checkpoint loads
    strictly. ``embed_positions2``, ``layer_norm`` and the EMA buffers only exist to
    match the checkpoint: they act after the quantiser or only in training.
    """

    def __init__(self, config: WhisperVQConfig):
        super().__init__()
        self.config = config
        d_model = config.d_model
        if config.encoder_causal_convolution:
            self.conv1: nn.Conv1d = CausalConv1d(config.num_mel_bins, d_model, kernel_size=3)
            self.conv2: nn.Conv1d = CausalConv1d(d_model, d_model, kernel_size=3, stride=2)
        else:
            self.conv1 = nn.Conv1d(config.num_mel_bins, d_model, kernel_size=3, padding=1)
            self.conv2 = nn.Conv1d(d_model, d_model, kernel_size=3, stride=2, padding=1)
        self.embed_positions = nn.Embedding(config.max_source_positions, d_model)
        n_layers = (
            config.quantize_position if config.quantize_encoder_only else config.encoder_layers
        )
        layer_config = config.layer_config()
        self.layers = nn.ModuleList(WhisperEncoderLayer(layer_config) for _ in range(n_layers))
        if not config.quantize_encoder_only:
            self.layer_norm = nn.LayerNorm(d_model)
        vocab = config.quantize_vocab_size
        assert vocab is not None  # checked by the config
        self.codebook = nn.Embedding(vocab, d_model)
        pooled_positions = math.ceil(
            config.max_source_positions / (config.pooling_kernel_size or 1)
        )
        self.embed_positions2 = nn.Embedding(pooled_positions, d_model)
        if config.quantize_ema_decay is not None:
            self.register_buffer("ema_count", torch.ones(vocab))
            self.register_buffer("ema_weight", torch.zeros(vocab, d_model))

    @property
    def conv_stride(self) -> int:
        """Mel frames per encoder position (2: 100 Hz → 50 Hz)."""
        return self.conv1.stride[0] * self.conv2.stride[0]

    @property
    def frames_per_code(self) -> int:
        """Mel frames per code (8 as released: 80 ms at a 10 ms hop)."""
        kernel = self.config.pooling_kernel_size
        pooled = kernel is not None and self.config.pooling_position > 0
        return self.conv_stride * (kernel if pooled and kernel is not None else 1)

    def forward(
        self, input_features: torch.Tensor, attention_mask: torch.Tensor
    ) -> VQEncoderOutput:
        """Code ids of log-mel windows.

        ``input_features`` is ``(B, num_mel_bins, T)`` log-mel at 100 Hz and
        ``attention_mask`` ``(B, T)`` (1 for real frames), both from
        ``WhisperFeatureExtractor(..., return_attention_mask=True)``. With
        ``T`` a multiple of :attr:`frames_per_code` the output has ``T / frames_per_code``
        codes per row, and the mask is downsampled as the reference does: every
        ``conv_stride``-th frame, then every ``pooling_kernel_size``-th position.
        """
        config = self.config
        hidden = F.gelu(self.conv1(input_features))
        hidden = F.gelu(self.conv2(hidden)).transpose(1, 2)
        valid = attention_mask[:, :: self.conv_stride].bool()
        length = hidden.shape[1]
        if length > config.max_source_positions or valid.shape[1] != length:
            raise ValueError(
                f"{input_features.shape[-1]} mel frames give {length} positions "
                f"(mask {valid.shape[1]}, at most {config.max_source_positions})"
            )
        hidden = hidden + self.embed_positions.weight[:length]

        block = config.quantize_causal_block_size
        bias = attention_bias(valid, config.causal_attention, block, hidden.dtype)
        for index, layer in enumerate(self.layers[: config.quantize_position], start=1):
            hidden = layer(hidden, bias)
            if index == config.pooling_position and config.pooling_kernel_size is not None:
                kernel = config.pooling_kernel_size
                # Zero-pad to a whole number of kernels (the zeros enter the average, as released).
                hidden = F.pad(hidden.transpose(1, 2), (0, -length % kernel))
                pool = F.avg_pool1d if config.pooling_type == "avg" else F.max_pool1d
                hidden = pool(hidden, kernel).transpose(1, 2)
                valid = valid[:, ::kernel]
                length = hidden.shape[1]
                block = None if block is None else block // kernel
                bias = attention_bias(valid, config.causal_attention, block, hidden.dtype)
        token_ids = nearest_code(hidden, self.codebook.weight)
        return VQEncoderOutput(token_ids=token_ids, token_mask=valid, hidden_states=hidden)

    def save_pretrained(self, path: str | PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` in the released layout."""
        from safetensors.torch import save_file

        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(self.config.to_dict(), indent=2) + "\n")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})


def read_state_dict(path: str | PathLike[str]) -> dict[str, torch.Tensor]:
    """All tensors of ``model*.safetensors`` (sharded or not), else ``pytorch_model*.bin``."""
    folder = Path(path)
    state: dict[str, torch.Tensor] = {}
    if shards := sorted(folder.glob("model*.safetensors")):
        from safetensors.torch import load_file

        for shard in shards:
            state.update(load_file(str(shard), device="cpu"))
    elif shards := sorted(folder.glob("pytorch_model*.bin")):
        for shard in shards:
            state.update(torch.load(shard, map_location="cpu", weights_only=True))
    else:
        raise FileNotFoundError(f"no model*.safetensors or pytorch_model*.bin in {folder}")
    return state


@dataclass(frozen=True)
class SpeechTokenizer:
    """A loaded tokenizer: the encoder and the feature extractor saved with it."""

    model: WhisperVQEncoder
    feature_extractor: WhisperFeatureExtractor


def load_speech_tokenizer(
    path: str | PathLike[str],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> SpeechTokenizer:
    """Load a ``glm-4-voice-tokenizer`` folder (config.json, weights, preprocessor_config.json).

    Weights load strictly by the released key names. float32 is the released
    precision; lower precisions may flip codes near a tie.
    """
    config = WhisperVQConfig.from_pretrained(path)
    with torch.device("meta"):
        model = WhisperVQEncoder(config)
    model.load_state_dict(read_state_dict(path), strict=True, assign=True)
    model = model.to(device=device, dtype=dtype).eval().requires_grad_(False)
    extractor = WhisperFeatureExtractor.from_pretrained(str(path))
    if extractor.feature_size != config.num_mel_bins or extractor.sampling_rate != SAMPLE_RATE:
        raise ValueError(
            f"feature extractor gives {extractor.feature_size} bins at {extractor.sampling_rate} Hz, "
            f"the encoder wants {config.num_mel_bins} at {SAMPLE_RATE} Hz"
        )
    return SpeechTokenizer(model=model, feature_extractor=extractor)


def load_audio(
    path: str | PathLike[str], target_sr: int = SAMPLE_RATE, channel: int | None = None
) -> np.ndarray:
    """Read an audio file as mono float32 ``(samples,)`` at ``target_sr`` Hz.

    Channels are averaged (as BayLing-Duplex's ``tokenize_audio`` does; GLM-4-Voice's
    script keeps the first channel), or only ``channel`` is kept (0-based: one side of
    a two-channel recording), and resampled with torchaudio's default sinc
    resampler, the one GLM-4-Voice uses.
    """
    data, sample_rate = sf.read(str(path), dtype="float32", always_2d=True)
    if channel is not None and not 0 <= channel < data.shape[1]:
        raise ValueError(f"{path} has {data.shape[1]} channel(s), channel {channel} asked for")
    mono = data.mean(axis=1) if channel is None else np.ascontiguousarray(data[:, channel])
    wav = torch.from_numpy(mono)
    if sample_rate != target_sr:
        wav = AF.resample(wav, orig_freq=sample_rate, new_freq=target_sr)
    return wav.numpy().astype(np.float32, copy=False)


def _as_mono(wav: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(wav, torch.Tensor):
        wav = wav.detach().cpu().numpy()
    wav = np.asarray(wav, dtype=np.float32)
    if wav.ndim != 1:
        raise ValueError(f"expected a mono waveform of shape (samples,), got {wav.shape}")
    return wav


@torch.inference_mode()
def tokenize_waveforms(
    model: WhisperVQEncoder,
    feature_extractor: WhisperFeatureExtractor,
    wavs_16k: Sequence[np.ndarray | torch.Tensor],
    batch_size: int = 128,
) -> list[list[int]]:
    """Codes of many 16 kHz mono waveforms, one list per waveform, 12.5 per second as released.

    As GLM-4-Voice's ``extract_speech_token``: each waveform is cut into 30 s
    windows; windows of all waveforms are batched ``batch_size`` at a time, padded to
    the longest and to a whole code (1280 samples); the features' frame mask,
    downsampled by the conv strides and the pooling kernel, drops codes of padding.
    A window of ``L`` samples gives ``ceil(L / 1280)`` codes. Causal convolutions
    keep each window's codes independent of the batch padding.
    """
    segments: list[np.ndarray] = []
    owners: list[int] = []
    for owner, wav in enumerate(wavs_16k):
        audio = _as_mono(wav)
        for start in range(0, len(audio), WINDOW_SAMPLES):
            segments.append(audio[start : start + WINDOW_SAMPLES])
            owners.append(owner)
    param = model.codebook.weight
    pad_samples = model.frames_per_code * feature_extractor.hop_length
    tokens: list[list[int]] = [[] for _ in wavs_16k]
    for start in range(0, len(segments), batch_size):
        features = feature_extractor(
            segments[start : start + batch_size],
            sampling_rate=SAMPLE_RATE,
            return_attention_mask=True,
            return_tensors="pt",
            padding="longest",
            pad_to_multiple_of=pad_samples,
            device=param.device.type,
        )
        out = model(
            features["input_features"].to(device=param.device, dtype=param.dtype),
            features["attention_mask"].to(param.device),
        )
        for row, owner in enumerate(owners[start : start + batch_size]):
            tokens[owner].extend(out.token_ids[row][out.token_mask[row]].tolist())
    return tokens


def tokenize_waveform(
    model: WhisperVQEncoder,
    feature_extractor: WhisperFeatureExtractor,
    wav_16k: np.ndarray | torch.Tensor,
) -> list[int]:
    """Codes of one 16 kHz mono waveform ``(samples,)``; see :func:`tokenize_waveforms`."""
    return tokenize_waveforms(model, feature_extractor, [wav_16k])[0]


def tokenize_files(
    tokenizer: SpeechTokenizer,
    paths: Sequence[str | PathLike[str]],
    batch_size: int = 128,
) -> list[list[int]]:
    """Codes of many audio files (any rate, any channels), batched across files."""
    wavs = [load_audio(p) for p in paths]
    return tokenize_waveforms(tokenizer.model, tokenizer.feature_extractor, wavs, batch_size)
