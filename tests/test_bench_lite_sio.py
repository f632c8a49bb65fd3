"""bench/flowise_lite_sio, the benchmark's socket.io upstream (Node, the `socket.io` npm server), speaks
what the package emulator's Flowise 1.6.2 speaks on the gateway's streaming path, and the gateway
relays it exactly: the benchmark's socket.io figures are worth something only if both hold.

It runs as the benchmark runs it, `bench/servers.py lite-sio` (which installs its locked node_modules
with `npm ci` the first time, from npm's cache when it is there; `tests/setup.sh` installs Node).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import socketio

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .helpers import free_port, until, wait_until
from .servers import ServerThread, aread_sse, joined

BENCH = Path(__file__).parent.parent / "bench"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
Seen = list[tuple[str, Any]]


@pytest.fixture(scope="module")
def lite_sio() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "servers.py"), "lite-sio", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def listening_or_dead() -> bool:
        if proc.poll() is not None:
            return True
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        return False

    try:
        wait_until(listening_or_dead, timeout=300, interval=0.05, what="flowise-lite-sio listens (npm ci first)")
        if proc.poll() is not None:
            raise AssertionError(f"bench/servers.py lite-sio exited: {proc.stdout.read().decode()}")  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]


@pytest.fixture
def emulator162(emulators: Callable[..., ServerThread]) -> str:
    return emulators("1.6.2").url


@contextlib.asynccontextmanager
async def socket_client(url: str) -> AsyncIterator[tuple[str, Seen]]:
    """A connected python-socketio client (websocket transport): its id, and the events it receives."""
    sio = socketio.AsyncClient(reconnection=False)
    seen: Seen = []

    @sio.on("*")
    async def any_event(event: str, *args: Any) -> None:
        seen.append((event, args[0] if args else None))

    await sio.connect(url, transports=["websocket"], wait_timeout=10)
    try:
        yield sio.get_sid("/"), seen
    finally:
        await sio.disconnect()


async def predict_on_socket(url: str, body: dict[str, Any]) -> tuple[httpx.Response, Seen, float]:
    """POST the prediction with a socket's id; its answer, the socket's events once `end` came, and
    the seconds from the POST to the answer."""
    async with socket_client(url) as (sid, seen), httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        answer = await client.post(f"{url}/api/v1/prediction/{DEMO_CHATFLOW_ID}",
                                   json={**body, "socketIOClientId": sid})
        took = time.monotonic() - started
        await until(lambda: any(name == "end" for name, _ in seen), timeout=10, what="the end event")
        return answer, seen, took


def emulate(tokens: list[str], delay: float) -> dict[str, Any]:
    return {"overrideConfig": {"emulator": {"tokens": tokens, "delay": delay}}}


async def test_liteSio_whenStreamedToASocket_thenTheEmulatorsEventsAndAnswer(lite_sio, emulator162):
    body = {"question": "Hello lite", **emulate(["This", " is", " lite."], 0.01)}
    lite_answer, lite_seen, _ = await predict_on_socket(lite_sio, body)
    emu_answer, emu_seen, _ = await predict_on_socket(emulator162, body)

    assert lite_seen == emu_seen == [("start", ""), ("token", ""), ("token", "This"), ("token", " is"),
                                     ("token", " lite."), ("token", ""), ("end", None)]
    assert lite_answer.status_code == emu_answer.status_code == 200
    assert lite_answer.headers["content-type"] == emu_answer.headers["content-type"]
    lite_json, emu_json = lite_answer.json(), emu_answer.json()
    assert list(lite_json) == list(emu_json)  # the same keys, in 1.6.2's order
    assert lite_json["text"] == emu_json["text"] == "This is lite."
    assert lite_json["question"] == "Hello lite" and lite_json["sessionId"] == lite_json["chatId"]


async def test_liteSio_whenNoTokensGiven_thenTheEmulatorsMockReply(lite_sio, emulator162):
    lite_answer, lite_seen, _ = await predict_on_socket(lite_sio, {"question": "Hello default"})
    emu_answer, emu_seen, _ = await predict_on_socket(emulator162, {"question": "Hello default"})
    assert lite_seen == emu_seen
    assert lite_answer.json()["text"] == emu_answer.json()["text"]


async def test_liteSio_whenTheGatewaysChecksAsked_thenAnsweredAsThe162Emulator(lite_sio, emulator162):
    async with httpx.AsyncClient(timeout=10) as client:
        for path in ("/api/v1/version", f"/api/v1/chatflows-streaming/{DEMO_CHATFLOW_ID}",
                     f"/api/v1/chatflows-streaming/{UNKNOWN_ID}", "/api/v1/ping"):
            lite, emu = await client.get(lite_sio + path), await client.get(emulator162 + path)
            assert (lite.status_code, lite.headers["content-type"]) == (emu.status_code, emu.headers["content-type"])
            if emu.status_code == 200:
                assert lite.json() == emu.json()
        lite = await client.post(f"{lite_sio}/api/v1/prediction/{UNKNOWN_ID}", json={"question": "x"})
        emu = await client.post(f"{emulator162}/api/v1/prediction/{UNKNOWN_ID}", json={"question": "x"})
        assert (lite.status_code, lite.text) == (emu.status_code, emu.text)


async def test_liteSio_whenPaced_thenOnItsScheduleAndItsLatenessReported(lite_sio):
    async with httpx.AsyncClient(timeout=10) as client:
        await client.delete(lite_sio + "/__lite/stats")
        tokens = [f" t{i}" for i in range(10)]
        answer, seen, took = await predict_on_socket(lite_sio, {"question": "paced", **emulate(tokens, 0.03)})
        stats = (await client.get(lite_sio + "/__lite/stats")).json()
    assert [data for name, data in seen if name == "token" and data] == tokens
    assert took >= 10 * 0.03  # token k is due at start + k * delay: none goes early, so neither does the answer
    assert answer.json()["text"] == "".join(tokens)
    assert stats["pacedTokens"] == 10 and 0 <= stats["lateP50Ms"] <= stats["lateP99Ms"] <= stats["lateMaxMs"]


async def test_liteSio_whenNoSocketNamed_thenTheAnswerAloneAfterTheTokensTime(lite_sio):
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.monotonic()
        answer = await client.post(f"{lite_sio}/api/v1/prediction/{DEMO_CHATFLOW_ID}",
                                   json={"question": "no socket", **emulate(["a", "b", "c"], 0.05)})
    assert time.monotonic() - started >= 0.15
    assert answer.status_code == 200 and answer.json()["text"] == "abc"


async def test_gateway_overLiteSio_whenPacedStream_thenRelayedExactly(lite_sio, gateways):
    gateway = gateways(lite_sio)
    tokens = [f" p{i}" for i in range(20)]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
        ready = (await client.get("/readyz")).json()
        assert (ready["flowiseVersion"], ready["transport"]) == ("1.6.2", "socketio")
        async with client.stream("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
                                 json={"question": "relay", **emulate(tokens, 0.01)}) as response:
            assert response.status_code == 200
            events = await aread_sse(response)
    assert [e.data["text"] for e in events if e.event == "token"] == tokens
    assert events[-1].event == "end" and events[-1].data["text"] == "".join(tokens)


async def test_gateway_overLiteSio_whenFastStream_thenEveryTokenCameOverTheSocket(lite_sio, gateways):
    """No delay: the answer waits for a ping's pong, so it cannot overtake the tokens and the gateway
    relays each one as it came (none made up from the answer's text after its late-frame grace)."""
    gateway = gateways(lite_sio, socketio_late_frames=0.0)
    tokens = [f"t{i} " for i in range(5000)]
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=60) as client,
        client.stream("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
                      json={"question": "fast", **emulate(tokens, 0.0)}) as response,
    ):
        events = await aread_sse(response)
    assert [e.data["text"] for e in events if e.event == "token"] == tokens
    assert joined(events) == events[-1].data["text"] == "".join(tokens)


async def test_liteSio_whenTheHttpClientLeaves_thenItsStreamStops(lite_sio):
    tokens = [f" s{i}" for i in range(10)]  # due over 0.5 s
    url = f"{lite_sio}/api/v1/prediction/{DEMO_CHATFLOW_ID}"
    async with socket_client(lite_sio) as (sid, seen), httpx.AsyncClient(timeout=10) as client:
        post = asyncio.ensure_future(client.post(url, json={"question": "leave", "socketIOClientId": sid,
                                                            **emulate(tokens, 0.05)}))
        await until(lambda: ("token", " s1") in seen, timeout=10, what="the first tokens")
        post.cancel()  # closes the request's connection
        with contextlib.suppress(asyncio.CancelledError):
            await post
        # A second prediction on the same socket whose one token is due after the first one's last:
        # had the first run on, all of its tokens and its `end` would come before this token.
        answer = await client.post(url, json={"question": "next", "socketIOClientId": sid, **emulate(["ok"], 0.7)})
        await until(lambda: ("token", "ok") in seen and seen[-1] == ("end", None), timeout=10, what="the second end")
    assert answer.json()["text"] == "ok"
    first = seen[:seen.index(("token", "ok")) - 2]  # before the second's `start ""`, `token ""`
    assert ("token", " s9") not in first and ("end", None) not in first
    assert seen.count(("end", None)) == 1
