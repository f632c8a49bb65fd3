"""The four time limits of one prediction, enforced around the transport's event generator.

To `start` (connect), from `start` to the first event, between two events (idle), and overall.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ..errors import UpstreamTimeout
from ..events import START, Event
from ..settings import Settings


async def bounded(events: AsyncIterator[Event], settings: Settings) -> AsyncIterator[Event]:
    """The four timeouts: to `start` (connect), to the first event after it, between events, and
    overall. Only the time spent waiting for Flowise counts, not the consumer's, and any task may
    drive the generator (the sync twin steps it from several)."""
    loop = asyncio.get_running_loop()
    overall = loop.time() + settings.total_timeout
    watchdog = Watchdog(loop)
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


class Watchdog:
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
