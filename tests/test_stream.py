"""The streaming contract through a real gateway, in front of every emulated Flowise version (one of
each transport where the gateway's behaviour is above it: conftest.ONE_PER_TRANSPORT)."""

from __future__ import annotations

import asyncio
import json
import subprocess

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID, KEYED_CHATFLOW_ID, NONSTREAMING_CHATFLOW_ID

from .conftest import ONE_PER_TRANSPORT, SSE_VERSIONS, TRANSPORT
from .helpers import REPLY
from .servers import aread_sse, joined, parse_sse


async def stream(gateway, question="Hello there", flow=DEMO_CHATFLOW_ID, **body):
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        client.stream("POST", f"/v1/chatflows/{flow}/stream", json={"question": question, **body}) as r,
    ):
        assert r.status_code == 200, (await r.aread())
        return r, await aread_sse(r)


async def test_stream_whenFlowiseStreams_thenStartTokensMetadataEndInOrder(gateway, flowise, version):
    response, events = await stream(gateway, "Hello there")
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"
    names = [e.event for e in events]
    assert names[0] == "start" and names[-1] == "end"
    assert names.count("end") == 1 and "error" not in names
    start = events[0].data
    assert start["chatflowId"] == DEMO_CHATFLOW_ID and start["transport"] == TRANSPORT[version]
    assert len(start["streamId"]) == 32 and start["chatId"]
    assert [e.id for e in events] == [f"{start['streamId']}:{n}" for n in range(1, len(events) + 1)]
    assert joined(events) == REPLY + "Hello there"
    tokens = [e.data["text"] for e in events if e.event == "token"]
    assert tokens[:2] == ["This", " is"]  # the first token once, not repeated from `start`
    metadata = next(e.data for e in events if e.event == "metadata")
    end = events[-1].data
    assert end["text"] == REPLY + "Hello there"
    assert end["chatId"] == start["chatId"] == metadata["chatId"]
    assert end["chatMessageId"] == metadata["chatMessageId"]
    assert names.index("metadata") > max(i for i, n in enumerate(names) if n == "token")


async def test_stream_whenStartCarriesFirstToken_thenItIsNotDuplicated(emulators, gateways):
    flowise = emulators("1.6.2", first_token_in_start=True)
    _, events = await stream(gateways(flowise.url), "dup check")
    assert joined(events) == REPLY + "dup check"


async def test_stream_getForEventSource_thenSameContractAndHistorySent(gateway, flowise, version):
    history = [{"role": "user", "content": "My name is Ada"}, {"role": "assistant", "content": "Hi Ada"}]
    params = {"question": "What is my name?", "history": json.dumps(history), "chatId": "chat-get-1"}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        client.stream("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params=params) as r,
    ):
        events = await aread_sse(r)
    assert joined(events) == REPLY + "What is my name?"
    assert events[0].data["chatId"] == "chat-get-1"
    sent = flowise.app.requests[-1]
    assert sent["body"]["chatId"] == "chat-get-1"
    assert sent["llm_messages"][1:] == [
        {"role": "user", "content": "My name is Ada"},
        {"role": "assistant", "content": "Hi Ada"},
        {"role": "user", "content": "What is my name?"},
    ]
    assert sent["body"]["history"][0] == {
        "role": "userMessage", "content": "My name is Ada", "type": "userMessage", "message": "My name is Ada",
    }


ADVERSARIAL = [
    "line one\nline two", "\r", "\r\n\r\n", "data: not an event", "\nevent: end\ndata: {}\n\n",
    "id: 99", ": comment?", "😀🎉 ünïcödé", "\u2028\u2029", "\x00nul", "x" * 100_000, " trailing ",
]


@pytest.mark.parametrize("version", ONE_PER_TRANSPORT)
async def test_stream_whenTokensAreAdversarial_thenRelayedLosslessly(gateway, flowise, version):
    _, events = await stream(gateway, "adversarial", overrideConfig={"emulator": {"tokens": ADVERSARIAL}})
    tokens = [e.data["text"] for e in events if e.event == "token"]
    assert tokens == ADVERSARIAL
    assert events[-1].event == "end" and events[-1].data["text"] == "".join(ADVERSARIAL)


@pytest.mark.parametrize("version", ONE_PER_TRANSPORT)
async def test_stream_whenReadWithCurl_thenTokensArriveAsTheyStream(gateway, flowise, version):
    url = f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream?question=curl+me"
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sN", url, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 20)
    text = out.decode()
    ids = [line.rsplit(":", 1)[1] for line in text.splitlines() if line.startswith("id: ")]
    assert ids == [str(n) for n in range(1, len(ids) + 1)]
    assert text.count("event: start") == 1 and text.count("event: token") == 10
    last = text.rstrip().split("\n\n")[-1].split("\n")
    assert last[0] == "event: end" and last[1].startswith("data: ") and last[2].startswith("id: ")  # id last
    assert '"text":"' + REPLY + 'curl me"' in text


@pytest.mark.parametrize("version", ONE_PER_TRANSPORT)
async def test_stream_whenFlowiseSendsOtherEvents_thenRelayedUnderTheirNames(gateway, flowise, version):
    docs = [{"pageContent": "Ada Lovelace", "metadata": {"source": "a.txt"}}]
    tools = [{"tool": "calculator", "toolInput": {"x": 1}, "toolOutput": "2"}]
    extra = [{"event": "sourceDocuments", "data": docs}, {"event": "usedTools", "data": tools}]
    _, events = await stream(gateway, "with extras", overrideConfig={"emulator": {"events": extra}})
    by_name = {e.event: e.data for e in events}
    assert by_name["sourceDocuments"] == docs and by_name["usedTools"] == tools
    assert [e.event for e in events].count("sourceDocuments") == 1


@pytest.mark.parametrize("version", SSE_VERSIONS)
async def test_stream_whenReasoningComesAsStartThenAgentReasoning_thenRelayedOnce(emulators, gateways, version):
    # Sequential agents (real 3.1.4) send their reasoning as `start` and again as `agentReasoning`.
    # (SSE lines only: over socket.io, events sent after the tokens race the HTTP answer.)
    gateway = gateways(emulators(version).url)
    reasoning = [{"agentName": "Calculator", "messages": ["42"], "nodeName": "seqAgent"}]
    other = [{"agentName": "Checker", "messages": ["ok"], "nodeName": "seqAgent"}]
    extra = [{"event": "start", "data": reasoning}, {"event": "agentReasoning", "data": reasoning},
             {"event": "agentReasoning", "data": other}]
    _, events = await stream(gateway, "reasoning", overrideConfig={"emulator": {"events": extra}})
    assert [e.data for e in events if e.event == "agentReasoning"] == [reasoning, other]


async def test_stream_whenChatflowCannotStream_thenOneTokenThenEnd(gateway, flowise, version):
    _, events = await stream(gateway, "plain please", flow=NONSTREAMING_CHATFLOW_ID)
    names = [e.event for e in events]
    assert names[0] == "start" and names[-1] == "end" and names.count("token") == 1
    assert joined(events) == events[-1].data["text"] == REPLY + "plain please"


async def test_stream_whenLlmFails_thenErrorEventLast(gateway, flowise, version):
    _, events = await stream(gateway, "fail please", overrideConfig={"emulator": {"error": "400 mock error 400"}})
    assert events[0].event == "start"
    assert events[-1].event == "error" and "end" not in [e.event for e in events]
    assert events[-1].data["code"] == "upstream_error"
    assert "400 mock error 400" in events[-1].data["message"]
    assert events[-1].data["retryable"] is False


async def test_stream_whenLlmFailsMidway_thenTokensThenError(gateway, flowise, version):
    _, events = await stream(gateway, "fail later", overrideConfig={"emulator": {"error": "boom", "errorAfter": 3}})
    assert [e.event for e in events][-1] == "error"
    assert joined(events) == "This is a"


async def test_stream_whenChatflowKeyed_thenUnauthorizedWithoutKeyAndStreamsWithIt(emulators, gateways, version):
    flowise = emulators(version, api_key="flow-key-123")
    async with httpx.AsyncClient(base_url=gateways(flowise.url).url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{KEYED_CHATFLOW_ID}/stream", json={"question": "hi"})
    if r.status_code == 200:
        events = parse_sse(r)
        assert events[-1].event == "error" and events[-1].data["code"] == "unauthorized"
    else:
        assert r.status_code == 502 and r.json()["error"]["code"] == "unauthorized"
    assert "flow-key-123" not in r.text
    _, events = await stream(gateways(flowise.url, flowise_api_key="flow-key-123"), "hi", flow=KEYED_CHATFLOW_ID)
    assert joined(events) == REPLY + "hi"


async def test_stream_whenChatflowUnknown_then404BeforeAnyStream(gateway, flowise, version):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post("/v1/chatflows/00000000-0000-4000-8000-000000000000/stream", json={"question": "hi"})
    assert r.status_code == 404 and r.headers["content-type"] == "application/json"
    assert r.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("version", ONE_PER_TRANSPORT)
async def test_stream_whenSameChatIdRunning_then409ForTheSecond(gateway, flowise, version):
    slow = {"question": "slow", "chatId": "busy-chat", "overrideConfig": {"emulator": {"delay": 0.1}}}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        async with client.stream("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=slow) as first:
            assert first.status_code == 200
            second = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=slow)
            assert second.status_code == 409 and second.json()["error"]["code"] == "chat_busy"
            events = await aread_sse(first)
        assert events[-1].event == "end"
        third = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=slow)
        assert third.status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        # No question and nothing in its place: the schema allows it (form, humanInput or an audio
        # upload may stand in), so the rule between fields answers, with a 400.
        ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"json": {}}, 400),
        ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"json": {"question": ""}}, 422),
        ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"content": b"{not json"}, 422),
        ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
         {"json": {"question": "q", "history": [{"role": "robot", "content": "x"}]}}, 422),
        ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"json": {"question": "q", "history": "nope"}}, 422),
        ("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"json": {"question": "q", "chatId": "../../x"}}, 422),
        ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"params": {"question": "q", "history": "[{"}}, 400),
        ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
         {"params": {"question": "q", "history": '[{"role":"user"}]'}}, 400),
        ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"params": {}}, 422),
        ("POST", "/v1/chatflows/..%2F..%2Fapi%2Fv1%2Fchatflows/stream", {"json": {"question": "q"}}, (404, 405)),
        ("POST", "/v1/chatflows/not-a-uuid/stream", {"json": {"question": "q"}}, 422),
        ("GET", "/v1/chatflows/not-a-uuid/streaming", {}, 422),
        ("POST", "/v1/chatflows/not-a-uuid/prediction", {"json": {"question": "q"}}, 422),
        ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
         {"params": {"question": "q"}, "headers": {"Last-Event-ID": "garbage"}}, 400),
        # Digits to `str.isdigit` that `int` refuses: a superscript two, and more than int's 4300.
        ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
         {"params": {"question": "q"}, "headers": {"Last-Event-ID": b"abc:\xb2"}}, 400),
        ("GET", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
         {"params": {"question": "q"}, "headers": {"Last-Event-ID": "abc:" + "9" * 5000}}, 400),
        ("GET", "/v1/streams/" + "a" * 32 + "/events", {"params": {"lastEventId": "\u00b2"}}, 400),
    ],
)
async def test_badInput_thenClearJson4xxAndNothingReachesFlowise(emulators, gateways, method, path, kwargs, status):
    flowise = emulators("3.1.4")
    before = flowise.app.requests_seen
    async with httpx.AsyncClient(base_url=gateways(flowise.url).url, timeout=10) as client:
        r = await client.request(method, path, **kwargs)
    assert r.status_code in (status if isinstance(status, tuple) else (status,)), r.text
    error = r.json()["error"]
    assert error["code"] in ("invalid_request", "bad_request", "not_found", "method_not_allowed") and error["message"]
    assert flowise.app.requests_seen == before


async def test_stream_whenFlowiseIsSlow_thenKeepAliveCommentsFlow(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, keepalive_interval=0.2)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
                              json={"question": "slow",
                                    "overrideConfig": {"emulator": {"tokens": ["a", "b", "c"], "delay": 0.6}}})
    # A comment line alone, never followed by a blank line of its own: no client makes it an event.
    assert r.text.count("\n: keep-alive\n") >= 2 and ": keep-alive\n\n" not in r.text
    assert [e.event for e in parse_sse(r)][-1] == "end"


@pytest.mark.parametrize("version", ["2.2.8", "3.1.4"])
async def test_stream_whenFlowiseStreamsNoTokenButStoredAnAnswer_thenStoredAnswerIsTheToken(
        emulators, gateways, version):
    # Flowise #4926 & co: `metadata` and `end` arrive, no token; the answer is in its database.
    flowise = emulators(version, username="admin", password="s3cret-pass", api_key="key-x")
    credentials = ({"flowise_api_key": "key-x"} if version.startswith("3")
                   else {"flowise_username": "admin", "flowise_password": "s3cret-pass"})
    gateway = gateways(flowise.url, **credentials)
    overrides = {"emulator": {"dropTokens": True}}
    _, events = await stream(gateway, "lost tokens", overrideConfig=overrides)
    names = [e.event for e in events]
    assert names == ["start", "token", "metadata", "end"], names
    assert events[1].data["text"] == events[-1].data["text"] == REPLY + "lost tokens"

    # Without the management credentials the answer cannot be read: the stream ends as Flowise
    # sent it (and the gateway logs why), rather than failing.
    _, events = await stream(gateways(flowise.url), "lost tokens", overrideConfig=overrides)
    assert [e.event for e in events] == ["start", "metadata", "end"]
    assert events[-1].data["text"] == ""


async def test_stream_whenAnswerIsReallyEmpty_thenEmptyEndAndNoInventedToken(emulators, gateways):
    flowise = emulators("3.1.4", api_key="key-x")
    _, events = await stream(gateways(flowise.url, flowise_api_key="key-x"), "nothing",
                             overrideConfig={"emulator": {"tokens": []}})
    assert [e.event for e in events] == ["start", "metadata", "end"]
    assert events[-1].data["text"] == ""
