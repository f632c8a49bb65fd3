"""Issue 11: input that passes parsing, upstream answers that lie, unbounded reads, secrets, the
non-streaming prediction, and the small wrongs. Each a clear 4xx/502/SSE `error`, never a 500."""

from __future__ import annotations

import asyncio
import logging
import socket
import time

import httpx
import pytest

from flowise_sse.api.redaction import QueryRedacted
from flowise_sse.upstream.flowise_frames import event_payloads

from .faulty_flowise import CHATFLOW, FaultyFlowise
from .helpers import read_until_closed
from .servers import ServerThread, aread_sse

STREAM = f"/v1/chatflows/{CHATFLOW}/stream"
PREDICTION = f"/v1/chatflows/{CHATFLOW}/prediction"


@pytest.fixture(scope="module")
def faulty():
    with ServerThread(FaultyFlowise(), lifespan="off") as server:
        yield server


async def until(condition, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def post_stream(gateway, body, **kwargs):
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        client.stream("POST", STREAM, json=body, **kwargs) as r,
    ):
        if r.status_code != 200:
            await r.aread()
            return r, []
        return r, await aread_sse(r)


# --- item 2: input that passes JSON parsing but cannot be sent on ---------------------------------
@pytest.mark.parametrize("body", [
    b'{"question": "hi", "overrideConfig": {"temperature": NaN}}',
    b'{"question": "hi", "overrideConfig": {"t": [Infinity]}}',
    b'{"question": "hi", "overrideConfig": {"t": -Infinity}}',
    b'{"question": "hi \\ud800"}',
    b'{"question": "hi", "history": [{"role": "user", "content": "\\udfff"}]}',
    b'{"question": "hi", "overrideConfig": {"k": "\\ud800x"}}',
    b'{"question": "hi", "overrideConfig": {"\\ud800": 1}}',
    b'{"question": "hi", "overrideConfig": ' + b'{"a":' * 100 + b"1" + b"}" * 100 + b"}",
])
async def test_input_whenNotSendableJson_then422AndNothingReachesFlowise(faulty, gateways, body):
    gateway = gateways(faulty.url)
    before = faulty.app.predictions
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for path in (STREAM, PREDICTION):
            r = await client.post(path, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "invalid_request"
        r = await client.post("/v1/streams",
                              content=body.replace(b"{", b'{"chatflowId": "%s", ' % CHATFLOW.encode(), 1),
                              headers={"content-type": "application/json"})
        assert r.status_code == 422, r.text
    assert faulty.app.predictions == before


async def test_historyQuery_whenDeeplyNested_then400NotRecursionError(faulty, gateways):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for history in ("[" * 1000, "[" * 2_000 + "]" * 2_000):
            r = await client.get(STREAM, params={"question": "hi", "history": history})
            assert r.status_code == 400 and r.json()["error"]["code"] == "bad_request", r.text


@pytest.mark.parametrize("value", ["a" * 32 + ":" + "9" * 4300, "a" * 32 + ":²", "²", "9" * 4300, "a" * 32 + ":-1"])
async def test_lastEventId_whenHugeOrNotAsciiDigits_then400(faulty, gateways, value):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.get(STREAM, params={"question": "hi", "lastEventId": value})
        assert r.status_code == 400, r.text
        r = await client.post(STREAM, json={"question": "hi"}, headers={"Last-Event-ID": value.encode()})
        assert r.status_code == 400, r.text
        r = await client.get(f"/v1/streams/{'a' * 32}/events", params={"lastEventId": value})
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "bad_request"


# --- item 2: upstream answers that are not what they claim ---------------------------------------
@pytest.mark.parametrize(("fault", "before_start"), [
    ("json-not-json", True), ("html", True), ("numeric-event", False), ("deep-data", False),
])
async def test_upstreamLies_thenUpstreamErrorNeverInternal(faulty, gateways, fault, before_start):
    gateway = gateways(faulty.url)
    r, events = await post_stream(gateway, {"question": fault})
    if before_start:
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", r.text
    else:
        assert [e.event for e in events] == ["start", "error"]
        assert events[-1].data["code"] == "upstream_error"
    assert await until(lambda: faulty.app.open_predictions == 0)


@pytest.mark.parametrize("fault", ["json-not-json", "html"])
async def test_prediction_whenUpstreamAnswerIsNotJson_then502(faulty, gateways, fault):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.post(PREDICTION, json={"question": fault})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


async def test_prediction_whenAnswerNested300Deep_thenPassedOnAsFlowiseSentIt(faulty, gateways):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.post(PREDICTION, json={"question": "deep-data"})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["text"] == "t"


async def test_listing_whenChatflowIdsAreNotStrings_then502(faulty, gateways):
    gateway = gateways(faulty.url)
    faulty.app.listing = [{"id": 7, "name": ["x"]}]
    try:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            r = await client.get("/v1/chatflows")
        assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", r.text
    finally:
        faulty.app.listing = [{"id": CHATFLOW, "name": "faulty"}]


# --- item 4: unbounded reads ------------------------------------------------------------------
async def test_endlessUpstreamFrame_thenUpstreamTooLargeFastAndUpstreamClosed(faulty, gateways):
    gateway = gateways(faulty.url, max_upstream_frame_bytes=2 * 1024 * 1024)
    started = time.monotonic()
    r, events = await post_stream(gateway, {"question": "endless-frame"})
    assert [e.event for e in events] == ["start", "error"]
    assert events[-1].data["code"] == "upstream_too_large"
    assert time.monotonic() - started < 5
    assert await until(lambda: faulty.app.open_predictions == 0)


@pytest.mark.parametrize("path", [STREAM, PREDICTION])
async def test_hugeUpstreamJsonAnswer_then502UpstreamTooLarge(faulty, gateways, path):
    gateway = gateways(faulty.url, max_upstream_answer_bytes=1024 * 1024)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(path, json={"question": "huge-answer"})
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_too_large", r.text
    assert await until(lambda: faulty.app.open_predictions == 0)


async def test_frameParser_whenOneFrameNeverEnds_thenLinearTimeAndRefusedAtTheCap():
    async def chunks(count, size=4096):
        for _ in range(count):
            yield b"x" * size

    started = time.monotonic()
    with pytest.raises(Exception) as refused:
        async for _ in event_payloads(chunks(10_000), max_frame_bytes=32 * 1024 * 1024):
            pass
    assert type(refused.value).__name__ == "UpstreamTooLarge"
    # 40 MB scanned: a rescan of the growing buffer per chunk would take minutes.
    assert time.monotonic() - started < 3

    async def split(data, size):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    wire = b'message:\r\ndata:{"a":1}\r\n\r\ndata: two\rdata:lines\r\r:comment\n\ndata:x\n\n'
    for size in (1, 2, 3, 7, len(wire)):
        got = [p async for p in event_payloads(split(wire, size))]
        assert got == [b'{"a":1}', b"two\nlines", b"x"], size


async def test_requestBody_whenItNeverComes_then408WithinTheBodyTimeout(faulty, gateways):
    gateway = gateways(faulty.url, body_timeout=0.5)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(b"POST " + STREAM.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"question\"")
        started = time.monotonic()
        answer = read_until_closed(sock, sock.gettimeout())
    assert answer.startswith(b"HTTP/1.1 408") and b'"request_timeout"' in answer
    assert time.monotonic() - started < 3


# --- item 5: secrets ---------------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("transport", ["auto", "socketio"])
async def test_flowiseUrlPassword_neverInReadyzErrorsOrLogs(gateways, caplog, transport):
    caplog.set_level(logging.DEBUG)
    port = closed_port()
    gateway = gateways(f"http://admin:hunter2secret@127.0.0.1:{port}", api_keys="k1", flowise_transport=transport)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        anonymous = await client.get("/readyz")
        keyed = await client.get("/readyz", headers={"Authorization": "Bearer k1"})
        stream = await client.post(STREAM, json={"question": "hi"}, headers={"Authorization": "Bearer k1"})
        prediction = await client.post(PREDICTION, json={"question": "hi"}, headers={"Authorization": "Bearer k1"})
    assert anonymous.status_code == keyed.status_code == 503
    assert stream.status_code == prediction.status_code == 502
    for r in (stream, prediction):  # what failed, not where
        assert r.json()["error"]["message"] == "Flowise is unreachable (connection refused)"
    for r in (anonymous, keyed, stream, prediction):
        assert "hunter2secret" not in r.text
    for r in (anonymous, stream, prediction):
        assert str(port) not in r.text and "127.0.0.1" not in r.text  # no internal address
    assert "admin:***@127.0.0.1" in keyed.text  # a keyed caller sees where, without the password
    assert "hunter2secret" not in caplog.text
    assert f"'chatflow_check' at http://admin:***@127.0.0.1:{port} failed" in caplog.text  # the operator's detail


@pytest.mark.parametrize("version", ["3.1.4", "1.6.2"])
async def test_flowiseUrlCredentials_thenSentAsBasicAuthOnEveryUpstreamCall(emulators, gateways, version):
    # A proxy's basic auth in front of Flowise, given in FLOWISE_URL: it rides on the streaming
    # prediction and the JSON calls alike, over the chatflow key.
    import base64

    from flowise_sse.emulator import DEMO_CHATFLOW_ID

    flowise = emulators(version)
    gateway = gateways(flowise.url.replace("http://", "http://proxy%40user:p%3Ass@"), flowise_api_key="flowkey")
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        client.stream("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
                      json={"question": "credentials ride along"}) as r,
    ):
        events = await aread_sse(r)
    assert r.status_code == 200 and events[-1].event == "end"
    expected = "Basic " + base64.b64encode(b"proxy@user:p:ss").decode()
    sent = [req["headers"].get("authorization") for req in list(flowise.app.requests)  # shared with other tests
            if req["body"].get("question") == "credentials ride along"]
    assert sent and all(value == expected for value in sent)


async def test_flowiseUrlPassword_whenSocketIoRefuses_thenPlainErrorAndMaskedInTheLog(faulty, gateways, caplog):
    caplog.set_level(logging.DEBUG)
    gateway = gateways(faulty.url.replace("http://", "http://admin:hunter2secret@"), flowise_transport="socketio")
    r, events = await post_stream(gateway, {"question": "ok"})
    text = r.text + "".join(str(e.data) for e in events)
    assert "Flowise's socket.io is unreachable" in text and "127.0.0.1" not in text  # what, not where
    assert "hunter2secret" not in text and "hunter2secret" not in caplog.text
    assert "'socketio_connect' at http://admin:***@127.0.0.1" in caplog.text  # where, for the operator


def test_accessLog_whenQueryCarriesTokenOrQuestion_thenQueryRedacted():
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                               ("1.2.3.4:5", "GET", "/v1/streams/abc/events?token=SECRET&x=1", "1.1", 200), None)
    assert QueryRedacted().filter(record)
    line = record.getMessage()
    assert "SECRET" not in line and "/v1/streams/abc/events?[redacted]" in line


def test_servedProcess_whenAsked_thenNoQuestionTokenOrUpstreamUrlInItsLog(faulty):
    import os
    import subprocess
    import sys

    from .servers import free_port

    port = free_port()
    env = {**os.environ, "FLOWISE_URL": faulty.url.replace("http://", "http://u:topsecretpw@")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flowise_sse", "serve", "--port", str(port), "--log-level", "info"],
        env=env, stderr=subprocess.STDOUT, stdout=subprocess.PIPE,  # uvicorn's access log is on stdout
    )
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(400):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        history = '[{"role":"user","content":"my-private-words"}]'
        with httpx.stream("GET", url + STREAM, params={"question": "ok", "history": history}, timeout=10) as r:
            r.read()
        created = httpx.post(url + "/v1/streams", json={"chatflowId": CHATFLOW, "question": "ok"}, timeout=10).json()
        httpx.get(created["eventsUrl"], timeout=10)
        token = created["eventsUrl"].partition("token=")[2]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    log = out.decode()
    assert "GET /v1/chatflows/" in log  # the access log is on
    for secret in ("my-private-words", token, "topsecretpw", "HTTP Request:"):
        assert secret not in log, secret


# --- item 6: /prediction bounded and cancelled -------------------------------------------------
async def test_prediction_whenClientLeaves_thenUpstreamClosedAndChatIdFree(faulty, gateways):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        request = asyncio.create_task(client.post(PREDICTION, json={"question": "hang", "chatId": "leaver"}))
        assert await until(lambda: faulty.app.open_predictions == 1)
        request.cancel()
        await asyncio.gather(request, return_exceptions=True)
    assert await until(lambda: faulty.app.open_predictions == 0, 3)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.post(PREDICTION, json={"question": "ok", "chatId": "leaver"})
    assert r.status_code == 200 and r.json() == {"text": "fine"}


async def test_prediction_whenSameChatIdRunning_then409(faulty, gateways):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        first = asyncio.create_task(client.post(PREDICTION, json={"question": "hang", "chatId": "twice"}))
        assert await until(lambda: faulty.app.open_predictions == 1)
        for path in (PREDICTION, STREAM):
            r = await client.post(path, json={"question": "ok", "chatId": "twice"})
            assert r.status_code == 409 and r.json()["error"]["code"] == "chat_busy"
        first.cancel()
        await asyncio.gather(first, return_exceptions=True)
    assert await until(lambda: faulty.app.open_predictions == 0, 3)


async def test_upstreamPool_whenFull_thenNextRequestWaitsThen504(faulty, gateways):
    gateway = gateways(faulty.url, upstream_max_connections=2, connect_timeout=0.5)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        held = [asyncio.create_task(client.post(PREDICTION, json={"question": "hang"})) for _ in range(2)]
        assert await until(lambda: faulty.app.open_predictions == 2)
        before = faulty.app.predictions
        r = await client.post(PREDICTION, json={"question": "ok"})
        assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
        assert faulty.app.predictions == before  # never a third upstream connection
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    assert await until(lambda: faulty.app.open_predictions == 0, 3)


async def test_streamsPerKey_whenOverTheLimit_then429WithRetryAfter(faulty, gateways):
    gateway = gateways(faulty.url, max_streams_per_key=2, api_keys="a,b")
    a, b = {"Authorization": "Bearer a"}, {"Authorization": "Bearer b"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        held = []
        for _ in range(2):
            r = await client.post("/v1/streams", json={"chatflowId": CHATFLOW, "question": "numeric-event"}, headers=a)
            assert r.status_code == 201
        # numeric-event ends at once; hang keeps its slot: start two that hold.
        for _ in range(2):
            held.append(asyncio.create_task(client.post(PREDICTION, json={"question": "hang"}, headers=a)))
        assert await until(lambda: faulty.app.open_predictions == 2)
        r = await client.post(STREAM, json={"question": "ok"}, headers=a)
        assert r.status_code == 429 and r.headers["retry-after"]
        assert r.json()["error"] == {"code": "too_many_streams", "message": r.json()["error"]["message"],
                                     "retryable": True}
        r = await client.post(PREDICTION, json={"question": "ok"}, headers=b)  # another key: its own slots
        assert r.status_code == 200
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
        assert await until(lambda: faulty.app.open_predictions == 0, 3)
        r = await client.post(PREDICTION, json={"question": "ok"}, headers=a)
        assert r.status_code == 200


# --- item 8: small wrongs ----------------------------------------------------------------------
async def test_readyz_whenTransportPinned_thenReadyFromThePing(faulty, gateways):
    gateway = gateways(faulty.url, flowise_transport="sse")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.get("/readyz")
    assert r.status_code == 200 and r.json() == {"status": "ready", "transport": "sse"}


@pytest.mark.parametrize("chat_id", [".", "..", ".hidden"])
async def test_chatId_whenDotSegment_then422(faulty, gateways, chat_id):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.post(STREAM, json={"question": "ok", "chatId": chat_id})
        assert r.status_code == 422
        r = await client.get(STREAM, params={"question": "ok", "chatId": chat_id})
        assert r.status_code == 422


async def test_unknownChatflow_thenNoAbortSentToFlowise(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    flowise.app.aborts.clear()
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.post("/v1/chatflows/00000000-0000-4000-8000-000000000000/stream", json={"question": "q"})
    assert r.status_code == 404
    assert gateway.call(_no_pending_aborts)
    assert list(flowise.app.aborts) == []


async def _no_pending_aborts():
    import gc

    from flowise_sse.upstream.adapter import Upstream

    upstream = next(o for o in gc.get_objects() if isinstance(o, Upstream) and o._aborts is not None)
    await asyncio.gather(*upstream._aborts, return_exceptions=True)
    return True


async def test_401_thenWwwAuthenticateBearer(faulty, gateways):
    gateway = gateways(faulty.url, api_keys="k")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        for method, path in (("GET", "/v1/chatflows"), ("POST", STREAM), ("GET", f"/v1/streams/{'a' * 32}/events")):
            r = await client.request(method, path, json={"question": "q"} if method == "POST" else None)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


async def test_http10_whenStreaming_thenNoChunkedAndBodyEndsAtClose(faulty, gateways):
    gateway = gateways(faulty.url)
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET " + STREAM.encode() + b"?question=ok HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        answer = read_until_closed(sock, sock.gettimeout())
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert b"event: start" in body and b"event: end" in body and b"\r\n0\r\n" not in body


async def test_options_onStreamRoute_thenAllowsGetAndPost(faulty, gateways):
    gateway = gateways(faulty.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.options(STREAM)
        assert r.status_code == 204
        assert {m.strip() for m in r.headers["allow"].split(",")} == {"GET", "POST", "OPTIONS"}
        r = await client.put(STREAM)
        assert r.status_code == 405 and "GET" in r.headers["allow"] and "POST" in r.headers["allow"]


def test_openapi_documentsEveryStatusAndTheFormats():
    from flowise_sse.api import create_app
    from flowise_sse.settings import Settings

    doc = create_app(Settings()).openapi()
    stream = doc["paths"]["/v1/chatflows/{chatflow_id}/stream"]
    for method in ("get", "post"):
        assert {"400", "401", "403", "404", "409", "413", "422", "429", "502", "503", "504"} \
            <= set(stream[method]["responses"])
        params = {p["name"]: p for p in stream[method]["parameters"]}
        assert params["last-event-id"]["schema"]["pattern"] == params["lastEventId"]["schema"]["pattern"]
    assert "JSON array" in {p["name"]: p for p in stream["get"]["parameters"]}["history"]["description"]
    assert {"499", "507"} <= set(doc["paths"]["/v1/chatflows/{chatflow_id}/prediction"]["post"]["responses"])
    assert "401" in doc["paths"]["/v1/streams/{stream_id}/events"]["get"]["responses"]


def test_readmeInstall_thenRedisComesWithIt_soRedisUrlWorks():
    """`pip install .` (the README's command) must bring what FLOWISE_SSE_REDIS_URL needs."""
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert any(dep.split(">")[0].split("=")[0].strip() == "redis" for dep in project["dependencies"])
    assert "pip install . " in (Path(__file__).resolve().parents[1] / "README.md").read_text()


@pytest.mark.parametrize("body", [
    b'{"model": "%s", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
    b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}], "overrideConfig": {"t": NaN}}',
])
async def test_openaiRoute_whenNotSendableJson_then400InOpenAiShape(emulators, gateways, body):
    from flowise_sse.emulator import DEMO_CHATFLOW_ID

    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    before = flowise.app.requests_seen
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        r = await client.post("/v1/chat/completions", content=body % DEMO_CHATFLOW_ID.encode(),
                              headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
        r = await client.post("/v1/chat/completions", content=b"\xff\xfe not text",
                              headers={"content-type": "application/json"})
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error", r.text
    assert flowise.app.requests_seen == before
