"""A Python client of the live server: stream a WAV in real time, record the session.

    python -m bayling_duplex.serve.client ws://127.0.0.1:8765/api/chat question.wav \\
        --out session/ --tail-s 6

:func:`run_session` sends the waveform in ``frame_ms`` frames on a real-time
schedule (or as fast as the server reads, ``realtime=False``), reads every server
message meanwhile, and returns a :class:`SessionRecord`: the messages, the
assistant's audio placed at its blocks' times, and per block the latency from the
moment the block's last user sample was sent to the moment its audio (or, without
audio, its ``block`` message) arrived. :func:`save_session` writes ``user.wav``,
``assistant.wav``, ``session.wav`` (stereo: left the user, right the assistant),
``events.jsonl`` (every server message, with its arrival time) and ``summary.json``.
The load test (``benchmarks/bench_serve.py``) runs many of these at once.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bayling_duplex.serve import wire


@dataclass
class SessionRecord:
    """What one session sent and received (times in seconds since the session's first frame)."""

    ready: dict | None = None
    messages: list[dict] = field(default_factory=list)  # every text message, with "t_recv_s"
    done: dict | None = None
    error: dict | None = None
    close_code: int | None = None
    close_reason: str = ""
    user: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    assistant: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    sent_s: dict[int, float] = field(default_factory=dict)  # block -> when its last sample went
    latency_s: dict[int, float] = field(default_factory=dict)  # block -> arrival - sent_s
    blocks_sent: int = 0  # whole blocks of user audio sent (with the server's lead silence)
    lead_samples: int = 0  # silence the server put before the first sample (block alignment)
    sample_rate: int = wire.SAMPLE_RATE

    @property
    def blocks(self) -> list[dict]:
        return [m for m in self.messages if m.get("type") == "block"]

    def summary(self, late_s: float | None = None) -> dict:
        """Latency percentiles (ms), late blocks (latency > ``late_s``, default one block),
        dropped blocks (sent, neither received nor explained by the model stopping)."""
        block_s = (self.ready or {}).get("block_s", 0.8)
        late_s = block_s if late_s is None else late_s
        lat = np.asarray(list(self.latency_s.values())) * 1e3
        expected = self.blocks_sent
        if self.done is not None and self.done.get("reason") not in ("end_of_input", None):
            expected = min(expected, int(self.done.get("blocks", expected)))
        received = len(self.blocks)
        out = {
            "session": (self.ready or {}).get("session"),
            "blocks_sent": self.blocks_sent,
            "blocks_received": received,
            "dropped": max(0, expected - received),
            "late": int((lat > late_s * 1e3).sum()),
            "late_threshold_ms": round(late_s * 1e3, 1),
            "done": self.done,
            "error": self.error,
            "close_code": self.close_code,
            "onsets_s": [
                e["time_s"] for m in self.blocks for e in m["events"] if e["kind"] == "onset"
            ],
            "text": "".join(
                e.get("text", "") for m in self.blocks for e in m["events"] if e["kind"] == "text"
            ),
        }
        if len(lat):
            out["latency_ms"] = {
                "p50": round(float(np.percentile(lat, 50)), 1),
                "p90": round(float(np.percentile(lat, 90)), 1),
                "p99": round(float(np.percentile(lat, 99)), 1),
                "max": round(float(lat.max()), 1),
                "n": len(lat),
            }
        return out


async def run_session(
    url: str,
    wav: np.ndarray,
    *,
    realtime: bool = True,
    frame_ms: float = 80.0,
    tail_s: float = 0.0,
    name: str = "",
    send_end: bool = True,
    timeout_s: float = 30.0,
    hello: dict | None = None,
) -> SessionRecord:
    """Stream ``wav`` (float32 mono 16 kHz) then ``tail_s`` of silence; see the module docstring.

    ``hello`` replaces fields of the hello (a test sends a wrong sample rate with it).
    Returns when the server closes the session (or ``timeout_s`` after the last frame).
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    sr = wire.SAMPLE_RATE
    audio = np.concatenate(
        [np.ravel(np.asarray(wav, dtype=np.float32)), np.zeros(round(tail_s * sr), np.float32)]
    )
    rec = SessionRecord(user=audio)
    frame = max(1, round(frame_ms * sr / 1000))
    chunks: dict[int, np.ndarray] = {}
    ws = await connect(url, max_size=1 << 22, open_timeout=timeout_s)
    try:
        await ws.send(
            json.dumps(
                {
                    "type": "hello",
                    "version": wire.VERSION,
                    "sample_rate": sr,
                    "name": name,
                    **(hello or {}),
                }
            )
        )
        first = await asyncio.wait_for(ws.recv(), timeout_s)
        msg = json.loads(first)
        rec.messages.append({**msg, "t_recv_s": 0.0})
        if msg.get("type") != "ready":
            rec.error = msg
            await _wait_closed(ws, rec, timeout_s)
            return rec
        rec.ready = msg
        block_samples = int(msg["block_samples"])
        t0 = time.monotonic()
        frame_ends: list[int] = []  # user samples sent after each frame …
        frame_sent: list[float] = []  # … and when
        lead = [0]  # the server's silence before our first sample (block messages say)

        def arrived(k: int, now: float) -> None:
            """Block k's answer is here: its latency since its last user sample was sent."""
            end = (k + 1) * block_samples - lead[0]  # in our samples
            i = bisect.bisect_left(frame_ends, end)
            if i < len(frame_sent):
                rec.sent_s[k] = frame_sent[i]
                rec.latency_s[k] = now - frame_sent[i]

        async def receive() -> None:
            try:
                async for data in ws:
                    now = time.monotonic() - t0
                    if isinstance(data, bytes):
                        block, samples = wire.parse_assistant_audio(data)
                        chunks[block] = samples
                        arrived(block, now)
                        continue
                    m = json.loads(data)
                    m["t_recv_s"] = round(now, 4)
                    rec.messages.append(m)
                    if m.get("type") == "block":
                        lead[0] = int(m.get("lead_samples", 0))
                        if not m.get("audio_samples"):
                            arrived(m["block"], now)
                    elif m.get("type") == "done":
                        rec.done = m
                    elif m.get("type") == "error":
                        rec.error = m
            except ConnectionClosed:
                pass

        reader = asyncio.create_task(receive())
        try:
            for i, start in enumerate(range(0, len(audio), frame)):
                if reader.done():
                    break  # the server closed the session
                if realtime:
                    delay = t0 + i * frame / sr - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                piece = audio[start : start + frame]
                try:
                    await ws.send(wire.user_audio(piece))
                except ConnectionClosed:
                    break
                frame_sent.append(time.monotonic() - t0)
                frame_ends.append(start + len(piece))
            if send_end and not reader.done():
                with contextlib.suppress(ConnectionClosed):
                    await ws.send(json.dumps({"type": "end"}))
            await asyncio.wait_for(asyncio.shield(reader), timeout_s)
        except TimeoutError:
            reader.cancel()
    finally:
        await ws.close()
        rec.close_code = ws.close_code
        rec.close_reason = ws.close_reason or ""
    if rec.ready is not None:
        rec.lead_samples = lead[0]
        rec.blocks_sent = ((frame_ends[-1] if frame_ends else 0) + lead[0]) // block_samples
    starts = {m["block"]: round(m["start_s"] * sr) for m in rec.blocks}
    rec.assistant = _place(chunks, starts, len(audio))
    return rec


async def _wait_closed(ws, rec: SessionRecord, timeout_s: float) -> None:
    from websockets.exceptions import ConnectionClosed

    try:
        while True:
            data = await asyncio.wait_for(ws.recv(), timeout_s)
            if isinstance(data, str):
                rec.messages.append(json.loads(data))
    except (ConnectionClosed, TimeoutError):
        pass


def _place(chunks: dict[int, np.ndarray], starts: dict[int, int], n: int) -> np.ndarray:
    """The assistant's channel: block ``k``'s audio from sample ``starts[k]`` (its ``start_s``)."""
    placed = [(starts[k], x) for k, x in chunks.items() if k in starts]
    end = max([n, *(a + len(x) for a, x in placed)])
    out = np.zeros(end, dtype=np.float32)
    for a, x in placed:
        out[a : a + len(x)] = x
    return out


def load_wav(path: str | Path) -> np.ndarray:
    """A WAV (any rate, any channels) as float32 mono at 16 kHz."""
    import soundfile as sf

    from bayling_duplex.serve.voice import resample

    data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    return resample(data.mean(axis=1), rate, wire.SAMPLE_RATE)


def save_session(rec: SessionRecord, out: str | Path) -> dict:
    """Write the session's files into ``out`` (see the module docstring); returns the summary."""
    import soundfile as sf

    from bayling_duplex.eval.listen import stereo_wav

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sr = rec.sample_rate
    for name, x in (("user.wav", rec.user), ("assistant.wav", rec.assistant)):
        sf.write(out / name, np.clip(x, -1.0, 32767 / 32768), sr, subtype="PCM_16")
    stereo_wav(out / "session.wav", rec.user, rec.assistant, sr)
    with open(out / "events.jsonl", "w", encoding="utf-8") as f:
        for m in rec.messages:
            f.write(json.dumps(m, ensure_ascii=False) + "\n")
    summary = rec.summary()
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(
        description="Stream a WAV to the live server and record the session."
    )
    p.add_argument("url", help="ws://HOST:PORT/api/chat")
    p.add_argument("wav", help="the user's audio (any rate; sent as 16 kHz mono)")
    p.add_argument("--out", required=True, help="folder for the session's files")
    p.add_argument("--tail-s", type=float, default=5.0, help="silence sent after the WAV")
    p.add_argument("--fast", action="store_true", help="send as fast as the server reads")
    args = p.parse_args(argv)
    rec = asyncio.run(
        run_session(args.url, load_wav(args.wav), realtime=not args.fast, tail_s=args.tail_s)
    )
    print(json.dumps(save_session(rec, args.out), indent=1))


if __name__ == "__main__":
    main()
