"""A stream's frames as an HTTP response: sse-starlette's `EventSourceResponse`, set up once.

`_EventStream` overrides sse-starlette's private `_send_with_timeout` (one watchdog per sending task
instead of a cancel scope per send) and reaches uvicorn's connection through its request cycle: see
"Divergences from upstream" in ARCHITECTURE.md, and tests/contracts/test_sse_starlette_contract.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Response
from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from ..settings import Settings
from ..streams import StreamManager
from ..streams.sse_encoder import KEEPALIVE
from ..watchdog import Watchdog
from .access import Caller

logger = logging.getLogger("flowise_sse")


class _EventStream(EventSourceResponse):
    # sse-starlette allows None (no limit); `event_stream` always gives one, which the watchdog reads.
    send_timeout: float

    def __init__(self, content: Any, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._watchdogs: dict[asyncio.Task[Any], Watchdog] = {}
        try:
            await super().__call__(scope, receive, send)
        except SendTimeoutError:
            # The reader stopped reading. Our frames generator is closed by now (the run's reader
            # count dropped); what is left is the server's write buffer, which a close() keeps
            # until the peer reads it, maybe never. Under uvicorn the connection is at hand
            # (`receive` is its request cycle's, unwrapped by middleware): drop it now, buffer
            # and all. Under another server the error goes to the server.
            transport = getattr(getattr(receive, "__self__", None), "transport", None)
            if transport is None:
                raise
            logger.info("flowise-sse: a reader stopped reading for %ss; its connection was dropped",
                        self.send_timeout)
            transport.abort()
            await asyncio.sleep(0)  # connection_lost runs: the server sees a disconnect, not a bug
        finally:
            self._release()  # the reader's place, even if its frames never started
            for watchdog in self._watchdogs.values():
                watchdog.close()

    async def _send_with_timeout(self, send: Send, message: Message) -> None:
        """sse-starlette's per-send limit, without its cancel scope per send (a loop timer made
        and cancelled per relayed token, ~10 µs): one watchdog per sending task (the frames and the
        pings are sent from two), whose timer moves only when it fires."""
        task = asyncio.current_task()
        assert task is not None  # a coroutine awaited by the server or sse-starlette: always in a task
        watchdog = self._watchdogs.get(task)
        if watchdog is None:
            watchdog = self._watchdogs[task] = Watchdog(asyncio.get_running_loop())
        watchdog.arm(watchdog.loop.time() + self.send_timeout)
        try:
            await send(message)
        except BaseException as exc:
            # sse-starlette's own bookkeeping, which its `__call__` reads before it sends the closing
            # chunk of a response cut short (its exit signal): after a send that never returned, no
            # other is tried. Without it that chunk would wait on the reader that stopped reading,
            # up to `send_timeout` more, and reach it if it read again: a clean end to a cut stream.
            self._send_interrupted = True
            if isinstance(exc, asyncio.CancelledError) and watchdog.fired:
                task.uncancel()
                raise SendTimeoutError() from None
            raise
        finally:
            watchdog.disarm()


async def event_stream(
    manager: StreamManager, settings: Settings, stream_id: str, after: int, who: Caller
) -> Response:
    """The frames of `stream_id` after seq `after`, live to its end, for `who`. An unknown stream
    (or another key's) raises (a 404) here, before the response starts, as does a reader past
    its caps; a reader already past the terminal event gets 204, the one answer that makes an
    `EventSource` stop reconnecting."""
    reading = await manager.follow(stream_id, after, who.tenant_id, any_owner=who.by_token)
    if reading is None:
        return Response(status_code=204)
    return _EventStream(
        reading.frames,
        reading.release,
        headers={"Cache-Control": "no-cache"},
        ping=settings.keepalive_interval,
        ping_message_factory=lambda: KEEPALIVE,  # bytes go out as they are
        # Every write, pings included (sse-starlette >= 3.7), gives up after this: a reader that
        # stopped reading is let go, its generator closed, its frames and buffers freed.
        send_timeout=settings.send_timeout,
        sep="\n",
    )
