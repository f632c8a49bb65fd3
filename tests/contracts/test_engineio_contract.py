"""engine.io's and python-socketio's clients, as `flowise_sse/upstream/socketio_transport.py`
overrides them.

`_InlineEngineIOClient` replaces the private `engineio.AsyncClient._receive_packet` for MESSAGE
packets (the handler awaited inline instead of run in a task of its own); `_SocketIOClient` puts it
in through python-socketio's private `_engineio_client_class`. Here: the names and signatures
used, what upstream does with a MESSAGE packet (the behaviour replaced), and both clients against
a real python-socketio server on loopback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from importlib.metadata import version
from typing import Any

import engineio
import pytest
import socketio
import uvicorn

from flowise_sse.upstream.socketio_transport import _InlineEngineIOClient, _SocketIOClient

from ..helpers import until
from ..servers import ServerThread
from . import parameters, revisit

OVERRIDE = "flowise_sse/upstream/socketio_transport.py (_InlineEngineIOClient, _SocketIOClient)"
BURST = 50


def broken(what: str) -> str:
    deps = f"python-engineio {version('python-engineio')} / python-socketio {version('python-socketio')}"
    return revisit(deps, OVERRIDE, what)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    """A python-socketio server that answers `burst` with that many `token` events, at once."""
    sio = socketio.AsyncServer(async_mode="asgi")

    @sio.on("burst")
    async def burst(sid: str, count: int) -> None:
        for i in range(count):
            await sio.emit("token", i, to=sid)

    app = socketio.ASGIApp(sio)
    config = uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_level="critical",
                            timeout_graceful_shutdown=3)
    with ServerThread(app, config=config) as running:
        yield running


def test_overriddenAndUsedParts_keepTheirNamesAndSignatures():
    assert asyncio.iscoroutinefunction(engineio.AsyncClient._receive_packet), \
        broken("engineio.AsyncClient._receive_packet is no longer a coroutine function")
    assert parameters(engineio.AsyncClient._receive_packet) == ["self", "pkt"], \
        broken(f"_receive_packet now takes {parameters(engineio.AsyncClient._receive_packet)}")
    assert parameters(engineio.AsyncClient._trigger_event) == ["self", "event", "args", "kwargs"], \
        broken(f"_trigger_event now takes {parameters(engineio.AsyncClient._trigger_event)}")
    assert parameters(socketio.AsyncClient._engineio_client_class) == ["self"], \
        broken("socketio.AsyncClient._engineio_client_class changed")
    assert engineio.packet.MESSAGE == 4, broken("engineio.packet.MESSAGE is no longer reachable as such")
    pkt = engineio.packet.Packet(engineio.packet.MESSAGE, "2[\"token\",1]")
    assert (pkt.packet_type, pkt.data) == (engineio.packet.MESSAGE, "2[\"token\",1]"), \
        broken("a Packet no longer has packet_type and data")


async def test_upstreamReceivePacket_whenMessage_thenTriggersMessageWithRunAsync():
    # The behaviour the override replaces, exactly: one `message` event, run in a task of its own.
    client = engineio.AsyncClient()
    calls: list[tuple] = []
    trigger = client._trigger_event

    async def record(event: str, *args: Any, **kwargs: Any) -> Any:
        calls.append((event, args, kwargs))
        return await trigger(event, *args, **kwargs)

    client._trigger_event = record  # type: ignore[method-assign]
    await client._receive_packet(engineio.packet.Packet(engineio.packet.MESSAGE, "2[\"token\",1]"))
    assert calls == [("message", ("2[\"token\",1]",), {"run_async": True})], \
        broken(f"_receive_packet handles a MESSAGE packet as {calls}")


async def test_triggerEvent_withoutRunAsync_thenAwaitsTheHandlerInTheCallersTask():
    # What the override calls instead: the handler awaited in the reading task, its result returned.
    client = engineio.AsyncClient()
    ran_in: list[asyncio.Task | None] = []

    async def handler(data: str) -> str:
        ran_in.append(asyncio.current_task())
        return data.upper()

    client.on("message", handler)
    result = await client._trigger_event("message", "x", run_async=False)
    assert (result, ran_in) == ("X", [asyncio.current_task()]), \
        broken("_trigger_event(run_async=False) does not await the handler in the caller's task")


def test_socketioClient_buildsItsEngineioClientFromEngineioClientClass():
    client = _SocketIOClient(reconnection=False)
    assert type(client.eio) is _InlineEngineIOClient, \
        broken("python-socketio no longer builds `eio` from _engineio_client_class()")


@pytest.mark.parametrize("client_class", [socketio.AsyncClient, _SocketIOClient], ids=["upstream", "inline"])
async def test_burstOfEvents_overARealSocket_thenAllInOrder_inlineInTheReadingTaskOnly(server, client_class):
    client = client_class(reconnection=False)
    seen: list[tuple[Any, asyncio.Task | None]] = []

    def on_event(name: str, *args: Any) -> None:  # the transport's handler is this kind: sync, queues
        seen.append((args[0], asyncio.current_task()))

    client.on("*", on_event)
    await client.connect(server.url, transports=["websocket"], wait_timeout=5)
    try:
        await client.emit("burst", BURST)
        await until(lambda: len(seen) == BURST, what="every event arrives")
    finally:
        await client.disconnect()
    assert [value for value, _ in seen] == list(range(BURST))
    tasks = {id(task) for _, task in seen}
    if client_class is _SocketIOClient:
        assert len(tasks) == 1, broken("the inline client's events are not handled in one task")
    else:
        assert len(tasks) == BURST, \
            broken("upstream no longer handles each message in a task of its own: the override may be moot")
