"""Small things the server tests share: a tiny real-speech checkpoint and a server on a thread.

The checkpoint is the tiny backbone of ``helpers.TINY_MODEL`` with an LM head biased
so that greedy decoding answers, speaks and stops (like the decoder tests' model),
and a unit codec fitted in a second on tones and noise, carried in ``final/codec/``
as a real-speech run carries its codec.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from pathlib import Path

import numpy as np
import torch
from helpers import TINY_MODEL, compose_conf
from speech_helpers import voice

SR = 16_000


def talkative(model, vocab, seed: int = 3):
    """``model`` re-randomised with a biased LM head that confines text slots to the control
    tokens and a few words, so greedy decoding starts, speaks and stops responses (in
    memory only: the GLM head has no bias to save)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * (1.0 if "embed" in name else 0.3))
        V, H = model.lm_head.weight.shape
        head = torch.nn.Linear(H, V, bias=True)
        head.weight.zero_()
        head.bias.fill_(-30.0)
        cand = [vocab.silence_id, vocab.speak_id, vocab.pad_id, vocab.epad_id, *range(257, 263)]
        cand += list(range(vocab.audio_start_id, vocab.audio_end_id))
        idx = torch.tensor(cand)
        head.weight[idx] = torch.randn(len(cand), H, generator=g) * 0.5
        head.bias[idx] = 0.0
        head.bias[vocab.silence_id] = 2.0
        model.lm_head = head
    return model.eval()


def user_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like audio (gated tones and noise) with silent gaps, float32 at 16 kHz."""
    parts = []
    rng = np.random.default_rng(seed)
    while sum(len(p) for p in parts) < seconds * SR:
        parts.append(voice(float(rng.uniform(0.6, 1.5)), int(rng.integers(0, 9))))
        parts.append(np.zeros(int(rng.uniform(0.3, 1.2) * SR), np.float32))
    return np.concatenate(parts)[: round(seconds * SR)]


def tiny_speech_checkpoint(root: Path) -> Path:
    """``root/run/final``: a tiny checkpoint that carries a fitted unit codec (built once)."""
    from bayling_duplex.audio.units import UnitCodec, UnitCodecConfig
    from bayling_duplex.format.layout import BlockLayout
    from bayling_duplex.format.spec import FormatSpec
    from bayling_duplex.model.backbone import load_backbone
    from bayling_duplex.model.checkpoint import CheckpointMeta, copy_codec, write_meta
    from bayling_duplex.runtime import write_json

    final = root / "run" / "final"
    if (final / "duplex.json").is_file():
        return final
    conf = compose_conf("sft", TINY_MODEL)
    model, tok, _ = load_backbone(conf.model, conf.vocab, root / "cache")
    codec = UnitCodec.fit(
        [user_audio(40.0, s) for s in range(2)], UnitCodecConfig(num_codes=32, iters=4)
    )
    codec_dir = codec.save(root / "codec")
    model.save_pretrained(final)
    tok.save_pretrained(final)
    copy_codec(codec_dir, final)
    info = {"dir": "codec", "name": codec.name, "fingerprint": codec.fingerprint}
    spec = FormatSpec(BlockLayout(), tuple(int(c) for c in codec.silence_codes))
    write_meta(final, CheckpointMeta(spec, "speech_demo", "sft", codec=info))
    write_json(final.parent / "summary.json", {"steps": 1, "checkpoint": str(final)})
    return final


def talkative_engine(final: Path, voice: str = "none", **engine_kw):
    """An :class:`Engine` on the checkpoint's tokenizer, codec and format with a talkative
    model (``voice``: ``none`` or ``tts``)."""
    from bayling_duplex.decode.decoder import DuplexDecoder
    from bayling_duplex.eval.runner import checkpoint_codec
    from bayling_duplex.format.vocab import VocabConfig
    from bayling_duplex.model import checkpoint
    from bayling_duplex.serve.config import ServeConfig
    from bayling_duplex.serve.engine import Engine, _voice_factory

    model, tok, vocab = checkpoint.load(final, VocabConfig())
    talkative(model, vocab)
    spec = checkpoint.read_format(final)
    make_voice = _voice_factory(ServeConfig(audio=voice), voice, spec.layout, SR)
    return Engine(
        DuplexDecoder(model, vocab, spec.layout),
        checkpoint_codec(final),
        lambda ids: tok.decode(ids, skip_special_tokens=True),
        make_voice,
        info={"checkpoint": str(final)},
        **engine_kw,
    )


def serve_conf(checkpoint: Path, **overrides):
    from bayling_duplex.serve.config import ServeConfig

    base = {"checkpoint": str(checkpoint), "port": 0, "log_every_s": 0.0, "audio": "none"}
    return ServeConfig(**{**base, **overrides})


@contextlib.contextmanager
def running_server(conf, engine=None):
    """``(ws url, http base, app)`` of a server on 127.0.0.1 in a thread; shut down on exit."""
    from bayling_duplex.cli.serve import make_server

    server, app = make_server(conf, engine)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/api/chat", f"http://127.0.0.1:{port}", app, server
    finally:
        server.should_exit = True
        thread.join(30)


def status(base: str) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(f"{base}/api/status", timeout=10) as r:
        return json.loads(r.read())


def run(coro):
    return asyncio.run(coro)
