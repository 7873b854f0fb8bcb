"""``python -m bayling_duplex.serve``'s typed config (torch-free; configs/serve.yaml).

Every limit that protects the other sessions is here: how many sessions, how much
audio a client may send ahead of the decoder before the server stops reading its
socket, how many decoded blocks may wait for a client that does not read, and how
long a silent client is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bayling_duplex.decode.config import DecodeConfig
from bayling_duplex.format.spec import FormatConfig
from bayling_duplex.format.vocab import VocabConfig

AUDIO_MODES = ("auto", "tts", "vocoder", "none")


@dataclass
class VocoderConfig:
    """GLM-4-Voice's speech decoder for ``audio=vocoder`` (audio/vocoder.py)."""

    decoder_dir: str | None = None  # a glm-4-voice-decoder folder (config.yaml, flow.pt, hift.pt)
    code_dir: str | None = None  # a clone of GLM-4-Voice (its flow_inference, cosyvoice)
    device: str | None = None  # default: CUDA when present
    context_blocks: int = 2  # blocks of codes rendered before each block, for continuity


@dataclass
class ServeConfig:
    # a checkpoint folder; "latest": the newest finished runs/<stage>/*/final
    checkpoint: str = "latest"
    stage: str = "sft"
    host: str = "127.0.0.1"
    port: int = 8765
    # sessions decoded at once; the next client is refused with "server_full" (close 1013)
    max_sessions: int = 16
    # the user's speech codec: "checkpoint" (the fitted codec the checkpoint carries in
    # final/codec/) or a glm-4-voice-tokenizer folder (a converted GLM-4-Voice checkpoint)
    codec: str = "checkpoint"
    # seconds of audio re-encoded each block by a codec without an exact streaming form
    stream_context_s: float = 4.0
    # what the client hears: tts (the decoded text re-synthesized at its onsets), vocoder
    # (the assistant's codes through GLM-4-Voice's decoder), none; auto: tts for a
    # checkpoint with a fitted codec when eSpeak NG is installed, vocoder when
    # vocoder.decoder_dir is set, else none
    audio: str = "auto"
    voice_recipe: str = "speech_demo"  # the recipe whose assistant voice speaks (tts)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    # batching (docs/serving.md, "Batching"): put up to one block of silence before a new
    # session's first sample so that its blocks end on the server's 0.8 s grid, together
    # with the other sessions' (times on the wire stay the user's: see lead_samples) …
    align_blocks: bool = True
    # … and once a session is due, wait up to this long for the sessions that are about
    # to complete a block, so that they share the step (0: never wait)
    batch_window_s: float = 0.1
    # a session that sends nothing for this long is closed ("stalled", close 4408)
    stall_timeout_s: float = 10.0
    hello_timeout_s: float = 10.0
    # user audio held ahead of the decoder; past it the server stops reading the
    # socket until the decoder catches up (TCP backpressure, no unbounded queue)
    max_buffer_s: float = 4.0
    # decoded blocks waiting for a client that does not read; past it: "too_slow", closed
    send_queue_blocks: int = 64
    max_frame_samples: int = 16_000  # longest audio message (1 s)
    # longest session; null: as long as the model's positions allow (max_position_embeddings)
    max_session_s: float | None = None
    dtype: str = "fp32"  # fp32, bf16, fp16
    device: str = "auto"  # auto: CUDA when present
    threads: int = 1  # torch threads of the decoding worker (the event loop needs a core)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    vocab: VocabConfig = field(default_factory=VocabConfig)
    # the format of a checkpoint without duplex.json (one with it is read from the file)
    format: FormatConfig = field(default_factory=FormatConfig)
    log_every_s: float = 10.0  # a status line this often while sessions are open (0: never)

    def __post_init__(self) -> None:
        if self.audio not in AUDIO_MODES:
            raise ValueError(f"audio must be one of {AUDIO_MODES}, got {self.audio!r}")
        for name in ("max_sessions", "send_queue_blocks", "max_frame_samples", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.batch_window_s < 0.8:
            raise ValueError(f"batch_window_s must be in [0, 0.8), got {self.batch_window_s}")
        for name in ("stall_timeout_s", "hello_timeout_s", "max_buffer_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.max_session_s is not None and self.max_session_s <= 0:
            raise ValueError(f"max_session_s must be > 0 or null, got {self.max_session_s}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535] (0: any free port), got {self.port}")
        if self.device not in ("auto", "cpu") and not self.device.startswith("cuda"):
            raise ValueError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
