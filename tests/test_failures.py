"""Upstream failures, timeouts and departures: always a clear status or `error` event, no leaks."""

from __future__ import annotations

import asyncio
import os
import socket
import time

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .helpers import REPLY, free_port, until
from .servers import aread_sse, joined

STREAM = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"


@pytest.fixture
def silent_server():
    """A TCP server that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


async def post_stream(gateway, body, timeout=20.0):
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=timeout) as client,
        client.stream("POST", STREAM, json=body) as r,
    ):
        if r.status_code != 200:
            await r.aread()
            return r, []
        return r, await aread_sse(r)


@pytest.mark.parametrize("transport", ["auto", "socketio", "sse"])
async def test_flowiseDown_then502BeforeTheStream(gateways, transport):
    gateway = gateways(f"http://127.0.0.1:{free_port()}", flowise_transport=transport)
    r, _ = await post_stream(gateway, {"question": "anyone?"})
    assert r.status_code == 502
    assert r.json()["error"] == {
        "code": "upstream_unavailable", "message": r.json()["error"]["message"], "retryable": True}
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        assert (await client.get("/readyz")).status_code == 503
        assert (await client.get("/healthz")).status_code == 200


async def test_flowiseSilent_then504WithinTheConnectTimeout(gateways, silent_server):
    gateway = gateways(silent_server, connect_timeout=0.5)
    started = time.monotonic()
    r, _ = await post_stream(gateway, {"question": "hello?"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert time.monotonic() - started < 3


@pytest.mark.parametrize("version", ["3.1.4", "1.6.2"])
async def test_flowiseHangs_thenTimeoutAsStatusOrErrorEvent(emulators, gateways, version):
    flowise = emulators(version)
    gateway = gateways(flowise.url, connect_timeout=0.5, first_event_timeout=0.5)
    r, events = await post_stream(gateway, {"question": "hang", "overrideConfig": {"emulator": {"hang": True}}})
    if version == "3.1.4":  # no SSE headers ever come: the stream never started
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    else:  # socket.io: the POST is in flight on a connected socket, then nothing
        assert [e.event for e in events] == ["start", "error"]
        assert events[-1].data["code"] == "upstream_timeout" and "first event" in events[-1].data["message"]
    # SSE headers out, then the LLM never answers:
    r, events = await post_stream(gateway, {"question": "stall", "overrideConfig": {"emulator": {"hangAfter": 0}}})
    assert [e.event for e in events] == ["start", "error"] and events[-1].data["code"] == "upstream_timeout"


@pytest.mark.parametrize("version", ["3.1.4", "1.6.2"])
async def test_flowiseStallsMidAnswer_thenIdleTimeoutErrorAfterTheTokens(emulators, gateways, version):
    gateway = gateways(emulators(version).url, idle_timeout=0.5)
    _, events = await post_stream(gateway, {"question": "stall", "overrideConfig": {"emulator": {"hangAfter": 3}}})
    assert joined(events) == "This is a"
    assert events[-1].event == "error" and events[-1].data["code"] == "upstream_timeout"
    assert "idle" in events[-1].data["message"]


async def test_answerTooSlowOverall_thenTotalTimeoutError(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, total_timeout=0.6)
    _, events = await post_stream(gateway, {"question": "slow", "overrideConfig": {"emulator": {"delay": 0.2}}})
    assert events[-1].event == "error" and events[-1].data["code"] == "upstream_timeout"
    assert "total" in events[-1].data["message"]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def leave_midway(gateway, chat_id: str) -> None:
    slow = {"question": "slow one", "chatId": chat_id, "overrideConfig": {"emulator": {"delay": 0.3}}}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        client.stream("POST", STREAM, json=slow) as r,
    ):
        first = await aread_sse(r, limit=3)
    assert [e.event for e in first] == ["start", "token", "token"]


@pytest.mark.parametrize("version", ["1.6.2", "2.0.7", "2.1.0", "3.1.4"])
async def test_clientLeaves_whenPolicyAbort_thenUpstreamClosedWithinASecondAndNothingLeaks(
    emulators, gateways, version,
):
    flowise = emulators(version)
    gateway = gateways(flowise.url, on_client_disconnect="abort")
    pool = gateway.app.state.services.settings.socketio_pool_size if version in ("1.6.2", "2.0.7") else 0

    upstream = gateway.app.state.services.upstream

    def upstream_closed() -> bool:
        return flowise.app.active_predictions == 0 and flowise.app.connected_sockets <= pool

    def settled() -> bool:
        """Nothing of the last round still going: its abort call answered, the pool refilled."""
        return (upstream_closed() and flowise.app.connected_sockets == pool and not upstream._aborts
                and upstream.sockets._connecting == 0
                and (version == "1.6.2" or ("warm-up" in [chat for _, chat in flowise.app.aborts])))

    # One round first: pools, caches and keep-alive connections reach their steady state.
    await leave_midway(gateway, "warm-up")
    await until(upstream_closed, timeout=2.0)
    await until(settled, timeout=2.0, what="the warm-up round settled")
    flowise.app.aborts.clear()
    fds, tasks = open_fds(), await gateway_tasks(gateway)
    for round in range(3):
        await leave_midway(gateway, f"leaving-{round}")
        assert await until(upstream_closed, timeout=2.0) < 1.0
    if version != "1.6.2":  # the abort route exists from 1.8.0 on
        await until(lambda: len(flowise.app.aborts) == 3, timeout=2.0)
        assert sorted(chat for _, chat in flowise.app.aborts) == ["leaving-0", "leaving-1", "leaving-2"]
    else:
        assert list(flowise.app.aborts) == []
    await until(lambda: open_fds() <= fds, timeout=2.0)
    await until(lambda: gateway.call(_count) <= tasks, timeout=2.0)


async def _count() -> int:
    return len(asyncio.all_tasks())


async def gateway_tasks(gateway) -> int:
    return gateway.call(_count)


async def test_clientLeaves_whenPolicyContinue_thenStreamFinishesForLaterReaders(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    slow = {"question": "keep going", "overrideConfig": {"emulator": {"delay": 0.05}}}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        async with client.stream("POST", STREAM, json=slow) as r:
            first = await aread_sse(r, limit=2)
        stream_id = first[0].data["streamId"]
        async with client.stream("GET", f"/v1/streams/{stream_id}/events",
                                 headers={"Last-Event-ID": first[-1].id}) as r:
            rest = await aread_sse(r)
    assert joined(first + rest) == REPLY + "keep going"
    assert list(flowise.app.aborts) == [] or all(chat != first[0].data["chatId"] for _, chat in flowise.app.aborts)


async def test_gatewayStops_thenEverySocketIoSocketClosed_includingRestingOnes(emulators, gateways):
    flowise = emulators("1.6.2")
    before = flowise.app.connected_sockets
    gateway = gateways(flowise.url)
    _, events = await post_stream(gateway, {"question": "one clean prediction"})
    assert events[-1].event == "end"
    assert flowise.app.connected_sockets > before  # the pool, and the socket resting after use
    gateway.__exit__(None, None, None)
    await until(lambda: flowise.app.connected_sockets == before, timeout=2.0)


async def test_socketIoPool_whenUsedSocketsRest_thenRefilledAndNoLeaseConnectsOnItsPath(emulators, gateways):
    # A used socket rests (late frames of its prediction must not reach the next one); the pool
    # refills meanwhile, in the background, so sequential predictions never wait for a handshake.
    flowise = emulators("1.6.2")
    gateway = gateways(flowise.url, socketio_pool_size=2)
    pool = gateway.app.state.services.upstream.sockets
    await until(lambda: len(pool._ready) == 2, timeout=5.0)
    for n in range(5):
        _, events = await post_stream(gateway, {"question": f"sequential {n}"})
        assert events[-1].event == "end" and joined(events) == REPLY + f"sequential {n}"
        # Well under the rest (1 s): full again from new connections, not from rested sockets.
        await until(lambda: len(pool._ready) == 2, timeout=pool.REST / 2)
    assert pool.connects_on_path == 0
