"""The decoding-to-audio hook: its errors without GLM-4-Voice's decoder, and its interface.

GLM-4-Voice's decoder code is not installed here, so the interface is checked
against a stand-in ``flow_inference`` module with the same ``AudioDecoder`` API.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from bayling_duplex.audio import vocoder
from bayling_duplex.audio.vocoder import (
    DECODER_SAMPLE_RATE,
    VocoderUnavailable,
    check_decoder_dir,
    render_audio,
)
from bayling_duplex.cli.speech import main

STAND_IN = '''
import torch

CALLS = []


class AudioDecoder:
    """GLM-4-Voice's flow_inference.AudioDecoder, reduced to its interface."""

    def __init__(self, config_path, flow_ckpt_path, hift_ckpt_path, device="cuda"):
        CALLS.append(("init", config_path, flow_ckpt_path, hift_ckpt_path, device))

    def offline_inference(self, token):
        CALLS.append(("offline_inference", token.dtype, tuple(token.shape)))
        # 22050 / 12.5 = 1764 samples per code
        return torch.linspace(-1, 1, token.shape[1] * 1764, dtype=torch.float64)[None]
'''


@pytest.fixture(autouse=True)
def _fresh():
    """No decoder cached and no stand-in module left over, before and after each test."""
    vocoder._decoder.cache_clear()
    sys.modules.pop("flow_inference", None)
    yield
    vocoder._decoder.cache_clear()
    sys.modules.pop("flow_inference", None)


def decoder_dir(tmp_path: Path, files=("config.yaml", "flow.pt", "hift.pt")) -> Path:
    folder = tmp_path / "glm-4-voice-decoder"
    folder.mkdir(exist_ok=True)
    for name in files:
        (folder / name).write_bytes(b"")
    return folder


def test_missing_decoder_files_are_named(tmp_path: Path) -> None:
    folder = decoder_dir(tmp_path, files=("config.yaml",))
    with pytest.raises(VocoderUnavailable, match=r"missing flow\.pt, hift\.pt"):
        render_audio([1, 2, 3], folder)
    with pytest.raises(VocoderUnavailable, match="not a glm-4-voice-decoder folder"):
        check_decoder_dir(tmp_path / "nowhere")


def test_missing_decoder_code_says_how_to_install_it(tmp_path: Path) -> None:
    folder = decoder_dir(tmp_path)
    with pytest.raises(VocoderUnavailable, match="GLM-4-Voice") as err:
        render_audio([1, 2, 3], folder, device="cpu")
    assert "code_dir" in str(err.value) and "flow_inference" in str(err.value)
    empty = tmp_path / "empty-clone"
    empty.mkdir()
    with pytest.raises(VocoderUnavailable):
        render_audio([1, 2, 3], folder, device="cpu", code_dir=empty)


def test_codes_out_of_range_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="token ids"):
        render_audio([152353], decoder_dir(tmp_path))


def test_interface_with_a_stand_in_decoder(tmp_path: Path, monkeypatch) -> None:
    clone = tmp_path / "GLM-4-Voice"
    (clone / "third_party" / "Matcha-TTS").mkdir(parents=True)
    (clone / "flow_inference.py").write_text(STAND_IN)
    monkeypatch.setattr(sys, "path", list(sys.path))  # code_dir is prepended to sys.path
    folder = decoder_dir(tmp_path)
    wav = render_audio(np.array([5, 6, 7, 8]), folder, device="cpu", code_dir=clone)
    assert wav.dtype == np.float32 and wav.shape == (4 * 1764,)
    assert render_audio([9], folder, device="cpu", code_dir=clone).shape == (1764,)
    assert render_audio([], folder, device="cpu", code_dir=clone).shape == (0,)
    calls = sys.modules["flow_inference"].CALLS
    assert calls[0] == (
        "init",
        str(folder / "config.yaml"),
        str(folder / "flow.pt"),
        str(folder / "hift.pt"),
        "cpu",
    )
    assert calls[1][0] == "offline_inference" and calls[1][2] == (1, 4)
    assert str(calls[1][1]) == "torch.int32"
    assert sum(c[0] == "init" for c in calls) == 1  # loaded once, then reused
    assert str(clone / "third_party" / "Matcha-TTS") in sys.path

    # the command renders infer's output, one WAV per dialogue
    decoded = tmp_path / "decoded.jsonl"
    decoded.write_text(json.dumps({"id": "dlg-1", "assistant_codes": [1, 2, 3]}) + "\n")
    out = tmp_path / "wavs"
    args = ["render", "--decoded", str(decoded), "--decoder", str(folder), "--out-dir", str(out)]
    assert main([*args, "--code-dir", str(clone), "--device", "cpu"]) == 0
    audio, rate = sf.read(out / "dlg-1.wav")
    assert rate == DECODER_SAMPLE_RATE and audio.shape == (3 * 1764,)


def test_render_command_without_the_decoder_fails_clearly(tmp_path: Path, capsys) -> None:
    decoded = tmp_path / "decoded.jsonl"
    decoded.write_text(json.dumps({"id": "x", "assistant_codes": [1]}) + "\n")
    args = ["render", "--decoded", str(decoded), "--decoder", str(decoder_dir(tmp_path))]
    assert main([*args, "--out-dir", str(tmp_path / "o"), "--device", "cpu"]) == 2
    assert "GLM-4-Voice's decoder code is not importable" in capsys.readouterr().err
