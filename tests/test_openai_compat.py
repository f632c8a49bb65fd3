"""The OpenAI-compatible API with the real clients as callers: the `openai` SDK (sync and async),
LangChain's `ChatOpenAI`, and raw HTTP for the wire details the SDKs forgive. Against emulated
Flowise 1.6.2 (socket.io) and 3.1.4 (SSE)."""

from __future__ import annotations

import asyncio
import hashlib
import time
from contextlib import AsyncExitStack
from typing import Any

import httpx
import openai
import orjson
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID, NONSTREAMING_CHATFLOW_ID

from .servers import ServerThread, aread_sse, joined

DEMO_NAME = "Demo chat (emulated Flowise)"
KEY = "gateway-key-1"
PREFIX = hashlib.sha256(KEY.encode()).hexdigest()[:16]  # the key's chat space (api/tenants.py)


@pytest.fixture(params=["1.6.2", "3.1.4"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def keyed_gateway(gateways, flowise) -> ServerThread:
    return gateways(flowise.url, api_keys=[KEY])


def client(gateway: ServerThread, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20, **options)


def aclient(gateway: ServerThread, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20, **options)


def flowise_answer(flowise: ServerThread, question: str, flow: str = DEMO_CHATFLOW_ID) -> str:
    """Flowise's own non-streaming answer, asked directly."""
    answer = httpx.post(f"{flowise.url}/api/v1/prediction/{flow}", json={"question": question}, timeout=20)
    assert answer.status_code == 200, answer.text
    return answer.json()["text"]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


async def eventually(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def emulator(**controls: Any) -> dict[str, Any]:
    return {"overrideConfig": {"emulator": controls}}


# --- models -------------------------------------------------------------------------------------
def test_models_whenBearerKey_thenChatflowsListedWithNames(keyed_gateway):
    # Open WebUI's connection check: GET {base}/models with the key as Bearer, 200 and a list.
    r = httpx.get(keyed_gateway.url + "/v1/models", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 200 and r.json()["object"] == "list"
    models = client(keyed_gateway).models.list().data
    by_id = {m.id: m for m in models}
    assert by_id[DEMO_CHATFLOW_ID].name == DEMO_NAME
    assert by_id[DEMO_CHATFLOW_ID].object == "model" and by_id[DEMO_CHATFLOW_ID].owned_by == "flowise"
    assert by_id[DEMO_CHATFLOW_ID].created == 1795560782  # 2026-11-24T22:53:02Z, the chatflow's createdDate
    assert client(keyed_gateway).models.retrieve(DEMO_NAME).id == DEMO_CHATFLOW_ID


def test_models_whenKeyWrongOrMissing_then401InOpenAIShape(keyed_gateway):
    with pytest.raises(openai.AuthenticationError) as raised:
        openai.OpenAI(base_url=keyed_gateway.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert raised.value.body["code"] == "invalid_api_key" and raised.value.body["type"] == "authentication_error"
    r = httpx.post(keyed_gateway.url + "/v1/chat/completions", json={"model": DEMO_CHATFLOW_ID, "messages": user("x")})
    assert r.status_code == 401 and r.headers["x-should-retry"] == "false"
    assert set(r.json()["error"]) == {"message", "type", "code", "param", "retryable"}


def test_models_whenUnknownName_thenNotFoundWithParamModel(keyed_gateway):
    with pytest.raises(openai.NotFoundError) as raised:
        client(keyed_gateway).chat.completions.create(model="no such flow", messages=user("hi"))
    assert raised.value.body["code"] == "model_not_found" and raised.value.body["param"] == "model"


# --- the openai SDK ------------------------------------------------------------------------------
def test_sdkSync_whenNotStreaming_thenFlowiseAnswerAndStreamIdHeader(keyed_gateway, flowise):
    raw = client(keyed_gateway).chat.completions.with_raw_response.create(model=DEMO_NAME, messages=user("Hello sync"))
    result = raw.parse()
    assert result.choices[0].message.content == flowise_answer(flowise, "Hello sync")
    assert result.choices[0].finish_reason == "stop" and result.object == "chat.completion"
    assert result.usage is None  # this chatflow reports no usage: none is invented
    stream_id = raw.headers["x-flowise-stream-id"]
    assert result.id == f"chatcmpl-{stream_id}" and result.model == DEMO_NAME


def test_sdkSync_whenStreaming_thenOneIdRoleFirstFinishLastAndFlowiseText(keyed_gateway, flowise):
    stream = client(keyed_gateway).chat.completions.create(
        model=DEMO_CHATFLOW_ID, messages=user("Hello stream"), stream=True)
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == flowise_answer(flowise, "Hello stream")
    assert len(chunks) > 5  # streamed token by token, not one block


async def test_sdkAsync_whenStreamingWithIncludeUsage_thenUsageChunkLastAndNullWithoutReport(keyed_gateway, flowise):
    async with aclient(keyed_gateway) as api:
        stream = await api.chat.completions.create(
            model=DEMO_CHATFLOW_ID, messages=user("Hello async"), stream=True, stream_options={"include_usage": True})
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == [] and chunks[-1].usage is None
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert "".join(c.choices[0].delta.content or "" for c in chunks[:-1]) == flowise_answer(flowise, "Hello async")


@pytest.mark.parametrize("version", ["3.1.4"])  # usage events are a 3.x feature
async def test_sdkAsync_whenFlowiseReportsUsage_thenUsageIsFlowisesSum(keyed_gateway, flowise):
    reports = [{"event": "usageMetadata", "data": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}},
               {"event": "usageMetadata", "data": {"input_tokens": 5, "output_tokens": 2, "total_tokens": 7}}]
    async with aclient(keyed_gateway) as api:
        stream = await api.chat.completions.create(
            model=DEMO_CHATFLOW_ID, messages=user("count me"), stream=True, stream_options={"include_usage": True},
            extra_body=emulator(events=reports))
        chunks = [chunk async for chunk in stream]
        whole = await api.chat.completions.create(
            model=DEMO_CHATFLOW_ID, messages=user("count me"), extra_body=emulator(events=reports))
    for usage in (chunks[-1].usage, whole.usage):
        assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (16, 9, 25)
    assert whole.choices[0].message.content == flowise_answer(flowise, "count me")


async def test_sdkAsync_whenNotStreaming_thenSameAsFlowise(keyed_gateway, flowise):
    async with aclient(keyed_gateway) as api:
        result = await api.chat.completions.create(model=DEMO_CHATFLOW_ID, messages=user("Hello async whole"))
    assert result.choices[0].message.content == flowise_answer(flowise, "Hello async whole")


def test_sdk_whenChatflowCannotStream_thenStreamStillCarriesTheAnswer(keyed_gateway, flowise):
    stream = client(keyed_gateway).chat.completions.create(
        model=NONSTREAMING_CHATFLOW_ID, messages=user("no stream here"), stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == flowise_answer(flowise, "no stream here", NONSTREAMING_CHATFLOW_ID)


def test_sdk_whenLLMFailsMidStream_thenAPIErrorWithFlowisesMessage(keyed_gateway, version):
    stream = client(keyed_gateway).chat.completions.create(
        model=DEMO_CHATFLOW_ID, messages=user("fail later"), stream=True,
        extra_body=emulator(error="429 mock quota", errorAfter=3))
    received = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    # socket.io: the failed POST can overtake the socket's last frames (the transport waits
    # `socketio_late_frames` for them); SSE keeps the order.
    assert "".join(received) == "This is a" if version == "3.1.4" else "This is a".startswith("".join(received))
    assert "429 mock quota" in raised.value.message
    assert raised.value.body["type"] == "server_error" and raised.value.body["code"] == "upstream_error"


def test_sdk_whenLLMFailsNotStreaming_thenAPIStatusError502(keyed_gateway):
    with pytest.raises(openai.InternalServerError) as raised:
        client(keyed_gateway).chat.completions.create(
            model=DEMO_CHATFLOW_ID, messages=user("fail"), extra_body=emulator(error="400 mock error"))
    assert raised.value.status_code == 502 and "400 mock error" in raised.value.message
    assert raised.value.response.headers["x-should-retry"] == "false"


async def test_sdk_whenSameChatIdRunning_thenConflictNotRetried(keyed_gateway, flowise):
    headers = {"X-Flowise-Chat-Id": "busy-chat-1"}
    async with aclient(keyed_gateway, default_headers=headers) as api:
        stream = await api.chat.completions.create(
            model=DEMO_CHATFLOW_ID, messages=user("slow"), stream=True, extra_body=emulator(delay=0.05))
        first = await anext(aiter(stream))
        assert first.choices[0].delta.role == "assistant"
        await eventually(lambda: len(flowise.app.requests) == 1)  # socket.io: `start` may precede the POST
        retrying = openai.AsyncOpenAI(base_url=keyed_gateway.url + "/v1", api_key=KEY, max_retries=2,
                                      default_headers=headers)
        with pytest.raises(openai.ConflictError) as raised:
            await retrying.chat.completions.create(model=DEMO_CHATFLOW_ID, messages=user("again"))
        await retrying.close()
        assert raised.value.body["code"] == "chat_busy"
        assert len(flowise.app.requests) == 1  # refused by the gateway, and the SDK did not retry
        rest = [chunk async for chunk in stream]
    assert rest[-1].choices[0].finish_reason == "stop"


@pytest.mark.parametrize("streaming", [True, False])
async def test_sdk_whenClientLeaves_thenUpstreamClosedAndRunAborted(gateways, flowise, streaming):
    gateway = gateways(flowise.url)  # on_client_disconnect=continue: the OpenAI route aborts anyway
    app = flowise.app
    before = app.client_disconnects
    async with aclient(gateway) as api:
        call = api.chat.completions.create(
            model=DEMO_CHATFLOW_ID, messages=user("a long answer"), stream=streaming,
            extra_body=emulator(tokens=["x"] * 400, delay=0.02))
        if streaming:
            stream = await call
            got = 0
            async for _ in stream:
                got += 1
                if got == 3:
                    break
            await stream.close()
        else:
            task = asyncio.ensure_future(call)
            await eventually(lambda: app.active_predictions == 1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await eventually(lambda: app.client_disconnects == before + 1 and app.active_predictions == 0)
    # The run task ends a moment after the upstream closed: wait for it, not for a guess.
    await eventually(lambda: gateway.call(lambda: _runs(gateway)) == 0)


async def _runs(gateway: ServerThread) -> int:
    return len(gateway.app.state.services.manager.runs)


async def test_sdk_whenKeepAlivesBetweenTokens_thenParsedAsComments(gateways, flowise):
    gateway = gateways(flowise.url, keepalive_interval=0.02)
    async with aclient(gateway) as api:
        stream = await api.chat.completions.create(
            model=DEMO_CHATFLOW_ID, messages=user("keep me alive"), stream=True, extra_body=emulator(delay=0.06))
        text = "".join([c.choices[0].delta.content or "" async for c in stream])
    assert text == flowise_answer(flowise, "keep me alive")


# --- the wire, raw ------------------------------------------------------------------------------
async def test_wire_whenStreaming_thenOnlyDataLinesWithASpaceAndDoneLast(gateways, flowise):
    gateway = gateways(flowise.url, keepalive_interval=0.02)
    body = {"model": DEMO_CHATFLOW_ID, "messages": user("raw wire"), "stream": True,
            "stream_options": {"include_usage": True}, **emulator(delay=0.05)}
    async with (
        httpx.AsyncClient(timeout=20) as http,
        http.stream("POST", gateway.url + "/v1/chat/completions", json=body) as r,
    ):
        raw = (await r.aread()).decode()
    assert r.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in raw.split("\n") if line]
    assert any(line.startswith(":") for line in lines)  # keep-alives: comments only
    data = [line for line in lines if not line.startswith(":")]
    assert all(line.startswith("data: ") for line in data)
    assert data[-1] == "data: [DONE]"
    chunks = [orjson.loads(line[6:]) for line in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" and c["usage"] is None for c in chunks[:-1])
    assert all("delta" in c["choices"][0] for c in chunks[:-1])
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1]


async def test_wire_whenStreamIdHeaderRead_thenTheRunIsReadableAsGatewayEvents(keyed_gateway):
    async with httpx.AsyncClient(timeout=20, headers={"Authorization": f"Bearer {KEY}"}) as http:
        r = await http.post(keyed_gateway.url + "/v1/chat/completions",
                            json={"model": DEMO_CHATFLOW_ID, "messages": user("read me again")})
        stream_id = r.headers["x-flowise-stream-id"]
        async with http.stream("GET", f"{keyed_gateway.url}/v1/streams/{stream_id}/events") as events:
            replay = await aread_sse(events)
    assert joined(replay) == r.json()["choices"][0]["message"]["content"]
    assert replay[-1].event == "end" and replay[0].data["chatId"] == r.headers["x-flowise-chat-id"]


async def test_wire_whenBodyMalformed_then400InOpenAIShapeWithParam(gateways, flowise):
    gateway = gateways(flowise.url)
    cases = [
        ({"model": DEMO_CHATFLOW_ID, "messages": []}, "messages"),
        ({"model": DEMO_CHATFLOW_ID}, "messages"),
        ({"model": DEMO_CHATFLOW_ID, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": DEMO_CHATFLOW_ID, "messages": user("x"), "n": 2}, "n"),
        ({"model": DEMO_CHATFLOW_ID, "messages": [*user("x"), {"role": "assistant", "content": "y"}]}, "messages"),
        ({"model": DEMO_CHATFLOW_ID, "messages": [{"role": "tool", "content": "42"}, *user("x")]}, "messages"),
        ({"model": DEMO_CHATFLOW_ID, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:,"}}]}]}, "messages[0].content"),
        ({"model": DEMO_CHATFLOW_ID, "messages": user("x"), "user": "bad id with spaces"}, "user"),
        ({"model": DEMO_CHATFLOW_ID, "messages": user("   ")}, "messages"),
    ]
    async with httpx.AsyncClient(timeout=20) as http:
        for body, param in cases:
            r = await http.post(gateway.url + "/v1/chat/completions", json=body)
            assert r.status_code == 400, (body, r.text)
            assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
        r = await http.post(gateway.url + "/v1/chat/completions", content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["message"]
    assert len(flowise.app.requests) == 0  # nothing reached Flowise


# --- messages and chat ids ------------------------------------------------------------------------
def test_messages_whenHistoryAndTextParts_thenPortableHistoryAndFreshChatId(keyed_gateway, flowise):
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": [{"type": "text", "text": "My name"}, {"type": "text", "text": "is Ada"}]},
        {"role": "assistant", "content": "Hi Ada"},
        {"role": "user", "content": [{"type": "text", "text": "What is my name?"}]},
    ]
    raw = client(keyed_gateway).chat.completions.with_raw_response.create(model=DEMO_CHATFLOW_ID, messages=messages)
    sent = flowise.app.requests[-1]
    assert sent["body"]["question"] == "What is my name?"
    assert [(h["role"], h["content"]) for h in sent["body"]["history"]] == [
        ("userMessage", "My name\nis Ada"), ("apiMessage", "Hi Ada")]
    assert "overrideConfig" not in sent["body"]  # the system message is ignored by default, and said so
    assert raw.headers["x-flowise-ignored-params"] == "messages[role=system]"
    # A keyed caller's chats live in its own space: Flowise gets them under the key's prefix.
    assert sent["body"]["chatId"] == f"{PREFIX}.{raw.headers['x-flowise-chat-id']}"
    assert len(raw.headers["x-flowise-chat-id"]) == 36


@pytest.mark.parametrize("source", ["X-Flowise-Chat-Id", "X-OpenWebUI-Chat-Id", "user"])
def test_chatId_whenClientNamesTheConversation_thenFlowiseGetsItAndHistoryOnlyIfNotStored(
        keyed_gateway, flowise, version, source):
    api = client(keyed_gateway)
    extra: dict[str, Any] = {}
    if source == "user":
        extra["user"] = "conv-42"
    else:
        extra["extra_headers"] = {source: "conv-42"}
    messages = [{"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"}, *user("now")]
    api.chat.completions.create(model=DEMO_CHATFLOW_ID, messages=messages, **extra)
    sent = flowise.app.requests[-1]["body"]
    assert sent["chatId"] == f"{PREFIX}.conv-42"
    # 1.6.2 reads the request's history as its memory; >= 1.8 stores the chat's turns itself.
    assert len(sent.get("history", [])) == (2 if version == "1.6.2" else 0)


def test_params_whenPassParamsOn_thenSamplingAndSystemInOverrideConfig(gateways, flowise):
    gateway = gateways(flowise.url, openai_pass_params=True)
    raw = client(gateway).chat.completions.with_raw_response.create(
        model=DEMO_CHATFLOW_ID, temperature=0.2, top_p=0.9, max_tokens=50, stop=["END", "STOP"], seed=7,
        messages=[{"role": "system", "content": "Be brief."}, *user("hi")])
    override = flowise.app.requests[-1]["body"]["overrideConfig"]
    assert override == {"temperature": 0.2, "topP": 0.9, "maxTokens": 50, "stopSequence": "END,STOP",
                        "systemMessagePrompt": "Be brief.", "systemMessage": "Be brief."}
    assert raw.headers["x-flowise-ignored-params"] == "seed"


def test_params_whenPassParamsOff_thenIgnoredAndListed(keyed_gateway, flowise):
    raw = client(keyed_gateway).chat.completions.with_raw_response.create(
        model=DEMO_CHATFLOW_ID, temperature=0.2, max_tokens=50, messages=user("hi"))
    assert "overrideConfig" not in flowise.app.requests[-1]["body"]
    assert raw.headers["x-flowise-ignored-params"] == "max_tokens,temperature"


# --- LangChain ------------------------------------------------------------------------------------
def chat_model(gateway: ServerThread) -> Any:
    from langchain_openai import ChatOpenAI  # here: importing LangChain is a second of every worker's start

    return ChatOpenAI(base_url=gateway.url + "/v1", api_key=KEY, model=DEMO_NAME, max_retries=0, timeout=20)


def test_langchain_whenInvokeAndStream_thenFlowisesAnswer(keyed_gateway, flowise):
    llm = chat_model(keyed_gateway)
    assert llm.invoke("Hello LangChain").content == flowise_answer(flowise, "Hello LangChain")
    pieces = [chunk.content for chunk in llm.stream("Hello LangChain stream")]
    assert len(pieces) > 5 and "".join(pieces) == flowise_answer(flowise, "Hello LangChain stream")


async def test_langchain_whenAstream_thenFlowisesAnswer(keyed_gateway, flowise):
    llm = chat_model(keyed_gateway)
    pieces = [chunk.content async for chunk in llm.astream("Hello LangChain async")]
    assert "".join(pieces) == flowise_answer(flowise, "Hello LangChain async")
    assert (await llm.ainvoke("Hello ainvoke")).content == flowise_answer(flowise, "Hello ainvoke")


# --- encoding ------------------------------------------------------------------------------------
ADVERSARIAL = ["line one\nline two", "\r\n\r\n", "data: [DONE]", "\nevent: end\ndata: {}\n\n", ": comment?",
               "😀🎉 ünïcödé", "\u2028\u2029", "\x00nul", "x" * 100_000, " trailing "]


def test_sdk_whenTokensAreAdversarial_thenEveryByteArrivesOnce(keyed_gateway):
    stream = client(keyed_gateway).chat.completions.create(
        model=DEMO_CHATFLOW_ID, messages=user("tricky"), stream=True, extra_body=emulator(tokens=ADVERSARIAL))
    assert [c.choices[0].delta.content for c in stream][1:-1] == ADVERSARIAL


@pytest.mark.parametrize("version", ["3.1.4"])  # usage events are a 3.x feature
def test_usage_whenAgentflowReportsPerNode_thenTheLastExecutedDataIsSummed(keyed_gateway):
    def node(usage):
        return {"nodeId": "n", "data": {"output": {"content": "x", "usageMetadata": usage}}, "status": "FINISHED"}

    first = {"input_tokens": 15, "output_tokens": 14, "total_tokens": 29}
    second = {"input_tokens": 37, "output_tokens": 19, "total_tokens": 56}
    events = [
        {"event": "agentFlowExecutedData", "data": [node(first)]},
        {"event": "usageMetadata", "data": second},  # the last node's, also in the data below
        {"event": "agentFlowExecutedData", "data": [node(first), node(second), {"nodeId": "start", "data": {}}]},
    ]
    result = client(keyed_gateway).chat.completions.create(
        model=DEMO_CHATFLOW_ID, messages=user("agents"), extra_body=emulator(events=events))
    assert result.usage.model_dump() == {"prompt_tokens": 52, "completion_tokens": 33, "total_tokens": 85,
                                         "completion_tokens_details": None, "prompt_tokens_details": None}


def test_models_whenUnknownChatflowId_thenNotFound(keyed_gateway):
    with pytest.raises(openai.NotFoundError) as raised:
        client(keyed_gateway).chat.completions.create(model="0" * 8 + "-0000-4000-8000-" + "0" * 12, messages=user("x"))
    assert raised.value.body["code"] == "model_not_found" and raised.value.body["param"] == "model"


async def test_run_whenReaderLetsGoRightAtTheEnd_thenTheLogEndsWithEndOnly(keyed_gateway):
    # The reader lets go as soon as it has `end`, while the run task may still be closing its
    # upstream: that must not count as the client leaving (no `error` `aborted` after the `end`).
    async with aclient(keyed_gateway) as api, \
            httpx.AsyncClient(timeout=20, headers={"Authorization": f"Bearer {KEY}"}) as http:
        for streaming in (False, True) * 10:
            raw = await api.chat.completions.with_raw_response.create(
                model=DEMO_CHATFLOW_ID, messages=user("end cleanly"), stream=streaming)
            if streaming:
                [_ async for _ in raw.parse()]
            stream_id = raw.headers["x-flowise-stream-id"]
            await eventually(lambda: keyed_gateway.call(lambda: _runs(keyed_gateway)) == 0)
            async with http.stream("GET", f"{keyed_gateway.url}/v1/streams/{stream_id}/events") as events:
                names = [e.event for e in await aread_sse(events)]
            assert names[-1] == "end" and "error" not in names, names


async def test_sdk_whenClientLeavesButRunIsReadByStreamId_thenRunGoesOnForThatReader(gateways, flowise):
    gateway = gateways(flowise.url)
    tokens = [f" t{n}" for n in range(40)]
    async with aclient(gateway) as api, httpx.AsyncClient(timeout=20) as http, AsyncExitStack() as stack:
        async with api.chat.completions.with_streaming_response.create(
                model=DEMO_CHATFLOW_ID, messages=user("share me"), stream=True,
                extra_body=emulator(tokens=tokens, delay=0.02)) as response:
            stream_id = response.headers["x-flowise-stream-id"]
            events = await stack.enter_async_context(http.stream("GET", f"{gateway.url}/v1/streams/{stream_id}/events"))
            reader = asyncio.ensure_future(aread_sse(events))
            await eventually(lambda: gateway.call(lambda: _readers(gateway, stream_id)) == 2)
        # The OpenAI client has left mid-answer; the run goes on with its other reader.
        await eventually(lambda: gateway.call(lambda: _readers(gateway, stream_id)) == 1)
        replay = await reader
    assert joined(replay) == "".join(tokens) and replay[-1].event == "end"


async def _readers(gateway: ServerThread, stream_id: str) -> int:
    run = gateway.app.state.services.manager.runs.get(stream_id)
    return run.readers if run else -1
