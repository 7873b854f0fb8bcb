"""The wire format: every message type, and each malformed frame refused with its code."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bayling_duplex.serve import wire


def hello(**fields) -> str:
    return json.dumps({"type": "hello", "version": 1, "sample_rate": 16000, **fields})


def test_hello_is_parsed_and_checked():
    h = wire.parse_hello(hello(name="me"))
    assert (h.version, h.sample_rate, h.encoding, h.channels, h.name) == (
        1,
        16000,
        "pcm_s16le",
        1,
        "me",
    )


@pytest.mark.parametrize(
    ("text", "code", "match"),
    [
        (None, "bad_hello", "binary"),
        ("not json", "bad_message", "JSON object"),
        ("[1, 2]", "bad_message", "JSON object"),
        ('{"type": "end"}', "bad_hello", 'must be a "hello"'),
        (hello(version=2), "bad_version", "version 2"),
        (hello(sample_rate=48000), "bad_sample_rate", "must be 16000"),
        (hello(sample_rate="16000"), "bad_sample_rate", "must be 16000"),
        (hello(channels=2), "bad_sample_rate", "mono"),
        (hello(encoding="opus"), "bad_sample_rate", "pcm_s16le"),
    ],
)
def test_bad_hellos_are_refused_with_their_code(text, code, match):
    with pytest.raises(wire.WireError, match=match) as e:
        wire.parse_hello(text)
    assert e.value.code == code and e.value.code in wire.CLOSE_CODES


def test_audio_round_trips_through_pcm():
    x = np.sin(np.linspace(0, 20, 1280)).astype(np.float32) * 0.5
    got = wire.parse_client(None, wire.user_audio(x), 16000)
    assert got.dtype == np.float32 and np.abs(got - x).max() < 1 / 32768 + 1e-7
    loud = wire.parse_client(None, wire.user_audio(np.array([2.0, -2.0])), 10)
    assert loud.tolist() == [32767 / 32768, -1.0]  # clipped, not wrapped
    block, y = wire.parse_assistant_audio(wire.assistant_audio(7, x))
    assert block == 7 and np.abs(y - x).max() < 1 / 32768 + 1e-7
    assert isinstance(wire.parse_client('{"type": "end"}', None, 10), wire.End)


@pytest.mark.parametrize(
    ("text", "data", "match"),
    [
        (None, b"", "empty"),
        (None, b"\x02\x00\x00", "kind 0x02"),
        (None, b"\x01\x00\x00\x00", "not whole 16-bit"),
        (None, b"\x01", "1 to 4 samples"),
        (None, b"\x01" + b"\x00" * 10, "1 to 4 samples, got 5"),
        ('{"type": "talk"}', None, "unknown message type"),
        (hello(), None, "already"),
        ("{]", None, "JSON"),
    ],
)
def test_malformed_frames_are_refused(text, data, match):
    with pytest.raises(wire.WireError, match=match) as e:
        wire.parse_client(text, data, 4)
    assert e.value.code == "bad_message" and wire.CLOSE_CODES["bad_message"] == 4400


def test_server_messages_and_close_codes():
    assert json.loads(wire.message("done", blocks=3, reason="end_of_input")) == {
        "type": "done",
        "blocks": 3,
        "reason": "end_of_input",
    }
    assert json.loads(wire.error("server_full", "full")) == {
        "type": "error",
        "code": "server_full",
        "message": "full",
    }
    assert wire.CLOSE_CODES["server_full"] == 1013 and wire.CLOSE_CODES["shutdown"] == 1001
    assert all(
        c == 1011 or c in (1001, 1013) or 4000 <= c < 5000 for c in wire.CLOSE_CODES.values()
    )
    with pytest.raises(KeyError):
        wire.error("nope", "x")
    with pytest.raises(wire.WireError, match="not an assistant audio frame"):
        wire.parse_assistant_audio(b"\x01\x00")
