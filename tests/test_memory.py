"""The in-memory store: its caps, eviction order, expiry, O(1) bookkeeping, and a full total cap
that never wedges the gateway."""

from __future__ import annotations

import asyncio
import gc
import time

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID
from flowise_sse.errors import Overloaded, StreamTooLarge
from flowise_sse.events import END, ERROR, Event
from flowise_sse.settings import Settings
from flowise_sse.streams import MemoryStore
from flowise_sse.streams.event_log import READ_BATCH_BYTES
from flowise_sse.streams.memory_store import TERMINAL_RESERVE

from .servers import aread_sse


def store(**overrides) -> MemoryStore:
    return MemoryStore(Settings(**{"max_total_bytes": 1 << 30, **overrides}))


def finished_stream(s: MemoryStore, stream_id: str, text: str = "hello") -> None:
    log = s.create(stream_id)
    log.append(Event("token", {"text": text}))
    log.append(Event(END, {"text": text}), terminal=True)


def test_maxStreams_whenAllRunning_thenOverloaded_andWhenSomeFinished_thenOldestFinishedMakesRoom(clock):
    s = store(max_streams=3)
    finished_stream(s, "old")
    clock.now += 1
    finished_stream(s, "newer")
    s.create("running")
    s.create("fourth")  # evicts "old", the oldest finished
    assert list(s.logs) == ["newer", "running", "fourth"]
    s.create("fifth")
    assert list(s.logs) == ["running", "fourth", "fifth"]
    with pytest.raises(Overloaded):
        s.create("sixth")  # all three are running: nothing may be evicted


def test_totalCap_whenFull_thenFinishedStreamsEvictedOldestFirst_andRunningOnesNever(clock):
    s = store(max_total_bytes=20_000)
    for name in ("first", "second", "third"):
        finished_stream(s, name, "x" * 2000)
        clock.now += 1
    running = s.create("running")
    evicted = []
    while s.finished:
        held = list(s.finished)
        running.append(Event("token", {"text": "x" * 1000}))
        evicted += [name for name in held if name not in s.logs]
        assert s.used <= s.settings.max_total_bytes
    assert evicted == ["first", "second", "third"]
    with pytest.raises(StreamTooLarge, match="MAX_TOTAL_BYTES"):
        for _ in range(20):
            running.append(Event("token", {"text": "x" * 1000}))
    assert "running" in s.logs and s.used <= s.settings.max_total_bytes


def test_perStreamCap_thenStreamTooLarge_butItsTerminalEventStillFits(clock):
    s = store(max_stream_bytes=2000)
    log = s.create("a")
    log.append(Event("token", {"text": "x" * 1500}))
    with pytest.raises(StreamTooLarge, match="MAX_STREAM_BYTES"):
        log.append(Event("token", {"text": "x" * 1500}))
    log.append(Event(ERROR, StreamTooLarge("over").to_dict()), terminal=True)
    assert log.finished and b"stream_too_large" in log.frames[-1]


def test_runningStreamsFillTheTotal_thenEveryOneStillEndsWithATerminalEvent_andTheStoreRecovers(clock):
    s = store(max_total_bytes=8 * TERMINAL_RESERVE + 20_000, max_stream_bytes=1 << 20)
    logs = [s.create(f"s{i}") for i in range(8)]
    with pytest.raises(StreamTooLarge):
        while True:
            for log in logs:
                log.append(Event("token", {"text": "y" * 500}))
    assert s.used <= s.settings.max_total_bytes
    with pytest.raises(Overloaded, match="memory is full"):
        s.create("new")  # no reserve left for a ninth stream, nothing finished to evict
    # An `end` carrying the whole answer cannot fit: a short error takes its place.
    logs[0].append(Event(END, {"text": "z" * 50_000}), terminal=True)
    assert b"stream_too_large" in logs[0].frames[-1] and logs[0].finished
    for log in logs[1:]:
        log.append(Event(ERROR, StreamTooLarge("full").to_dict()), terminal=True)
        assert log.finished
    assert s.used <= s.settings.max_total_bytes
    finished_stream(s, "new")  # the finished ones make room: no restart needed
    for i in range(3):
        finished_stream(s, f"later{i}", "w" * 3000)
    assert "later2" in s.logs and "s0" not in s.logs and s.used <= s.settings.max_total_bytes


def test_expiry_thenExpiredStreamsGoFromTheFront_andRunningOnesStay(clock):
    s = store(stream_retention=10)
    finished_stream(s, "a")
    clock.now += 5
    finished_stream(s, "b")
    running = s.create("running")
    clock.now += 6  # a: 11 s old, b: 6 s
    assert s.get("a") is None
    s.evict_expired()
    assert list(s.logs) == ["b", "running"]
    clock.now += 1000
    s.evict_expired()
    assert list(s.logs) == ["running"] and s.get("running") is running
    assert s.total_bytes == running.size and s.reserved == TERMINAL_RESERVE


def test_bookkeeping_whenTheStoreHoldsTenThousandFinishedStreams_thenCostsWhatItCostsEmpty():
    def per_stream_seconds(s: MemoryStore, prefix: str) -> float:
        best = float("inf")
        gc.disable()  # the collector's pauses are another matter: this is the store's own work
        try:
            for round_ in range(5):
                started = time.perf_counter()
                for i in range(300):
                    finished_stream(s, f"{prefix}{round_}-{i}")
                s.evict_expired()
                best = min(best, (time.perf_counter() - started) / 300)
        finally:
            gc.enable()
        return best

    empty = per_stream_seconds(store(max_streams=100_000), "e")
    full = store(max_streams=10_000)  # each new stream evicts the oldest finished one
    for i in range(10_000):
        finished_stream(full, f"held{i}")
    held = per_stream_seconds(full, "f")
    assert len(full.logs) == 10_000
    # Before: a copy of every log per stream (~5-19 ms at 10,000 held, 1000x the empty store).
    assert held < 5 * empty + 20e-6, (held, empty)


async def test_readers_shareTheLogsFrames_andNoneHoldsMoreThanOneBatch():
    s = store()
    log = s.create("a")
    for _ in range(4000):
        log.append(Event("token", {"text": "t" * 1000}))
    big = log.append(Event("token", {"text": "b" * 200_000}))
    log.append(Event(END, {}), terminal=True)
    readers = [log.frames_after(0, lambda: False) for _ in range(50)]
    first = [await reader.__anext__() for reader in readers]
    assert all(len(chunk) <= READ_BATCH_BYTES for chunk in first)
    chunks = [chunk async for chunk in readers[0]]
    assert b"".join([first[0], *chunks]) == b"".join(log.frames)
    assert any(chunk is log.frames[big - 1] for chunk in chunks)  # the log's own object, no copy
    assert max(len(c) for c in chunks if c is not log.frames[big - 1]) <= READ_BATCH_BYTES
    for reader in readers:
        await reader.aclose()


async def test_evictedLog_thenItsReadersStop():
    s = store(max_streams=1)
    finished_stream(s, "a")
    reader = s.logs["a"].frames_after(1, lambda: False)
    s.create("b")  # evicts a
    assert [chunk async for chunk in reader] == []


# --- the same through a gateway -----------------------------------------------------------
def _held(tokens: int, size: int) -> dict:
    # Tokens, then the mock LLM stalls: the stream keeps running, holding its bytes.
    return {"chatflowId": DEMO_CHATFLOW_ID, "question": "fill",
            "overrideConfig": {"emulator": {"tokens": ["x" * size] * tokens, "hangAfter": tokens}}}


async def _read_until(client: httpx.AsyncClient, url: str, tokens: int | None = None) -> list:
    async with client.stream("GET", url) as r:
        assert r.status_code == 200
        events = []
        async for e in _aiter(r):
            events.append(e)
            if tokens is not None and sum(x.event == "token" for x in events) >= tokens:
                break
        return events


async def _aiter(r: httpx.Response):
    import orjson
    from httpx_sse import EventSource

    from .servers import Sse

    async for e in EventSource(r).aiter_sse():
        if e.data:
            yield Sse(e.event, e.id, orjson.loads(e.data))


async def test_runningStreamsFillMaxTotalBytes_thenReadersGetTerminalEvents_deleteWorks_andNewStreamsRun(
    emulators, gateways, caplog
):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url, max_total_bytes=64 * 1024, max_stream_bytes=1 << 20, idle_timeout=60)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        first = (await client.post("/v1/streams", json=_held(500, 30))).json()
        await _read_until(client, first["eventsUrl"], tokens=500)  # ~42 KB held, still running
        second = (await client.post("/v1/streams", json=_held(500, 30))).json()
        events = await asyncio.wait_for(_read_until(client, second["eventsUrl"]), 10)
        assert events[-1].event == "error" and events[-1].data["code"] == "stream_too_large"
        assert "event memory full" in caplog.text  # the operator is told
        assert (await client.delete(f"/v1/streams/{first['streamId']}")).status_code == 204
        events = await asyncio.wait_for(_read_until(client, first["eventsUrl"]), 10)
        assert events[-1].event == "error" and events[-1].data["code"] == "aborted"
        async with client.stream("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "again"}) as r:
            assert r.status_code == 200
            assert (await aread_sse(r))[-1].event == "end"
