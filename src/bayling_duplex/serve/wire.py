"""The live server's wire format, version 1 (docs/serving.md, "Wire format").

One WebSocket per session at ``/api/chat``. **Text frames** are JSON objects with a
``"type"``; **binary frames** are one kind byte followed by a payload:

=========  =========================================================================
kind       payload
=========  =========================================================================
``0x01``   client → server: user audio, 16-bit little-endian PCM, mono, at the
           ``sample_rate`` of the hello (16 kHz): 1 … ``max_frame_samples`` samples
``0x02``   server → client: assistant audio of one block: a uint32 LE block index,
           then ``block_samples`` 16-bit LE PCM samples covering session time
           ``[(k+1)·block_s, (k+2)·block_s)``
=========  =========================================================================

Client → server text: ``hello`` (first, once), ``end`` (no more audio). Server →
client text: ``ready``, ``block`` (one per decoded block, just before its audio),
``done``, ``error`` (then the server closes with :data:`CLOSE_CODES`). This module
is pure (numpy, no sockets): parsing raises :class:`WireError` naming what is wrong.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

import numpy as np

VERSION = 1
PATH = "/api/chat"
SAMPLE_RATE = 16_000
ENCODING = "pcm_s16le"

KIND_USER_AUDIO = 0x01
KIND_ASSISTANT_AUDIO = 0x02
_BLOCK_HEADER = struct.Struct("<BI")  # kind, block index

# error code -> WebSocket close code (4000-4999 are the application's own, RFC 6455 §7.4.2)
CLOSE_CODES = {
    "bad_message": 4400,  # not JSON, unknown type, audio before hello, odd bytes, too long …
    "bad_hello": 4400,
    "stalled": 4408,  # no audio for stall_timeout_s
    "bad_sample_rate": 4415,
    "bad_version": 4426,
    "too_slow": 4429,  # the client does not read what the server sends
    "server_full": 1013,  # "try again later"
    "shutdown": 1001,  # "going away"
    "internal_error": 1011,
}
CLOSE_NORMAL = 1000


class WireError(ValueError):
    """A message that breaks the wire format; ``code`` is a key of :data:`CLOSE_CODES`."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Hello:
    """The client's first message."""

    version: int
    sample_rate: int
    encoding: str = ENCODING
    channels: int = 1
    name: str = ""  # a label for the server's log


@dataclass(frozen=True)
class End:
    """The client has no more audio: decode what is whole, say ``done``, close."""


def _json(text: str) -> dict:
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise WireError("bad_message", f"a text frame must be a JSON object: {e}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise WireError("bad_message", 'a text frame must be a JSON object with a "type"')
    return obj


def parse_hello(text: str | None) -> Hello:
    """The first frame: ``{"type": "hello", "version": 1, "sample_rate": 16000, ...}``."""
    if text is None:
        raise WireError("bad_hello", "the first frame must be the JSON hello, got a binary frame")
    obj = _json(text)
    if obj["type"] != "hello":
        raise WireError("bad_hello", f'the first frame must be a "hello", got {obj["type"]!r}')
    version = obj.get("version")
    if version != VERSION:
        raise WireError(
            "bad_version", f"wire version {version!r} is not spoken here; use {VERSION}"
        )
    rate = obj.get("sample_rate")
    if not isinstance(rate, int) or isinstance(rate, bool) or rate != SAMPLE_RATE:
        raise WireError(
            "bad_sample_rate",
            f"sample_rate must be {SAMPLE_RATE} (16-bit mono PCM at 16 kHz), got {rate!r}: "
            "resample before sending",
        )
    encoding, channels = obj.get("encoding", ENCODING), obj.get("channels", 1)
    if encoding != ENCODING or channels != 1:
        raise WireError(
            "bad_sample_rate",
            f"audio must be {ENCODING} mono, got encoding {encoding!r} with {channels!r} channel(s)",
        )
    name = obj.get("name", "")
    return Hello(VERSION, rate, encoding, 1, str(name)[:64] if name is not None else "")


def parse_client(text: str | None, data: bytes | None, max_samples: int) -> np.ndarray | End:
    """A frame after the hello: user audio as float32 in ``[-1, 1)``, or :class:`End`."""
    if text is not None:
        obj = _json(text)
        if obj["type"] == "end":
            return End()
        if obj["type"] == "hello":
            raise WireError("bad_message", "hello was already received")
        raise WireError("bad_message", f"unknown message type {obj['type']!r} (expected 'end')")
    if not data:
        raise WireError("bad_message", "an empty binary frame")
    if data[0] != KIND_USER_AUDIO:
        raise WireError(
            "bad_message", f"binary frame kind 0x{data[0]:02x}: a client sends audio as 0x01"
        )
    payload = memoryview(data)[1:]
    if len(payload) % 2:
        raise WireError(
            "bad_message", f"audio payload of {len(payload)} bytes is not whole 16-bit samples"
        )
    n = len(payload) // 2
    if n == 0 or n > max_samples:
        raise WireError("bad_message", f"an audio frame holds 1 to {max_samples} samples, got {n}")
    return pcm_to_float(payload)


# --------------------------------------------------------------------------- encoding


def pcm_to_float(payload) -> np.ndarray:
    """16-bit LE PCM bytes → float32 samples in ``[-1, 1)``."""
    return np.frombuffer(payload, dtype="<i2").astype(np.float32) / np.float32(32768)


def float_to_pcm(samples: np.ndarray) -> bytes:
    """float samples → 16-bit LE PCM bytes (clipped to the 16-bit range)."""
    x = np.clip(np.round(np.asarray(samples, dtype=np.float64) * 32768), -32768, 32767)
    return x.astype("<i2").tobytes()


def user_audio(samples: np.ndarray) -> bytes:
    """A client's audio frame: kind 0x01 + PCM."""
    return bytes([KIND_USER_AUDIO]) + float_to_pcm(samples)


def assistant_audio(block: int, samples: np.ndarray) -> bytes:
    """The server's audio frame of ``block``: kind 0x02, uint32 LE block index, PCM."""
    return _BLOCK_HEADER.pack(KIND_ASSISTANT_AUDIO, block) + float_to_pcm(samples)


def parse_assistant_audio(data: bytes) -> tuple[int, np.ndarray]:
    """``(block, float32 samples)`` of a server audio frame (the client's side)."""
    if len(data) < _BLOCK_HEADER.size or data[0] != KIND_ASSISTANT_AUDIO:
        raise WireError("bad_message", "not an assistant audio frame (kind 0x02 + uint32 block)")
    _, block = _BLOCK_HEADER.unpack_from(data)
    payload = memoryview(data)[_BLOCK_HEADER.size :]
    if len(payload) % 2:
        raise WireError("bad_message", "assistant audio is not whole 16-bit samples")
    return block, pcm_to_float(payload)


def message(type_: str, **fields) -> str:
    """A server text frame."""
    return json.dumps({"type": type_, **fields}, separators=(",", ":"), ensure_ascii=False)


def error(code: str, text: str) -> str:
    if code not in CLOSE_CODES:
        raise KeyError(f"unknown error code {code!r}")
    return message("error", code=code, message=text)
