"""The live server over a real socket on 127.0.0.1: sessions decode as offline, many at once
in a shared batch, the limits and faults get clear errors, the cache returns to zero.

A tiny checkpoint with a fitted unit codec (tests/serve_helpers.py), a talkative tiny
model in memory, uvicorn on a thread; every session is bounded in time."""

from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("uvicorn")
pytest.importorskip("websockets")

from serve_helpers import (
    running_server,
    serve_conf,
    status,
    talkative_engine,
    tiny_speech_checkpoint,
    user_audio,
)
from speech_helpers import one_torch_thread

from bayling_duplex.decode.decoder import DuplexDecoder
from bayling_duplex.serve.client import run_session, save_session

SR = 16000


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def final(tmp_path_factory):
    return tiny_speech_checkpoint(tmp_path_factory.mktemp("serve-ckpt"))


@pytest.fixture(scope="module")
def engine(final):
    return talkative_engine(final)


def offline_text(engine, wav: np.ndarray) -> list[int]:
    """What the decoder gives the whole recording at once: the reference of a session."""
    codes = np.asarray(engine.codec.encode(wav))
    dec = DuplexDecoder(engine.decoder.model, engine.vocab, engine.layout)
    return dec.decode(codes[: len(codes) // 10 * 10]).text_ids.tolist()


def heard(rec, wav: np.ndarray) -> np.ndarray:
    """What the model heard: the server's lead silence (block alignment), then the user."""
    return np.concatenate([np.zeros(rec.lead_samples, np.float32), wav])


def streamed_text(rec) -> list[int]:
    return [t for m in rec.blocks for t in m["text_ids"]]


async def raw_session(url: str, frames: list, wait_s: float = 5.0) -> tuple[list[dict], int]:
    """Send ``frames`` (str or bytes) as they are; the text messages received and the close code."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    got = []
    async with connect(url) as ws:
        for f in frames:
            try:
                await ws.send(f)
            except ConnectionClosed:
                break
        try:
            while True:
                m = await asyncio.wait_for(ws.recv(), wait_s)
                if isinstance(m, str):
                    got.append(json.loads(m))
        except (ConnectionClosed, TimeoutError):
            pass
    return got, ws.close_code


HELLO = json.dumps({"type": "hello", "version": 1, "sample_rate": SR})


def test_a_session_streams_what_the_decoder_gives_offline(final, tmp_path):
    pytest.importorskip("espeakng_loader")
    engine = talkative_engine(final, voice="tts")
    wav = user_audio(6.4, 10)
    with running_server(serve_conf(final, audio="tts"), engine) as (url, base, _, _):
        rec = asyncio.run(run_session(url, wav, realtime=False, tail_s=1.6))
        st = status(base)
    assert rec.ready["sample_rate"] == SR and rec.ready["block_samples"] == 12800
    assert rec.ready["audio"] == "tts" and rec.done == {**rec.done, "reason": "end_of_input"}
    assert rec.close_code == 1000 and rec.error is None
    assert streamed_text(rec) == offline_text(engine, heard(rec, rec.user))  # exact streaming
    assert len(rec.blocks) == rec.blocks_sent == 10 and rec.summary()["dropped"] == 0
    kinds = {e["kind"] for m in rec.blocks for e in m["events"]}
    assert {"onset", "text", "epad"} <= kinds
    onset = next(e for m in rec.blocks for e in m["events"] if e["kind"] == "onset")
    assert rec.assistant[round(onset["time_s"] * SR) :].any()  # speech after the onset …
    first = round(rec.blocks[0]["start_s"] * SR)  # (0.8 s - lead) in the user's time
    assert first == 12800 - rec.lead_samples and not rec.assistant[:first].any()  # format §3
    assert st["engine"]["cache_bytes"] == 0 and st["sessions"] == 0
    summary = save_session(rec, tmp_path / "session")
    data, rate = sf.read(tmp_path / "session" / "session.wav")
    assert rate == SR and data.shape[1] == 2 and len(data) >= len(rec.user)
    lines = (tmp_path / "session" / "events.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["type"] == "ready" and json.loads(lines[-1])["type"] == "done"
    assert summary["latency_ms"]["n"] == 10


def test_concurrent_sessions_share_steps_and_each_gets_its_own_tokens(engine, final):
    waves = [user_audio(8.0, 10 + i) for i in range(4)]

    async def main(url):
        async def one(i):
            # joined at different times, so at different positions; sent as fast as the
            # server reads, so they are due together (a busy server's case)
            await asyncio.sleep(0.04 * i)
            return await run_session(url, waves[i], realtime=False, name=f"user{i}")

        return await asyncio.gather(*(one(i) for i in range(4)))

    with running_server(serve_conf(final), engine) as (url, base, _, _):
        recs = asyncio.run(main(url))
        st = status(base)
    for rec, wav in zip(recs, waves, strict=True):
        assert rec.done["reason"] == "end_of_input" and len(rec.blocks) == 10
        assert streamed_text(rec) == offline_text(engine, heard(rec, wav))
    assert st["mean_batch"] > 1.0  # sessions were decoded together
    assert st["engine"]["cache_bytes"] == 0 and st["engine"]["sessions"] == 0


def test_the_session_limit_refuses_the_next_client_clearly(engine, final):
    async def main(url):
        first = asyncio.create_task(run_session(url, user_audio(2.4, 3), realtime=True))
        await asyncio.sleep(0.5)
        refused = await run_session(url, user_audio(1.0, 4), realtime=True)
        return await first, refused

    with running_server(serve_conf(final, max_sessions=1), engine) as (url, base, _, _):
        first, refused = asyncio.run(main(url))
        st = status(base)
    assert refused.ready is None and refused.error["code"] == "server_full"
    assert "1 of 1 sessions" in refused.error["message"] and refused.close_code == 1013
    assert first.done["reason"] == "end_of_input" and len(first.blocks) == 3  # not degraded
    assert st["counts"]["refused"] == 1


def test_faults_get_clear_errors_and_the_server_keeps_serving(engine, final):
    from bayling_duplex.serve import wire

    block = wire.user_audio(np.zeros(12800, np.float32))

    async def disconnect_mid_block(url):
        from websockets.asyncio.client import connect

        async with connect(url) as ws:
            await ws.send(HELLO)
            await ws.recv()
            for _ in range(3):
                await ws.send(block)
            await ws.send(wire.user_audio(np.zeros(6400, np.float32)))
            await asyncio.sleep(0.05)  # the server is mid-block when the client vanishes
        # leaving the context closes the socket

    async def main(url):
        normal = asyncio.create_task(run_session(url, user_audio(4.0, 5), realtime=True))
        results = {
            "rate": await run_session(url, user_audio(1.0), hello={"sample_rate": 44100}),
            "odd": await raw_session(url, [HELLO, b"\x01\x00\x00\x00"]),
            "kind": await raw_session(url, [HELLO, b"\x07abcd"]),
            "json": await raw_session(url, [HELLO, "{not json"]),
            "first": await raw_session(url, [block]),
            "big": await raw_session(url, [HELLO, wire.user_audio(np.zeros(16001, np.float32))]),
        }
        t0 = time.monotonic()
        results["stall"] = await raw_session(url, [HELLO, block[:6401]], wait_s=6.0)
        results["stall_s"] = time.monotonic() - t0
        await disconnect_mid_block(url)
        results["normal"] = await normal
        return results

    conf = serve_conf(final, stall_timeout_s=1.0)
    with running_server(conf, engine) as (url, base, _, _):
        r = asyncio.run(main(url))
        time.sleep(0.3)
        st = status(base)
    assert r["rate"].error["code"] == "bad_sample_rate" and r["rate"].close_code == 4415
    assert "16000" in r["rate"].error["message"]
    for key, match in [
        ("odd", "not whole 16-bit"),
        ("kind", "kind 0x07"),
        ("json", "JSON"),
        ("big", "1 to 16000 samples"),
    ]:
        msgs, code = r[key]
        assert code == 4400 and msgs[-1]["code"] == "bad_message", key
        assert match in msgs[-1]["message"], (key, msgs[-1])
    msgs, code = r["first"]
    assert code == 4400 and msgs[-1]["code"] == "bad_hello"
    msgs, code = r["stall"]
    assert code == 4408 and msgs[-1]["code"] == "stalled" and r["stall_s"] < 4.0
    normal = r["normal"]
    assert normal.done["reason"] == "end_of_input" and len(normal.blocks) == 5
    assert st["sessions"] == 0 and st["engine"]["cache_bytes"] == 0  # nothing leaked
    assert st["counts"]["error:stalled"] == 1 and st["counts"]["error:bad_message"] == 4


def test_shutdown_with_sessions_open_closes_them_going_away(engine, final):
    async def main(url, server):
        tasks = [asyncio.create_task(run_session(url, user_audio(8.0, i))) for i in range(2)]
        await asyncio.sleep(1.5)
        server.should_exit = True  # what SIGINT / SIGTERM do
        return await asyncio.gather(*tasks)

    with running_server(serve_conf(final), engine) as (url, _, _, server):
        recs = asyncio.run(main(url, server))
    for rec in recs:
        assert rec.error["code"] == "shutdown" and rec.close_code == 1001
        assert 1 <= len(rec.blocks) <= 3
    assert engine.stats()["cache_bytes"] == 0 and engine.stats()["sessions"] == 0


def test_engines_load_from_a_checkpoint_or_with_glm4voices_tokenizer(final, tmp_path):
    from speech_helpers import save_tiny_tokenizer

    from bayling_duplex.serve.engine import load_engine

    eng = load_engine(serve_conf(final, audio="none"))
    assert eng.codec.name.startswith("units-v1") and eng.voice_name == "none"
    assert eng.max_blocks == 8192 // 25
    eng.open("a")
    reply = eng.step({"a": user_audio(0.8)})["a"]
    assert reply.block == 0 and len(reply.codes) == 10 and reply.audio is None
    # the GLM-4-Voice path: its speech tokenizer (tiny, random) instead of the fitted codec
    tok_dir = save_tiny_tokenizer(tmp_path / "glm-tokenizer")
    glm = load_engine(
        serve_conf(final, codec=str(tok_dir), max_session_s=4.0, stream_context_s=2.0)
    )
    assert glm.codec.name == "glm4voice-12.5hz" and glm.max_blocks == 5
    assert glm.stream_context_samples == 32000
    glm.open("b")
    for k in range(2):
        assert glm.step({"b": user_audio(0.8, k)})["b"].block == k
    # a checkpoint trained on the toy data has no codec to hear audio with
    (final.parent.parent / "toy").mkdir(exist_ok=True)
    import shutil

    toy = final.parent.parent / "toy" / "final"
    if not toy.exists():
        shutil.copytree(final, toy, ignore=shutil.ignore_patterns("codec"))
        meta = json.loads((toy / "duplex.json").read_text())
        (toy / "duplex.json").write_text(json.dumps({**meta, "codec": None}))
    with pytest.raises(ValueError, match="no fitted speech codec"):
        load_engine(serve_conf(toy))


def test_the_command_names_a_missing_checkpoint(tmp_path, capsys):
    from bayling_duplex.cli.serve import main

    with pytest.raises(SystemExit) as e:
        main([f"checkpoint={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path / 'run'}"])
    assert e.value.code == 2
    assert "no folder" in capsys.readouterr().err
