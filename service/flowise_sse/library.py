"""The library API: stream one Flowise prediction as normalized events, async or sync.

    async for event in astream_prediction(chatflow_id, "Hello", settings=settings):
        print(event.text, end="")

    for event in stream_prediction(chatflow_id, "Hello", settings=settings):
        print(event.text, end="")

Failures raise `GatewayError` subclasses (`UpstreamUnavailable`, `UpstreamTimeout`, ...).
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import AsyncGenerator, Awaitable, Iterator, Mapping, Sequence
from contextlib import aclosing
from typing import Any, TypeVar

from .errors import BadRequest
from .events import Event
from .settings import Settings
from .upstream import Upstream
from .upstream.prediction import Prediction

T = TypeVar("T")


def checked_chatflow_id(chatflow_id: str) -> str:
    """Only a UUID ever reaches an upstream URL."""
    try:
        return str(uuid.UUID(str(chatflow_id)))
    except ValueError:
        raise BadRequest(f"chatflow id must be a UUID, got {str(chatflow_id)[:80]!r}") from None


async def astream_prediction(
    chatflow_id: str,
    question: str | None,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    chat_id: str | None = None,
    override_config: Mapping[str, Any] | None = None,
    session_id: str | None = None,
    uploads: Sequence[Mapping[str, Any]] | None = None,
    form: Mapping[str, Any] | None = None,
    human_input: Mapping[str, Any] | None = None,
    action: Mapping[str, Any] | None = None,
    lead_email: str | None = None,
    stop_node_id: str | None = None,
    settings: Settings | None = None,
    upstream: Upstream | None = None,
) -> AsyncGenerator[Event, None]:
    """Yield `start`, `token`s and relayed Flowise events, then `end`.

    Flowise's other fields go under its names in snake case (`uploads`, `form`, `human_input`,
    ...), checked as the HTTP API checks them; `question` may be None when `form`, `human_input`
    or an audio upload stands in for it. A field the Flowise behind does not read raises
    `NotSupportedByFlowise`. An `end` with `waitingForInput` stopped for a human: continue with
    `human_input` on the same `chat_id` (or `session_id`).

    Pass a long-lived `upstream` to share connections between predictions; otherwise one is made
    from `settings` (default: the environment) and closed with the generator.
    """
    prediction = Prediction.build(
        question, history, chat_id, override_config, session_id=session_id, uploads=uploads, form=form,
        human_input=human_input, action=action, lead_email=lead_email, stop_node_id=stop_node_id,
    )
    flow = checked_chatflow_id(chatflow_id)
    own = upstream is None
    upstream = upstream or Upstream(settings or Settings())
    try:
        async with aclosing(upstream.stream(flow, prediction)) as events:
            async for event in events:
                yield event
    finally:
        if own:
            await upstream.aclose()


def stream_prediction(
    chatflow_id: str,
    question: str | None,
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    chat_id: str | None = None,
    override_config: Mapping[str, Any] | None = None,
    session_id: str | None = None,
    uploads: Sequence[Mapping[str, Any]] | None = None,
    form: Mapping[str, Any] | None = None,
    human_input: Mapping[str, Any] | None = None,
    action: Mapping[str, Any] | None = None,
    lead_email: str | None = None,
    stop_node_id: str | None = None,
    settings: Settings | None = None,
) -> Iterator[Event]:
    """The blocking twin of `astream_prediction`: same arguments, same events, same errors.

    Each `next()` waits for the next event; the upstream keeps running on a private event loop
    between calls (socket.io needs its pings answered), and closing the generator closes it.
    """
    loop = _LoopThread()
    events = astream_prediction(
        chatflow_id, question, history=history, chat_id=chat_id, override_config=override_config,
        session_id=session_id, uploads=uploads, form=form, human_input=human_input, action=action,
        lead_email=lead_email, stop_node_id=stop_node_id, settings=settings,
    )
    try:
        while True:
            try:
                event = loop.run(anext(events))
            except StopAsyncIteration:
                return
            yield event
    finally:
        try:
            loop.run(events.aclose())
        finally:
            loop.stop()


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="flowise-sse", daemon=True)
        self.thread.start()

    def run(self, awaitable: Awaitable[T]) -> T:
        async def step() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(step(), self.loop).result()

    def stop(self) -> None:
        """Close the loop the way `asyncio.run` does: what is still pending (socket.io's reader
        and writer tasks end a moment after their socket) is cancelled and awaited first, so
        nothing prints "Task was destroyed but it is pending" or "Event loop is closed"."""
        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            asyncio.run_coroutine_threadsafe(finish(), self.loop).result(10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join()
            self.loop.close()
