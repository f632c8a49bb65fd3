"""The stream lifecycle in-process: a `StreamManager` over a scripted upstream, no sockets, no
timers. One test per row of ARCHITECTURE.md's "Who ends a stream" and "Races, flow by flow",
each an ordering of events written down."""

from __future__ import annotations

import asyncio
from contextlib import aclosing

import pytest

from flowise_sse.errors import (
    ChatBusy,
    Overloaded,
    ShuttingDown,
    StreamTooLarge,
    TooManyStreams,
    UpstreamError,
    UpstreamTimeout,
)
from flowise_sse.settings import Settings
from flowise_sse.streams import MemoryStore, StreamManager
from flowise_sse.streams import rejoin as rejoin_module
from flowise_sse.upstream.prediction import Prediction

from ..scripted_upstream import ScriptedUpstream, frame_events, settle

FLOW = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"


@pytest.fixture
def upstream() -> ScriptedUpstream:
    return ScriptedUpstream()


@pytest.fixture
async def manager_for(upstream):
    made: list[StreamManager] = []

    def make(**overrides) -> StreamManager:
        settings = Settings(**overrides)
        manager = StreamManager(settings, upstream, MemoryStore(settings))
        made.append(manager)
        return manager

    yield make
    for manager in made:
        for run in list(manager.runs.values()):
            run.abort("the test is over")
        await manager.close()


@pytest.fixture
def manager(manager_for) -> StreamManager:
    return manager_for()


def ask(chat_id: str = "chat-1", question: str = "q") -> Prediction:
    return Prediction(question=question, chat_id=chat_id)


async def started(manager: StreamManager, upstream: ScriptedUpstream, chat_id: str = "chat-1", **kwargs):
    """A run past its `start`, and its script."""
    pending = asyncio.ensure_future(manager.start(FLOW, ask(chat_id), **kwargs))
    script = await upstream.opened(len(upstream.scripts) + 1)
    script.start()
    return await pending, script


async def read_all(manager: StreamManager, stream_id: str, after: int = 0, owner: str | None = None) -> list:
    reading = await manager.follow(stream_id, after, owner)
    assert reading is not None
    async with aclosing(reading.frames) as chunks:
        return frame_events([chunk async for chunk in chunks])


def names(events) -> list[str]:
    return [name for name, _ in events]


def held(manager: StreamManager) -> tuple[int, bool, int]:
    """What admission lent, still out: runs registered, the chat claimed, slots of owner `k`."""
    return len(manager.runs), "chat-1" in manager.chats, manager.slots.running("k")


# --- Who ends a stream ---------------------------------------------------------------------------
async def test_flowiseFinishes_thenReadersGetEnd_andWhatWasLentIsGivenBack(manager, upstream):
    run, script = await started(manager, upstream, owner="k")
    reader = asyncio.ensure_future(read_all(manager, run.id, owner="k"))
    script.token("Hel").token("lo").end("Hello")
    assert names(await reader) == ["start", "token", "token", "end"]
    assert "chat-1" not in manager.chats  # at the terminal event, before the transport is done
    script.finish()
    await run.task
    assert held(manager) == (0, False, 0) and run.phase == "ended" and script.finished


async def test_flowiseFails_afterStart_thenErrorWithItsCode(manager, upstream):
    run, script = await started(manager, upstream)
    script.token("x").fail(UpstreamError("the LLM failed"))
    await run.task
    events = frame_events(run.log.frames)
    assert names(events) == ["start", "token", "error"]
    assert events[-1][1]["code"] == "upstream_error" and events[-1][1]["message"] == "the LLM failed"
    assert script.closed.is_set() and held(manager) == (0, False, 0)


async def test_flowiseFails_beforeStart_thenStartRaisesAndNothingIsKept(manager, upstream):
    pending = asyncio.ensure_future(manager.start(FLOW, ask(), owner="k"))
    (await upstream.opened()).fail(UpstreamError("unknown chatflow"))
    with pytest.raises(UpstreamError):
        await pending
    await settle()
    assert held(manager) == (0, False, 0) and manager.store.logs == {}


@pytest.mark.parametrize("when", ["before start", "after start"])
async def test_timeout_thenRaisedBeforeStart_orErrorAfterIt(manager, upstream, when):
    if when == "before start":
        pending = asyncio.ensure_future(manager.start(FLOW, ask()))
        (await upstream.opened()).fail(UpstreamTimeout("Flowise took too long to open the stream"))
        with pytest.raises(UpstreamTimeout):
            await pending
        return
    run, script = await started(manager, upstream)
    script.fail(UpstreamTimeout("Flowise took too long between two events"))
    await run.task
    assert frame_events(run.log.frames)[-1][1]["code"] == "upstream_timeout"


async def test_delete_thenReadersGetAborted_andTheUpstreamIsClosed(manager, upstream):
    run, script = await started(manager, upstream)
    reader = asyncio.ensure_future(read_all(manager, run.id))
    script.token("x")
    await settle()
    assert await manager.stop(run.id)
    events = await reader
    assert names(events) == ["start", "token", "error"] and events[-1][1]["code"] == "aborted"
    assert script.closed.is_set() and not script.finished and held(manager) == (0, False, 0)


@pytest.mark.parametrize("policy", ["continue", "abort"])
async def test_lastReaderLeaves_thenTheRunGoesOn_orIsAborted_perOnClientDisconnect(manager_for, upstream, policy):
    manager = manager_for(on_client_disconnect=policy)
    run, script = await started(manager, upstream)
    reading = await manager.follow(run.id, 0)
    async with aclosing(reading.frames) as chunks:
        await anext(chunks)
        assert run.readers == 1
    assert run.readers == 0
    await settle()
    assert run.done is (policy == "abort") and script.closed.is_set() is (policy == "abort")


async def test_streamOverItsCap_thenStreamTooLarge_andTheUpstreamIsClosed(manager_for, upstream):
    manager = manager_for(max_stream_bytes=2000)
    run, script = await started(manager, upstream)
    for _ in range(40):
        script.token("x" * 100)
    await run.task
    assert frame_events(run.log.frames)[-1][1]["code"] == StreamTooLarge.code
    assert script.closed.is_set() and not script.finished


@pytest.mark.parametrize("finishes_in_time", [True, False])
async def test_shutdown_thenRunsGetTheGrace_thenTheRestAreAborted(manager_for, upstream, finishes_in_time):
    manager = manager_for(shutdown_grace=0 if not finishes_in_time else 30)
    run, script = await started(manager, upstream)
    closing = asyncio.ensure_future(manager.close())
    await settle()
    with pytest.raises(ShuttingDown):
        await manager.start(FLOW, ask("chat-2"))
    if finishes_in_time:
        script.end("done").finish()
    await closing
    assert names(frame_events(run.log.frames))[-1] == ("end" if finishes_in_time else "error")


# --- Races, flow by flow ----------------------------------------------------------------------------
async def test_clientLeavesBeforeStart_thenNobodyCanWantTheRun_soItIsAbortedAtOnce(manager, upstream):
    pending = asyncio.ensure_future(manager.start(FLOW, ask(), owner="k"))
    script = await upstream.opened()
    pending.cancel()
    await asyncio.gather(pending, return_exceptions=True)
    await script.closed.wait()
    await settle()
    assert held(manager) == (0, False, 0)


async def test_getClientLeavesBeforeStart_thenTheRunIsKept_andTheSameRequestJoinsIt(manager, upstream):
    first = asyncio.ensure_future(manager.start(FLOW, ask(), request_key="k1"))
    script = await upstream.opened()
    first.cancel()  # the EventSource dropped before its first event
    await asyncio.gather(first, return_exceptions=True)
    assert len(manager.runs) == 1 and not script.closed.is_set()
    again = asyncio.ensure_future(manager.start(FLOW, ask(), request_key="k1"))
    await settle()
    script.start().token("hi").end("hi").finish()
    run = await again
    assert names(await read_all(manager, run.id)) == ["start", "token", "end"]
    assert len(upstream.scripts) == 1  # one prediction, and no 409 on its own chat


async def test_rejoin_afterTheEnd_joinsUntilDelivered_orUntilTheWindowPassed(manager, upstream, monkeypatch):
    run, script = await started(manager, upstream, request_key="k1")
    script.end("done").finish()
    await run.task
    assert await manager.start(FLOW, ask(), request_key="k1") is run  # ended, undelivered, in the window
    now = rejoin_module.time.monotonic()
    monkeypatch.setattr(rejoin_module.time, "monotonic", lambda: now + manager.settings.get_rejoin_window + 1)
    assert manager.rejoins.join("k1") is None  # the window passed: a new question
    run, script = await started(manager, upstream, request_key="k2")
    script.end("done").finish()
    await read_all(manager, run.id)  # a reader got it whole
    await run.task
    assert manager.rejoins.join("k2") is None


async def test_rejoin_whenDeliveredWhileTheTransportStillReadsAfterTheEnd_thenANewQuestion(manager, upstream):
    run, script = await started(manager, upstream, request_key="k1")
    script.end("done")  # no finish(): the run's task goes on, reading the rest of the response
    assert names(await read_all(manager, run.id)) == ["start", "end"]  # a reader got it whole
    assert not run.done
    assert manager.rejoins.join("k1") is None
    again = asyncio.ensure_future(manager.start(FLOW, ask(), request_key="k1"))
    (await upstream.opened(2)).start()  # a second prediction, on the chat the end gave back
    assert (await again) is not run
    script.finish()


async def test_clientLeavesAfterStart_thenTheStreamGoesOn_andResumesWithNoGapNorDuplicate(manager, upstream):
    run, script = await started(manager, upstream)
    reading = await manager.follow(run.id, 0)
    async with aclosing(reading.frames) as chunks:
        first = frame_events(await anext(chunks))
    script.token("a").token("b").end("ab").finish()
    await run.task
    assert names(first) == ["start"]
    resumed = await read_all(manager, run.id, after=len(first))
    assert names(resumed) == ["token", "token", "end"] and [d.get("text") for _, d in resumed] == ["a", "b", "ab"]
    for after in range(len(run.log.frames)):
        assert len(await read_all(manager, run.id, after)) == len(run.log.frames) - after


async def test_upstreamEndsWhileReadersWait_thenEveryReaderGetsTheEnd(manager, upstream):
    run, script = await started(manager, upstream)
    readers = [asyncio.ensure_future(read_all(manager, run.id)) for _ in range(3)]
    await settle()
    assert run.readers == 3
    script.token("x").end("x").finish()
    for events in await asyncio.gather(*readers):
        assert names(events) == ["start", "token", "end"]


async def test_pastTheEnd_thenNothingFollows(manager, upstream):
    run, script = await started(manager, upstream)
    script.end("x").finish()
    await run.task
    assert await manager.follow(run.id, len(run.log.frames)) is None
    assert await manager.follow(run.id, len(run.log.frames) + 5) is None


async def test_twoPredictionsOnOneChat_thenTheSecondIsBusy_untilTheFirstsTerminalEvent(manager, upstream):
    run, script = await started(manager, upstream)
    with pytest.raises(ChatBusy) as refused:
        await manager.start(FLOW, ask())
    assert run.id not in refused.value.message  # no message names another request's stream
    script.end("x")  # the transport still reads the rest of the response: the chat is free already
    await settle()
    assert not run.done
    second, _ = await started(manager, upstream)
    assert second.id != run.id


async def test_deleteInTheSameTickAsATimeout_thenReportedAsAborted(manager, upstream):
    run, script = await started(manager, upstream)
    run.abort("stopped by DELETE")
    script.fail(UpstreamTimeout("Flowise took too long between two events"))
    await run.task
    last = frame_events(run.log.frames)[-1][1]
    assert last["code"] == "aborted"


async def test_stopAfterTheTerminalEvent_thenTheEndStaysTheLastWord(manager, upstream):
    run, script = await started(manager, upstream)
    script.end("x")
    await settle()
    assert await manager.stop(run.id)  # lands while the transport reads the rest
    assert names(frame_events(run.log.frames)) == ["start", "end"]


async def test_upstreamStopsWithoutATerminalEvent_thenUpstreamError(manager, upstream):
    run, script = await started(manager, upstream)
    script.fail(StopAsyncIteration())  # a generator that just returns
    await run.task
    assert frame_events(run.log.frames)[-1][1]["code"] in ("upstream_error", "internal_error")


async def test_aBugInTheUpstream_stillEndsTheStreamClearly(manager, upstream):
    run, script = await started(manager, upstream)
    script.fail(KeyError("oops"))
    await run.task
    assert frame_events(run.log.frames)[-1][1]["code"] == "internal_error"


# --- admission: what a refusal gives back ---------------------------------------------------------
async def test_admission_whenTheStoreIsFull_thenTheChatAndTheSlotAreGivenBack(manager_for, upstream):
    manager = manager_for(max_streams=1)
    await started(manager, upstream, chat_id="other", owner="k")
    with pytest.raises(Overloaded):
        await manager.start(FLOW, ask(), owner="k")
    assert "chat-1" not in manager.chats and manager.slots.running("k") == 1


async def test_admission_whenTheOwnerHasNoSlotLeft_thenTheChatIsGivenBack(manager_for, upstream):
    manager = manager_for(max_streams_per_key=1)
    await started(manager, upstream, chat_id="other", owner="k")
    with pytest.raises(TooManyStreams):
        await manager.start(FLOW, ask(), owner="k")
    assert "chat-1" not in manager.chats and len(manager.store.logs) == 1


async def test_predictionSlot_holdsTheChatAndTheSlot_andGivesThemBackWhenCancelled(manager):
    inside = asyncio.Event()

    async def predict() -> None:
        async with manager.prediction_slot("chat-1", "k"):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.ensure_future(predict())
    await inside.wait()
    assert "chat-1" in manager.chats and manager.slots.running("k") == 1
    with pytest.raises(ChatBusy):
        await manager.start(FLOW, ask())
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert held(manager) == (0, False, 0)


# --- readers that cannot resume (the OpenAI routes) ----------------------------------------------
async def test_abortWhenUnread_thenTheLastHolderLeavingAbortsIt_unlessAnotherReaderHolds(manager, upstream):
    run, script = await started(manager, upstream, abort_when_unread=True)
    release = manager.hold(run)
    other = await manager.follow(run.id, 0)
    async with aclosing(other.frames) as chunks:
        await anext(chunks)
        release()
        await settle()
        assert not run.done  # someone still reads it by its id
    await settle()
    assert run.done and script.closed.is_set()
    assert frame_events(run.log.frames)[-1][1]["code"] == "aborted"


async def test_drain_withoutRedis_thenReadersStayToTheEnd_newStreamsRefused(manager, upstream):
    run, script = await started(manager, upstream)
    reader = asyncio.ensure_future(read_all(manager, run.id))
    manager.begin_drain()
    with pytest.raises(ShuttingDown):
        await manager.start(FLOW, ask("chat-2"))
    script.token("x").end("x").finish()
    assert names(await reader) == ["start", "token", "end"]
