"""The event log and its memory store, alone: caps, eviction, expiry, terminal events, readers."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from flowise_sse.errors import Overloaded, StreamTooLarge
from flowise_sse.events import Event, token
from flowise_sse.settings import Settings
from flowise_sse.streams import memory_store
from flowise_sse.streams.event_log import StreamLog
from flowise_sse.streams.memory_store import TERMINAL_RESERVE, MemoryStore
from flowise_sse.streams.sse_encoder import encode

from ..conftest import Clock
from ..helpers import until

END = Event("end", {"text": "the whole answer"})


def store(**overrides) -> MemoryStore:
    return MemoryStore(Settings(**overrides))


def size(stream_id: str, seq: int, event: Event, retry_ms: int | None = None) -> int:
    """The bytes an event takes in the log at position `seq` (the first carries `retry:`)."""
    return len(encode(stream_id, seq, event, retry_ms if seq == 1 else None))


def finished(memory: MemoryStore, stream_id: str) -> StreamLog:
    log = memory.create(stream_id)
    log.append(token("hi"))
    log.append(END, terminal=True)
    return log


def check_accounting(memory: MemoryStore) -> None:
    assert memory.total_bytes == sum(log.size for log in memory.logs.values())
    assert memory.reserved == TERMINAL_RESERVE * sum(not log.finished for log in memory.logs.values())
    assert list(memory.finished) == [k for k in memory.finished if memory.logs[k].finished]
    assert memory.used <= memory.settings.max_total_bytes
    for log in memory.logs.values():
        assert log.size == sum(len(frame) for frame in log.frames)


# --- appending and the per-stream cap -----------------------------------------------------------


def test_append_thenFramesNumberedFromOne_retryOnTheFirstOnly_andBytesCounted():
    memory = store(retry_ms=1500)
    log = memory.create("s1")
    assert [log.append(token("a")), log.append(token("b")), log.append(END, terminal=True)] == [1, 2, 3]
    assert log.frames[0] == b'retry: 1500\nevent: token\ndata: {"text":"a"}\nid: s1:1\n\n'
    assert log.frames[1] == b'event: token\ndata: {"text":"b"}\nid: s1:2\n\n'
    assert log.finished and memory.total_bytes == log.size == sum(map(len, log.frames))


def test_append_whenExactlyAtTheStreamCap_thenStored_andOneByteMoreIsRefusedWithNothingStored():
    first, second = size("s", 1, token("a"), 2000), size("s", 2, token("b"))
    memory = store(max_stream_bytes=first + second)
    log = memory.create("s")
    log.append(token("a"))
    log.append(token("b"))  # exactly the cap
    with pytest.raises(StreamTooLarge, match="FLOWISE_SSE_MAX_STREAM_BYTES"):
        log.append(token("c"))
    assert len(log.frames) == 2 and log.size == first + second and not log.finished
    check_accounting(memory)


def test_terminalEvent_whenTheStreamIsAtItsCap_thenItStillFits():
    memory = store(max_stream_bytes=size("s", 1, token("a"), 2000))
    log = memory.create("s")
    log.append(token("a"))
    with pytest.raises(StreamTooLarge):
        log.append(token("b"))
    error = Event("error", StreamTooLarge("over").to_dict())
    assert log.append(error, terminal=True) == 2
    assert log.finished and log.size > memory.settings.max_stream_bytes
    check_accounting(memory)


def test_oneStreamOverItsCap_thenOtherStreamsUnaffected():
    memory = store(max_stream_bytes=300)
    big, small = memory.create("big"), memory.create("small")
    with pytest.raises(StreamTooLarge):
        big.append(token("x" * 400))
    assert small.append(token("y")) == 1
    check_accounting(memory)


# --- the total cap and eviction -----------------------------------------------------------------


def test_totalCap_whenOnlyRunningStreams_thenRefusedAndNothingEvicted():
    one = size("a", 1, token("x" * 100), 2000)
    memory = store(max_total_bytes=2 * one + 3 * TERMINAL_RESERVE)  # 3 streams' terminal reserves
    a, b = memory.create("a"), memory.create("b")
    a.append(token("x" * 100))
    b.append(token("x" * 100))
    c = memory.create("c")
    with pytest.raises(StreamTooLarge, match="FLOWISE_SSE_MAX_TOTAL_BYTES"):
        c.append(token("x" * 100))
    assert list(memory.logs) == ["a", "b", "c"] and c.frames == []
    check_accounting(memory)


def test_totalCap_thenFinishedStreamsEvictedOldestFirst_onlyAsManyAsNeeded_runningOnesKept():
    memory = store()
    for stream_id in ("old", "running", "middle", "young", "youngest"):
        if stream_id == "running":
            memory.create(stream_id).append(token("still going"))
        else:
            finished(memory, stream_id)
    newcomer = memory.create("new")
    # Room for one more frame once the oldest finished stream is gone: only that one goes.
    memory.settings.max_total_bytes = memory.used - memory.logs["old"].size + size("new", 1, token("z"), 2000)
    newcomer.append(token("z"))
    assert list(memory.logs) == ["running", "middle", "young", "youngest", "new"]
    # Full again; a frame as large as the next two finished streams: both go, oldest first.
    memory.settings.max_total_bytes = memory.used
    wanted = memory.logs["middle"].size + memory.logs["young"].size
    text = "w" * (wanted - size("new", 2, token("")))
    assert size("new", 2, token(text)) == wanted
    newcomer.append(token(text))
    assert list(memory.logs) == ["running", "youngest", "new"]
    assert memory.used == memory.settings.max_total_bytes
    check_accounting(memory)


def test_eviction_isByFinishOrder_whichIsExpiryOrder_notByCreation():
    memory = store()
    early = memory.create("created-first")
    finished(memory, "created-second")  # finishes first
    early.append(END, terminal=True)  # finishes last
    memory.settings.max_total_bytes = memory.used + TERMINAL_RESERVE  # room for one more reserve
    memory.create("new").append(token("x"))
    assert list(memory.logs) == ["created-first", "new"]


def test_terminalEvent_whenTheTotalIsFull_thenEvictsAFinishedStreamToFit():
    memory = store()
    done = memory.create("done")
    done.append(token("d" * 3000))
    done.append(END, terminal=True)
    log = memory.create("running")
    log.append(token("a"))
    memory.settings.max_total_bytes = memory.used
    log.append(Event("end", {"text": "e" * 1500}), terminal=True)  # more than its reserve
    assert list(memory.logs) == ["running"] and log.finished and b"eeee" in log.frames[-1]
    check_accounting(memory)


def test_terminalEvent_whenTheTotalIsFullOfRunningStreams_thenItStillFits_andTheStreamEnds():
    # The stream must be able to say why it stopped: a run whose token passed the total cap ends
    # with `error` `stream_too_large`, which must not itself be refused (that left readers waiting).
    memory = store()
    a, b = memory.create("a"), memory.create("b")
    a.append(token("x" * 100))
    b.append(token("x" * 100))
    memory.settings.max_total_bytes = memory.used
    with pytest.raises(StreamTooLarge):
        a.append(token("one more"))
    a.append(Event("error", StreamTooLarge("full").to_dict()), terminal=True)  # in a's reserve
    assert a.finished and b"stream_too_large" in a.frames[-1]
    check_accounting(memory)  # the total is never passed
    # An `end` too large for b's reserve, with nothing evictable: a short error takes its place.
    memory.settings.max_total_bytes = memory.used
    memory.drop("a")
    b.append(Event("end", {"text": "z" * 5000}), terminal=True)
    assert b.finished and b"stream_too_large" in b.frames[-1]
    check_accounting(memory)


# --- expiry -------------------------------------------------------------------------------------


def test_finishedStream_keptForItsRetention_thenGoneOnAccess(clock: Clock):
    memory = store(stream_retention=60)
    log = finished(memory, "s")
    clock.now += 60
    assert memory.get("s") is log  # at the limit: still there
    clock.now += 0.001
    assert memory.get("s") is None
    assert "s" not in memory.logs and memory.total_bytes == 0


def test_evictExpired_dropsExpiredFinishedStreamsOnly_runningOnesNeverExpire(clock: Clock):
    memory = store(stream_retention=10)
    finished(memory, "expired")
    running = memory.create("running")
    running.append(token("slow"))
    clock.now += 5
    finished(memory, "recent")
    clock.now += 6  # "expired" finished 11 s ago, "recent" 6 s ago; "running" started 11 s ago
    memory.evict_expired()
    assert list(memory.logs) == ["running", "recent"]
    check_accounting(memory)


# --- the number of streams ----------------------------------------------------------------------


def test_maxStreams_whenAllRunning_thenOverloaded503Retryable():
    memory = store(max_streams=2)
    memory.create("a")
    memory.create("b")
    with pytest.raises(Overloaded) as caught:
        memory.create("c")
    assert caught.value.status == 503 and caught.value.code == "overloaded" and caught.value.retryable
    assert "2 streams" in caught.value.message and list(memory.logs) == ["a", "b"]


def test_maxStreams_whenAFinishedStreamIsHeld_thenTheOldestFinishedMakesRoom():
    memory = store(max_streams=3)
    memory.create("running")
    finished(memory, "old")
    finished(memory, "young")
    memory.create("new")
    assert list(memory.logs) == ["running", "young", "new"]
    check_accounting(memory)


def test_drop_thenBytesReturned_andUnknownIdIgnored():
    memory = store()
    finished(memory, "s")
    memory.drop("s")
    memory.drop("s")
    memory.drop("never")
    assert memory.logs == {} and memory.total_bytes == 0


# --- the store under any sequence of operations ------------------------------------------------


class StoreMachine(RuleBasedStateMachine):
    """Random creates, appends, terminal events, drops and clock moves: the accounting stays exact,
    running streams are never evicted, the total is never passed, and only terminal frames may pass
    the per-stream cap."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self._patches = pytest.MonkeyPatch()
        self._patches.setattr(memory_store, "time", self.clock)
        self.memory = store(max_stream_bytes=600, max_total_bytes=1000 + 3 * TERMINAL_RESERVE, max_streams=5,
                            stream_retention=30)
        self.running: set[str] = set()
        self.dropped: set[str] = set()
        self.count = 0

    def teardown(self) -> None:
        self._patches.undo()

    @rule()
    def create(self) -> None:
        stream_id = f"s{self.count}"
        self.count += 1
        try:
            self.memory.create(stream_id)
        except Overloaded:  # nothing finished to evict, and no slot or no room for a terminal reserve
            assert all(not log.finished for log in self.memory.logs.values())
            assert (len(self.memory.logs) == 5
                    or self.memory.used + TERMINAL_RESERVE > self.memory.settings.max_total_bytes)
            return
        self.running.add(stream_id)

    @precondition(lambda self: self.running)
    @rule(data=st.data(), text=st.one_of(st.text(max_size=20), st.integers(50, 300).map("x".__mul__)),
          terminal=st.booleans())
    def append(self, data: st.DataObject, text: str, terminal: bool) -> None:
        stream_id = data.draw(st.sampled_from(sorted(self.running)))
        log = self.memory.logs[stream_id]
        before = len(log.frames)
        try:
            log.append(END if terminal else token(text), terminal=terminal)
        except StreamTooLarge:
            assert not terminal, "a terminal event always fits"
            assert len(log.frames) == before
            return
        if terminal:
            self.running.discard(stream_id)

    @precondition(lambda self: self.memory.logs)
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        stream_id = data.draw(st.sampled_from(sorted(self.memory.logs)))
        self.memory.drop(stream_id)
        self.running.discard(stream_id)
        self.dropped.add(stream_id)

    @rule(seconds=st.floats(0, 40))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds
        self.memory.evict_expired()

    @invariant()
    def accounting_is_exact(self) -> None:
        check_accounting(self.memory)

    @invariant()
    def running_streams_are_never_evicted(self) -> None:
        assert self.running <= set(self.memory.logs)

    @invariant()
    def caps_hold_the_total_always_the_stream_cap_but_for_terminal_frames(self) -> None:
        assert self.memory.used <= self.memory.settings.max_total_bytes
        assert len(self.memory.logs) <= 5
        for log in self.memory.logs.values():
            assert log.size - (len(log.frames[-1]) if log.finished else 0) <= 600


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = hypothesis_settings(max_examples=150, stateful_step_count=40, deadline=None)


# --- readers ------------------------------------------------------------------------------------


def new_log() -> StreamLog:
    return store().create("s")


async def collect(log: StreamLog, after: int, should_stop=lambda: False) -> list[bytes]:
    return [chunk async for chunk in log.frames_after(after, should_stop)]


async def test_reader_whenTheStreamIsFinished_thenReplaysWhatFollowsItsPosition_inOneWrite():
    log = new_log()
    for text in "abc":
        log.append(token(text))
    log.append(END, terminal=True)
    assert await collect(log, 0) == [b"".join(log.frames)]
    assert await collect(log, 2) == [log.frames[2] + log.frames[3]]
    assert await collect(log, 4) == []  # at the end of a finished log: nothing, and no wait
    assert await collect(log, 99) == []


async def test_reader_replayThenLive_thenEachNewFrameAsItComes_untilTheTerminalEvent():
    log = new_log()
    log.append(token("a"))
    log.append(token("b"))
    reader = log.frames_after(0, lambda: False)
    assert await anext(reader) == log.frames[0] + log.frames[1]
    waiting = asyncio.ensure_future(anext(reader))
    await until(lambda: log._waiting == 1, what="the reader waits")
    log.append(token("c"))
    assert await waiting == log.frames[2]
    waiting = asyncio.ensure_future(anext(reader))
    await until(lambda: log._waiting == 1)
    log.append(END, terminal=True)
    assert await waiting == log.frames[3]
    with pytest.raises(StopAsyncIteration):
        await anext(reader)
    assert log._waiting == 0


async def test_reader_whenBusyWhileFramesPileUp_thenGetsThemAsOneWrite():
    log = new_log()
    log.append(token("a"))
    reader = log.frames_after(0, lambda: False)
    assert await anext(reader) == log.frames[0]
    for text in "bcd":  # the reader is busy elsewhere: it is not waiting, nobody is woken
        log.append(token(text))
    assert log._waiting == 0
    assert await anext(reader) == b"".join(log.frames[1:])
    await reader.aclose()


async def test_severalReaders_fromDifferentPositions_thenEachGetsItsOwnSuffix():
    log = new_log()
    log.append(token("a"))
    readers = [asyncio.create_task(collect(log, after)) for after in (0, 1, 1)]
    await until(lambda: log._waiting == 3, what="three readers wait")
    log.append(token("b"))
    log.append(END, terminal=True)
    a, b, c = await asyncio.gather(*readers)
    assert b"".join(a) == b"".join(log.frames)
    assert b"".join(b) == b"".join(c) == b"".join(log.frames[1:])


async def test_shouldStop_whenCaughtUp_thenTheReaderEnds_butNotBeforeWhatIsAlreadyThere():
    log = new_log()
    log.append(token("a"))
    log.append(token("b"))
    assert await collect(log, 0, should_stop=lambda: True) == [log.frames[0] + log.frames[1]]


async def test_shouldStop_whileWaiting_thenAWakeEndsTheReader():
    log = new_log()
    stop = False
    reader = asyncio.create_task(collect(log, 0, should_stop=lambda: stop))
    await until(lambda: log._waiting == 1)
    stop = True
    log.wake()
    assert await asyncio.wait_for(reader, 5) == []
    assert log._waiting == 0


async def test_reader_whenCancelledWhileWaiting_thenNotCountedAsWaiting():
    log = new_log()
    reader = asyncio.create_task(collect(log, 0))
    await until(lambda: log._waiting == 1)
    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    assert log._waiting == 0
    log.append(token("a"))  # wakes nobody, fails nothing
    assert len(log.frames) == 1
