"""2.1.0+: a prediction streams as SSE on its own POST response, framed as Flowise frames it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from .flowise_errors import build_failure_message
from .mock_llm import FlowError, handler_events
from .prediction_run import Turn
from .quirks import Quirks

Write = Callable[[bytes], Awaitable[None]]
_HEAD = b"message:\ndata:"
_HEARTBEAT = b":heartbeat\n\n"
_SPLIT_SIZES = (1, 3, 2, 7, 5, 11)


class SseStream:
    """Writes predictions as one version's SSE: its headers, frames, heartbeats."""

    def __init__(self, quirks: Quirks, heartbeat_interval: float | None, split_writes: bool) -> None:
        """`heartbeat_interval`: seconds between `:heartbeat` comments (0 for none; None for the
        version's own). `split_writes`: each write in several small odd-sized chunks, to test parsers."""
        self._quirks = quirks
        interval = quirks.heartbeat_interval if heartbeat_interval is None else heartbeat_interval
        self._heartbeat = interval if interval and interval > 0 else None
        self._split_writes = split_writes
        # 2.1.0 to 3.1.1 wrote `end` and `error` (and `abort`) after `message`, without the colon.
        self._closing_head = _HEAD if quirks.colon_everywhere else b"message\ndata:"
        self._end_frame = _frame("end", "[DONE]", self._closing_head)
        self._headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                         (b"connection", b"keep-alive")]
        if quirks.accel_buffering_header:
            self._headers.append((b"x-accel-buffering", b"no"))

    async def __call__(self, turn: Turn, scope: Scope, receive: Receive, send: Send) -> None:
        """The headers go out before buildChatflow runs, so its failures become `error` events."""
        await send({"type": "http.response.start", "status": 200, "headers": self._headers})
        write = self._writer(send)
        heartbeat = asyncio.create_task(_heartbeats(write, self._heartbeat)) if self._heartbeat else None
        try:
            try:
                if not turn.authorized:
                    raise FlowError("Unauthorized")
                if turn.plan.thinking and self._quirks.thinking_events:
                    for thought in turn.plan.thinking:
                        await write(_frame("thinking", thought))
                    # The closing one adds no text: its `duration` (s) sits beside `data`.
                    await write(_HEAD + orjson.dumps({"event": "thinking", "data": "", "duration": 1}) + b"\n\n")
                async for event, data in handler_events(turn.plan, self._quirks):
                    await write(_frame(event, data))
                await write(_frame("metadata", {
                    "chatId": turn.chat_id, "chatMessageId": turn.message_id, "question": turn.question,
                    "sessionId": turn.session_id, "memoryType": "Buffer Memory", **turn.metadata,
                }))
            except FlowError as exc:
                await write(_frame("error", build_failure_message(exc), self._closing_head))
            await write(self._end_frame)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _writer(self, send: Send) -> Write:
        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if not self._split_writes:
            return write
        lock = asyncio.Lock()

        async def write_split(data: bytes) -> None:
            async with lock:  # a heartbeat must not land inside a split event
                for piece in _pieces(data):
                    await write(piece)

        return write_split


async def _heartbeats(write: Write, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await write(_HEARTBEAT)


def _frame(event: str, data: Any, head: bytes = _HEAD) -> bytes:
    # Flowise: res.write('message:\ndata:' + JSON.stringify({event, data}) + '\n\n')
    return head + orjson.dumps({"event": event, "data": data}) + b"\n\n"


def _pieces(data: bytes) -> Iterator[bytes]:
    start = 0
    for size in itertools.cycle(_SPLIT_SIZES):
        if start >= len(data):
            return
        yield data[start : start + size]
        start += size
