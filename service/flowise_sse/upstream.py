"""Streaming a prediction from Flowise, whatever its version: pick the transport, bound the time.

`Upstream` owns what is shared between predictions (the HTTP pool, the socket.io pool, the
remembered version) and turns one prediction into one stream of normalized events.
"""

from __future__ import annotations

import asyncio
from contextlib import aclosing
from typing import AsyncIterator

from .errors import UpstreamTimeout
from .events import START, TERMINAL, Event
from .flowise import FlowiseClient
from .prediction import Prediction
from .settings import Settings
from .transports.socketio import SocketPool, stream_socketio
from .transports.sse import stream_sse


class Upstream:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.flowise = FlowiseClient(settings)
        self.sockets = SocketPool(self.flowise, settings.socketio_pool_size)
        self._aborts: set[asyncio.Task] = set()

    async def warm_up(self) -> None:
        """Learn the transport and, for socket.io, connect the pool, before the first request."""
        if (await self.flowise.version()).transport == "socketio":
            self.sockets.warm()

    async def aclose(self) -> None:
        await asyncio.gather(*self._aborts, return_exceptions=True)
        await self.sockets.close()
        await self.flowise.aclose()

    async def stream(self, chatflow_id: str, prediction: Prediction) -> AsyncIterator[Event]:
        """Yield `start`, tokens and relayed events, then `end`; raise a `GatewayError` on failure.

        Closing the generator early closes the upstream connection and asks Flowise to abort.
        """
        finished = False
        try:
            async with aclosing(self._open(chatflow_id, prediction)) as events:
                async for event in _bounded(events, self.settings):
                    finished = event.event in TERMINAL
                    yield event
        finally:
            if not finished:
                self.abort_upstream(chatflow_id, prediction.chat_id)

    def abort_upstream(self, chatflow_id: str, chat_id: str) -> None:
        task = asyncio.get_running_loop().create_task(self.flowise.abort(chatflow_id, chat_id))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _open(self, chatflow_id: str, prediction: Prediction) -> AsyncIterator[Event]:
        version = await self.flowise.version()
        streams = await self.flowise.check_chatflow(chatflow_id)
        if version.transport == "sse":
            events = stream_sse(self.flowise, chatflow_id, prediction)
        else:
            events = stream_socketio(self.flowise, chatflow_id, prediction, self.sockets, streams)
        async with aclosing(events):
            async for event in events:
                yield event


async def _bounded(events: AsyncIterator[Event], settings: Settings) -> AsyncIterator[Event]:
    """The four timeouts: to `start` (connect), to the first event after it, between events, and
    overall. Only the time spent waiting for Flowise counts, not the consumer's, and any task may
    drive the generator (the sync twin steps it from several)."""
    loop = asyncio.get_running_loop()
    overall = loop.time() + settings.total_timeout
    watchdog = _Watchdog(loop)
    limit = settings.connect_timeout
    phase = f"to open the stream ({limit:g} s)"
    try:
        while True:
            watchdog.arm(min(loop.time() + limit, overall))
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            except asyncio.CancelledError:
                if not watchdog.fired:
                    raise
                asyncio.current_task().uncancel()  # type: ignore[union-attr]
                if loop.time() >= overall:
                    phase = f"within the total limit of {settings.total_timeout:g} s"
                raise UpstreamTimeout(f"Flowise took too long {phase}") from None
            finally:
                watchdog.disarm()
            yield event
            if event.event == START:
                limit = settings.first_event_timeout
                phase = f"to send a first event ({limit:g} s)"
            else:
                limit = settings.idle_timeout
                phase = f"between two events (idle limit {limit:g} s)"
    finally:
        watchdog.close()


class _Watchdog:
    """Cancels the waiting task at its deadline. Arming costs a float per event: the one timer
    only moves when it fires early (like `asyncio.timeout`, without a timer per event)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadline = 0.0
        self.task: asyncio.Task | None = None
        self.fired = False
        self._timer: asyncio.TimerHandle | None = None

    def arm(self, deadline: float) -> None:
        self.deadline, self.task = deadline, asyncio.current_task()
        if self._timer is None or self._timer.when() > deadline:
            if self._timer:
                self._timer.cancel()
            self._timer = self.loop.call_at(deadline, self._check)

    def disarm(self) -> None:
        self.task = None

    def _check(self) -> None:
        self._timer = None
        if self.task is None:
            return  # the consumer has the event; `arm` sets a new timer
        if self.loop.time() < self.deadline:
            self._timer = self.loop.call_at(self.deadline, self._check)
        else:
            self.fired = True
            self.task.cancel()

    def close(self) -> None:
        if self._timer:
            self._timer.cancel()
