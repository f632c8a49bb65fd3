"""uvicorn's httptools protocol, as `flowise_sse/http_protocol.py` overrides it.

`GatewayHttpProtocol` subclasses `HttpToolsProtocol` and hands `connection_made` a wrapper of the
transport (`LingeringTransport`) whose `close()` may linger; `_close_delimited` rewrites an HTTP/1.0
request cycle's state before its first send; `api/event_stream.py` reaches the connection through
`receive.__self__.transport`. Here a probe subclass of uvicorn's own class, served by a real uvicorn
on loopback, checks each of those assumptions; a recording wrapper stands where `LingeringTransport`
stands.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from typing import Any

import httptools
import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from ..helpers import read_until_closed, wait_until
from ..servers import ServerThread
from . import parameters, revisit

OVERRIDE = "flowise_sse/http_protocol.py (GatewayHttpProtocol, LingeringTransport, _close_delimited)"


def broken(what: str) -> str:
    return revisit(f"uvicorn {uvicorn.__version__}", OVERRIDE, what)


class Recorder:
    """The transport as the override hands it to uvicorn: the real one behind a wrapper, which
    here records the calls the override's wrapper intercepts."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.calls: list[str] = []
        self.pretend_closing = False  # what LingeringTransport answers once a lingering close began

    def close(self) -> None:
        self.calls.append("close")
        self.transport.close()

    def is_closing(self) -> bool:
        self.calls.append("is_closing")
        return self.pretend_closing or self.transport.is_closing()

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")
        self.transport.pause_reading()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class Probe(HttpToolsProtocol):
    """uvicorn's protocol with the override's hooks, recording instead of changing."""

    by_client: dict[tuple[str, int], Probe] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.given = Recorder(transport)
        self.events: list[str] = []
        self.fed = 0
        self.refusals: list[str] = []
        self.sent: list[dict] = []
        super().connection_made(self.given)  # type: ignore[arg-type]
        assert self.client is not None
        Probe.by_client[self.client] = self

    def data_received(self, data: bytes) -> None:
        self.fed += len(data)
        super().data_received(data)

    def on_message_begin(self) -> None:
        self.events.append("begin")
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.events.append("headers")
        self.seen = (self.url, list(self.headers))
        if (b"x-refuse", b"1") in self.headers:
            raise ValueError("refused")  # as the override refuses headers over its limits
        super().on_headers_complete()
        if self.scope.get("http_version") == "1.0":  # what _close_delimited does, with a known length
            cycle = self.cycle
            cycle.chunked_encoding = False
            cycle.keep_alive = False
            cycle.expected_content_length = len(b"hello world")
            cycle.unbounded = True  # type: ignore[attr-defined]
            send = cycle.send

            async def recorded(message: Any) -> None:
                self.sent.append(message)
                await send(message)

            cycle.send = recorded  # type: ignore[method-assign]

    def on_message_complete(self) -> None:
        self.events.append("complete")
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self.refusals.append(msg)
        super().send_400_response(msg)


served: list[str] = []
cycles: dict[str, Any] = {}


async def app(scope: Any, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
    path = scope["path"]
    served.append(path)
    probe = Probe.by_client[tuple(scope["client"])]  # type: ignore[index]
    headers = [(b"content-length", b"2")]
    if path == "/close":
        headers.append((b"connection", b"close"))
    elif path == "/closing":
        while not probe.pipeline:  # the pipelined request behind this one is queued
            await asyncio.sleep(0.005)
        probe.given.pretend_closing = True
    elif path == "/receive":
        cycles["receive_owner"] = getattr(receive, "__self__", None)
    elif path == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"hello ", "more_body": True})
        await send({"type": "http.response.body", "body": b"world", "more_body": False})
        return
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    config = uvicorn.Config(app, host="127.0.0.1", port=0, http=Probe, lifespan="off", log_level="critical",
                            timeout_graceful_shutdown=3)
    with ServerThread(app, config=config) as running:
        yield running


def connect(server: ServerThread) -> tuple[socket.socket, Callable[[], Probe]]:
    sock = socket.create_connection(("127.0.0.1", server.port))
    name = sock.getsockname()

    def probe() -> Probe:
        wait_until(lambda: name in Probe.by_client, what="uvicorn made the connection's protocol")
        return Probe.by_client[name]

    return sock, probe


def read_response(sock: socket.socket, count: int = 1) -> bytes:
    """`count` answers of the app's ("ok", with a content length) on a connection that stays open."""
    sock.settimeout(5)
    data = b""
    while data.count(b"\r\n\r\nok") < count:
        chunk = sock.recv(4096)
        assert chunk, f"closed before the answer ended: {data!r}"
        data += chunk
    return data


def test_overriddenMethods_keepTheirSignatures():
    expected = {
        HttpToolsProtocol.__init__: ["self", "config", "server_state", "app_state", "_loop"],
        HttpToolsProtocol.connection_made: ["self", "transport"],
        HttpToolsProtocol.connection_lost: ["self", "exc"],
        HttpToolsProtocol.eof_received: ["self"],
        HttpToolsProtocol.data_received: ["self", "data"],
        HttpToolsProtocol.send_400_response: ["self", "msg"],
        HttpToolsProtocol.on_message_begin: ["self"],
        HttpToolsProtocol.on_headers_complete: ["self"],
        HttpToolsProtocol.on_message_complete: ["self"],
        HttpToolsProtocol.on_response_complete: ["self"],
        RequestResponseCycle.send: ["self", "message"],
        RequestResponseCycle.receive: ["self"],
        FlowControl.__init__: ["self", "transport"],
    }
    for function, names in expected.items():
        assert parameters(function) == names, broken(f"{function.__qualname__} now takes {parameters(function)}")
    assert "transport" in parameters(RequestResponseCycle.__init__), \
        broken("the request cycle is not given a transport")
    assert "__slots__" not in vars(RequestResponseCycle), broken("the request cycle has __slots__: "
                                                                 "_close_delimited cannot replace its send")
    # An exception in a parser callback (the override raises in on_headers_complete) reaches
    # data_received's `except httptools.HttpParserError`, which answers with send_400_response.
    assert issubclass(httptools.HttpParserCallbackError, httptools.HttpParserError), \
        broken("a parser callback's exception no longer surfaces as HttpParserError")


def test_config_whenGivenAProtocolClass_thenServesWithItAsIs(server):
    assert server.server.config.http_protocol_class is Probe, broken("Config(http=<class>) does not use the class")
    sock, probe = connect(server)
    with sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock)
        assert isinstance(probe(), Probe)


def test_connectionMade_storesTheTransportItIsGiven_andBuildsFlowControlAndTheCycleFromIt(server):
    sock, probe = connect(server)
    with sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock)
        proto = probe()
        assert proto.transport is proto.given, broken("connection_made does not keep the transport it is given")
        assert proto.cycle.transport is proto.given, broken("the request cycle is not built on self.transport")
        assert proto.loop is server.loop, broken("the protocol's `loop` (the override's timers) is not the server's")

        async def pause() -> None:
            proto.flow.pause_reading()
            proto.flow.resume_reading()
        server.call(pause)
        assert "pause_reading" in proto.given.calls, broken("FlowControl is not built from the given transport")


def test_cycleSend_whenTheAnswerSaysConnectionClose_thenClosesThroughTheGivenTransport(server):
    sock, probe = connect(server)
    with sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock)
        assert "close" not in probe().given.calls  # keep-alive: nothing closed
        sock.sendall(b"GET /close HTTP/1.1\r\nHost: a\r\n\r\n")
        answer = read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    assert "close" in probe().given.calls, \
        broken("RequestResponseCycle.send no longer closes a `connection: close` answer through self.transport.close()")


def test_parserCallback_whenItRaises_thenSend400ResponseWritesAndClosesThroughTheGivenTransport(server):
    sock, probe = connect(server)
    with sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\nX-Refuse: 1\r\n\r\n")
        answer = read_until_closed(sock, 5)
    assert probe().refusals, broken("an exception in on_headers_complete no longer leads to send_400_response")
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert "close" in probe().given.calls, broken("send_400_response does not close through self.transport.close()")


def test_onResponseComplete_whenTheTransportSaysClosing_thenNeitherPipelinedRequestNorKeepAliveTimer(server):
    # The override's wrapper says `is_closing()` once a lingering close began, while the real
    # transport is still open: uvicorn must then start nothing more on the connection.
    sock, probe = connect(server)
    with sock:
        sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock, 2)  # the control: a pipelined request is served when nothing says closing
        sock.sendall(b"GET /closing HTTP/1.1\r\nHost: a\r\n\r\nGET /after HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock)
        proto = probe()

        async def state() -> tuple[int, Any]:
            found = len(proto.pipeline), proto.timeout_keep_alive_task
            proto.given.transport.close()  # what the lingering close ends with
            return found
        queued, keep_alive_timer = server.call(state)
    assert "is_closing" in proto.given.calls, broken("on_response_complete no longer asks transport.is_closing()")
    assert "/after" not in served and queued == 1, \
        broken("on_response_complete starts the next pipelined request on a closing transport")
    assert keep_alive_timer is None, broken("on_response_complete arms the keep-alive timer on a closing transport")


def test_parserCallbacks_urlAndHeadersAreWholeWhenOnHeadersCompleteRuns(server):
    sock, probe = connect(server)
    request = b"GET /ok?x=1 HTTP/1.1\r\nHost: a\r\nX-A: B \r\n\r\n"
    with sock:
        sock.sendall(request)
        read_response(sock)
    proto = probe()
    # The override sizes the head from these (url + names + values) and counts what data_received got.
    assert proto.seen == (b"/ok?x=1", [(b"host", b"a"), (b"x-a", b"B")]), \
        broken(f"on_headers_complete sees url and headers as {proto.seen}")
    assert proto.events == ["begin", "headers", "complete"], \
        broken(f"the parser callbacks of one request run as {proto.events}")
    assert proto.fed == len(request), broken("the bytes do not come through data_received")


def test_onHeadersComplete_http10_thenTheCycleIsStartedLaterWithItsSendAndItsPresetStateHonoured(server):
    sock, probe = connect(server)
    with sock:
        sock.sendall(b"GET /stream HTTP/1.0\r\n\r\n")
        answer = read_until_closed(sock, 5)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert [m.get("body") for m in probe().sent] == [None, b"hello ", b"world"], \
        broken("the ASGI task does not use the cycle's `send` as replaced after on_headers_complete")
    assert b"transfer-encoding" not in head.lower(), broken("a preset chunked_encoding=False is not honoured")
    assert b"connection: close" in head.lower(), broken("a preset keep_alive=False is not honoured")
    assert body == b"hello world", broken("the body of an unchunked answer is not written as it is")


def test_requestCycle_receiveIsBoundToTheCycle_whoseTransportIsTheGivenOne(server):
    # api/event_stream.py drops a connection whose reader stopped reading through
    # `receive.__self__.transport.abort()`.
    sock, probe = connect(server)
    with sock:
        sock.sendall(b"GET /receive HTTP/1.1\r\nHost: a\r\n\r\n")
        read_response(sock)
    owner = cycles["receive_owner"]
    assert isinstance(owner, RequestResponseCycle), broken("the app's `receive` is not the cycle's bound method")
    assert owner.transport is probe().given and callable(owner.transport.abort), \
        broken("the cycle's transport is not the one connection_made was given")


def test_connectionLost_whenTheClientCloses_thenClosesThroughTheGivenTransport(server):
    # So the override's close hook also runs for a connection that is already gone.
    sock, probe = connect(server)
    sock.sendall(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    read_response(sock)
    proto = probe()
    sock.close()
    wait_until(lambda: proto not in server.server.server_state.connections, what="uvicorn sees the close")
    assert "close" in proto.given.calls, broken("connection_lost no longer closes through self.transport.close()")
