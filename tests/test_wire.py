"""The wire format and the reconnect rules chosen for real clients (docs/user-guide/wire-format.md)."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson

from flowise_sse.emulator import DEMO_CHATFLOW_ID
from flowise_sse.events import Event
from flowise_sse.streams.sse_encoder import encode
from flowise_sse.upstream.normalizer import relayed

from .servers import aread_sse, joined

REPLY = "This is a deterministic mock reply. You said: "


def test_encode_whenLineSeparatorsInText_thenEscapedAndEveryLineReaderSeesOneDataLine() -> None:
    text = "a\u2028b\u2029c\u0085d\r\ne\x0bf\x1cg\x00h"
    frame = encode("s", 3, Event("token", {"text": text}))
    lines = frame.decode().splitlines()  # what requests' iter_lines(decode_unicode=True) does
    assert len(lines) == 4 and lines[0] == "event: token" and lines[3] == ""
    assert lines[1] == 'data: {"text":"a\\u2028b\\u2029c\\u0085d\\r\\ne\\u000bf\\u001cg\\u0000h"}'
    assert orjson.loads(lines[1][6:]) == {"text": text}
    assert frame.endswith(b"\nid: s:3\n\n")  # id last: a cut before this line changes no client's last id


def test_relayedNames_whenEmptyOrReserved_thenMappedUnderFlowisePrefix() -> None:
    names = {name: relayed(name, "x").event for name in
             ("", "message", "open", "error", "start", "token", "end", "metadata", "usedTools", "a b\nc", None)}
    assert names == {"": "flowise.message", "message": "flowise.message", "open": "flowise.open",
                     "error": "flowise.error", "start": "flowise.start", "token": "flowise.token",
                     "end": "flowise.end", "metadata": "metadata", "usedTools": "usedTools", "a b\nc": "a_b_c",
                     None: "flowise.message"}


async def test_stream_whenFlowiseSendsCollidingNames_thenRelayedUnderDocumentedNames(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    extra = [{"event": "message", "data": "m"}, {"event": "", "data": "unnamed"}, {"event": "open", "data": 1}]
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        client.stream("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={
            "question": "names", "overrideConfig": {"emulator": {"tokens": ["x"], "events": extra}}}) as r,
    ):
        events = await aread_sse(r)
    relayed_events = [(e.event, e.data) for e in events if e.event.startswith("flowise.")]
    assert relayed_events == [("flowise.message", "m"), ("flowise.message", "unnamed"), ("flowise.open", 1)]
    assert events[-1].event == "end"


async def test_resume_afterTheTerminalEvent_then204SoEventSourceStops(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        async with client.stream("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": "done"}) as r:
            events = await aread_sse(r)
        last = events[-1].id
        again = await client.get(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": "done"},
                                 headers={"Last-Event-ID": last})
        before_end = await client.get(f"/v1/streams/{last.split(':')[0]}/events",
                                      headers={"Last-Event-ID": events[-2].id})
    assert events[-1].event == "end"
    assert again.status_code == 204 and again.content == b""
    assert before_end.status_code == 200 and "event: end" in before_end.text  # one event left: served


async def test_getStream_whenReconnectedBeforeFirstEvent_thenSameStreamNoSecondPredictionNo409(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    params = {"question": "[[delay=50]] once only", "chatId": "chat-rejoin-1"}
    url = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
    before = len(flowise.app.requests)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        async with client.stream("GET", url, params=params):
            pass  # the connection drops before the client read any event
        # EventSource reconnects with the same URL and, having no event, no Last-Event-ID.
        async with client.stream("GET", url, params=params) as r:
            assert r.status_code == 200
            events = await aread_sse(r)
        # Once a reader had the whole stream, the same GET is a new question.
        async with client.stream("GET", url, params=params) as r:
            fresh = await aread_sse(r)
    assert [e.id.split(":")[1] for e in events] == [str(n) for n in range(1, len(events) + 1)]
    assert joined(events) == REPLY + "once only" and events[-1].event == "end"
    assert fresh[0].data["streamId"] != events[0].data["streamId"]
    assert len(flowise.app.requests) - before == 2  # the drop did not cost a prediction


async def test_getStream_withRequestId_thenDistinctAsksAreDistinctStreams(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    url = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        async def ask(request_id: str) -> str:
            params = {"question": "[[delay=30]] same", "requestId": request_id}
            async with client.stream("GET", url, params=params) as r:
                return (await aread_sse(r))[0].data["streamId"]
        a, b, a_again = await asyncio.gather(ask("1"), ask("2"), ask("1"))
    assert a != b and a == a_again  # the same request joined; another requestId asked anew


async def test_eventsUrlToken_whenLongerThanTheOldTtl_thenValidForTheStreamsLife(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, api_keys=["k"], total_timeout=100.0, stream_retention=50.0)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        created = (await client.post("/v1/streams", headers={"Authorization": "Bearer k"},
                                     json={"chatflowId": DEMO_CHATFLOW_ID, "question": "ttl"})).json()
    expires = int(created["eventsUrl"].split("token=")[1].split(".")[0])
    assert abs(expires - (time.time() + 150)) < 5


def _stalled_reader(port: int, path: str) -> socket.socket:
    """A client that sends its request, reads nothing more, and keeps its receive window small."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock


async def _wait(check, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return check()


async def test_reader_whenItStopsReading_thenLetGoAfterSendTimeout_pingsIncluded(emulators, gateways):
    # The stream fills the socket's buffers with big tokens, then Flowise stalls: the write that
    # blocks times out (sse-starlette >= 3.7 bounds its keep-alive writes the same way), the
    # reader is let go and the stream goes on for others.
    gateway = gateways(emulators("3.1.4").url, send_timeout=0.5, keepalive_interval=0.2, idle_timeout=60.0,
                       max_body_bytes=16 * 1024 * 1024)  # the 8 MB plan travels in the request
    big = ["x" * 200_000] * 40
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, "question": "stall",
                                     "overrideConfig": {"emulator": {"tokens": big + ["never"],
                                                                     "hangAfter": 40}}})).json()
    manager = gateway.app.state.services.manager
    run = manager.runs[created["streamId"]]
    sock = _stalled_reader(gateway.port, f"/v1/streams/{created['streamId']}/events")
    try:
        assert await _wait(lambda: run.readers == 1)
        assert await _wait(lambda: len(run.log.frames) >= 41)  # start and the 40 tokens
        assert await _wait(lambda: run.readers == 0), "the stalled reader was never let go"
        assert not run.done  # the stream itself goes on, resumable
        # Dropped at once, write buffer and all: no waiting for a peer that does not read.
        assert await _wait(lambda: len(gateway.server.server_state.connections) == 0)
        sock.settimeout(10)
        received = 0
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        assert received < 40 * 200_000
    finally:
        sock.close()

        async def stop() -> None:
            run.abort("test over")
        gateway.call(stop)


async def test_reader_whenTheExitSignalCutsItsBlockedWrite_thenNothingIsSentAfterIt(emulators, gateways):
    # sse-starlette's exit signal (AppStatus.should_exit) cancels a response whose write is blocked
    # on a reader that stopped reading. A send that never returned leaves the connection in an
    # unknown state, so sse-starlette sends nothing more (its `_send_interrupted`), and the
    # gateway's own `_send_with_timeout` must tell it so: else its closing chunk waits on that reader
    # (up to send_timeout, holding the shutdown) and, once the reader reads again, ends the cut
    # stream as if it were whole.
    from sse_starlette.sse import AppStatus

    gateway = gateways(emulators("3.1.4").url, send_timeout=60.0, idle_timeout=60.0,
                       max_body_bytes=16 * 1024 * 1024)  # the 8 MB plan travels in the request
    big = ["x" * 200_000] * 40
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, "question": "cut",
                                     "overrideConfig": {"emulator": {"tokens": big + ["never"],
                                                                     "hangAfter": 40}}})).json()
    manager = gateway.app.state.services.manager
    run = manager.runs[created["streamId"]]
    sock = _stalled_reader(gateway.port, f"/v1/streams/{created['streamId']}/events")
    try:
        assert await _wait(lambda: run.readers == 1)
        assert await _wait(lambda: any(c.flow.write_paused for c in list(gateway.server.server_state.connections))), \
            "the reader's writes never blocked"
        AppStatus.should_exit = True
        try:
            assert await _wait(lambda: run.readers == 0), "the exit signal did not end the response"
        finally:
            AppStatus.should_exit = False
        sock.settimeout(10)
        received, closed = b"", False
        while not received.endswith(b"\r\n0\r\n\r\n"):  # a chunked body's end: the connection stays
            chunk = sock.recv(1 << 20)
            if not chunk:
                closed = True
                break
            received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert not received.endswith(b"\r\n0\r\n\r\n"), "a closing chunk was sent after the interrupted write"
        assert closed  # uvicorn closes a response its app left unfinished: the client sees it cut
    finally:
        sock.close()
        httpx.delete(f"{gateway.url}/v1/streams/{created['streamId']}")


async def test_keepalive_whenItsWriteBlocks_thenSendTimeoutEndsTheResponseAndClosesTheReader() -> None:
    # An idle stream whose reader stopped reading: the only write is a keep-alive, and it blocks.
    from sse_starlette.sse import SendTimeoutError

    from flowise_sse.api.access import OPEN
    from flowise_sse.api.event_stream import event_stream
    from flowise_sse.settings import Settings
    from flowise_sse.streams.manager import Reading

    closed = asyncio.Event()

    async def frames():
        try:
            yield b"event: start\ndata: {}\nid: s:1\n\n"
            await asyncio.Event().wait()  # Flowise thinks, for a long time
        finally:
            closed.set()

    class Manager:
        async def follow(self, stream_id: str, after: int, owner: str | None, any_owner: bool = False):
            return Reading(frames(), lambda: None)

    sent: list[dict] = []

    async def send(message: dict) -> None:
        if message["type"] == "http.response.body" and sent and sent[-1]["type"] == "http.response.body":
            await asyncio.Event().wait()  # the peer's window is shut: this write never completes
        sent.append(message)

    async def receive() -> dict:
        await asyncio.Event().wait()
        return {}

    response = await event_stream(Manager(), Settings(keepalive_interval=0.1, send_timeout=0.2), "s", 0, OPEN)
    started = time.monotonic()
    try:
        async with asyncio.timeout(5):
            await response({"type": "http", "method": "GET"}, receive, send)
    except SendTimeoutError:
        pass  # no uvicorn connection to drop here: the error goes to the server
    assert time.monotonic() - started < 2
    assert closed.is_set()  # the reader's generator was closed: its position and frames freed
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]


