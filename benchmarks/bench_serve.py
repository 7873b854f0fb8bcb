"""Load test of the live server on localhost: N concurrent simulated users in real time.

    python benchmarks/bench_serve.py --checkpoint runs/sft/default/final           # 1, 4, 8, 16 users
    python benchmarks/bench_serve.py --checkpoint DIR --sessions 8 --duration 60
    python benchmarks/bench_serve.py --url ws://127.0.0.1:8765/api/chat             # a running server
    python benchmarks/bench_serve.py --glm9b-shape --sessions 1,4,16                # CUDA: 9B shape
    python benchmarks/bench_serve.py --batching                                      # ragged vs alone

Unless ``--url`` is given, the server runs in a child process (``--serve-only``: this
script's server role), so clients and server do not share a Python interpreter. Each
user streams ``--duration`` seconds of audio in 80 ms frames on a real-time schedule
(held-out questions by held-out voices, each followed by silence for the answer), the
users starting at random moments in the first 2 s (so their blocks fall due at
different times). Reported per number of users:

* per-block latency, client side: from sending the frame that completes a block's
  user audio to receiving that block's assistant audio (p50 / p90 / p99 / max);
* late blocks: latency over one block (0.8 s: the block's audio would play late);
  dropped blocks: sent but never answered;
* the decoder's real-time factor: seconds the decoder was busy per second of wall
  time (< 1 keeps up), the mean batch, and the server's KV-cache bytes and RSS
  before and after (the cache must be back to 0).

The figures depend on what else the machine runs: the load average is printed with
them. ``--glm9b-shape`` serves a randomly initialised GLM-4-Voice-9B-shaped model
(bf16, CUDA; 8 layers with ``--glm9b-layers 8`` for a smaller GPU), with the learned
unit codec of ``--checkpoint`` or one fitted on noise, and no audio rendering.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SR = 16_000


# --------------------------------------------------------------------------- the user's audio


def user_audio(seconds: float, seed: int = 0) -> np.ndarray:
    """Held-out questions by held-out voices, each followed by 3-5 s of silence; noise if
    eSpeak NG is missing."""
    rng = random.Random(seed)
    try:
        from bayling_duplex.audio.tts import Voice, synthesize
        from bayling_duplex.data.demo import qa_pairs

        questions = [q for q, _ in qa_pairs("heldout")]
        voices = [
            Voice(n, v) for n in ("en-GB-x-gbclan", "en-GB-x-gbcwmd") for v in ("m6", "m7", "f5")
        ]

        def say():
            return synthesize(rng.choice(questions), rng.choice(voices)).wav
    except Exception:  # no tts extra: speech-like noise bursts

        def say():
            n = int(rng.uniform(1.0, 2.0) * SR)
            return (0.1 * np.random.default_rng(rng.randrange(1 << 30)).standard_normal(n)).astype(
                np.float32
            )

    parts, n = [], 0
    while n < seconds * SR:
        for x in (say(), np.zeros(int(rng.uniform(3.0, 5.0) * SR), np.float32)):
            parts.append(x)
            n += len(x)
    return np.concatenate(parts)[: int(seconds * SR)]


# --------------------------------------------------------------------------- the server role


def glm9b_engine(args):
    """A GLM-4-Voice-9B-shaped random model on CUDA behind the server's engine."""
    import dataclasses

    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_decoder import GLM4VOICE_VOCAB, glm9b_shaped

    from bayling_duplex.decode.decoder import DuplexDecoder
    from bayling_duplex.serve.engine import Engine

    if not torch.cuda.is_available():
        sys.exit("--glm9b-shape needs a CUDA GPU; none was found")
    model = glm9b_shaped(torch.device("cuda"), num_layers=args.glm9b_layers)
    model.config._attn_implementation = "sdpa"  # the shared batch's 4-D mask
    codec = None
    if args.checkpoint and args.checkpoint != "latest":
        from bayling_duplex.eval.runner import checkpoint_codec

        codec = checkpoint_codec(args.checkpoint)
    if codec is None:
        from bayling_duplex.audio.units import UnitCodec, UnitCodecConfig

        codec = UnitCodec.fit([user_audio(60.0, 1)], UnitCodecConfig(iters=5))
    vocab = dataclasses.replace(GLM4VOICE_VOCAB, eos_id=None)
    return Engine(
        DuplexDecoder(model, vocab),
        codec,
        lambda ids: " ".join(map(str, ids)),
        info={"model": f"GLM-4-Voice-9B shape, {args.glm9b_layers} layers, random, bf16"},
    )


def serve_only(args) -> None:
    import logging

    import torch

    from bayling_duplex.cli.serve import make_server
    from bayling_duplex.serve.config import ServeConfig

    logging.basicConfig(level=logging.INFO, format="[server %(asctime)s] %(message)s")
    conf = ServeConfig(
        checkpoint=args.checkpoint,
        port=args.port,
        max_sessions=args.max_sessions,
        threads=args.threads,
        log_every_s=10.0,
        audio=args.audio,
    )
    engine = glm9b_engine(args) if args.glm9b_shape else None
    torch.set_num_threads(args.threads)
    server, _ = make_server(conf, engine)
    server.run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [
        sys.executable,
        __file__,
        "--serve-only",
        "--port",
        str(port),
        "--checkpoint",
        args.checkpoint,
    ]
    cmd += ["--max-sessions", str(max(args.sessions)), "--threads", str(args.threads)]
    cmd += ["--audio", args.audio]
    if args.glm9b_shape:
        cmd += ["--glm9b-shape", "--glm9b-layers", str(args.glm9b_layers)]
    if args.server_nice:
        cmd = ["nice", "-n", str(args.server_nice), *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the server exited with {proc.returncode}")
        try:
            _status(base)
            return proc, f"ws://127.0.0.1:{port}/api/chat"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    sys.exit("the server did not start within 600 s")


def _status(base: str) -> dict:
    with urllib.request.urlopen(f"{base}/api/status", timeout=30) as r:
        return json.loads(r.read())


# --------------------------------------------------------------------------- the load


async def load(url: str, n: int, duration: float, audio: list[np.ndarray], seed: int) -> list:
    from bayling_duplex.serve.client import run_session

    rng = random.Random(seed)

    async def user(i: int):
        await asyncio.sleep(rng.uniform(0.0, 2.0))
        return await run_session(
            url, audio[i % len(audio)][: int(duration * SR)], name=f"load{i}", timeout_s=60
        )

    return await asyncio.gather(*(user(i) for i in range(n)))


def run_load(url: str, n: int, args, audio) -> dict:
    base = url.replace("ws://", "http://").rsplit("/api/", 1)[0]
    before = _status(base)
    load0 = os.getloadavg()
    t0 = time.monotonic()
    recs = asyncio.run(load(url, n, args.duration, audio, seed=n))
    wall = time.monotonic() - t0
    time.sleep(0.5)
    after = _status(base)
    lat = np.asarray([v for r in recs for v in r.latency_s.values()]) * 1e3
    sums = [r.summary() for r in recs]
    busy = after["engine"].get("busy_s", 0) - before["engine"].get("busy_s", 0)
    steps = after["engine"].get("steps", 0) - before["engine"].get("steps", 0)
    blocks = sum(s["blocks_received"] for s in sums)
    out = {
        "sessions": n,
        "duration_s": args.duration,
        "wall_s": round(wall, 1),
        "blocks": blocks,
        "late": sum(s["late"] for s in sums),
        "dropped": sum(s["dropped"] for s in sums),
        "errors": [s["error"] for s in sums if s["error"]],
        "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)}
        | {"max": round(float(lat.max()), 1) if len(lat) else None},
        "decoder_rtf": round(busy / wall, 3),
        "mean_batch": round(blocks / steps, 2) if steps else None,
        "cache_bytes_before": before["engine"]["cache_bytes"],
        "cache_bytes_after": after["engine"]["cache_bytes"],
        "sessions_after": after["sessions"],
        "rss_mb_before": round(before["memory"].get("rss_bytes", 0) / 2**20, 1),
        "rss_mb_after": round(after["memory"].get("rss_bytes", 0) / 2**20, 1),
        "loadavg_before": [round(x, 2) for x in load0],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }
    if "cuda_allocated_bytes" in after["memory"]:
        out["cuda_allocated_mb_before"] = round(
            before["memory"].get("cuda_allocated_bytes", 0) / 2**20, 1
        )
        out["cuda_allocated_mb_after"] = round(after["memory"]["cuda_allocated_bytes"] / 2**20, 1)
    return out


# --------------------------------------------------------------------------- batching


def bench_batching(args) -> None:
    """One block for n sessions at different positions: the shared batch vs one at a time."""
    import copy

    import torch

    from bayling_duplex.decode.decoder import DuplexDecoder
    from bayling_duplex.decode.shared import SharedBatch
    from bayling_duplex.format.vocab import VocabConfig
    from bayling_duplex.model.embeddings import extend_vocabulary
    from bayling_duplex.model.tiny import TinyConfig, build_tiny_model, build_tiny_tokenizer

    torch.set_num_threads(args.threads)
    cfg = TinyConfig(hidden_size=128, intermediate_size=384, num_layers=4)  # the default's shape
    tok = build_tiny_tokenizer(cfg)
    model = build_tiny_model(cfg, copy.deepcopy(tok)).eval()
    vocab, _ = extend_vocabulary(model, tok, VocabConfig())
    dec = DuplexDecoder(model, vocab)
    rng = np.random.default_rng(0)
    print("| sessions | shared batch ms/block | one at a time ms/block (sum) | speedup |")
    print("|---|---|---|---|")
    for n in (1, 4, 8, 16):
        shared, alone = SharedBatch(dec), [SharedBatch(dec) for _ in range(n)]
        for i in range(n):
            shared.join(i)
            alone[i].join(i)
        for b in range(60):  # session i joined 3i blocks late: all at different positions
            due = {i: rng.integers(0, 256, 10) for i in range(n) if b >= 3 * i}
            shared.step(due)
            for i, c in due.items():
                alone[i].step({i: c})
        ts, ta = [], []
        for _ in range(args.repeats):
            blocks = {i: rng.integers(0, 256, 10) for i in range(n)}
            t = time.perf_counter()
            shared.step(blocks)
            ts.append(time.perf_counter() - t)
            t = time.perf_counter()
            for i, c in blocks.items():
                alone[i].step({i: c})
            ta.append(time.perf_counter() - t)
        s, a = 1e3 * float(np.median(ts)), 1e3 * float(np.median(ta))
        print(f"| {n} | {s:.1f} | {a:.1f} | {a / s:.1f}x |")
    print(
        f"\nmedian of {args.repeats}; {args.threads} torch thread(s); load average {os.getloadavg()}"
    )


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sessions", default="1,4,8,16", help="comma-separated numbers of users")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of audio per user")
    p.add_argument("--checkpoint", default="latest", help="served checkpoint (or the codec's)")
    p.add_argument("--url", help="load a running server instead of starting one")
    p.add_argument("--threads", type=int, default=1, help="the server's torch threads")
    p.add_argument("--audio", default="auto", help="the server's audio= (auto, tts, none)")
    p.add_argument("--server-nice", type=int, default=0, help="run the server under nice -n N")
    p.add_argument("--out", help="write the figures as JSON here")
    p.add_argument(
        "--glm9b-shape", action="store_true", help="serve a 9B-shaped random model (CUDA)"
    )
    p.add_argument("--glm9b-layers", type=int, default=40)
    p.add_argument("--batching", action="store_true", help="time the shared batch, then exit")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--serve-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=8765, help=argparse.SUPPRESS)
    p.add_argument("--max-sessions", type=int, default=16, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_only:
        serve_only(args)
        return
    if args.batching:
        bench_batching(args)
        return
    args.sessions = [int(x) for x in args.sessions.split(",")]
    if max(args.sessions) > 64 or args.duration > 600:
        sys.exit("the load is bounded: at most 64 users and 600 s")
    audio = [user_audio(args.duration + 2, seed) for seed in range(4)]
    proc = None
    url = args.url
    if url is None:
        proc, url = start_server(args)
    results = []
    try:
        for n in args.sessions:
            print(f"--- {n} user(s), {args.duration:.0f} s each ...", flush=True)
            r = run_load(url, n, args, audio)
            results.append(r)
            print(json.dumps(r), flush=True)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    print(
        "\n| users | blocks | latency p50 ms | p90 | p99 | max | late (>0.8 s) | dropped "
        "| decoder RTF | mean batch | KV cache after (bytes) | load avg |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        lat = r["latency_ms"]
        print(
            f"| {r['sessions']} | {r['blocks']} | {lat['p50']} | {lat['p90']} | {lat['p99']} | "
            f"{lat['max']} | {r['late']} | {r['dropped']} | {r['decoder_rtf']} | {r['mean_batch']} "
            f"| {r['cache_bytes_after']} | {r['loadavg_before'][0]}→{r['loadavg_after'][0]} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
