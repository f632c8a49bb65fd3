"""The slow-client suite: half-open connections (slowloris), oversized headers, readers that never
read, and hundreds of open-and-drop cycles. Raw sockets, the gateway's own uvicorn set-up
(`server.gateway_config`), and the process's file descriptors and tasks back to baseline after.
(The per-reader send timeout is issue 10's; here: what a non-reading reader must not hold.)"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .helpers import read_until_closed, wait_until
from .servers import aread_sse, free_port

STREAM = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def _count() -> int:
    return len(asyncio.all_tasks())


async def until(predicate, timeout=5.0) -> float:
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - started


@pytest.mark.parametrize("sent", [b"", b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: 1"])
def test_halfOpenConnection_whenHeadersNeverComplete_thenClosedAfterHeaderTimeout(emulators, gateways, sent):
    gateway = gateways(emulators("3.1.4").url, header_timeout=0.5)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(sent)
        started = time.monotonic()
        answer = read_until_closed(sock, 5)
    assert 0.4 < time.monotonic() - started < 2.5
    assert answer.startswith(b"HTTP/1.1 408") if sent else answer == b""


def test_keepAliveConnection_whenNextRequestStallsMidHeaders_thenClosedAfterHeaderTimeout(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, header_timeout=0.5, idle_connection_timeout=30)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        sock.settimeout(5)
        first = b""
        while not first.endswith(b'{"status":"ok"}'):
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        time.sleep(1.0)  # idle between requests is keep-alive's business, not the header timeout's
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /healthz HTTP/1.1\r\nHost: 1")
        started = time.monotonic()
        answer = read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 408" in answer
    assert time.monotonic() - started < 2.5


@pytest.mark.parametrize("headers", [
    b"X-Big: " + b"a" * 40_000 + b"\r\n",  # one header over max_header_bytes
    b"".join(b"X-Many-%d: 1\r\n" % i for i in range(150)),  # more lines than max_headers
])
def test_headers_whenTooLargeOrTooMany_then431AndClosed(emulators, gateways, headers):
    gateway = gateways(emulators("3.1.4").url, max_header_bytes=16 * 1024, max_headers=100)
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        # Refused while still sending: the answer is already there.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n" + headers + b"\r\n")
        answer = read_until_closed(sock, 5)
    assert answer.startswith(b"HTTP/1.1 431") and b'"headers_too_large"' in answer


def test_endlessHeaders_thenRefusedAtTheCapNotBuffered(emulators, gateways):
    """431 at the cap; what still comes is dropped, up to max_linger_bytes, then the connection ends."""
    gateway = gateways(emulators("3.1.4").url, max_header_bytes=16 * 1024, max_linger_bytes=1024 * 1024)
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Endless: ")
        try:
            for _ in range(2000):  # up to 64 MB, if nothing stopped it
                sock.sendall(b"b" * 32768)
                sent += 32768
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = read_until_closed(sock, 5)
    # Past max_linger_bytes the close may reset the connection under the unread 431: only the bound
    # is certain here (a client that stops sending gets its 431: tests/test_refusals.py).
    assert sent < 8 * 1024 * 1024 and (answer == b"" or answer.startswith(b"HTTP/1.1 431"))


def test_pendingCap_whenClientsLeaveMidBody_thenAConnectionStillSendingHeadersKeepsItsPlace(emulators, gateways):
    # A client gone mid-body has nothing left to send: it must not take a place among the
    # connections still sending headers (max_pending_connections), whose oldest would be closed for it.
    gateway = gateways(emulators("3.1.4").url, max_pending_connections=2, header_timeout=30)

    def connected(sock: socket.socket) -> bool:
        return any(c.client == sock.getsockname() for c in list(gateway.server.server_state.connections))

    with socket.create_connection(("127.0.0.1", gateway.port)) as slow:
        slow.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # the rest of its headers later
        wait_until(lambda: connected(slow), what="the slow client is connected")
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", gateway.port)) as leaver:
                leaver.sendall(b"POST /v1/streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                               b"Content-Length: 1000\r\n\r\n{")
                wait_until(lambda: connected(leaver), what="the leaving client is connected")
                gone = leaver.getsockname()
            wait_until(lambda gone=gone: all(c.client != gone for c in list(gateway.server.server_state.connections)),
                       what="the gateway sees it gone")
        slow.sendall(b"\r\n")
        slow.settimeout(5)
        answer = slow.recv(4096)
    assert answer.startswith(b"HTTP/1.1 200"), f"the slow client was closed for clients already gone: {answer!r}"


def test_slowloris_whenHundredsOfHalfOpenConnectionsUnderLowFdLimit_thenHealthzStillAnswers(emulators):
    """260 half-open connections against a process limited to 256 descriptors: before, /healthz
    failed (every descriptor held by a connection that never finished its headers)."""
    flowise = emulators("3.1.4")
    port = free_port()
    env = {**os.environ, "FLOWISE_URL": flowise.url, "FLOWISE_SSE_MAX_PENDING_CONNECTIONS": "100",
           "FLOWISE_SSE_HEADER_TIMEOUT": "30"}

    def limit_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    proc = subprocess.Popen([sys.executable, "-m", "flowise_sse", "serve", "--port", str(port), "--log-level", "error"],
                            env=env, preexec_fn=limit_fds)
    attackers: list[socket.socket] = []
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(400):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        baseline = open_fds(proc.pid)
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
            attackers.append(sock)
        held = open_fds(proc.pid)
        started = time.monotonic()
        r = httpx.get(url + "/healthz", timeout=5)
        assert r.status_code == 200 and time.monotonic() - started < 2
        assert held - baseline <= 110  # max_pending_connections, plus the few in flight
        for sock in attackers:
            sock.close()
        attackers.clear()
        deadline = time.monotonic() + 5
        while open_fds(proc.pid) > baseline + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert open_fds(proc.pid) <= baseline + 2
        print(f"\nslowloris: 300 half-open connections, {held - baseline} descriptors held (cap 100), "
              f"/healthz in {time.monotonic() - started:.2f}s")
    finally:
        for sock in attackers:
            sock.close()
        proc.terminate()
        proc.wait(15)


async def test_readersThatNeverRead_thenTheirConnectionsAndTasksFreedWhenTheyGo(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    # A live stream (a token every 0.2 s for 20 s): its readers wait on it, holding their tasks.
    slow = {"chatflowId": DEMO_CHATFLOW_ID, "question": " ".join(["word"] * 100),
            "overrideConfig": {"emulator": {"delay": 0.2}}}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json=slow)).json()
        events_path = created["eventsUrl"].partition(gateway.url)[2]
        async with client.stream("GET", events_path) as first:
            await aread_sse(first, limit=2)  # it runs
        await asyncio.sleep(0.3)
        fds, tasks = open_fds(), gateway.call(_count)
        sleepers = []
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", gateway.port))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"GET " + events_path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            sleepers.append(sock)  # and never reads
        await until(lambda: gateway.call(_count) >= tasks + 20, timeout=10)
        for sock in sleepers:
            sock.close()
        freed = await until(lambda: open_fds() <= fds and gateway.call(_count) <= tasks, timeout=10)
        assert flowise.app.active_predictions == 1  # the run itself went on, for later readers
        assert (await client.delete(f"/v1/streams/{created['streamId']}")).status_code == 204
    print(f"\n20 readers that never read: their sockets and tasks freed {freed:.2f}s after they went")


async def test_openAndDrop_300Cycles_thenNothingLeaks(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    slow = {"question": "drop me", "overrideConfig": {"emulator": {"delay": 0.01}}}

    async def cycle(client: httpx.AsyncClient) -> None:
        async with client.stream("POST", STREAM, json=slow) as r:
            await aread_sse(r, limit=2)  # start and a token, then gone

    # Warm-up at the same concurrency: the upstream keep-alive pool grows to 10 connections, once.
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        await asyncio.gather(*(cycle(client) for _ in range(10)))
    await until(lambda: flowise.app.active_predictions == 0)
    await asyncio.sleep(0.2)
    fds, tasks = open_fds(), gateway.call(_count)
    started = time.monotonic()
    for _ in range(30):
        async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
            await asyncio.gather(*(cycle(client) for _ in range(10)))
    took = time.monotonic() - started
    # The runs go on (on_client_disconnect=continue) and end by themselves; then all is freed.
    freed = await until(lambda: flowise.app.active_predictions == 0 and open_fds() <= fds
                        and gateway.call(_count) <= tasks, timeout=20)
    print(f"\n300 open-and-drop cycles in {took:.1f}s; fds and tasks back to baseline {freed:.2f}s later")
