"""sse-starlette's `EventSourceResponse`, as `flowise_sse/api/event_stream.py` overrides it.

`_EventStream` replaces the private `_send_with_timeout` (one watchdog per sending task instead of
a cancel scope per send), keeps its `_send_interrupted` bookkeeping, and catches the
`SendTimeoutError` that leaves `__call__`; `HeldEventSourceResponse` (api/routes/openai_compat.py)
wraps `__call__`. Here sse-starlette's own class, served by a real uvicorn on loopback (a
subclass only records what passes through `_send_with_timeout`), shows what those rely on.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Any

import pytest
import uvicorn
from sse_starlette import EventSourceResponse
from sse_starlette.sse import AppStatus, SendTimeoutError

from ..helpers import wait_until
from ..servers import ServerThread
from . import parameters, revisit

OVERRIDE = "flowise_sse/api/event_stream.py (_EventStream._send_with_timeout)"
END = b"\r\n0\r\n\r\n"  # the closing empty body of a chunked answer


def broken(what: str) -> str:
    return revisit(f"sse-starlette {version('sse-starlette')}", OVERRIDE, what)


class Recording(EventSourceResponse):
    """sse-starlette's response, recording each message its `_send_with_timeout` is given."""

    def __init__(self, *args: Any, interrupt_after_first: bool = False, fail_on: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.through: list[dict] = []
        self.interrupt_after_first = interrupt_after_first
        self.fail_on = fail_on

    async def _send_with_timeout(self, send: Any, message: Any) -> None:
        self.through.append(message)
        body = message.get("body", b"")
        if self.fail_on is not None and self.fail_on.encode() in body:
            raise SendTimeoutError()  # as the override's watchdog raises it
        await super()._send_with_timeout(send, message)
        if self.interrupt_after_first:
            self._send_interrupted = True  # as a send that never returned leaves it


@contextmanager
def serving(make: Any) -> Iterator[tuple[ServerThread, dict]]:
    """A real uvicorn serving one response from `make()`; what happened to it lands in `seen`."""
    seen: dict[str, Any] = {}

    async def app(scope: Any, receive: Any, send: Any) -> None:
        response = seen["response"] = make()
        try:
            await response(scope, receive, send)
        except BaseException as exc:
            seen["raised"] = exc
            raise
        finally:
            seen["returned"] = True

    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="critical",
                            timeout_graceful_shutdown=3)
    with ServerThread(app, config=config) as server:
        yield server, seen


def get(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nAccept: text/event-stream\r\n\r\n")
    sock.settimeout(5)
    return sock


def read_until(sock: socket.socket, done: Any, data: bytes = b"") -> tuple[bytes, bool]:
    """`data` and what the server sends after it until `done` says so or it closes; and whether
    it closed."""
    while not done(data):
        chunk = sock.recv(65536)
        if not chunk:
            return data, True
        data += chunk
    return data, False


@contextmanager
def exit_signal() -> Iterator[None]:
    """sse-starlette's exit signal, as its uvicorn hook sets it on SIGTERM (process-wide)."""
    AppStatus.should_exit = True
    try:
        yield
    finally:
        AppStatus.should_exit = False


def test_overriddenAndUsedParts_keepTheirNamesAndSignatures():
    assert asyncio.iscoroutinefunction(EventSourceResponse._send_with_timeout), \
        broken("_send_with_timeout is no longer a coroutine function")
    assert parameters(EventSourceResponse._send_with_timeout) == ["self", "send", "message"], \
        broken(f"_send_with_timeout now takes {parameters(EventSourceResponse._send_with_timeout)}")
    assert parameters(EventSourceResponse.__call__) == ["self", "scope", "receive", "send"], \
        broken("__call__ is no longer the ASGI entry point (HeldEventSourceResponse wraps it)")
    given = {"content", "headers", "ping", "ping_message_factory", "send_timeout", "sep"}
    assert given <= set(parameters(EventSourceResponse.__init__)), \
        broken(f"__init__ lost {given - set(parameters(EventSourceResponse.__init__))}")
    assert issubclass(SendTimeoutError, TimeoutError), broken("SendTimeoutError is no longer an OSError")
    response = EventSourceResponse(iter(()), send_timeout=1.5)
    assert response.send_timeout == 1.5, broken("the send timeout is no longer `self.send_timeout`")
    assert response._send_interrupted is False, broken("__init__ no longer sets _send_interrupted")


async def test_sendWithTimeout_whenASendFailsOrTimesOut_thenMarksTheResponseInterrupted():
    # The bookkeeping the override must keep: any send that did not return marks the response.
    async def fails(message: Any) -> None:
        raise OSError("peer gone")

    async def blocks(message: Any) -> None:
        await asyncio.Event().wait()

    async def returns(message: Any) -> None:
        return None

    body = {"type": "http.response.body", "body": b"x", "more_body": True}
    response = EventSourceResponse(iter(()), send_timeout=0.05)
    await response._send_with_timeout(returns, body)
    assert response._send_interrupted is False, broken("a send that returned marks the response interrupted")
    with pytest.raises(OSError):
        await response._send_with_timeout(fails, body)
    assert response._send_interrupted is True, broken("a failed send no longer sets _send_interrupted")
    response = EventSourceResponse(iter(()), send_timeout=0.05)
    with pytest.raises(SendTimeoutError):
        await response._send_with_timeout(blocks, body)
    assert response._send_interrupted is True, broken("a timed-out send no longer sets _send_interrupted")


def test_framesAndPings_allGoThroughSendWithTimeout():
    # The override bounds the writes it is given: every frame and every ping must be among them.
    pinged = asyncio.Event()

    async def frames() -> Any:
        yield b"data: a\n\n"
        yield b"data: b\n\n"
        await pinged.wait()

    def make() -> Recording:
        response = Recording(frames(), ping=0.05, ping_message_factory=lambda: b": ping\n\n", sep="\n")
        original = response._send_with_timeout

        async def watch(send: Any, message: Any) -> None:
            await original(send, message)
            if message.get("body") == b": ping\n\n":
                pinged.set()
        response._send_with_timeout = watch  # type: ignore[method-assign]
        return response

    with serving(make) as (server, seen):
        with get(server) as sock:
            data, _ = read_until(sock, lambda d: d.endswith(END))
        wait_until(lambda: seen.get("returned"), what="the response returns")
    bodies = [m.get("body") for m in seen["response"].through]
    assert bodies[:2] == [b"data: a\n\n", b"data: b\n\n"], broken(f"frames are not sent through it: {bodies}")
    assert b": ping\n\n" in bodies, broken("pings are not sent through it")
    assert all(m.get("more_body") for m in seen["response"].through)


@pytest.mark.parametrize("interrupted", [False, True])
def test_call_whenTheExitSignalCutsTheStream_thenClosingBodyOnlyIfNoSendWasInterrupted(interrupted):
    # sse-starlette's __call__ ends a stream cut by its exit signal with the closing empty body,
    # sent through _send_with_timeout, unless `_send_interrupted` says a send never returned: then
    # it sends nothing, and uvicorn closes the unfinished answer.
    async def frames() -> Any:
        yield b"data: a\n\n"
        await asyncio.Event().wait()

    def make() -> Recording:
        return Recording(frames(), ping=0, sep="\n", send_timeout=5, interrupt_after_first=interrupted)

    with serving(make) as (server, seen), get(server) as sock:
        data, _ = read_until(sock, lambda d: b"data: a\n\n" in d)
        with exit_signal():
            data, closed = read_until(sock, lambda d: d.endswith(END), data)
            wait_until(lambda: seen.get("returned"), what="the response returns")
    closing = [m for m in seen["response"].through if m.get("more_body") is False]
    if interrupted:
        assert not closing and not data.endswith(END), \
            broken("__call__ sends the closing body after a send was interrupted (_send_interrupted)")
        assert closed
    else:
        assert closing == [{"type": "http.response.body", "body": b"", "more_body": False}], \
            broken("__call__ no longer ends a cut stream with the closing body through _send_with_timeout")
        assert data.endswith(END)


@pytest.mark.parametrize("fail_on", ["data: b", "ping"])
def test_call_whenASendRaisesSendTimeoutError_thenItLeavesBareAndTheFramesGeneratorIsClosed(fail_on):
    # _EventStream.__call__ catches SendTimeoutError itself (no ExceptionGroup around it) and
    # counts on the frames generator being closed by then (its reader let go).
    closed = asyncio.Event()

    async def frames() -> Any:
        try:
            yield b"data: a\n\n"
            yield b"data: b\n\n"
            await asyncio.Event().wait()
        finally:
            closed.set()

    def make() -> Recording:
        return Recording(frames(), ping=0.05, ping_message_factory=lambda: b": ping\n\n", sep="\n",
                         fail_on=fail_on)

    with serving(make) as (server, seen), get(server):
        wait_until(lambda: seen.get("returned"), what="the response returns")
    assert type(seen.get("raised")) is SendTimeoutError, \
        broken(f"a SendTimeoutError from a send leaves __call__ as {seen.get('raised')!r}")
    assert closed.is_set(), broken("the body iterator is not closed when a send times out")
