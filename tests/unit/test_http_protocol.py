"""http_protocol.py driven the way uvicorn tests its protocols: no sockets, a transport that
records what it is asked to do, and timers fired by hand. The lingering close and its bounds."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from flowise_sse.http_protocol import gateway_protocol
from flowise_sse.settings import Settings

REFUSAL = b'{"error":{"code":"payload_too_large"}}'


async def refuse_unread(scope: Any, receive: Any, send: Any) -> None:
    """An app that answers before reading the body, as the guard's 413 does."""
    await send({"type": "http.response.start", "status": 413, "headers": [
        (b"content-length", b"%d" % len(REFUSAL)), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": REFUSAL})


async def read_then_close(scope: Any, receive: Any, send: Any) -> None:
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-length", b"2"), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": b"ok"})


class Transport:
    def __init__(self) -> None:
        self.written = b""
        self.write_shut = False
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8080)}.get(name)

    def write(self, data: bytes) -> None:
        assert not self.write_shut, "written after the write side was shut"
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.write_shut = True

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


class Timer:
    def __init__(self, delay: float, callback: Callable[..., None], args: tuple) -> None:
        self.delay, self.callback, self.args, self.cancelled = delay, callback, args, False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    """The protocol's loop: its tasks run on the test's loop, its timers only when fired."""

    def __init__(self) -> None:
        self.timers: list[Timer] = []

    def call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Timer:
        timer = Timer(delay, callback, args)
        self.timers.append(timer)
        return timer

    def create_task(self, coro: Any, **kwargs: Any) -> asyncio.Task:
        return asyncio.get_running_loop().create_task(coro, **kwargs)

    def fire(self, delay: float) -> None:
        for timer in [t for t in self.timers if t.delay == delay and not t.cancelled]:
            timer.cancelled = True
            timer.callback(*timer.args)


def connect(app: Any, **overrides: Any) -> tuple[Any, Transport, Loop, ServerState]:
    settings = Settings(**{"linger_timeout": 7.0, "max_linger_bytes": 1000, "header_timeout": 3.0, **overrides})
    protocol_class: Any = gateway_protocol(settings)
    config = uvicorn.Config(app, lifespan="off", log_level="error", timeout_keep_alive=1)
    loop, transport, state = Loop(), Transport(), ServerState()
    protocol = protocol_class(config=config, server_state=state, app_state={}, _loop=loop)
    protocol.connection_made(transport)
    return protocol, transport, loop, state


async def answered(state: ServerState) -> None:
    await asyncio.gather(*state.tasks)


HEAD = b"POST /v1/streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n"


async def test_refusal_whenTheBodyIsStillComing_thenAnswerThenWriteSideShutThenInputDroppedUntilEof():
    protocol, transport, loop, state = connect(refuse_unread)
    protocol.data_received(HEAD + b"x" * 500)
    await answered(state)
    assert transport.written.startswith(b"HTTP/1.1 413") and transport.written.endswith(REFUSAL)
    assert transport.write_shut and not transport.closed and transport.reading
    protocol.data_received(b"x" * 400)  # dropped, never parsed: no 400 for a body with no request
    assert not transport.closed and transport.written.endswith(REFUSAL)
    protocol.eof_received()
    assert transport.closed


async def test_refusal_whenTheClientKeepsSendingPastMaxLingerBytes_thenClosed():
    protocol, transport, loop, state = connect(refuse_unread, max_linger_bytes=1000)
    protocol.data_received(HEAD)
    await answered(state)
    protocol.data_received(b"x" * 1000)
    assert not transport.closed
    protocol.data_received(b"x")
    assert transport.closed


async def test_refusal_whenTheClientNeverStops_thenClosedAtLingerTimeout():
    protocol, transport, loop, state = connect(refuse_unread, linger_timeout=7.0)
    protocol.data_received(HEAD)
    await answered(state)
    protocol.data_received(b"x" * 10)
    assert not transport.closed
    loop.fire(7.0)
    assert transport.closed
    protocol.connection_lost(None)
    assert all(t.cancelled for t in loop.timers)


async def test_close_whenTheRequestWasReadWhole_thenAtOnceWithoutLinger():
    protocol, transport, loop, state = connect(read_then_close)
    protocol.data_received(b"POST / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 3\r\n\r\nabc")
    await answered(state)
    assert transport.written.endswith(b"ok") and transport.closed and not transport.write_shut


@pytest.mark.parametrize("head", [
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 3000 + b"\r\n\r\n",  # whole, over the cap
    b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: " + b"a" * 3000,  # still coming
])
async def test_headersOverTheCap_then431ThenLinger(head):
    protocol, transport, loop, state = connect(read_then_close, max_header_bytes=2048)
    protocol.data_received(head)
    assert transport.written.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in transport.written
    assert transport.write_shut and not transport.closed
    protocol.data_received(b"more of it\r\n\r\n")
    assert not transport.closed
    protocol.eof_received()
    assert transport.closed


async def test_headerTimeout_whenSomethingWasSent_then408ThenLinger():
    protocol, transport, loop, state = connect(read_then_close, header_timeout=3.0)
    protocol.data_received(b"GET /healthz HTTP/1.1\r\nHo")
    loop.fire(3.0)
    assert transport.written.startswith(b"HTTP/1.1 408") and transport.write_shut and not transport.closed
    loop.fire(7.0)
    assert transport.closed


async def test_lingeringConnections_countAsPending_soPastTheCapTheOldestIsClosedOutright():
    first, first_transport, _, first_state = connect(refuse_unread, max_pending_connections=2)
    first.data_received(HEAD)
    await answered(first_state)
    assert first_transport.write_shut and not first_transport.closed
    # The cap is per protocol class (one gateway_protocol per server): connect on the same class.
    protocol_class = type(first)
    config = uvicorn.Config(refuse_unread, lifespan="off", log_level="error")
    others = []
    for _ in range(2):
        transport = Transport()
        protocol = protocol_class(config=config, server_state=ServerState(), app_state={}, _loop=Loop())
        protocol.connection_made(transport)
        others.append(transport)
    assert first_transport.closed and not any(t.closed for t in others)
