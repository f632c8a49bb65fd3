"""uvicorn's httptools protocol with what it lacks in front of the internet.

uvicorn bounds an idle keep-alive connection (`timeout_keep_alive`) but not one that is still
sending its request line and headers: a client that sends half a header and waits holds a socket
(and a file descriptor) forever, and its headers may grow without limit. This subclass adds:

- `header_timeout`: a connection gets that long from its opening (or a keep-alive request from
  its first byte) to complete its headers, then it is closed;
- `max_header_bytes` / `max_headers`: past either, 431 and the connection is closed;
- `max_pending_connections`: connections still sending headers (or lingering, below) held at
  once; past it the oldest is closed, so half-open connections cannot use up the file
  descriptors (`/healthz` stays up);
- HTTP/1.0: a body of unknown length goes out until the connection closes (HTTP/1.0 has no
  chunked encoding; httptools' protocol chunks regardless of the request's version);
- a lingering close: an answer sent before the request was read whole (413, 408, 431, 400)
  closes the connection only after the client stopped sending. Closing a socket with unread
  input makes the kernel answer with a reset, and a reset destroys what the client had not read
  yet, the refusal included. So the write side is shut (the client sees the answer end) and what
  still comes is read and dropped, for at most `linger_timeout` and `max_linger_bytes` (nginx's
  `lingering_close`); then the connection is closed.

The body's own size and pace are bounded in `api/guards.py` (an ASGI middleware).

This overrides private parts of uvicorn's protocol and request cycle: see "Divergences from
upstream" in ARCHITECTURE.md (what it relies on, the versions checked) and
tests/contracts/test_uvicorn_contract.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, cast

from .logging_setup import fields
from .settings import Settings

logger = logging.getLogger("flowise_sse")

_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
)
_408 = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s"
)


def _error(template: bytes, code: str, message: str) -> bytes:
    body = b'{"error":{"code":"%s","message":"%s","retryable":false}}' % (code.encode(), message.encode())
    return template % (len(body), body)


def gateway_protocol(settings: Settings) -> type[asyncio.Protocol] | str:
    """The protocol class for uvicorn's `http=`; plain "h11" where httptools is not installed
    (then only uvicorn's h11_max_incomplete_event_size bounds the headers)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # pragma: no cover - uvicorn[standard] brings httptools on CPython
        return "h11"

    # Connections not yet served or already answered: still sending headers, or lingering after a
    # refusal. Oldest first (a dict keeps insertion order); past the cap the oldest is closed.
    pending: dict[Any, None] = {}
    too_big = _error(_431, "headers_too_large", "the request line and headers are over FLOWISE_SSE_MAX_HEADER_BYTES "
                     "or FLOWISE_SSE_MAX_HEADERS; a long history goes in a POST body (POST /v1/streams, then read "
                     "its eventsUrl), or continue the chat by its chatId")
    too_slow = _error(_408, "request_timeout", "the request headers did not arrive within "
                      "FLOWISE_SSE_HEADER_TIMEOUT")

    class GatewayHttpProtocol(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _refused = False
        _in_message = False  # the client is somewhere in a request: more of it may come
        _lingering: Lingering | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            # uvicorn closes through the transport it was given: that one's close may linger.
            # LingeringTransport stands in for the transport (its attributes are the real one's).
            super().connection_made(cast(asyncio.Transport, LingeringTransport(transport, self._close)))
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._head_done()
            if self._lingering is not None:
                self._lingering.cancel()
            super().connection_lost(exc)

        def _close(self, transport: asyncio.Transport) -> None:
            """uvicorn's close: at once, unless the client may still be sending its request."""
            if self._lingering is not None:
                return
            self._head_done()
            # A closing transport is a connection already gone (uvicorn's connection_lost closes
            # through here too): nothing more can come, so there is nothing to linger for.
            if not self._in_message or transport.is_closing():
                transport.close()
                return
            self._lingering = Lingering(transport, self.loop, settings.linger_timeout, settings.max_linger_bytes)
            self._hold_pending()

        def eof_received(self) -> None:
            if self._lingering is not None:
                self._lingering.transport.close()  # the client has sent all it will: nothing is unread

        def _hold_pending(self) -> None:
            pending[self] = None
            while len(pending) > settings.max_pending_connections:
                oldest = next(iter(pending))
                oldest._head_done()
                oldest.transport.transport.close()  # freed now, not after a linger

        def _await_head(self) -> None:
            if self._head_timer is None:
                self._head_bytes = 0
                self._head_timer = self.loop.call_later(settings.header_timeout, self._head_timeout)
                self._hold_pending()

        def _head_done(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            pending.pop(self, None)

        def _head_timeout(self) -> None:
            self._head_timer = None
            pending.pop(self, None)
            if not self.transport.is_closing():
                if self._head_bytes:  # something was sent: say why it ends
                    _log_refusal(408, "request_timeout", "the request headers did not arrive within "
                                 "FLOWISE_SSE_HEADER_TIMEOUT")
                    self.transport.write(too_slow)
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            if self._lingering is not None:  # answered already: only counted, never parsed
                self._lingering.discard(len(data))
                return
            waiting = self._head_timer is not None
            if waiting:
                self._head_bytes += len(data)
            super().data_received(data)
            # Still no end of headers after this many bytes: refuse before buffering more.
            if self._head_timer is not None and self._head_bytes > settings.max_header_bytes:
                self._refuse()

        def _refuse(self) -> None:
            self._head_done()
            if not self.transport.is_closing():
                _log_refusal(431, "headers_too_large", "the request headers are over FLOWISE_SSE_MAX_HEADER_BYTES "
                             "or FLOWISE_SSE_MAX_HEADERS")
                self.transport.write(too_big)
                self.transport.close()

        def send_400_response(self, msg: str) -> None:
            if self._refused:  # raised from on_headers_complete below: it is a 431
                self._refuse()
            else:
                super().send_400_response(msg)

        def on_message_begin(self) -> None:
            self._in_message = True
            super().on_message_begin()
            self._await_head()
            self._head_bytes = max(self._head_bytes, 1)  # its first bytes came in this very chunk

        def on_headers_complete(self) -> None:
            # Headers that came whole in one read are measured here, exactly.
            size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
            if len(self.headers) > settings.max_headers or size > settings.max_header_bytes:
                self._refused = True
                raise ValueError("headers over the limits")  # the parser stops; send_400_response runs
            self._head_done()
            super().on_headers_complete()
            if self.scope.get("http_version") == "1.0" and self.cycle is not None:
                _close_delimited(self.cycle)

        def on_message_complete(self) -> None:
            self._in_message = False
            super().on_message_complete()

    return GatewayHttpProtocol


class LingeringTransport:
    """The connection's transport as uvicorn holds it: everything is the real transport's, but
    `close()` goes to the protocol, which may linger; `transport` is the real one. Writes are
    the real transport's own bound method (the hot path pays no indirection)."""

    def __init__(self, transport: asyncio.Transport, close: Callable[[asyncio.Transport], None]) -> None:
        self.transport = transport
        self.write = transport.write
        self._close = close
        self._closing = False

    def close(self) -> None:
        self._closing = True
        self._close(self.transport)

    def is_closing(self) -> bool:
        # uvicorn asks before it starts the next pipelined request or a keep-alive timer.
        return self._closing or self.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class Lingering:
    """A connection whose answer is out and whose client may still be sending: the write side is
    shut once the answer is flushed, input is read and dropped, and the connection is closed when
    the client closes its side, after `timeout` seconds, or past `max_bytes` dropped."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop, timeout: float,
                 max_bytes: int) -> None:
        self.transport = transport
        self.left = max_bytes
        if transport.can_write_eof():
            transport.write_eof()  # after what is buffered: the client reads the answer, then EOF
        transport.resume_reading()  # reading may be paused (flow control): the kernel would fill up
        self.timer = loop.call_later(timeout, transport.close)

    def discard(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            self.transport.close()

    def cancel(self) -> None:
        self.timer.cancel()


def _log_refusal(status: int, code: str, reason: str) -> None:
    """The refusals answered here, before any request exists, logged as the app logs its own."""
    logger.info("request refused", extra=fields(status=status, code=code, reason=reason))


def _close_delimited(cycle: Any) -> None:
    """An HTTP/1.0 response without Content-Length: no chunked encoding (HTTP/1.0 does not have
    it); the body runs until the connection closes, which ends it."""
    send: Callable[[dict[str, Any]], Any] = cycle.send

    async def send_unchunked(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            names = {name.lower() for name, _ in message.get("headers", ())}
            if b"content-length" not in names and b"transfer-encoding" not in names:
                cycle.chunked_encoding = False
                cycle.keep_alive = False
                cycle.expected_content_length = 1 << 62
                cycle.unbounded = True
        elif getattr(cycle, "unbounded", False) and not message.get("more_body", False):
            # The last piece: what is left to send is exactly this (uvicorn checks the count).
            cycle.expected_content_length = len(message.get("body", b""))
        await send(message)

    cycle.send = send_unchunked
