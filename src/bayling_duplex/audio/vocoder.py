"""Speech codes → waveform with GLM-4-Voice's decoder (flow matching + HiFT), when it is installed.

The released ``glm-4-voice-decoder`` folder holds three files:

* ``config.yaml`` — a HyperPyYAML file that builds CosyVoice's flow-matching
  model (``flow``: codes → 80-bin mel at 22.05 kHz / hop 256) and the HiFT
  vocoder (``hift``: mel → waveform);
* ``flow.pt`` and ``hift.pt`` — their state dicts.

Building them needs code that is not a pip package and is not part of this
project: GLM-4-Voice's source tree (its ``flow_inference.AudioDecoder``, its
``cosyvoice`` package and ``third_party/Matcha-TTS``) plus ``hyperpyyaml``,
``conformer`` … from its ``requirements.txt``. Clone it and either put it on
``PYTHONPATH`` (the root and ``third_party/Matcha-TTS``) or pass ``code_dir``::

    git clone https://github.com/THUDM/GLM-4-Voice && pip install -r GLM-4-Voice/requirements.txt

    from bayling_duplex.audio.vocoder import DECODER_SAMPLE_RATE, render_audio
    wav = render_audio(result["assistant_codes"], "checkpoints/glm-4-voice-decoder",
                       code_dir="GLM-4-Voice")
    soundfile.write("answer.wav", wav, DECODER_SAMPLE_RATE)

Without them :func:`render_audio` raises :class:`VocoderUnavailable` saying what
is missing. Training and evaluation never need the decoder.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import lru_cache
from os import PathLike
from pathlib import Path

import numpy as np

DECODER_SAMPLE_RATE = 22_050  # the HiFT vocoder's output rate
DECODER_FILES = ("config.yaml", "flow.pt", "hift.pt")
_INSTALL = (
    "clone https://github.com/THUDM/GLM-4-Voice, install its requirements.txt, and pass "
    "code_dir=<the clone> (or put the clone and its third_party/Matcha-TTS on PYTHONPATH); "
    "see docs/real-backbone.md"
)


class VocoderUnavailable(RuntimeError):
    """The decoder's files or its code are missing; the message says which and how to get them."""


def check_decoder_dir(decoder_dir: str | PathLike[str]) -> Path:
    """``decoder_dir`` as a Path, after checking it holds ``config.yaml``, ``flow.pt`` and ``hift.pt``."""
    folder = Path(decoder_dir).expanduser()
    missing = [name for name in DECODER_FILES if not (folder / name).is_file()]
    if missing:
        raise VocoderUnavailable(
            f"{folder} is not a glm-4-voice-decoder folder: missing {', '.join(missing)} "
            "(download THUDM/glm-4-voice-decoder)"
        )
    return folder


def _import_audio_decoder(code_dir: str | PathLike[str] | None):
    if code_dir is not None:
        root = Path(code_dir).expanduser().resolve()
        for path in (root / "third_party" / "Matcha-TTS", root):
            if path.is_dir() and str(path) not in sys.path:
                sys.path.insert(0, str(path))
    try:
        from flow_inference import AudioDecoder  # GLM-4-Voice's own module
    except ImportError as e:
        raise VocoderUnavailable(
            f"GLM-4-Voice's decoder code is not importable ({e}); {_INSTALL}"
        ) from e
    return AudioDecoder


@lru_cache(maxsize=2)
def _decoder(folder: str, device: str, code_dir: str | None):
    audio_decoder = _import_audio_decoder(code_dir)
    f = Path(folder)
    return audio_decoder(
        config_path=str(f / "config.yaml"),
        flow_ckpt_path=str(f / "flow.pt"),
        hift_ckpt_path=str(f / "hift.pt"),
        device=device,
    )


def render_audio(
    codes: Sequence[int] | np.ndarray,
    decoder_dir: str | PathLike[str],
    *,
    device: str | None = None,
    code_dir: str | PathLike[str] | None = None,
) -> np.ndarray:
    """Render 12.5 Hz speech codes (ids ``0 … 16383``, not token ids) to a waveform.

    ``codes`` is one channel, e.g. the ``assistant_codes`` of a decoded dialogue
    (silent frames included: they render as near-silence, so the result stays
    aligned with the dialogue's timeline). Returns float32 ``(samples,)`` at
    :data:`DECODER_SAMPLE_RATE` Hz, about ``len(codes) × 0.08 s`` long. The
    decoder is loaded once per ``(decoder_dir, device)`` and kept; ``device``
    defaults to CUDA when present. Raises :class:`VocoderUnavailable` when the
    files or GLM-4-Voice's code are missing.
    """
    folder = check_decoder_dir(decoder_dir)
    ids = np.asarray(codes, dtype=np.int64).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= 16384):
        raise ValueError(
            f"speech codes must lie in [0, 16384), got [{ids.min()}, {ids.max()}] "
            "(token ids? subtract the id of <|audio_0|>)"
        )
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    decoder = _decoder(str(folder.resolve()), device, None if code_dir is None else str(code_dir))
    if ids.size == 0:
        return np.zeros(0, dtype=np.float32)
    with torch.inference_mode():
        speech = decoder.offline_inference(torch.from_numpy(ids).to(torch.int32)[None])
    return speech.reshape(-1).float().cpu().numpy()
