"""Codes of a live waveform block by block equal the codes of the whole recording."""

from __future__ import annotations

import numpy as np
import pytest
from serve_helpers import user_audio

from bayling_duplex.audio.units import UnitCodec, UnitCodecConfig
from bayling_duplex.serve.stream_codec import StreamEncoder


@pytest.fixture(scope="module")
def codec():
    return UnitCodec.fit([user_audio(20.0, 3)], UnitCodecConfig(num_codes=16, iters=3))


def test_unit_codec_streams_exactly(codec):
    wav = user_audio(9.6, 7)  # 12 blocks
    enc = StreamEncoder(codec, 10)
    assert enc.context == codec.samples_per_frame
    streamed = np.concatenate([enc.push_block(b) for b in wav.reshape(12, -1)])
    assert streamed.tolist() == list(codec.encode(wav))
    assert len(set(streamed.tolist())) > 3  # the audio is not all one unit


def test_a_windowed_codec_keeps_the_newest_block(codec):
    wav = user_audio(4.8, 8)
    enc = StreamEncoder(codec, 10, context_samples=3 * 12800)
    for k, block in enumerate(wav.reshape(6, -1)):
        got = enc.push_block(block)
        window = wav[max(0, (k - 2) * 12800) : (k + 1) * 12800]
        assert got.tolist() == list(codec.encode(window))[-10:]
    with pytest.raises(ValueError, match="12800 samples"):
        enc.push_block(wav[:100])
