"""The session scheduler with a stand-in engine: who is batched with whom, the limits, leaving."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace

import numpy as np
import pytest

from bayling_duplex.serve.config import ServeConfig
from bayling_duplex.serve.scheduler import Close, Hub, HubClosed, HubFull, Outgoing

BS = 1600  # samples per block of the stand-in (0.1 s)


class FakeEngine:
    sample_rate = 16000
    block_samples = BS
    layout = SimpleNamespace(block_s=0.1, frames_per_block=10)

    def __init__(self, stop_after=None, fail_on=None, max_blocks=1000):
        self.open_ids, self.closed_ids, self.steps = [], [], []
        self.blocks = {}
        self.stop_after, self.fail_on, self.max_blocks = stop_after, fail_on, max_blocks

    def open(self, sid):
        self.open_ids.append(sid)
        self.blocks[sid] = 0

    def close(self, sid):
        self.closed_ids.append(sid)
        self.blocks.pop(sid, None)

    def blocks_left(self, sid):
        return self.max_blocks - self.blocks[sid]

    def stats(self):
        return {"sessions": len(self.blocks), "cache_bytes": 100 * len(self.blocks)}

    def step(self, batch):
        self.steps.append(sorted(batch))
        if self.fail_on is not None and self.fail_on in batch:
            raise RuntimeError("boom")
        out = {}
        for sid, x in batch.items():
            assert x.shape == (BS,)
            k = self.blocks[sid]
            self.blocks[sid] += 1
            stop = "max_epad" if self.stop_after is not None and k + 1 >= self.stop_after else None
            out[sid] = SimpleNamespace(block=k, stop_reason=stop, first=float(x[0]))
        return out


def conf(**kw):
    base = {"log_every_s": 0.0, "max_buffer_s": 1.0, "align_blocks": False, "batch_window_s": 0.0}
    return ServeConfig(**{**base, **kw})


async def settle(hub):
    for _ in range(200):
        await asyncio.sleep(0.005)
        if not any(s.due or s.in_step for s in hub.sessions.values()):
            return


def drain(s):
    items = []
    while not s.outbox.empty():
        items.append(s.outbox.get_nowait())
    return items


def audio(blocks: float, value: float = 0.0) -> np.ndarray:
    return np.full(round(blocks * BS), value, np.float32)


def test_due_sessions_share_a_step_one_block_each():
    async def main():
        eng = FakeEngine()
        hub = Hub(eng, conf())
        await hub.start()
        a, b, c = [await hub.open(n) for n in "abc"]
        hub.push_audio(a, np.concatenate([audio(1, 0.1), audio(1, 0.2)]))
        hub.push_audio(b, audio(0.6))
        hub.push_audio(b, audio(0.6))  # completes b's first block; 0.2 left over
        await settle(hub)
        assert eng.steps == [[a.id, b.id], [a.id]]  # a's second block waits for the next step
        got = [item.reply.first for item in drain(a)]
        assert got == [pytest.approx(0.1), pytest.approx(0.2)]  # in order
        assert b.buffered == round(0.2 * BS) and not drain(c)
        await hub.stop(timeout_s=0.1)
        assert sorted(eng.closed_ids) == sorted([a.id, b.id, c.id])

    asyncio.run(main())


def test_the_session_limit_refuses_the_next_client_and_frees_on_release():
    async def main():
        eng = FakeEngine()
        hub = Hub(eng, conf(max_sessions=2))
        await hub.start()
        a = await hub.open()
        await hub.open()
        with pytest.raises(HubFull, match="2 of 2 sessions"):
            await hub.open()
        await hub.release(a)
        assert eng.closed_ids == [a.id]
        await hub.open()  # a place again
        assert hub.counts["refused"] == 1
        await hub.stop(timeout_s=0.1)
        with pytest.raises(HubClosed):
            await hub.open()

    asyncio.run(main())


def test_backpressure_stops_reading_until_the_decoder_catches_up():
    async def main():
        eng = FakeEngine()
        hub = Hub(eng, conf(max_buffer_s=0.25))  # 4000 samples: 2.5 blocks
        s = await hub.open()
        hub.push_audio(s, audio(1.5))
        assert s.space.is_set()
        hub.push_audio(s, audio(1.5))  # 3 blocks held: over the limit
        assert not s.space.is_set()
        await hub.start()  # the decoder takes a block per step
        await settle(hub)
        assert s.space.is_set() and s.buffered == 0 and len(eng.steps) == 3
        await hub.stop(timeout_s=0.1)

    asyncio.run(main())


def test_a_client_that_does_not_read_is_closed_too_slow():
    async def main():
        eng = FakeEngine()
        hub = Hub(eng, conf(send_queue_blocks=2, max_buffer_s=10.0))
        await hub.start()
        s = await hub.open()
        for _ in range(4):
            hub.push_audio(s, audio(1))
        await settle(hub)
        items = drain(s)
        assert isinstance(items[-1], Close) and items[-1].code == 4429
        assert json.loads(items[-1].text)["code"] == "too_slow"
        assert len(items) == 1  # the waiting blocks are void
        await hub.stop(timeout_s=0.1)

    asyncio.run(main())


def test_end_finishes_after_the_whole_blocks_and_stops_report_their_reason():
    async def main():
        eng = FakeEngine(stop_after=3)
        hub = Hub(eng, conf(max_buffer_s=10.0))
        await hub.start()
        s, t = await hub.open(), await hub.open()
        hub.push_audio(s, audio(2.5))
        hub.end(s)
        hub.push_audio(t, audio(5))
        await settle(hub)
        items = drain(s)
        assert [type(i) for i in items] == [Outgoing, Outgoing, Close]  # the half block dropped
        assert json.loads(items[-1].text) == {"type": "done", "blocks": 2, "reason": "end_of_input"}
        items = drain(t)
        assert len(items) == 4 and json.loads(items[-1].text)["reason"] == "max_epad"
        await hub.stop(timeout_s=0.1)

    asyncio.run(main())


def test_a_failing_step_fails_its_sessions_and_the_server_goes_on():
    async def main():
        eng = FakeEngine()
        hub = Hub(eng, conf())
        await hub.start()
        bad, good = await hub.open(), await hub.open()
        eng.fail_on = bad.id
        hub.push_audio(bad, audio(1))
        hub.push_audio(good, audio(1))
        await settle(hub)
        assert json.loads(drain(bad)[-1].text)["code"] == "internal_error"
        assert json.loads(drain(good)[-1].text)["code"] == "internal_error"  # same step
        await hub.release(bad)
        await hub.release(good)
        eng.fail_on = None
        s = await hub.open()
        hub.push_audio(s, audio(1))
        await settle(hub)
        assert isinstance(drain(s)[0], Outgoing)
        assert (await hub.status())["engine"]["cache_bytes"] == 100
        await hub.stop(timeout_s=0.1)

    asyncio.run(main())


def test_shutdown_closes_open_sessions_with_going_away():
    async def main():
        eng = FakeEngine(max_blocks=2)
        hub = Hub(eng, conf(max_buffer_s=10.0))
        await hub.start()
        s, t = await hub.open(), await hub.open()
        hub.push_audio(t, audio(3))
        await settle(hub)
        assert json.loads(drain(t)[-1].text)["reason"] == "max_duration"
        await hub.stop(timeout_s=0.1)
        last = drain(s)[-1]
        assert last.code == 1001 and json.loads(last.text)["code"] == "shutdown"
        assert not hub.sessions and sorted(eng.closed_ids) == sorted([s.id, t.id])

    asyncio.run(main())


def test_the_batch_window_gathers_sessions_about_to_complete_a_block():
    async def main():
        eng = FakeEngine()
        hub = Hub(eng, conf(batch_window_s=0.05))
        await hub.start()
        a, b, c = [await hub.open() for _ in range(3)]
        hub.push_audio(b, audio(0.9))  # 160 samples (10 ms) short of a block
        hub.push_audio(c, audio(0.2))  # far from one: not waited for
        hub.push_audio(a, audio(1))  # a is due: the hub waits for b
        await asyncio.sleep(0.01)
        hub.push_audio(b, audio(0.1))
        await settle(hub)
        assert eng.steps == [sorted([a.id, b.id])]
        await hub.stop(timeout_s=0.1)

    asyncio.run(main())


def test_alignment_puts_block_ends_on_the_grid_in_whole_frames():
    async def main():
        eng = FakeEngine()
        hub = Hub(eng, conf(align_blocks=True))
        s = await hub.open()
        hub.started_at = 100.0
        assert hub._lead(100.0 + 7 * 0.1 + 0.043, 0) == 640  # 43 ms: 4.3 frames of 10 ms
        assert hub._lead(100.0 + 0.3, 0) == 0 and hub._lead(100.35, 800) == 0
        s.align(480)
        hub.push_audio(s, audio(1))  # the lead goes before the first audio only
        assert s.lead == 480 and s.buffered == BS + 480 and len(s.blocks) == 1
        s.align(160)
        assert s.lead == 480
        await hub.stop(timeout_s=0.1)

    asyncio.run(main())


def test_a_session_whose_own_part_fails_is_closed_alone():
    class PartlyFailing(FakeEngine):
        def step(self, batch):
            out = super().step(batch)
            out[self.bad] = RuntimeError("its voice failed")
            return out

    async def main():
        eng = PartlyFailing()
        hub = Hub(eng, conf())
        await hub.start()
        bad, good = await hub.open(), await hub.open()
        eng.bad = bad.id
        hub.push_audio(bad, audio(1))
        hub.push_audio(good, audio(1))
        await settle(hub)
        assert "its voice failed" in json.loads(drain(bad)[-1].text)["message"]
        assert isinstance(drain(good)[0], Outgoing)
        await hub.stop(timeout_s=0.1)

    asyncio.run(main())
