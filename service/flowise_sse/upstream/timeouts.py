"""The four time limits of one prediction, enforced around the transport's event generator.

To `start` (connect), from `start` to the first event, between two events (idle), and overall.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..errors import UpstreamTimeout
from ..events import START, Event
from ..settings import Settings
from ..watchdog import Watchdog


async def bounded(events: AsyncIterator[Event], settings: Settings) -> AsyncIterator[Event]:
    """The four timeouts: to `start` (connect), to the first event after it, between events, and
    overall. Only the time spent waiting for Flowise counts, not the consumer's, and any task may
    drive the generator (the sync twin steps it from several)."""
    loop = asyncio.get_running_loop()
    overall = loop.time() + settings.total_timeout
    watchdog = Watchdog(loop)
    # The limit in force and the phase it names; the message is written only on a timeout.
    limit, phase = settings.connect_timeout, "to open the stream ({:g} s)"
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
                task = asyncio.current_task()
                assert task is not None  # a coroutine is always run by a task
                task.uncancel()
                if loop.time() >= overall:
                    limit, phase = settings.total_timeout, "within the total limit of {:g} s"
                raise UpstreamTimeout("Flowise took too long " + phase.format(limit)) from None
            finally:
                watchdog.disarm()
            yield event
            if event.event == START:
                limit, phase = settings.first_event_timeout, "to send a first event ({:g} s)"
            else:
                limit, phase = settings.idle_timeout, "between two events (idle limit {:g} s)"
    finally:
        watchdog.close()
