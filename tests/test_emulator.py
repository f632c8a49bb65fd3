"""The emulated Flowise, served by uvicorn and checked with real clients against captures of real servers."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import socketio
import uvicorn

from flowise_sse.emulator import (
    DEMO_CHATFLOW_ID,
    FORM_AGENTFLOW_ID,
    HUMAN_INPUT_AGENTFLOW_ID,
    KEYED_CHATFLOW_ID,
    NONSTREAMING_CHATFLOW_ID,
    UPLOADS_CHATFLOW_ID,
    Emulator,
    EmulatorConfig,
    create_emulator_app,
)
from flowise_sse.emulator.mock_llm import llm_messages
from flowise_sse.emulator.quirks import quirks_for

from .helpers import REPLY, until

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
UUID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
HTML = "text/html; charset=utf-8"
JSON = "application/json; charset=utf-8"
BUILD_ERROR = "Error: predictionsServices.buildChatflow - "

# Real Flowise 3.1.4 answering {"question": "Hello server sent events", "streaming": true}.
CAPTURE_V3_SSE = (
    b'message:\ndata:{"event":"start","data":""}\n\n'
    b'message:\ndata:{"event":"token","data":"This"}\n\n'
    b'message:\ndata:{"event":"token","data":" is"}\n\n'
    b'message:\ndata:{"event":"token","data":" a"}\n\n'
    b'message:\ndata:{"event":"token","data":" deterministic"}\n\n'
    b'message:\ndata:{"event":"token","data":" mock"}\n\n'
    b'message:\ndata:{"event":"token","data":" reply."}\n\n'
    b'message:\ndata:{"event":"token","data":" You"}\n\n'
    b'message:\ndata:{"event":"token","data":" said:"}\n\n'
    b'message:\ndata:{"event":"token","data":" Hello"}\n\n'
    b'message:\ndata:{"event":"token","data":" server"}\n\n'
    b'message:\ndata:{"event":"token","data":" sent"}\n\n'
    b'message:\ndata:{"event":"token","data":" events"}\n\n'
    b'message:\ndata:{"event":"metadata","data":{"chatId":"e6b4c212-400c-4795-bf62-44040b2862ef",'
    b'"chatMessageId":"d34548a8-3cd3-4682-ba33-fe9b05f06bb7","question":"Hello server sent events",'
    b'"sessionId":"e6b4c212-400c-4795-bf62-44040b2862ef","memoryType":"Buffer Memory"}}\n\n'
    b'message:\ndata:{"event":"end","data":"[DONE]"}\n\n'
)
CAPTURE_V3_LLM_ERROR = (
    b'message:\ndata:{"event":"error","data":"Error: predictionsServices.buildChatflow - 400 mock error 400"}\n\n'
    b'message:\ndata:{"event":"end","data":"[DONE]"}\n\n'
)
CAPTURE_V3_UNAUTHORIZED = (
    b'message:\ndata:{"event":"error","data":"Error: predictionsServices.buildChatflow - Unauthorized"}\n\n'
    b'message:\ndata:{"event":"end","data":"[DONE]"}\n\n'
)
# Real Flowise 1.6.2 over socket.io for "Hello socket io streaming": these events, then the HTTP answer.
CAPTURE_V1_WORDS = ["This", " is", " a", " deterministic", " mock", " reply.", " You", " said:", " Hello", " socket",
                    " io", " streaming"]
CAPTURE_V1_EVENTS = [
    ("start", ("",)), ("token", ("",)), *[("token", (w,)) for w in CAPTURE_V1_WORDS], ("token", ("",)), ("end", ()),
]
ANSWER_KEYS_V1 = ["text", "question", "chatId", "chatMessageId", "sessionId", "memoryType"]
ANSWER_KEYS_V3 = ["text", "question", "chatId", "chatMessageId", "isStreamValid", "sessionId", "memoryType"]

NAME, HI = "My name is Ada", "Hi Ada"
HISTORY_FORMS = {
    "type_message": [{"type": "userMessage", "message": NAME}, {"type": "apiMessage", "message": HI}],
    "role_content": [{"role": "userMessage", "content": NAME}, {"role": "apiMessage", "content": HI}],
    "openai_role": [{"role": "user", "content": NAME}, {"role": "assistant", "content": HI}],
    "both": [
        {"type": "userMessage", "message": NAME, "role": "userMessage", "content": NAME},
        {"type": "apiMessage", "message": HI, "role": "apiMessage", "content": HI},
    ],
}
ADA = [{"role": "user", "content": NAME}, {"role": "assistant", "content": HI}]
EMPTY_AI = [{"role": "assistant", "content": ""}]
# What the LLM got from each history form, per version (flowise-real.md's matrix, and the code at each tag).
HISTORY_SEEN = {
    "1.6.2": {"type_message": ADA, "role_content": [], "openai_role": [], "both": ADA},
    "2.0.7": {"type_message": EMPTY_AI, "role_content": ADA, "openai_role": [], "both": ADA},
    "2.1.0": {"type_message": EMPTY_AI, "role_content": ADA, "openai_role": [], "both": ADA},
    "3.1.4": {"type_message": [{"role": "user", "content": ""}, *EMPTY_AI], "role_content": ADA, "openai_role": [],
              "both": ADA},
}


@contextlib.asynccontextmanager
async def running(**options: Any) -> AsyncIterator[tuple[Emulator, httpx.AsyncClient]]:
    """An emulator on a real uvicorn server (127.0.0.1, free port), and an HTTP client for it."""
    emulator = create_emulator_app(EmulatorConfig(**options))
    server = uvicorn.Server(uvicorn.Config(
        emulator, host="127.0.0.1", port=0, log_level="warning", lifespan="off", timeout_graceful_shutdown=1,
    ))
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started or task.done(), interval=0.005, what="uvicorn starts")
    assert server.started, "uvicorn did not start"
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            yield emulator, client
    finally:
        server.should_exit = True
        await task


Seen = list[tuple[str, tuple[Any, ...]]]


@contextlib.asynccontextmanager
async def socket_client(client: httpx.AsyncClient) -> AsyncIterator[tuple[str, Seen]]:
    """A connected socket.io client (websocket transport): its id, and the events it receives."""
    sio = socketio.AsyncClient()
    seen: Seen = []

    @sio.on("*")
    async def any_event(event: str, *args: Any) -> None:
        seen.append((event, args))

    await sio.connect(str(client.base_url), transports=["websocket"])
    try:
        yield sio.get_sid(), seen
    finally:
        await sio.disconnect()


async def predict(client: httpx.AsyncClient, flow: str = DEMO_CHATFLOW_ID, **body: Any) -> httpx.Response:
    return await client.post(f"/api/v1/prediction/{flow}", json=body)


async def predict_raw(
    client: httpx.AsyncClient, flow: str = DEMO_CHATFLOW_ID, **body: Any
) -> tuple[httpx.Response, list[bytes]]:
    async with client.stream("POST", f"/api/v1/prediction/{flow}", json=body) as response:
        return response, [chunk async for chunk in response.aiter_raw()]


def emulate(**controls: Any) -> dict[str, Any]:
    return {"emulator": controls}


def anonymized(raw: bytes) -> bytes:
    return UUID.sub(b"<uuid>", raw)


def token_frames(tokens: list[str]) -> bytes:
    """`start ""` then the tokens, framed as every SSE version frames them."""
    frames = [("start", ""), *(("token", t) for t in tokens)]
    return b"".join(b"message:\ndata:" + orjson.dumps({"event": e, "data": d}) + b"\n\n" for e, d in frames)


async def test_sse314_whenStreaming_thenHeadersAndBytesMatchTheCapture() -> None:
    async with running(version="3.1.4") as (emulator, client):
        response, chunks = await predict_raw(client, question="Hello server sent events", streaming=True)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream"
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["connection"] == "keep-alive"
    assert response.headers["x-accel-buffering"] == "no"
    assert response.headers["transfer-encoding"] == "chunked" and "content-length" not in response.headers
    assert anonymized(b"".join(chunks)) == anonymized(CAPTURE_V3_SSE)
    assert len(chunks) == 15  # one write per event, like res.write()
    sent = emulator.requests[-1]
    assert sent["transport"] == "sse" and sent["chatflowId"] == DEMO_CHATFLOW_ID
    assert sent["headers"]["content-type"] == "application/json"


async def test_sse210_whenStreaming_thenEmptyTokensAndEndWithoutColonAndNoAccelHeader() -> None:
    async with running(version="2.1.0") as (_, client):
        response, chunks = await predict_raw(client, question="hi", streaming="true", chatId="c-210")
    assert response.status_code == 200 and "x-accel-buffering" not in response.headers
    body, metadata = b"".join(chunks).split(b'message:\ndata:{"event":"metadata"')
    assert body == token_frames(["", *re.findall(r"\s*\S+", REPLY + "hi"), ""])
    assert metadata.endswith(b'}\n\nmessage\ndata:{"event":"end","data":"[DONE]"}\n\n')
    assert b'"chatId":"c-210"' in metadata and b'"sessionId":"c-210"' in metadata


async def test_socketio162_whenStreaming_thenCapturedEventsThenJsonAnswer() -> None:
    async with running(version="1.6.2", token_delay=0.002) as (emulator, client):
        async with socket_client(client) as (sid, seen):
            assert (emulator.connected_sockets, emulator.socket_connects) == (1, 1)
            r = await predict(client, question="Hello socket io streaming", socketIOClientId=sid)
            await until(lambda: ("end", ()) in seen, timeout=1.0)
        await until(lambda: emulator.connected_sockets == 0, timeout=1.0)
    assert seen == CAPTURE_V1_EVENTS
    assert r.status_code == 200 and r.headers["content-type"] == JSON
    answer = r.json()
    assert list(answer) == ANSWER_KEYS_V1
    assert answer["text"] == REPLY + "Hello socket io streaming" and answer["question"] == "Hello socket io streaming"
    assert answer["sessionId"] == answer["chatId"] and answer["memoryType"] == "Buffer Memory"
    assert emulator.requests[-1]["transport"] == "socketio" and emulator.socket_connects == 1


async def test_socketio162_whenFirstTokenInStart_thenStartCarriesItAndNoEmptyTokens() -> None:
    async with running(version="1.6.2", first_token_in_start=True) as (_, client), socket_client(client) as (sid, seen):
        await predict(client, question="x", socketIOClientId=sid)
        await until(lambda: ("end", ()) in seen, timeout=1.0)
    assert seen[:3] == [("start", ("This",)), ("token", ("This",)), ("token", (" is",))]
    assert ("token", ("",)) not in seen


async def test_socketio162_whenLlmFails_thenHtml500AndNoSocketEvents() -> None:
    async with running(version="1.6.2") as (_, client), socket_client(client) as (sid, seen):
        r = await predict(client, question="Please fail [[http400]]", socketIOClientId=sid)
        await asyncio.sleep(0.05)  # a quiet window: no socket event comes (nothing to wait for)
    assert (r.status_code, r.headers["content-type"], r.text) == (500, HTML, "400 mock error 400")
    assert seen == []


async def test_socketio207_whenFailures_thenWrapped500JsonAndTokensBeforeAMidwayError() -> None:
    async with running(version="2.0.7", api_key="k") as (_, client):
        async with socket_client(client) as (sid, seen):
            midway = emulate(error="boom", errorAfter=2)
            r = await predict(client, question="q", socketIOClientId=sid, overrideConfig=midway)
        keyed = await predict(client, KEYED_CHATFLOW_ID, question="q")
        unknown = await predict(client, UNKNOWN_ID, question="q")
    assert seen == [("start", ("",)), ("token", ("",)), ("token", ("This",)), ("token", (" is",))]
    assert r.status_code == 500 and r.headers["content-type"] == JSON
    assert r.json() == {"statusCode": 500, "success": False, "message": BUILD_ERROR + "boom", "stack": {}}
    assert keyed.status_code == 500 and keyed.json()["message"] == BUILD_ERROR + "Unauthorized"
    assert unknown.status_code == 500 and unknown.json()["message"] == (
        f"Error: chatflowsService.getChatflowById - Chatflow {UNKNOWN_ID} not found in the database!")


async def test_sse_whenLlmFails_thenErrorThenEndInA200Stream() -> None:
    async with running(version="3.1.4") as (_, client):
        r, chunks = await predict_raw(client, question="Please fail [[http400]]", streaming=True)
        assert r.status_code == 200 and b"".join(chunks) == CAPTURE_V3_LLM_ERROR
        midway = emulate(tokens=["a", "b", "c"], error="boom", errorAfter=2)
        _, chunks = await predict_raw(client, question="q", streaming=True, overrideConfig=midway)
        plain = await predict(client, question="[[http400]]")
    assert b"".join(chunks) == token_frames(["a", "b"]) + (
        b'message:\ndata:{"event":"error","data":"Error: predictionsServices.buildChatflow - boom"}\n\n'
        b'message:\ndata:{"event":"end","data":"[DONE]"}\n\n'
    )
    assert plain.status_code == 500 and plain.json()["message"] == BUILD_ERROR + "400 mock error 400"
    async with running(version="2.1.0") as (_, client):
        _, chunks = await predict_raw(client, question="[[http400]]", streaming=True)
    assert b"".join(chunks) == CAPTURE_V3_LLM_ERROR.replace(b"message:", b"message")


@pytest.mark.parametrize("version", ["1.6.2", "3.1.4"])
async def test_keyedChatflow_whenNoKey_thenRefusedPerVersion_andAnswersWithTheKey(version: str) -> None:
    async with running(version=version, api_key="flow-key") as (emulator, client):
        r, chunks = await predict_raw(client, KEYED_CHATFLOW_ID, question="hi", streaming=True)
        plain = await predict(client, KEYED_CHATFLOW_ID, question="hi")
        wrong = await client.post(f"/api/v1/prediction/{KEYED_CHATFLOW_ID}", json={"question": "hi"},
                                  headers={"Authorization": "Bearer nope"})
        keyed = await client.post(f"/api/v1/prediction/{KEYED_CHATFLOW_ID}", json={"question": "hi"},
                                  headers={"Authorization": "Bearer flow-key"})
        listed = (await client.get("/api/v1/chatflows", headers={"Authorization": "Bearer flow-key"})).json()
    if version == "1.6.2":
        assert (plain.status_code, plain.headers["content-type"], plain.text) == (401, HTML, "Unauthorized")
        assert r.status_code == 401 and wrong.status_code == 401
    else:
        assert r.status_code == 200 and b"".join(chunks) == CAPTURE_V3_UNAUTHORIZED
        assert plain.status_code == wrong.status_code == 500
        assert plain.json()["message"] == BUILD_ERROR + "Unauthorized"
    assert keyed.status_code == 200 and keyed.json()["text"] == REPLY + "hi"
    flows = [DEMO_CHATFLOW_ID, KEYED_CHATFLOW_ID, NONSTREAMING_CHATFLOW_ID, UPLOADS_CHATFLOW_ID]
    flows += [HUMAN_INPUT_AGENTFLOW_ID, FORM_AGENTFLOW_ID] if version == "3.1.4" else []  # Agentflows V2: 3.x
    assert [(flow["id"], flow["apikeyid"] is not None) for flow in listed] == [
        (flow, flow == KEYED_CHATFLOW_ID) for flow in flows]
    assert emulator.requests[-1]["headers"]["authorization"] == "Bearer flow-key"


async def test_nonStreamingChatflow_whenStreamingAsked_thenPlainJson_orSilenceOnError() -> None:
    async with running(version="3.1.4") as (emulator, client):
        check = await client.get(f"/api/v1/chatflows-streaming/{NONSTREAMING_CHATFLOW_ID}")
        r = await predict(client, NONSTREAMING_CHATFLOW_ID, question="Hello non streaming", streaming=True,
                          chatId="e2e-capture-v3")
        with pytest.raises(httpx.ReadTimeout):  # the error middleware writes nothing while streaming is truthy
            await client.post(f"/api/v1/prediction/{NONSTREAMING_CHATFLOW_ID}", timeout=0.2,
                              json={"question": "[[http400]]", "streaming": True})
    assert check.json() == {"isStreaming": False}
    assert r.status_code == 200 and r.headers["content-type"] == JSON
    answer = r.json()
    assert list(answer) == ANSWER_KEYS_V3
    assert answer["isStreamValid"] is False and answer["text"] == REPLY + "Hello non streaming"
    assert answer["chatId"] == answer["sessionId"] == "e2e-capture-v3"
    assert emulator.requests[0]["transport"] == "json"


async def test_sse210_whenStreamingChatflowAnsweredAsJson_thenIsStreamValidTrue() -> None:
    async with running(version="2.1.0") as (_, client):
        r = await predict(client, question="q")
    assert r.json()["isStreamValid"] is True  # only 2.2.5+ also asks for streaming:true


async def test_unknownChatflow_whenStreaming_thenHangsWithoutHeaders_elseErrorPerVersion() -> None:
    async with running(version="3.1.4") as (emulator, client):
        with pytest.raises(httpx.ReadTimeout):
            await client.post(f"/api/v1/prediction/{UNKNOWN_ID}", json={"question": "q", "streaming": True},
                              timeout=0.3)
        await until(lambda: emulator.active_predictions == 0 and emulator.client_disconnects == 1, timeout=1.0)
        missing = await predict(client, UNKNOWN_ID, question="q", streaming="false")
        invalid = await predict(client, "not-a-uuid", question="q")
        check = await client.get(f"/api/v1/chatflows-streaming/{UNKNOWN_ID}")
        single = await client.get(f"/api/v1/chatflows/{UNKNOWN_ID}")
    assert missing.status_code == 404
    assert missing.json()["message"] == f"Chatflow {UNKNOWN_ID} not found in the database!"
    assert invalid.status_code == 400 and invalid.json()["message"] == "Invalid Chatflow ID"
    assert check.status_code == 500 and check.json() == {
        "statusCode": 500, "success": False, "stack": {},
        "message": f"Error: chatflowsService.checkIfChatflowIsValidForStreaming - Chatflow {UNKNOWN_ID} not found",
    }
    assert single.status_code == 404
    async with running(version="1.6.2") as (_, client):
        missing = await predict(client, UNKNOWN_ID, question="q")
        check = await client.get(f"/api/v1/chatflows-streaming/{UNKNOWN_ID}")
    assert (missing.status_code, missing.headers["content-type"]) == (404, HTML)
    assert missing.text == check.text == f"Chatflow {UNKNOWN_ID} not found" and check.status_code == 404


@pytest.mark.parametrize("version", list(HISTORY_SEEN))
async def test_history_whenEachItemForm_thenLlmSeesWhatThatVersionReplays(version: str) -> None:
    async with running(version=version) as (emulator, client):
        for form, history in HISTORY_FORMS.items():
            r = await predict(client, question="What is my name?", history=history)
            assert r.status_code == 200
            messages = emulator.requests[-1]["llm_messages"]
            assert messages[0]["role"] == "system" and messages[-1] == {"role": "user", "content": "What is my name?"}
            assert messages[1:-1] == HISTORY_SEEN[version][form], form


async def test_sseClient_whenItLeaves_thenPredictionStopsWithinASecond() -> None:
    async with running(version="3.1.4", token_delay=0.05) as (emulator, client):
        body = {"question": "q", "streaming": True}
        async with client.stream("POST", f"/api/v1/prediction/{DEMO_CHATFLOW_ID}", json=body) as r:
            async for _ in r.aiter_raw():
                assert emulator.active_predictions == 1
                break
        await until(lambda: emulator.active_predictions == 0 and emulator.client_disconnects == 1, timeout=1.0)
        state = (await client.get("/__emulator/state")).json()
    assert state["client_disconnects"] == 1 and state["active_predictions"] == 0


async def test_socketioHttpRequest_whenItLeaves_thenEmitsStop() -> None:
    async with running(version="1.6.2", token_delay=0.05) as (emulator, client), socket_client(client) as (sid, seen):
        post = asyncio.create_task(predict(client, question="q", socketIOClientId=sid))
        await until(lambda: len(seen) >= 3, timeout=1.0)
        post.cancel()
        await until(lambda: emulator.active_predictions == 0 and emulator.client_disconnects == 1, timeout=1.0)
        count = len(seen)
        await asyncio.sleep(0.12)  # a quiet window: no further event comes (nothing to wait for)
        assert len(seen) == count and ("end", ()) not in seen


async def test_hang_whenAsked_thenNoHeadersEver_andHangAfterStallsAfterTheTokens() -> None:
    async with running(version="3.1.4") as (emulator, client):
        url = f"/api/v1/prediction/{DEMO_CHATFLOW_ID}"
        hang = {"question": "q", "streaming": True, "overrideConfig": emulate(hang=True)}
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", url, json=hang, timeout=0.2):
                pytest.fail("headers arrived")
        received = b""
        stall = {"question": "q", "streaming": True, "overrideConfig": emulate(hangAfter=2)}
        with pytest.raises(httpx.ReadTimeout):
            async with client.stream("POST", url, json=stall, timeout=0.3) as r:
                async for chunk in r.aiter_raw():
                    received += chunk
        await until(lambda: emulator.active_predictions == 0 and emulator.client_disconnects == 2, timeout=1.0)
    assert received == token_frames(["This", " is"])


async def test_heartbeat_whenStreamIsSlow_thenCommentsBetweenEvents() -> None:
    async with running(version="3.1.4", heartbeat_interval=0.03) as (_, client):
        slow = emulate(tokens=["a"], delay=0.1)
        _, chunks = await predict_raw(client, question="q", streaming=True, overrideConfig=slow)
    raw = b"".join(chunks)
    assert b":heartbeat\n\n" in chunks and raw.startswith(b'message:\ndata:{"event":"start","data":""}\n\n')
    assert raw.replace(b":heartbeat\n\n", b"").startswith(token_frames(["a"]) + b'message:\ndata:{"event":"metadata"')


async def test_splitWrites_whenStreaming_thenSameBytesInManySmallChunks() -> None:
    async with running(version="3.1.4", split_writes=True) as (_, client):
        _, chunks = await predict_raw(client, question="Hello server sent events ünï", streaming=True)
    assert max(len(c) for c in chunks) <= 11 and len(chunks) > 100
    raw = b"".join(chunks)
    assert raw.startswith(CAPTURE_V3_SSE[:400]) and "ünï".encode() in raw


async def test_extraEvents_whenGiven_thenAfterTokensOnSse_andInTheSocketioJsonAnswer() -> None:
    docs = [{"pageContent": "Ada", "metadata": {"source": "a.txt"}}]
    controls = emulate(tokens=["x"], events=[{"event": "sourceDocuments", "data": docs}])
    async with running(version="3.1.4") as (_, client):
        _, chunks = await predict_raw(client, question="q", streaming=True, overrideConfig=controls)
    lines = b"".join(chunks).split(b"\n")
    assert [orjson.loads(line[5:])["event"] for line in lines if line.startswith(b"data:")] == [
        "start", "token", "sourceDocuments", "metadata", "end"]
    async with running(version="1.6.2") as (_, client), socket_client(client) as (sid, seen):
        r = await predict(client, question="q", socketIOClientId=sid, overrideConfig=controls)
        await until(lambda: ("end", ()) in seen, timeout=1.0)
    assert seen[-2:] == [("sourceDocuments", (docs,)), ("end", ())]
    assert list(r.json())[:2] == ["text", "sourceDocuments"] and r.json()["sourceDocuments"] == docs


async def test_basicAuth1x_whenManagementRoutes_thenEmpty401WithoutIt_andPredictionWhitelisted() -> None:
    auth = httpx.BasicAuth("admin", "secret")
    async with running(version="1.6.2", username="admin", password="secret") as (_, client):
        refused = await client.get("/api/v1/chatflows")
        version = await client.get("/api/v1/version")
        listed = await client.get("/api/v1/chatflows", auth=auth)
        single = await client.get(f"/api/v1/chatflows/{DEMO_CHATFLOW_ID}", auth=auth)
        streaming = await client.get(f"/api/v1/chatflows-streaming/{DEMO_CHATFLOW_ID}")
        predicted = await predict(client, question="q")
        abort = await client.put(f"/api/v1/chatmessage/abort/{DEMO_CHATFLOW_ID}/c", auth=auth)
        ping = await client.get("/api/v1/ping", auth=auth)
    assert (refused.status_code, refused.headers["content-type"], refused.content) == (401, HTML, b"")
    assert version.status_code == 401
    assert [flow["id"] for flow in listed.json()] == [DEMO_CHATFLOW_ID, KEYED_CHATFLOW_ID, NONSTREAMING_CHATFLOW_ID,
                                                      UPLOADS_CHATFLOW_ID]
    assert list(listed.json()[0]) == ["id", "name", "flowData", "deployed", "isPublic", "apikeyid", "chatbotConfig",
                                      "apiConfig", "analytic", "speechToText", "createdDate", "updatedDate", "category"]
    assert single.json()["name"] == "Demo chat (emulated Flowise)"
    assert isinstance(orjson.loads(single.json()["flowData"])["nodes"], list)
    assert streaming.json() == {"isStreaming": True} and predicted.status_code == 200
    assert abort.status_code == 404 and ping.status_code == 404  # neither route exists before 1.8


async def test_apiKey_whenManagementRoutes_thenBearerRequired_andWhitelistOpen() -> None:
    async with running(version="3.1.4", api_key="ws-key") as (emulator, client):
        refused = await client.get("/api/v1/chatflows")
        listed = await client.get("/api/v1/chatflows", headers={"Authorization": "Bearer ws-key"})
        version = await client.get("/api/v1/version")
        ping = await client.get("/api/v1/ping")
        abort = await client.put(f"/api/v1/chatmessage/abort/{DEMO_CHATFLOW_ID}/chat-1")
    assert refused.status_code == 401 and refused.json() == {"error": "Unauthorized Access"}
    flow = listed.json()[0]
    assert flow["type"] == "CHATFLOW" and flow["workspaceId"] and flow["id"] == DEMO_CHATFLOW_ID
    assert version.json() == {"version": "3.1.4"} and ping.text == "pong"
    assert abort.json() == {"status": 200, "message": "Chat message aborted"}
    assert list(emulator.aborts) == [(DEMO_CHATFLOW_ID, "chat-1")]
    async with running(version="2.0.7", api_key="ws-key") as (_, client):
        refused = await client.get("/api/v1/version")
        allowed = await client.get("/api/v1/version", headers={"Authorization": "Bearer ws-key"})
        abort = await client.put(f"/api/v1/chatmessage/abort/{DEMO_CHATFLOW_ID}/chat-1")
    assert refused.status_code == 401 and allowed.json() == {"version": "2.0.7"} and abort.status_code == 401


@pytest.mark.parametrize(("version", "status"), [("1.6.2", 200), ("3.1.4", 404)])
async def test_socketioEndpoint_whenSseVersion_then404(version: str, status: int) -> None:
    async with running(version=version) as (_, client):
        r = await client.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
    assert r.status_code == status


async def test_stateRoutes_whenDeleted_thenRecordsClearedButLiveCountersKept() -> None:
    async with running(version="3.1.4") as (emulator, client):
        await predict(client, question="q", chatId="c1")
        await client.put(f"/api/v1/chatmessage/abort/{DEMO_CHATFLOW_ID}/c1")
        state = (await client.get("/__emulator/state")).json()
        cleared = (await client.delete("/__emulator/state")).json()
    assert state["aborts"] == [[DEMO_CHATFLOW_ID, "c1"]]
    assert [(r["chatflowId"], r["transport"], r["body"]["chatId"]) for r in state["requests"]] == [
        (DEMO_CHATFLOW_ID, "json", "c1")]
    assert state["requests_seen"] == 1
    assert cleared == {"requests": [], "requests_seen": 0, "aborts": [], "active_predictions": 0,
                       "client_disconnects": 0, "connected_sockets": 0, "socket_connects": 0}
    assert list(emulator.requests) == []


async def test_records_whenMoreThanTheBound_thenNewestKeptAndEveryRequestCounted() -> None:
    async with running(version="3.1.4", max_recorded_requests=3) as (emulator, client):
        for i in range(5):
            await predict(client, question=f"q{i}")
            await client.put(f"/api/v1/chatmessage/abort/{DEMO_CHATFLOW_ID}/c{i}")
        state = (await client.get("/__emulator/state")).json()
    assert [r["body"]["question"] for r in emulator.requests] == ["q2", "q3", "q4"]
    assert [chat for _, chat in emulator.aborts] == ["c2", "c3", "c4"]
    assert emulator.requests_seen == state["requests_seen"] == 5
    assert [r["body"]["question"] for r in state["requests"]] == ["q2", "q3", "q4"] and len(state["aborts"]) == 3


def test_records_whenDefault_thenBoundedAtOneThousand() -> None:
    emulator = create_emulator_app()
    assert emulator.requests.maxlen == emulator.aborts.maxlen == EmulatorConfig().max_recorded_requests == 1000


# The columns of the history table in quirks.py, at the first version of each.
HISTORY_TABLE = {
    "1.6.4": {"type_message": ADA, "role_content": [], "openai_role": []},
    "1.6.5": {"type_message": [], "role_content": [], "openai_role": []},
    "1.8.0": {"type_message": [], "role_content": ADA, "openai_role": []},
    "2.0.2": {"type_message": EMPTY_AI, "role_content": ADA, "openai_role": []},
    "3.0.0": {"type_message": [{"role": "user", "content": ""}, *EMPTY_AI], "role_content": ADA, "openai_role": []},
}


@pytest.mark.parametrize("version", list(HISTORY_TABLE))
def test_quirks_whenFirstVersionOfEachHistoryColumn_thenTheLlmIsHandedThatColumn(version: str) -> None:
    quirks = quirks_for(version)
    for form, expected in HISTORY_TABLE[version].items():
        messages = llm_messages("q", HISTORY_FORMS[form], quirks)
        assert messages[1:-1] == expected, form


@pytest.mark.parametrize("text", ["", "3", "v3.x", "latest"])
def test_quirks_whenNotAVersion_thenValueError(text: str) -> None:
    with pytest.raises(ValueError, match="not a Flowise version"):
        create_emulator_app(EmulatorConfig(version=text))


# --- what the OpenAI routes' images, audio and reasoning rely on ---------------------------------
@pytest.mark.parametrize("version", ["1.6.2", "3.1.4"])
async def test_publicChatbotConfig_whenAsked_thenUploadPolicyPerChatflowWithoutAuth(version: str) -> None:
    # Flowise's utilGetUploadsConfig: images only where a chat model allows them (5 MB, four types).
    async with running(version=version, username="admin", password="secret", api_key="k") as (_, client):
        vision = await client.get(f"/api/v1/public-chatbotConfig/{UPLOADS_CHATFLOW_ID}")
        demo = await client.get(f"/api/v1/public-chatbotConfig/{DEMO_CHATFLOW_ID}")
        unknown = await client.get(f"/api/v1/public-chatbotConfig/{UNKNOWN_ID}")
    assert vision.status_code == demo.status_code == 200
    uploads = vision.json()["uploads"]
    assert uploads["isImageUploadAllowed"] is True and uploads["isSpeechToTextEnabled"] is True
    assert uploads["imgUploadSizeAndTypes"] == [
        {"fileTypes": ["image/gif", "image/jpeg", "image/png", "image/webp", ""], "maxUploadSize": 5}]
    assert demo.json()["uploads"]["isImageUploadAllowed"] is False
    assert demo.json()["uploads"]["imgUploadSizeAndTypes"] == []
    assert ("flowData" in vision.json()) is (version == "3.1.4")
    assert unknown.status_code in (404, 500)


async def test_sse314_whenThinking_thenThinkingEventsThenClosingDurationBeforeTokens() -> None:
    async with running(version="3.1.4") as (_, client):
        _, chunks = await predict_raw(client, question="q", streaming=True,
                                      overrideConfig=emulate(thinking=["Let me ", "think."], tokens=["A"]))
    frames = [orjson.loads(f.split(b"data:", 1)[1]) for f in b"".join(chunks).split(b"\n\n") if b"data:" in f]
    assert frames[:3] == [{"event": "thinking", "data": "Let me "}, {"event": "thinking", "data": "think."},
                          {"event": "thinking", "data": "", "duration": 1}]
    assert [f["event"] for f in frames[3:]] == ["start", "token", "metadata", "end"]


async def test_sse210_whenThinking_thenNoThinkingEvents() -> None:
    async with running(version="2.1.0") as (_, client):
        _, chunks = await predict_raw(client, question="q", streaming=True, overrideConfig=emulate(thinking=["x"]))
    assert b"thinking" not in b"".join(chunks)


async def test_uploads_whenUploadsChatflow_thenImagesReachTheLlmAfterTheQuestion_andAudioIsTheQuestion() -> None:
    image = "data:image/png;base64,iVBORw0KGgo="
    audio = "data:audio/webm;base64," + base64.b64encode(b"spoken words").decode()
    async with running(version="3.1.4") as (emulator, client):
        await predict(client, UPLOADS_CHATFLOW_ID, question="what is it?", uploads=[
            {"data": image, "type": "file", "name": "a.png", "mime": "image/png"},
            {"data": "https://example.com/b.png", "type": "url", "name": "b.png", "mime": "image/png"}])
        seen_images = emulator.requests[-1]["llm_messages"]
        answer = await predict(client, UPLOADS_CHATFLOW_ID, question="", uploads=[
            {"data": audio, "type": "audio", "name": "a.webm", "mime": "audio/webm"}])
        await predict(client, DEMO_CHATFLOW_ID, question="q", uploads=[
            {"data": image, "type": "file", "name": "a.png", "mime": "image/png"}])
        dropped = emulator.requests[-1]["llm_messages"]
    assert seen_images[-2] == {"role": "user", "content": "what is it?"}
    assert seen_images[-1] == {"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": image}},
        {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}]}
    assert answer.json()["text"] == REPLY + "spoken words"
    assert dropped[-1] == {"role": "user", "content": "q"}  # a chatflow without image uploads drops them silently
