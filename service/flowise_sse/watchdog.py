"""One timer that cancels a task stuck in an await past its deadline, re-armed for the cost of a float.

`asyncio.timeout` and anyio's cancel scopes schedule and cancel a loop timer per use: per relayed
token, on both sides of the gateway, that was ~10 µs each (bench/RESULTS.md, profiles). Here the
timer only moves when it fires early; a deadline pushed later is just a float written.
"""

from __future__ import annotations

import asyncio
from typing import Any


class Watchdog:
    """Cancels the armed task at its deadline. The task, catching the CancelledError while
    `fired` is set, undoes the cancel (`uncancel`) and raises its own timeout error, as
    `asyncio.timeout` does."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadline = 0.0
        self.task: asyncio.Task[Any] | None = None
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
