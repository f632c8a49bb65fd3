"""The four time limits of a prediction (`bounded`, its `Watchdog`), with real timers of tens of ms.

The upstream here is a generator that waits on conditions the test controls, so that a limit
fires only because the upstream is silent; the timings asserted are lower bounds (a limit never
fires early) and generous upper ones (it fires, on a loaded machine too).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from flowise_sse.errors import UpstreamTimeout
from flowise_sse.events import END, START, Event, token
from flowise_sse.settings import Settings
from flowise_sse.upstream.timeouts import Watchdog, bounded

SLACK = 1.0  # how late a limit may fire on a busy machine


def limits(**overrides: float) -> Settings:
    return Settings(**{"connect_timeout": 5, "first_event_timeout": 5, "idle_timeout": 5, "total_timeout": 30,
                       **overrides})


class Upstream:
    """Yields what the test releases, in order; silent until then. Remembers it was closed."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self.closed = False
        self.waiting = False

    def send(self, *events: Event) -> None:
        for event in events:
            self.queue.put_nowait(event)

    async def events(self) -> AsyncIterator[Event]:
        try:
            while True:
                self.waiting = True
                event = await self.queue.get()
                self.waiting = False
                if event is None:
                    return
                yield event
        finally:
            self.closed = True


def watchdog_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    return [handle for handle in loop._scheduled  # type: ignore[attr-defined]
            if not handle.cancelled() and getattr(handle._callback, "__func__", None) is Watchdog._check]


async def timed_out(upstream: Upstream, settings: Settings, consumed: list[Event] | None = None) -> tuple[str, float]:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(UpstreamTimeout) as caught:
        async for event in bounded(upstream.events(), settings):
            if consumed is not None:
                consumed.append(event)
    assert caught.value.status == 504 and caught.value.code == "upstream_timeout" and caught.value.retryable
    return caught.value.message, loop.time() - started


async def test_connect_whenNothingComes_thenTimeoutNamingTheConnectLimit():
    upstream = Upstream()
    message, took = await timed_out(upstream, limits(connect_timeout=0.05))
    assert message == "Flowise took too long to open the stream (0.05 s)"
    assert 0.05 <= took < 0.05 + SLACK
    assert upstream.closed, "the upstream generator is finalized"


async def test_firstEvent_whenSilentAfterStart_thenTimeoutNamingTheFirstEventLimit():
    upstream = Upstream()
    upstream.send(Event(START, {}))
    consumed: list[Event] = []
    message, took = await timed_out(upstream, limits(connect_timeout=0.02, first_event_timeout=0.08), consumed)
    assert message == "Flowise took too long to send a first event (0.08 s)"
    assert [e.event for e in consumed] == [START] and 0.08 <= took < 0.08 + SLACK


async def test_idle_whenSilentBetweenTokens_thenTimeoutNamingTheIdleLimit():
    upstream = Upstream()
    upstream.send(Event(START, {}), token("a"), token("b"))
    consumed: list[Event] = []
    message, took = await timed_out(upstream, limits(first_event_timeout=0.02, idle_timeout=0.06), consumed)
    assert message == "Flowise took too long between two events (idle limit 0.06 s)"
    assert [e.text for e in consumed] == ["", "a", "b"] and 0.06 <= took < 0.06 + SLACK


async def test_total_whenTokensKeepComingPastTheTotalLimit_thenTimeoutNamingTheTotalLimit():
    upstream = Upstream()
    upstream.send(Event(START, {}))

    async def trickle() -> None:  # the scenario: a token every 10 ms, each well inside the idle limit
        while True:
            await asyncio.sleep(0.01)
            upstream.send(token("."))

    feeder = asyncio.create_task(trickle())
    try:
        consumed: list[Event] = []
        message, took = await timed_out(upstream, limits(idle_timeout=0.5, total_timeout=0.15), consumed)
    finally:
        feeder.cancel()
    assert message == "Flowise took too long within the total limit of 0.15 s"
    assert 0.15 <= took < 0.15 + SLACK and len(consumed) > 3


async def test_consumerTime_doesNotCountAgainstTheLimits():
    # Each event is ready at once; the consumer holds each one for three idle limits.
    upstream = Upstream()
    upstream.send(Event(START, {}), token("a"), token("b"), Event(END, {}), None)
    loop = asyncio.get_running_loop()
    seen = []
    async for event in bounded(upstream.events(), limits(connect_timeout=0.03, first_event_timeout=0.03,
                                                          idle_timeout=0.03)):
        seen.append(event.event)
        held_until = loop.time() + 0.09
        while loop.time() < held_until:  # the consumer busy elsewhere, yielding to the loop
            await asyncio.sleep(0.01)
    assert seen == [START, "token", "token", END]
    assert watchdog_timers(loop) == []


async def test_aLongerLimitAfterAShortOne_thenTheShortOneDoesNotFire():
    # The one timer was set for the connect limit; the first-event limit is longer: it moves on.
    upstream = Upstream()
    upstream.send(Event(START, {}))
    settings = limits(connect_timeout=0.02, first_event_timeout=0.5)
    events = bounded(upstream.events(), settings)
    assert (await anext(events)).event == START
    pending = asyncio.ensure_future(anext(events))
    loop = asyncio.get_running_loop()
    released_at = loop.time() + 0.1  # five connect limits
    while loop.time() < released_at:
        assert not pending.done(), pending
        await asyncio.sleep(0.01)
    upstream.send(token("late but in time"))
    assert (await pending).text == "late but in time"
    await events.aclose()
    assert watchdog_timers(loop) == []


@pytest.mark.parametrize("how", ["finished", "closed early", "timed out"])
async def test_noTimerLeftBehind_andTheTaskNotLeftCancelling(how):
    loop = asyncio.get_running_loop()
    upstream = Upstream()
    upstream.send(Event(START, {}), token("a"))
    events = bounded(upstream.events(), limits(first_event_timeout=0.03, idle_timeout=0.03))
    assert (await anext(events)).event == START
    if how == "finished":
        upstream.send(Event(END, {}), None)
        assert [e.event async for e in events] == ["token", END]
    elif how == "closed early":
        await events.aclose()
    else:
        with pytest.raises(UpstreamTimeout):
            async for _ in events:
                pass
    assert upstream.closed or how == "closed early"  # closing its source is the caller's (adapter.py)
    assert watchdog_timers(loop) == []
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.05)  # the task goes on as usual: no cancellation left pending for it


async def test_cancelledFromOutside_thenCancelledError_notATimeout():
    upstream = Upstream()

    async def consume() -> None:
        async for _ in bounded(upstream.events(), limits()):
            pass

    task = asyncio.create_task(consume())
    while not upstream.waiting:
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert upstream.closed and watchdog_timers(asyncio.get_running_loop()) == []


async def test_drivenFromSeveralTasks_thenTheLimitFiresInTheTaskWaiting():
    # The sync twin (library.py) steps the generator from a new task each time.
    upstream = Upstream()
    upstream.send(Event(START, {}), token("a"))
    events = bounded(upstream.events(), limits(first_event_timeout=0.05, idle_timeout=0.05))
    assert (await asyncio.create_task(anext(events))).event == START
    assert (await asyncio.create_task(anext(events))).text == "a"
    with pytest.raises(UpstreamTimeout, match="idle limit 0.05 s"):
        await asyncio.create_task(anext(events))
    assert watchdog_timers(asyncio.get_running_loop()) == []
