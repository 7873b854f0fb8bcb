"""The web application: the session WebSocket, the browser page and a status endpoint.

Routes (docs/serving.md):

* ``GET /`` — the browser page (``page/``): microphone, playback, live timeline;
* ``WS /api/chat`` — one session (wire format: :mod:`bayling_duplex.serve.wire`);
* ``GET /api/status`` — sessions, latency percentiles, KV-cache bytes, memory.

Starlette on uvicorn; :class:`Server` is uvicorn's server that closes every open
session with a ``shutdown`` error before uvicorn drops the connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from importlib import resources
from pathlib import Path

import uvicorn
from starlette.applications import Starlette
from starlette.responses import FileResponse, JSONResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket, WebSocketDisconnect

from bayling_duplex.serve import wire
from bayling_duplex.serve.scheduler import Close, Hub, HubClosed, HubFull, Outgoing, Session

log = logging.getLogger("bayling_duplex.serve")
PAGE = Path(str(resources.files("bayling_duplex.serve") / "page"))


def create_app(engine, conf) -> Starlette:
    """The application serving ``engine`` under the limits of ``conf`` (a ServeConfig)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        hub = Hub(engine, conf)
        await hub.start()
        app.state.hub = hub
        try:
            yield
        finally:
            await hub.stop()

    async def index(request):
        return FileResponse(PAGE / "index.html", headers={"Cache-Control": "no-cache"})

    async def status(request):
        return JSONResponse(await request.app.state.hub.status())

    async def chat(ws: WebSocket):
        await _session(ws, ws.app.state.hub, engine, conf)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/status", status),
            WebSocketRoute(wire.PATH, chat),
            Mount("/static", StaticFiles(directory=PAGE), name="static"),
        ],
        lifespan=lifespan,
    )


class Server(uvicorn.Server):
    """uvicorn's server; on shutdown it first closes the sessions with a clear message."""

    async def shutdown(self, sockets=None) -> None:
        app = _innermost(self.config.loaded_app)
        hub = getattr(getattr(app, "state", None), "hub", None)
        if hub is not None:
            await hub.stop()
        await super().shutdown(sockets)


def _innermost(app):
    """The Starlette app inside uvicorn's middleware wrappers."""
    while not isinstance(app, Starlette) and hasattr(app, "app"):
        app = app.app
    return app


# --------------------------------------------------------------------------- one session


def _ready(s: Session, engine, conf) -> str:
    lay = engine.layout
    return wire.message(
        "ready",
        version=wire.VERSION,
        session=s.id,
        sample_rate=engine.sample_rate,
        block_samples=engine.block_samples,
        frames_per_block=lay.frames_per_block,
        slots_per_block=lay.slots_per_block,
        frame_rate_hz=lay.frame_rate_hz,
        block_s=lay.block_s,
        slot_s=lay.block_s / lay.slots_per_block,
        audio=engine.voice_name,
        max_session_s=round(engine.max_blocks * lay.block_s, 3),
        stall_timeout_s=conf.stall_timeout_s,
        max_frame_samples=conf.max_frame_samples,
        model=engine.info,
    )


async def _refuse(ws: WebSocket, code: str, message: str) -> None:
    with contextlib.suppress(Exception):
        await ws.send_text(wire.error(code, message))
        await ws.close(wire.CLOSE_CODES[code], code)


async def _session(ws: WebSocket, hub: Hub, engine, conf) -> None:
    await ws.accept()
    try:
        msg = await asyncio.wait_for(ws.receive(), conf.hello_timeout_s)
    except TimeoutError:
        await _refuse(ws, "bad_hello", f"no hello within {conf.hello_timeout_s} s")
        return
    except Exception:
        return
    if msg["type"] == "websocket.disconnect":
        return
    try:
        hello = wire.parse_hello(msg.get("text"))
    except wire.WireError as e:
        await _refuse(ws, e.code, str(e))
        return
    try:
        s = await hub.open(hello.name)
    except HubFull as e:
        await _refuse(ws, "server_full", str(e))
        return
    except HubClosed as e:
        await _refuse(ws, "shutdown", str(e))
        return
    except Exception as e:
        log.exception("opening a session failed")
        await _refuse(ws, "internal_error", f"could not open a session: {e}")
        return
    try:
        await ws.send_text(_ready(s, engine, conf))
        recv = asyncio.create_task(_receive(ws, hub, s, conf), name=f"{s.id}-recv")
        send = asyncio.create_task(_send(ws, hub, s), name=f"{s.id}-send")
        done, _ = await asyncio.wait({recv, send}, return_when=asyncio.FIRST_COMPLETED)
        if send in done or s.gone:
            recv.cancel()
        else:  # the receiver stopped (end, error, stall): the sender says the last word
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(send), timeout=conf.stall_timeout_s + 5)
        for task in (recv, send):
            task.cancel()
        await asyncio.gather(recv, send, return_exceptions=True)
    except Exception:  # nothing in one session may take the server down
        log.exception("session %s failed", s.id)
    finally:
        await hub.release(s)


async def _receive(ws: WebSocket, hub: Hub, s: Session, conf) -> None:
    while not s.closing:
        await s.space.wait()  # backpressure: the socket is not read while the buffer is full
        if s.closing:
            return
        try:
            msg = await asyncio.wait_for(ws.receive(), conf.stall_timeout_s)
        except TimeoutError:
            hub.fail(s, "stalled", f"no audio for {conf.stall_timeout_s} s: closing the session")
            return
        except (WebSocketDisconnect, RuntimeError, OSError):
            hub.gone(s)
            return
        if msg["type"] == "websocket.disconnect":
            hub.gone(s)
            return
        try:
            item = wire.parse_client(msg.get("text"), msg.get("bytes"), conf.max_frame_samples)
        except wire.WireError as e:
            hub.fail(s, e.code, str(e))
            return
        if isinstance(item, wire.End):
            hub.end(s)
            return
        hub.push_audio(s, item)


async def _send(ws: WebSocket, hub: Hub, s: Session) -> None:
    while True:
        item = await s.outbox.get()
        try:
            if isinstance(item, Close):
                if not s.gone:
                    if item.text is not None:
                        await ws.send_text(item.text)
                    await ws.close(item.code, item.reason)
                return
            if s.gone:
                continue
            await _send_block(ws, item, s.lead / hub.engine.sample_rate, s.lead)
            hub.sent(item)
        except (WebSocketDisconnect, RuntimeError, OSError):
            hub.gone(s)
            return


async def _send_block(ws: WebSocket, item: Outgoing, lead_s: float, lead: int) -> None:
    """The block's message, then its audio. Times are the user's (seconds since their first
    sample): the model's minus the ``lead`` samples of silence put before it."""
    r = item.reply
    latency_ms = round(1e3 * (time.monotonic() - item.completed_at), 1)
    n = 0 if r.audio is None else len(r.audio)
    await ws.send_text(
        wire.message(
            "block",
            block=r.block,
            start_s=round(r.start_s - lead_s, 4),
            events=[{**e, "time_s": round(e["time_s"] - lead_s, 4)} for e in r.events],
            lead_samples=lead,
            text_ids=list(r.text_ids),
            codes=list(r.codes),
            speaking=r.speaking,
            stop=r.stop_reason,
            latency_ms=latency_ms,
            step_ms=round(item.step_ms, 1),
            audio_samples=n,
        )
    )
    if r.audio is not None:
        await ws.send_bytes(wire.assistant_audio(r.block, r.audio))
