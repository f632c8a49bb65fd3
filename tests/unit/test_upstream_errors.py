"""The upstream's error table (`flowise_client.TRANSPORT_ERRORS`), row by row: each failure is a real
one, provoked on loopback against `FlowiseClient`, and comes out as the gateway's error with a
plain-words message (no address, no exception repr); the detail goes to the log."""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Callable

import aiohttp
import pytest
import uvicorn

from flowise_sse.emulator import create_emulator_app
from flowise_sse.errors import GatewayError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from flowise_sse.settings import Settings
from flowise_sse.upstream.flowise_client import TRANSPORT_ERRORS, FlowiseClient, transport_error

from ..helpers import free_port, until
from ..servers import ServerThread

# What a client must never read in an upstream error: an address, a port, an exception's name or
# repr (`ClientConnectorError(ConnectionKey(host=...`).
LEAKS = re.compile(r"127\.0\.0\.1|255\.255|\.invalid|:\d|Error|Key\(|\[Errno|ssl:")


class RawServer:
    """A TCP server on 127.0.0.1 that hands each connection to `behaviour`, in a thread of its own:
    for answers no HTTP server would give."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.accepted = 0
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed: the test is over
                return
            self.accepted += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            self.behaviour(conn)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


def read_head(conn: socket.socket) -> None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return
        data += chunk


def hold(conn: socket.socket) -> None:
    """Until the client hangs up."""
    while conn.recv(65536):
        pass


def answer_then_hold(raw: bytes) -> Callable[[socket.socket], None]:
    def behaviour(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(raw)
        hold(conn)
    return behaviour


def answer_then_close(raw: bytes) -> Callable[[socket.socket], None]:
    def behaviour(conn: socket.socket) -> None:
        read_head(conn)
        conn.sendall(raw)
    return behaviour


def reset(conn: socket.socket) -> None:
    read_head(conn)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends RST


def silent(conn: socket.socket) -> None:
    read_head(conn)
    hold(conn)


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(behaviour: Callable[[socket.socket], None]) -> RawServer:
        servers.append(RawServer(behaviour))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


async def version_check(url: str, timeout: float | None = 30.0, **settings) -> GatewayError:
    """The failure of one JSON call (the version check) to `url`."""
    client = FlowiseClient(Settings(flowise_url=url, **settings))
    try:
        with pytest.raises(GatewayError) as caught:
            await client.request("GET", "/api/v1/version", "the version check", operation="version", timeout=timeout)
    finally:
        await client.aclose()
    return caught.value


def assert_plain(error: GatewayError, kind: type[GatewayError], message: str) -> None:
    assert type(error) is kind and error.message == message
    assert not LEAKS.search(error.message), error.message


def assert_logged(caplog: pytest.LogCaptureFixture, operation: str, exception: str) -> None:
    """The operator's detail: the operation and aiohttp's own exception, at warning level."""
    lines = [r.getMessage() for r in caplog.records
             if r.levelno == logging.WARNING and r.name == "flowise_sse.upstream.flowise_client"]
    assert any(f"Flowise call {operation!r} at " in line and f"{exception}: " in line for line in lines), lines


def test_transportErrors_eachRowBelowNoneOfItsBases_soEveryRowCanMatch():
    for index, (cls, *_) in enumerate(TRANSPORT_ERRORS):
        for earlier, *_ in TRANSPORT_ERRORS[:index]:
            assert not issubclass(cls, earlier), f"{cls.__name__} is shadowed by {earlier.__name__} above it"


async def test_transportError_whenPortClosed_thenUnreachableConnectionRefused(caplog):
    error = await version_check(f"http://127.0.0.1:{free_port()}")
    assert_plain(error, UpstreamUnavailable, "Flowise is unreachable (connection refused)")
    assert_logged(caplog, "version", "ClientConnectorError")


async def test_transportError_whenNameDoesNotResolve_thenUnreachableNameNotResolved(caplog):
    error = await version_check("http://flowise.invalid:3000")
    assert_plain(error, UpstreamUnavailable, "Flowise is unreachable (name not resolved)")
    assert_logged(caplog, "version", "ClientConnectorDNSError")


async def test_transportError_whenNoRouteToTheAddress_thenUnreachableCannotConnect(caplog):
    # The kernel refuses a connect to the broadcast address (no route, or no SO_BROADCAST): nothing
    # leaves the machine.
    error = await version_check("http://255.255.255.255:9")
    assert_plain(error, UpstreamUnavailable, "Flowise is unreachable (cannot connect)")
    assert_logged(caplog, "version", "ClientConnectorError")


async def test_transportError_whenTlsAgainstPlainHttpPort_thenUnreachableTlsHandshakeFailed(emulators, caplog):
    error = await version_check(emulators("3.1.4").url.replace("http://", "https://"))
    assert_plain(error, UpstreamUnavailable, "Flowise is unreachable (TLS handshake failed)")
    assert_logged(caplog, "version", "ClientConnectorSSLError")


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(folder / "key.pem"), "-out", str(folder / "cert.pem")],
                   check=True, capture_output=True)
    return folder / "cert.pem", folder / "key.pem"


async def test_transportError_whenCertificateNotTrusted_thenUnreachableTlsCertificateRejected(self_signed, caplog):
    cert, key = self_signed
    app = create_emulator_app()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off",
                            ssl_certfile=str(cert), ssl_keyfile=str(key))
    with ServerThread(app, config=config) as server:
        error = await version_check(f"https://127.0.0.1:{server.port}")
    assert_plain(error, UpstreamUnavailable, "Flowise is unreachable (TLS certificate rejected)")
    assert_logged(caplog, "version", "ClientConnectorCertificateError")


async def test_transportError_whenPoolFullPastConnectTimeout_thenTimeoutNoConnectionInTime(raw_server, caplog):
    server = raw_server(silent)
    client = FlowiseClient(Settings(flowise_url=server.url, upstream_max_connections=1, connect_timeout=0.3))
    holder = asyncio.ensure_future(client.request("GET", "/api/v1/version", "the version check", operation="version",
                                                  timeout=None))
    try:
        await until(lambda: server.accepted == 1, what="the first call holds the pool's one connection")
        with pytest.raises(GatewayError) as caught:
            await client.request("GET", "/api/v1/chatflows", "the chatflow listing", operation="chatflows")
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)
        await client.aclose()
    assert_plain(caught.value, UpstreamTimeout, "Flowise is unreachable (no connection in time)")
    assert_logged(caplog, "chatflows", "ConnectionTimeoutError")


async def test_transportError_whenFlowiseUrlNotHttp_thenUnreachableSaysSo():
    error = await version_check("localhost:3000")
    assert_plain(error, UpstreamUnavailable, "Flowise is unreachable (FLOWISE_URL is not an http(s) URL)")


async def test_transportError_whenFlowiseUrlHasNoHost_thenUnreachableSaysSo():
    error = await version_check("http://:3000")
    assert_plain(error, UpstreamUnavailable, "Flowise is unreachable (FLOWISE_URL is not a valid URL)")


async def test_transportError_whenServerHangsPastReadTimeout_thenTimeoutReadTimeout(raw_server, caplog):
    error = await version_check(raw_server(silent).url, timeout=0.2)
    assert_plain(error, UpstreamTimeout, "Flowise did not answer the version check in time (read timeout)")
    assert_logged(caplog, "version", "SocketTimeoutError")


async def test_transportError_whenServerResetsBeforeAnswering_thenBrokeOffConnectionReset(raw_server, caplog):
    error = await version_check(raw_server(reset).url)
    assert_plain(error, UpstreamUnavailable, "Flowise's answer to the version check broke off (connection reset)")
    assert_logged(caplog, "version", "ClientOSError")


async def test_transportError_whenServerClosesBeforeAnswering_thenBrokeOffServerDisconnected(raw_server, caplog):
    error = await version_check(raw_server(answer_then_close(b"")).url)
    assert_plain(error, UpstreamUnavailable, "Flowise's answer to the version check broke off (server disconnected)")
    assert_logged(caplog, "version", "ServerDisconnectedError")


async def test_transportError_whenGzipBodyIsNotGzip_thenUpstreamErrorBadContentEncoding(raw_server, caplog):
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
           b"Content-Length: 10\r\n\r\n0123456789")
    error = await version_check(raw_server(answer_then_hold(raw)).url)
    assert_plain(error, UpstreamError, "Flowise's answer to the version check could not be read (bad content encoding)")
    assert_logged(caplog, "version", "ClientPayloadError")


async def test_transportError_whenBodyShorterThanItsLength_thenBrokeOffAnswerCutShort(raw_server, caplog):
    raw = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"version":'
    error = await version_check(raw_server(answer_then_close(raw)).url)
    assert_plain(error, UpstreamUnavailable, "Flowise's answer to the version check broke off (answer cut short)")
    assert_logged(caplog, "version", "ClientPayloadError")


async def test_transportError_whenAnswerIsNotHttp_thenUpstreamErrorNotValidHttp(raw_server, caplog):
    error = await version_check(raw_server(answer_then_hold(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")).url)
    assert_plain(error, UpstreamError, "Flowise's answer to the version check could not be read (not valid HTTP)")
    assert_logged(caplog, "version", "ClientResponseError")


async def test_transportError_whenStreamEndsMidChunk_thenFlowiseStreamBrokeOff(raw_server, caplog):
    event = b'message:\ndata:{"event":"token","data":"fine"}\n\n'
    raw = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
           + b"%x\r\n%s\r\n" % (len(event), event))  # one whole chunk, then no last chunk: closed
    client = FlowiseClient(Settings(flowise_url=raw_server(answer_then_close(raw)).url))
    received = b""
    try:
        with pytest.raises(GatewayError) as caught:
            async with client.prediction_stream("c0ffee", lambda: b'{"question":"q","streaming":true}') as response:
                async for chunk in response.content.iter_any():
                    received += chunk
    finally:
        await client.aclose()
    assert b'"fine"' in received  # the stream had started: this is a break, not a refusal
    assert_plain(caught.value, UpstreamUnavailable, "the Flowise stream broke off (answer cut short)")
    assert_logged(caplog, "prediction_stream", "ClientPayloadError")


async def test_transportError_whenFlowiseUrlHasPassword_thenNeitherMessageNorLogCarriesIt(raw_server, caplog):
    server = raw_server(reset)
    error = await version_check(server.url.replace("http://", "http://admin:hunter2secret@"))
    assert error.message == "Flowise's answer to the version check broke off (connection reset)"
    assert "hunter2secret" not in caplog.text and "admin:***@127.0.0.1" in caplog.text


def test_transportError_whenNotAnAiohttpFailure_thenRaisedAsItIs():
    with pytest.raises(KeyError):
        transport_error(KeyError("ours"), "the version check")
    # Any other of aiohttp's, the last row: a gateway error still, never a 500.
    assert_plain(transport_error(aiohttp.ClientConnectionError("Connection closed"), "the abort"),
                 UpstreamUnavailable, "Flowise's answer to the abort broke off (connection lost)")
