"""An upstream whose predictions a test plays by hand, in the test's own event loop.

Each prediction the gateway opens becomes a `Script`: the test sends it events or a failure,
one step at a time, and reads back how the gateway let go of it (read to its end, or closed
early: what aborts the real upstream). No sockets, no timers: every race is an ordering the
test writes down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from flowise_sse.events import END, START, TERMINAL, Event
from flowise_sse.upstream.prediction import Prediction


class Script:
    def __init__(self, chatflow_id: str, prediction: Prediction) -> None:
        self.chatflow_id = chatflow_id
        self.prediction = prediction
        self.steps: asyncio.Queue[Event | BaseException] = asyncio.Queue()
        self.closed = asyncio.Event()  # the gateway let go of the generator
        self.finished = False  # it let go after the whole script (not closed early)
        self.taken = 0  # steps the gateway took
        self._after_end = asyncio.Event()

    def start(self, transport: str = "sse") -> Script:
        return self.send(Event(START, {"chatId": self.prediction.chat_id, "chatflowId": self.chatflow_id,
                                       "transport": transport}))

    def token(self, text: str) -> Script:
        return self.send(Event("token", {"text": text}))

    def end(self, text: str) -> Script:
        return self.send(Event(END, {"text": text, "chatId": self.prediction.chat_id}))

    def send(self, event: Event) -> Script:
        self.steps.put_nowait(event)
        return self

    def fail(self, error: BaseException) -> Script:
        self.steps.put_nowait(error)
        return self

    async def stream(self) -> AsyncIterator[Event]:
        try:
            while True:
                step = await self.steps.get()
                self.taken += 1
                if isinstance(step, BaseException):
                    raise step
                yield step
                if step.event in TERMINAL and self.steps.empty():
                    # Like a real transport after `end`: it still reads the rest of the response;
                    # the test lets it go with `finish()` (or the gateway closes it).
                    await self._after_end.wait()
                    self.finished = True
                    return
        finally:
            self.closed.set()

    def finish(self) -> None:
        """The transport has read the rest of the response after `end`: its generator returns."""
        self._after_end.set()


class ScriptedUpstream:
    """Stands in for `Upstream`: every `stream()` call is a new `Script`, in `scripts`."""

    def __init__(self) -> None:
        self.scripts: list[Script] = []
        self._opened = asyncio.Event()
        self.aborted: list[tuple[str, str]] = []

    def stream(self, chatflow_id: str, prediction: Prediction) -> AsyncIterator[Event]:
        script = Script(chatflow_id, prediction)
        self.scripts.append(script)
        self._opened.set()
        return script.stream()

    async def opened(self, count: int = 1) -> Script:
        """The `count`-th prediction, once the gateway opened it."""
        while len(self.scripts) < count:
            self._opened.clear()
            await self._opened.wait()
        return self.scripts[count - 1]

    def abort_upstream(self, chatflow_id: str, chat_id: str) -> None:
        self.aborted.append((chatflow_id, chat_id))


async def settle() -> None:
    """Let every task that can run, run (a handful of loop turns): the scripted steps are
    consumed in the loop's own order, so this is an ordering, not a wait on time."""
    for _ in range(20):
        await asyncio.sleep(0)


def frame_events(frames: list[bytes] | bytes) -> list[tuple[str, Any]]:
    """(event name, data) of each SSE frame the log holds."""
    import orjson

    blob = frames if isinstance(frames, bytes) else b"".join(frames)
    events = []
    for frame in blob.split(b"\n\n"):
        name = data = None
        for line in frame.split(b"\n"):
            if line.startswith(b"event: "):
                name = line[7:].decode()
            elif line.startswith(b"data: "):
                data = orjson.loads(line[6:])
        if name is not None:
            events.append((name, data))
    return events
