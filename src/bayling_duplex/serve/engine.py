"""Everything one decoding step needs: the model in a shared batch, the codec, the voices.

An :class:`Engine` is used from **one thread** (the server's decoding worker):
:meth:`open` and :meth:`close` add and drop a session, :meth:`step` takes one
block of 16 kHz samples for each due session and returns, per session, its
text-channel events, the assistant's codes and a block of audio
(:class:`BlockReply`). It knows nothing about sockets; :func:`load_engine`
builds one from a checkpoint folder (the tiny real-speech default or a converted
GLM-4-Voice checkpoint, docs/serving.md).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field

import numpy as np

from bayling_duplex.decode.decoder import DuplexDecoder
from bayling_duplex.decode.shared import SharedBatch
from bayling_duplex.format.layout import BlockLayout
from bayling_duplex.serve.stream_codec import StreamEncoder
from bayling_duplex.serve.voice import EPAD, ONSET, PAD, SILENCE, TEXT, NoVoice, Slot

log = logging.getLogger("bayling_duplex.serve")


@dataclass(frozen=True)
class BlockReply:
    """One session's decoded block, ready for the wire."""

    block: int
    start_s: float  # session time where the block's output begins: (k+1)·block_s
    events: list[dict]  # onset / text / epad, each with its slot and time_s
    text_ids: tuple[int, ...]
    codes: tuple[int, ...]
    audio: np.ndarray | None  # float32 block_samples at the wire's rate, or None
    stop_reason: str | None  # max_epad / eos once decoded, else None
    speaking: bool  # a response is open after this block


@dataclass
class _State:
    encoder: StreamEncoder
    voice: object
    ids: list[int] = field(default_factory=list)  # the open response's text ids
    text: str = ""  # ... decoded
    open: bool = False


class Engine:
    """The shared batch, codec and voices of every session; see the module docstring.

    ``make_voice()`` gives each session its own voice (:mod:`bayling_duplex.serve.voice`);
    ``detokenize(ids)`` turns a response's text ids into text.
    """

    def __init__(
        self,
        decoder: DuplexDecoder,
        codec,
        detokenize: Callable[[list[int]], str],
        make_voice: Callable[[], object] = NoVoice,
        *,
        max_blocks: int | None = None,
        stream_context_samples: int | None = None,
        info: dict | None = None,
    ) -> None:
        self.decoder = decoder
        self.layout: BlockLayout = decoder.layout
        self.vocab = decoder.vocab
        self.codec = codec
        if int(codec.num_codes) > self.vocab.num_audio:
            raise ValueError(
                f"the codec has {codec.num_codes} codes but the model only "
                f"{self.vocab.num_audio} audio tokens: not the checkpoint's codec"
            )
        if abs(codec.sample_rate / codec.samples_per_frame - self.layout.frame_rate_hz) > 1e-6:
            raise ValueError(
                f"the codec runs at {codec.sample_rate / codec.samples_per_frame} Hz, the "
                f"checkpoint's format at {self.layout.frame_rate_hz} Hz"
            )
        self.sample_rate = int(codec.sample_rate)
        self.block_samples = self.layout.frames_per_block * int(codec.samples_per_frame)
        self.detokenize = detokenize
        self.make_voice = make_voice
        self.voice_name = getattr(make_voice(), "name", "none")
        self.batch = SharedBatch(decoder)
        model_blocks = self.batch.max_tokens // self.layout.block_len
        self.max_blocks = min(max_blocks or model_blocks, model_blocks)
        self.stream_context_samples = stream_context_samples
        self.info = dict(info or {})
        self._states: dict[Hashable, _State] = {}
        self.steps = 0
        self.busy_s = 0.0  # time spent in step()

    # ------------------------------------------------------------------ sessions

    def open(self, sid: Hashable) -> None:
        self.batch.join(sid)
        self._states[sid] = _State(
            StreamEncoder(self.codec, self.layout.frames_per_block, self.stream_context_samples),
            self.make_voice(),
        )

    def close(self, sid: Hashable) -> None:
        """Drop the session and free its cache (unknown sessions are ignored)."""
        self.batch.leave(sid)
        self._states.pop(sid, None)

    def blocks_left(self, sid: Hashable) -> int:
        return min(self.max_blocks - self.batch.blocks_done(sid), self.batch.blocks_left(sid))

    def stats(self) -> dict:
        return {
            "sessions": len(self._states),
            "cache_bytes": self.batch.cache_bytes(),
            "steps": self.steps,
            "busy_s": round(self.busy_s, 3),
        }

    # ------------------------------------------------------------------ one block

    def step(self, blocks: Mapping[Hashable, np.ndarray]) -> dict[Hashable, BlockReply | Exception]:
        """Encode, decode and voice one block (``block_samples`` float32) per session, together.

        A session whose own part fails (its audio, its voice) gets the exception as its
        reply and the others go on; a failing decoding step raises for all."""
        t0 = time.perf_counter()
        replies: dict[Hashable, BlockReply | Exception] = {}
        codes = {}
        for sid, x in blocks.items():
            try:
                codes[sid] = self._states[sid].encoder.push_block(x)
            except Exception as e:
                log.exception("session %s: coding its audio failed", sid)
                replies[sid] = e
        outs = self.batch.step(codes)
        for sid, out in outs.items():
            try:
                replies[sid] = self._reply(sid, out)
            except Exception as e:
                log.exception("session %s: its block %d failed after decoding", sid, out.block)
                replies[sid] = e
        self.steps += 1
        self.busy_s += time.perf_counter() - t0
        return replies

    def _reply(self, sid: Hashable, out) -> BlockReply:
        st, vocab, lay = self._states[sid], self.vocab, self.layout
        T = lay.slots_per_block
        k = out.block
        events, slots = [], []
        for j, tok in enumerate(out.text_ids):
            time_s = round(lay.slot_start_s(k * T + j), 4)
            if tok == vocab.speak_id:
                st.open, st.ids, st.text = True, [], ""
                events.append({"kind": "onset", "slot": j, "time_s": time_s})
                slots.append(Slot(ONSET))
            elif tok == vocab.epad_id:
                st.open, st.ids, st.text = False, [], ""
                events.append({"kind": "epad", "slot": j, "time_s": time_s})
                slots.append(Slot(EPAD))
            elif tok == vocab.pad_id:
                slots.append(Slot(PAD))
            elif tok == vocab.silence_id or tok == vocab.eos_id:
                slots.append(Slot(SILENCE))
            else:
                st.ids.append(int(tok))
                text = self.detokenize(st.ids)
                delta = text[len(st.text) :] if text.startswith(st.text) else text
                st.text = text
                events.append(
                    {
                        "kind": "text",
                        "slot": j,
                        "time_s": time_s,
                        "token_id": int(tok),
                        "text": delta,
                    }
                )
                slots.append(Slot(TEXT, delta))
        audio = st.voice.render(slots, out.codes)
        return BlockReply(
            block=k,
            start_s=round((k + 1) * lay.block_s, 4),
            events=events,
            text_ids=out.text_ids,
            codes=out.codes,
            audio=audio,
            stop_reason=out.stop_reason,
            speaking=st.open,
        )


# --------------------------------------------------------------------------- from a checkpoint


def load_engine(conf) -> Engine:
    """The :class:`Engine` of ``conf`` (a :class:`~bayling_duplex.serve.config.ServeConfig`).

    The checkpoint gives the model, tokenizer, format and, for the real-speech default,
    the fitted codec (``final/codec/``); ``codec=<folder>`` loads GLM-4-Voice's speech
    tokenizer instead. Raises ``FileNotFoundError``/``ValueError`` saying what is missing.
    """
    import torch

    from bayling_duplex.eval.runner import checkpoint_codec
    from bayling_duplex.model import checkpoint

    path = checkpoint.resolve(conf.checkpoint, conf.stage).resolve()
    device = (
        conf.device if conf.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    )
    model, tokenizer, vocab = checkpoint.load(path, conf.vocab, conf.dtype)
    model = model.to(device).eval().requires_grad_(False)
    spec = checkpoint.read_format(path, default=conf.format.spec())
    if conf.codec == "checkpoint":
        codec = checkpoint_codec(path)
        if codec is None:
            raise ValueError(
                f"checkpoint {path} carries no fitted speech codec (final/codec/): it was "
                "trained on the toy demo data, which has no audio. Serve a real-speech "
                "checkpoint (the default main job), or pass codec=<glm-4-voice-tokenizer folder>"
            )
    else:
        from bayling_duplex.audio.codec import GlmSpeechCodec

        codec = GlmSpeechCodec.load(conf.codec, device=device)
    decoder = DuplexDecoder(model, vocab, spec.layout, conf.decode)
    max_blocks = None
    if conf.max_session_s is not None:
        max_blocks = max(1, int(conf.max_session_s / spec.layout.block_s))
    audio = _audio_mode(conf, codec)
    make_voice = _voice_factory(conf, audio, spec.layout, int(codec.sample_rate))
    context = None
    if conf.codec != "checkpoint":
        context = round(conf.stream_context_s * codec.sample_rate)
    info = {
        "checkpoint": str(path),
        "stage": checkpoint.describe(path).get("stage"),
        "codec": getattr(codec, "name", type(codec).__name__),
        "device": device,
        "dtype": conf.dtype,
    }
    engine = Engine(
        decoder,
        codec,
        lambda ids: tokenizer.decode(ids, skip_special_tokens=True),
        make_voice,
        max_blocks=max_blocks,
        stream_context_samples=context,
        info=info,
    )
    log.info(
        "serving %s (%s, %s) with codec %s, audio %s, up to %.0f s per session",
        path,
        device,
        conf.dtype,
        info["codec"],
        engine.voice_name,
        engine.max_blocks * spec.layout.block_s,
    )
    return engine


def _audio_mode(conf, codec) -> str:
    if conf.audio != "auto":
        return conf.audio
    if conf.vocoder.decoder_dir:
        return "vocoder"
    from bayling_duplex.audio.units import UnitCodec

    if isinstance(codec, UnitCodec):
        import importlib.util

        if importlib.util.find_spec("espeakng_loader") is not None:
            return "tts"
        log.warning(
            "eSpeak NG is not installed (the tts extra): the assistant's audio is off (audio=none)"
        )
    return "none"


def _voice_factory(conf, audio: str, layout: BlockLayout, sample_rate: int):
    from bayling_duplex.serve.voice import CodeVoice, TextVoice

    if audio == "none":
        return NoVoice
    if audio == "tts":
        from bayling_duplex.audio.tts import synthesize
        from bayling_duplex.data.load import recipe_from_file

        voice = recipe_from_file(conf.voice_recipe).speech.assistant()
        synthesize("Hello.", voice)  # fails here, not in a session, when eSpeak NG is missing

        def say(text: str) -> np.ndarray:
            return synthesize(text, voice).wav

        return lambda: TextVoice(say, layout, sample_rate)
    from bayling_duplex.audio.vocoder import DECODER_SAMPLE_RATE, check_decoder_dir, render_audio

    if not conf.vocoder.decoder_dir:
        raise ValueError("audio=vocoder needs vocoder.decoder_dir=<glm-4-voice-decoder folder>")
    folder = check_decoder_dir(conf.vocoder.decoder_dir)
    vc = conf.vocoder

    def render(codes):
        wav = render_audio(codes, folder, device=vc.device, code_dir=vc.code_dir)
        return wav, DECODER_SAMPLE_RATE

    return lambda: CodeVoice(render, layout, sample_rate, vc.context_blocks)
