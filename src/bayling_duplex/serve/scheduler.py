"""The session scheduler: many live sessions, one decoding batch per block.

Each :class:`Session` buffers its user's audio; when a whole block
(``block_samples``) has arrived the session is *due*. The :class:`Hub`'s loop takes
every due session, one block each, and hands them to the engine as one batch
(:meth:`~bayling_duplex.serve.engine.Engine.step`) on a single worker thread, so
the event loop keeps reading sockets while the model runs. Sessions that became
due during a step go in the next one (continuous batching: nobody waits for a
fixed tick, a busy server makes bigger batches).

What keeps one session from hurting the others:

* **admission**: at most ``max_sessions`` are open; the next one is refused
  (``server_full``), never squeezed in;
* **backpressure**: a session holds at most ``max_buffer_s`` of undecoded audio;
  past that its socket is not read until the decoder catches up; a session with
  several blocks waiting gets one block per step, like everyone else;
* **bounded sending**: at most ``send_queue_blocks`` decoded blocks wait for a
  client; one that does not read is closed (``too_slow``);
* **leaving**: a session that ends, stalls, errs or disconnects leaves the
  batch at the next block boundary and its KV cache is freed at once
  (:meth:`Hub.release`; engine calls run on the worker thread in order).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from bayling_duplex.serve import wire

log = logging.getLogger("bayling_duplex.serve")


class HubFull(RuntimeError):
    """No free session: the client is refused with ``server_full``."""


class HubClosed(RuntimeError):
    """The server is shutting down."""


@dataclass(frozen=True)
class Close:
    """The last item of a session's outbox: an optional final text frame, then the close."""

    code: int
    reason: str
    text: str | None = None


@dataclass(frozen=True)
class Outgoing:
    """One decoded block waiting to be sent."""

    reply: object  # engine.BlockReply
    completed_at: float  # monotonic time the block's last audio arrived
    step_ms: float  # the engine step that decoded it


class Session:
    """One client's audio buffer, its outbox and its state (used on the event loop only)."""

    def __init__(self, sid: str, name: str, block_samples: int, max_buffer: int, outbox: int):
        self.id, self.name = sid, name
        self.block_samples = block_samples
        self.max_buffer = max(max_buffer, block_samples)
        self.outbox: asyncio.Queue = asyncio.Queue(maxsize=outbox + 1)  # + the Close
        self.space = asyncio.Event()  # set while more audio may be read
        self.space.set()
        self._parts: list[np.ndarray] = []
        self._partial = 0
        self.blocks: collections.deque[tuple[np.ndarray, float]] = collections.deque()
        self.opened_at = self.last_audio_at = time.monotonic()
        self.ending = False  # the client said "end"
        self.closing = False  # a Close is queued (or the client is gone)
        self.gone = False  # the client disconnected
        self.in_step = False
        self.blocks_done = 0
        self.samples_in = 0
        self.lead = 0  # silence put before the user's first sample (block alignment)
        self.started = False

    @property
    def buffered(self) -> int:
        return self._partial + len(self.blocks) * self.block_samples

    @property
    def due(self) -> bool:
        return bool(self.blocks) and not self.closing and not self.in_step

    def align(self, lead: int) -> None:
        """Put ``lead`` samples of silence before the first audio (before any push)."""
        if self.started:
            return
        self.started = True
        if lead > 0:
            self.lead = lead
            self._parts.append(np.zeros(lead, np.float32))
            self._partial += lead

    def soon_due(self, within_samples: int, now: float) -> bool:
        """Still streaming and at most ``within_samples`` short of its next block."""
        return (
            not self.blocks
            and not self.closing
            and not self.ending
            and not self.in_step
            and now - self.last_audio_at < 0.25
            and self._partial >= self.block_samples - within_samples
        )

    def push(self, samples: np.ndarray, now: float) -> bool:
        """Add user audio; True when it completed a block."""
        self.started = True
        self._parts.append(samples)
        self._partial += len(samples)
        self.samples_in += len(samples)
        self.last_audio_at = now
        completed = False
        if self._partial >= self.block_samples:
            audio = np.concatenate(self._parts)
            whole = len(audio) // self.block_samples * self.block_samples
            for start in range(0, whole, self.block_samples):
                self.blocks.append((audio[start : start + self.block_samples], now))
            rest = audio[whole:]
            self._parts, self._partial = ([rest] if len(rest) else []), len(rest)
            completed = True
        if self.buffered >= self.max_buffer:
            self.space.clear()
        return completed

    def pop_block(self) -> tuple[np.ndarray, float]:
        block = self.blocks.popleft()
        if self.buffered < self.max_buffer:
            self.space.set()
        return block

    def close_with(self, item: Close, drop: bool = True) -> None:
        """Queue ``item`` last (idempotent); ``drop``: first drop what waits in the outbox
        (an error: the blocks behind it are void), else it goes after them (``done``)."""
        if self.closing:
            return
        self.closing = True
        self.blocks.clear()
        self.space.set()  # wake a receiver waiting for room
        while drop and not self.outbox.empty():
            self.outbox.get_nowait()
        self.outbox.put_nowait(item)


class Hub:
    """Admits sessions and decodes every due one in a shared batch; see the module docstring.

    ``engine`` is an :class:`~bayling_duplex.serve.engine.Engine` (or anything with its
    ``open/close/step/stats/blocks_left`` and ``block_samples``); ``conf`` a ServeConfig.
    """

    def __init__(self, engine, conf) -> None:
        self.engine = engine
        self.conf = conf
        self.sessions: dict[str, Session] = {}
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="decode")
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._log_task: asyncio.Task | None = None
        self._ids = itertools.count(1)
        self._reserved = 0
        self.closed = False
        self.latency_s: collections.deque[float] = collections.deque(maxlen=10_000)
        self.batch_sizes: collections.deque[int] = collections.deque(maxlen=10_000)
        self.counts = collections.Counter()  # blocks, late, refused, errors by code …
        self.started_at = time.monotonic()

    # ------------------------------------------------------------------ life cycle

    async def start(self) -> None:
        threads = getattr(self.conf, "threads", 1)
        await self._run(_set_threads, threads)
        self._task = asyncio.create_task(self._loop(), name="scheduler")
        if getattr(self.conf, "log_every_s", 0) > 0:
            self._log_task = asyncio.create_task(self._log_loop(), name="status-log")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Close every session (``shutdown``, close 1001), wait for them, stop the worker."""
        if self.closed:
            return
        self.closed = True
        for s in list(self.sessions.values()):
            self.fail(s, "shutdown", "the server is shutting down")
        deadline = time.monotonic() + timeout_s
        while self.sessions and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for s in list(self.sessions.values()):  # clients that never read their close
            await self.release(s)
        for task in (self._task, self._log_task):
            if task is not None:
                task.cancel()
        self._wake.set()
        self._worker.shutdown(wait=True)
        log.info("scheduler stopped after %d blocks", self.counts["blocks"])

    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn, *args)

    # ------------------------------------------------------------------ sessions

    async def open(self, name: str = "") -> Session:
        if self.closed:
            raise HubClosed("the server is shutting down")
        if len(self.sessions) + self._reserved >= self.conf.max_sessions:
            self.counts["refused"] += 1
            raise HubFull(
                f"the server is full: {self.conf.max_sessions} of {self.conf.max_sessions} "
                "sessions are in use; try again later"
            )
        self._reserved += 1
        try:
            sid = f"s{next(self._ids):05d}"
            await self._run(self.engine.open, sid)
        finally:
            self._reserved -= 1
        sr = self.engine.sample_rate
        s = Session(
            sid,
            name,
            self.engine.block_samples,
            round(self.conf.max_buffer_s * sr),
            self.conf.send_queue_blocks,
        )
        self.sessions[sid] = s
        log.info(
            "session %s opened%s (%d open)", sid, f" ({name})" if name else "", len(self.sessions)
        )
        return s

    def push_audio(self, s: Session, samples: np.ndarray) -> None:
        if s.closing:
            return
        now = time.monotonic()
        if not s.started and getattr(self.conf, "align_blocks", False):
            s.align(self._lead(now, len(samples)))
        if s.push(samples, now):
            self._wake.set()

    def _lead(self, now: float, n: int) -> int:
        """Whole frames of silence that put a new session's block ends on the hub's grid.

        The session's first sample was captured about ``n / rate`` before ``now``; with
        ``lead`` samples before it, its block ``k`` ends at ``start + (k+1)·block_s - lead``,
        on the grid ``started_at + j·block_s`` when ``lead = (start - started_at) mod
        block_s`` (rounded to whole codec frames). Sessions then fall due together and
        share steps (docs/serving.md, "Batching")."""
        eng = self.engine
        rate, block_s = eng.sample_rate, eng.layout.block_s
        start = now - n / rate
        frame = eng.block_samples // eng.layout.frames_per_block
        lead = round(((start - self.started_at) % block_s) * rate / frame) * frame
        return lead % eng.block_samples

    def end(self, s: Session) -> None:
        """The client has no more audio: finish once its whole blocks are decoded."""
        s.ending = True
        self._finish_if_drained(s)

    def fail(self, s: Session, code: str, message: str) -> None:
        """Close ``s`` with an error frame (``code`` of :data:`wire.CLOSE_CODES`)."""
        if s.closing:
            return
        self.counts[f"error:{code}"] += 1
        level = logging.INFO if code in ("shutdown", "stalled") else logging.WARNING
        log.log(level, "session %s: %s: %s", s.id, code, message)
        s.close_with(Close(wire.CLOSE_CODES[code], code, wire.error(code, message)))
        self._wake.set()

    def gone(self, s: Session) -> None:
        """The client disconnected: nothing more is sent."""
        s.gone = True
        if not s.closing:
            log.info("session %s: the client disconnected after %d blocks", s.id, s.blocks_done)
        s.close_with(Close(wire.CLOSE_NORMAL, "gone"))

    async def release(self, s: Session) -> None:
        """Forget ``s`` and free its cache (after the step it may be in); idempotent."""
        if self.sessions.pop(s.id, None) is None:
            return
        s.closing = True
        await self._run(self.engine.close, s.id)
        secs = s.samples_in / self.engine.sample_rate
        log.info(
            "session %s closed: %d blocks, %.1f s of audio (%d open)",
            s.id,
            s.blocks_done,
            secs,
            len(self.sessions),
        )

    def _finish(self, s: Session, reason: str) -> None:
        done = wire.message("done", blocks=s.blocks_done, reason=reason)
        s.close_with(Close(wire.CLOSE_NORMAL, reason, done), drop=False)

    def _finish_if_drained(self, s: Session) -> None:
        if s.ending and not s.blocks and not s.in_step and not s.closing:
            self._finish(s, "end_of_input")

    # ------------------------------------------------------------------ the loop

    async def _loop(self) -> None:
        while not self.closed:
            await self._wake.wait()
            self._wake.clear()
            due = [s for s in self.sessions.values() if s.due]
            if not due:
                continue
            window = getattr(self.conf, "batch_window_s", 0.0)
            if window > 0:  # wait a little for the sessions about to complete a block
                deadline = time.monotonic() + window
                within = round(window * self.engine.sample_rate)
                while (left := deadline - time.monotonic()) > 0:
                    now = time.monotonic()
                    if not any(s.soon_due(within, now) for s in self.sessions.values()):
                        break
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), left)
                due = [s for s in self.sessions.values() if s.due]
            batch, arrived = {}, {}
            for s in due:
                samples, arrived[s.id] = s.pop_block()
                batch[s.id] = samples
                s.in_step = True
            t0 = time.perf_counter()
            try:
                replies = await self._run(self.engine.step, batch)
                error = None
            except Exception as e:  # a bug must not take the other sessions down with it
                log.exception("decoding step failed for %s", sorted(batch))
                replies, error = {}, e
            step_ms = 1e3 * (time.perf_counter() - t0)
            self.batch_sizes.append(len(batch))
            for s in due:
                s.in_step = False
                reply = replies.get(s.id)
                if reply is None or isinstance(reply, Exception):
                    self.fail(s, "internal_error", f"decoding failed: {reply or error}")
                    continue
                self._deliver(s, reply, arrived[s.id], step_ms)
            if any(s.due for s in self.sessions.values()):
                self._wake.set()

    def _deliver(self, s: Session, reply, arrived: float, step_ms: float) -> None:
        if s.closing:
            return  # it left during the step: nothing to send
        if s.outbox.qsize() >= self.conf.send_queue_blocks:
            n = self.conf.send_queue_blocks
            self.fail(s, "too_slow", f"the client does not read: {n} decoded blocks wait for it")
            return
        s.blocks_done += 1
        s.outbox.put_nowait(Outgoing(reply, arrived, step_ms))
        if reply.stop_reason:
            self._finish(s, reply.stop_reason)
        elif self.engine.blocks_left(s.id) <= 0:
            self._finish(s, "max_duration")
        else:
            self._finish_if_drained(s)

    def sent(self, item: Outgoing) -> None:
        """The sender wrote a block: record its latency (audio in → events and audio out)."""
        latency = time.monotonic() - item.completed_at
        self.latency_s.append(latency)
        self.counts["blocks"] += 1
        if latency > self.engine.layout.block_s:
            self.counts["late"] += 1

    # ------------------------------------------------------------------ status

    async def status(self) -> dict:
        engine = await self._run(self.engine.stats) if not self.closed else {}
        lat = np.asarray(self.latency_s) * 1e3
        pct = {}
        if len(lat):
            pct = {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 90, 99)}
        return {
            "sessions": len(self.sessions),
            "max_sessions": self.conf.max_sessions,
            "engine": engine,
            "latency_ms": {**pct, "n": len(lat)},
            "mean_batch": round(float(np.mean(self.batch_sizes)), 2) if self.batch_sizes else None,
            "counts": dict(self.counts),
            "memory": _memory(),
            "uptime_s": round(time.monotonic() - self.started_at, 1),
        }

    async def _log_loop(self) -> None:
        last_blocks, last_busy = 0, 0.0
        while not self.closed:
            await asyncio.sleep(self.conf.log_every_s)
            if not self.sessions and self.counts["blocks"] == last_blocks:
                continue
            st = await self.status()
            busy = st["engine"].get("busy_s", 0.0)
            lat = st["latency_ms"]
            log.info(
                "%d session(s); %d blocks in %.0f s, decoder busy %.0f %%; latency p50 %s p99 %s ms; "
                "late %d; KV cache %.1f MB",
                st["sessions"],
                self.counts["blocks"] - last_blocks,
                self.conf.log_every_s,
                100 * (busy - last_busy) / self.conf.log_every_s,
                lat.get("p50", "-"),
                lat.get("p99", "-"),
                self.counts["late"],
                st["engine"].get("cache_bytes", 0) / 1e6,
            )
            last_blocks, last_busy = self.counts["blocks"], busy


def _set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


def _memory() -> dict:
    out = {}
    try:
        with open("/proc/self/statm") as f:
            import os

            out["rss_bytes"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_initialized():
            out["cuda_allocated_bytes"] = torch.cuda.memory_allocated()
    except Exception:
        pass
    return out
