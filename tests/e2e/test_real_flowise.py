"""The gateway against real Flowise servers installed from npm, one per release line: 1.6.2, 1.8.4,
2.0.7 (socket.io) and 2.2.8, 3.1.4 (SSE). The same cases run on each; tool agents (1.6.2, 3.1.4)
and an Agentflow V2 (3.1.4) on the releases named by their `releases` mark.

Every assertion is made through the gateway's HTTP API, as a client sees it; Flowise itself is
called directly only to get its own answer to compare with, and the mock LLM tells what Flowise
sent to the model.
"""

from __future__ import annotations

import itertools
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from httpx_sse import connect_sse

from .flowise_harness import FlowiseDeployment, Gateway, GatewayFactory
from .mock_llm import TOOL_EXPRESSION, TOOL_MARKER, MockLLM, reply_for, reply_tokens, tool_reply_for
from .token_dropping_proxy import TokenDroppingProxy

pytestmark = pytest.mark.e2e

TIMEOUT = httpx.Timeout(60, connect=5)


@dataclass
class Sse:
    event: str
    id: str
    data: Any


@dataclass
class StreamResult:
    """What a client got from a stream endpoint: SSE events, or a JSON error before the stream."""

    status: int
    events: list[Sse]
    error_body: dict[str, Any] | None

    @property
    def tokens(self) -> list[str]:
        # Flowise 1.x sends empty tokens around the answer; the contract does not promise to drop them.
        return [e.data["text"] for e in self.events if e.event == "token" and e.data["text"]]

    @property
    def names(self) -> list[str]:
        return [e.event for e in self.events]

    def first(self, name: str) -> Sse:
        return next(e for e in self.events if e.event == name)

    def error(self) -> dict[str, Any]:
        """The contract's error, whichever way it came: a JSON body, or the stream's `error` event."""
        if self.error_body is not None:
            return dict(self.error_body["error"])
        assert self.events and self.events[-1].event == "error", f"no error: {self.names}"
        return dict(self.events[-1].data)


def open_stream(gateway: Gateway, chatflow_id: str, question: str, *, history: list[dict[str, str]] | None = None,
                method: str = "POST") -> StreamResult:
    url = f"{gateway.url}/v1/chatflows/{chatflow_id}/stream"
    if method == "POST":
        body: dict[str, Any] = {"question": question}
        if history is not None:
            body["history"] = history
        request: dict[str, Any] = {"json": body}
    else:
        params = {"question": question}
        if history is not None:
            params["history"] = json.dumps(history)
        request = {"params": params}
    with httpx.Client(timeout=TIMEOUT) as client, connect_sse(client, method, url, **request) as source:
        response = source.response
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            return StreamResult(response.status_code, [], response.json())
        events = [Sse(e.event, e.id, json.loads(e.data)) for e in source.iter_sse()]
        return StreamResult(response.status_code, events, None)


def assert_well_formed(result: StreamResult, chatflow_id: str) -> dict[str, Any]:
    """The contract's framing: `start` first, ids `<streamId>:1,2,3...`, one terminal event last."""
    assert result.status == 200, result.error_body
    assert result.events, "empty stream"
    start = result.events[0]
    assert start.event == "start", result.names
    assert {"streamId", "chatId", "chatflowId", "transport"} <= set(start.data), start.data
    assert start.data["chatflowId"] == chatflow_id
    stream_id = start.data["streamId"]
    assert [e.id for e in result.events] == [f"{stream_id}:{seq}" for seq in range(1, len(result.events) + 1)]
    terminal = [e.event for e in result.events if e.event in ("end", "error")]
    assert len(terminal) == 1 and result.events[-1].event == terminal[0], result.names
    return dict(start.data)


def marker() -> str:
    """A unique word per question, to find that question's calls in the mock LLM's record."""
    return f"m{uuid.uuid4().hex[:10]}"


def test_stream_equals_flowise_answer(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                      mock_llm: MockLLM) -> None:
    question = f"Hello streaming world {marker()}"
    direct = real_flowise.predict(real_flowise.chatflows.open, question)
    assert direct.status_code == 200, direct.text
    calls_before = len(mock_llm.requests_for(question))

    result = open_stream(gateways(real_flowise), real_flowise.chatflows.open, question)

    start = assert_well_formed(result, real_flowise.chatflows.open)
    assert start["transport"] == real_flowise.release.transport
    assert "".join(result.tokens) == direct.json()["text"] == reply_for(question)
    # In order, each exactly once: Flowise's `start` must not be doubled into a first token.
    assert result.tokens == reply_tokens(question)
    end = result.events[-1]
    assert end.event == "end", result.error()
    assert end.data["text"] == reply_for(question)
    assert end.data["chatId"] == start["chatId"]
    assert end.data["chatMessageId"]
    metadata = result.first("metadata")
    assert result.names.index("metadata") < len(result.events) - 1
    assert metadata.data["chatMessageId"] == end.data["chatMessageId"]
    # One prediction upstream, not a streamed one plus a fallback.
    assert len(mock_llm.requests_for(question)) == calls_before + 1


HISTORY_OPENAI_ROLES = [
    {"role": "user", "content": "My name is Ada"},
    {"role": "assistant", "content": "Hi Ada"},
    {"role": "user", "content": "I like tea"},
    {"role": "assistant", "content": "Noted: tea"},
]
HISTORY_FLOWISE_ROLES = [
    {"role": {"user": "userMessage", "assistant": "apiMessage"}[item["role"]], "content": item["content"]}
    for item in HISTORY_OPENAI_ROLES
]


@pytest.mark.parametrize(("method", "history"), [
    ("POST", HISTORY_OPENAI_ROLES),
    ("POST", HISTORY_FLOWISE_ROLES),
    ("GET", HISTORY_OPENAI_ROLES),
], ids=["post-openai-roles", "post-flowise-roles", "get-openai-roles"])
def test_history_reaches_the_llm(real_flowise: FlowiseDeployment, gateways: GatewayFactory, mock_llm: MockLLM,
                                 method: str, history: list[dict[str, str]]) -> None:
    question = f"What is my name? {marker()}"

    result = open_stream(gateways(real_flowise), real_flowise.chatflows.open, question, history=history,
                         method=method)

    assert_well_formed(result, real_flowise.chatflows.open)
    assert result.events[-1].event == "end", result.error()
    assert "".join(result.tokens) == reply_for(question)
    [call] = mock_llm.requests_for(question)
    received = [(m["role"], m["content"]) for m in call.messages if m["role"] != "system"]
    assert received == [
        ("user", "My name is Ada"), ("assistant", "Hi Ada"),
        ("user", "I like tea"), ("assistant", "Noted: tea"),
        ("user", question),
    ]


# The credential kinds each line's management routes take (docs/flowise-versions.md, "Credentials").
CREDENTIAL_KINDS = {"basic": [{"api_key": False}], "key": [{"basic_auth": False}],
                    "basic-or-key": [{"api_key": False}, {"basic_auth": False}]}


def test_listing_uses_the_upstream_credentials(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    # Each version with only what its listing needs, each kind it takes on its own: 1.x basic auth
    # (FLOWISE_USERNAME/PASSWORD), 2.x basic auth or an API key, 3.x a workspace API key.
    for credentials in CREDENTIAL_KINDS[real_flowise.release.auth]:
        gateway = gateways(real_flowise, **credentials)

        listed = httpx.get(f"{gateway.url}/v1/chatflows", timeout=TIMEOUT)

        assert listed.status_code == 200, (credentials, listed.text)
        flows = {flow["id"]: flow for flow in listed.json()}
        assert {flow for flow in vars(real_flowise.chatflows).values() if flow} <= set(flows)
        summary = flows[real_flowise.chatflows.open]
        assert {"id", "name", "deployed", "isPublic", "category", "type", "updatedDate"} <= set(summary)
        assert summary["name"] == "e2e-stream"
        assert "flowData" not in summary
        # The version check took the same credentials (2.0.7 guards that route too).
        ready = httpx.get(f"{gateway.url}/readyz", timeout=TIMEOUT)
        assert ready.status_code == 200 and ready.json()["flowiseVersion"] == real_flowise.version, ready.text

    anonymous = gateways(real_flowise, api_key=False, basic_auth=False)
    refused = httpx.get(f"{anonymous.url}/v1/chatflows", timeout=TIMEOUT)
    assert refused.status_code == 502, refused.text
    assert refused.json()["error"]["code"] == "unauthorized"


def test_keyed_chatflow_needs_its_key(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    question = f"Keyed hello {marker()}"
    keyed = real_flowise.chatflows.keyed

    with_key = open_stream(gateways(real_flowise), keyed, question)

    assert_well_formed(with_key, keyed)
    assert with_key.events[-1].event == "end", with_key.error()
    assert "".join(with_key.tokens) == reply_for(question)

    # 1.x keeps its basic auth: only the chatflow's key is missing.
    without_key = open_stream(gateways(real_flowise, api_key=False), keyed, question)

    if without_key.error_body is None:
        assert_well_formed(without_key, keyed)
    else:
        assert without_key.status == 502
    assert without_key.error()["code"] == "unauthorized"
    assert not without_key.tokens


def test_llm_error_becomes_an_error_event(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    # The mock answers HTTP 400 at once (LangChain would retry a 5xx for minutes).
    result = open_stream(gateways(real_flowise), real_flowise.chatflows.open, f"Please fail [[http400]] {marker()}")

    if result.error_body is None:
        assert_well_formed(result, real_flowise.chatflows.open)
        assert "end" not in result.names
    else:
        assert 500 <= result.status < 600
    error = result.error()
    assert error["code"] == "upstream_error"
    assert isinstance(error["message"], str) and error["message"]
    assert error["retryable"] is False
    assert not result.tokens


def test_unstreamable_chatflow_answers_in_one_token(real_flowise: FlowiseDeployment,
                                                    gateways: GatewayFactory) -> None:
    gateway = gateways(real_flowise)
    flows = real_flowise.chatflows
    for chatflow_id, streaming in ((flows.open, True), (flows.unstreamable, False)):
        check = httpx.get(f"{gateway.url}/v1/chatflows/{chatflow_id}/streaming", timeout=TIMEOUT)
        assert check.status_code == 200, check.text
        assert check.json() == {"isStreaming": streaming}
    question = f"Answer at once {marker()}"

    result = open_stream(gateway, flows.unstreamable, question)

    assert_well_formed(result, flows.unstreamable)
    assert result.tokens == [reply_for(question)]
    assert result.events[-1].event == "end", result.error()
    assert result.events[-1].data["text"] == reply_for(question)
    assert result.names.index("token") < result.names.index("end")


def test_prediction_passes_flowise_answer_through(real_flowise: FlowiseDeployment,
                                                  gateways: GatewayFactory) -> None:
    question = f"Non streaming hello {marker()}"

    answer = httpx.post(f"{gateways(real_flowise).url}/v1/chatflows/{real_flowise.chatflows.open}/prediction",
                        json={"question": question}, timeout=TIMEOUT)

    assert answer.status_code == 200, answer.text
    assert answer.json()["text"] == reply_for(question)
    assert answer.json()["chatMessageId"]


def test_unknown_chatflow_is_not_found(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    result = open_stream(gateways(real_flowise), str(uuid.uuid4()), "Anybody there?")

    assert result.status == 404 and result.error_body is not None, result.names
    assert result.error()["code"] == "not_found"


def test_readyz_reports_version_and_transport(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    ready = httpx.get(f"{gateways(real_flowise).url}/readyz", timeout=TIMEOUT)

    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert ready.json()["flowiseVersion"].split(".")[0] == real_flowise.version.split(".")[0]
    assert ready.json()["transport"] == real_flowise.release.transport


def slow_question(what: str) -> str:
    # About 30 tokens at 300 ms each: the LLM, and so Flowise, goes on producing for ~9 s.
    return f"[[delay=300]] slow answer for the {what} check {marker()} " + " ".join(["word"] * 20)


def warm_baseline(gateway: Gateway, real_flowise: FlowiseDeployment) -> dict[int, int]:
    """A complete stream first, so the gateway's pools (HTTP keep-alive, the socket.io
    pre-connected sockets) are in their steady state when the baseline is taken."""
    warm = open_stream(gateway, real_flowise.chatflows.open, f"warm up {marker()}")
    assert warm.events[-1].event == "end", warm.error()
    return gateway.upstream_connections(real_flowise.port)


def carrying_connections(snapshots: list[dict[int, int]]) -> set[int]:
    """The upstream that carries the answer (SSE: the prediction's response; socket.io: the leased
    socket) is the connection that received a token between two snapshots; a pool socket's ping
    (3 bytes) stays under the threshold."""
    first, last = snapshots
    carrying = {inode for inode in first.keys() & last.keys() if last[inode] - first[inode] >= 15}
    assert carrying, f"no connection to Flowise carried the tokens: {first} -> {last}"
    return carrying


def assert_upstream_released(gateway: Gateway, port: int, baseline: dict[int, int], during: dict[int, int],
                             carrying: set[int]) -> None:
    # Back to baseline within ~2 s: the connections open while streaming that are still open
    # may not outnumber the baseline. Connections opened after the stream ended are not the
    # stream's (the abort call, PUT /chatmessage/abort, leaves an idle keep-alive one); they
    # are covered by the no-traffic check below.
    deadline = time.monotonic() + 2.0
    while True:
        after = gateway.upstream_connections(port)
        still_open = after.keys() & during.keys()
        if len(still_open) <= len(baseline) and not still_open & carrying:
            break
        assert time.monotonic() < deadline, (
            f"connections to Flowise: {len(baseline)} before, {len(during)} during, {len(still_open)} of those "
            f"still open 2 s after the stream ended (carrying the stream: {carrying & still_open})\n"
            f"{gateway.log_tail()}")
        time.sleep(0.1)
    # Flowise keeps producing a token every 300 ms for seconds more (a classic chain ignores
    # aborts): a connection that receives data in each of three 0.6 s windows would be an upstream
    # left open, whatever the count says. One-off traffic (the abort call's answer, a ping) does not.
    samples = []
    for _ in range(4):
        samples.append(gateway.upstream_connections(port))
        time.sleep(0.6)
    receiving = set.intersection(*(set(sample) for sample in samples))
    for earlier, later in itertools.pairwise(samples):
        receiving = {inode for inode in receiving if later[inode] - earlier[inode] >= 15}
    assert not receiving, f"still receiving (bytes so far): {[{i: sample[i] for i in receiving} for sample in samples]}"


def test_client_disconnect_closes_the_upstream(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    gateway = gateways(real_flowise, on_disconnect="abort")
    port = real_flowise.port
    baseline = warm_baseline(gateway, real_flowise)

    snapshots: list[dict[int, int]] = []
    with httpx.Client(timeout=TIMEOUT) as client, \
            connect_sse(client, "POST", f"{gateway.url}/v1/chatflows/{real_flowise.chatflows.open}/stream",
                        json={"question": slow_question("disconnect")}) as source:
        for event in source.iter_sse():
            if event.event == "token" and json.loads(event.data)["text"]:
                snapshots.append(gateway.upstream_connections(port))
                if len(snapshots) == 2:
                    break  # closing the iterator closes the client's connection mid-stream

    assert_upstream_released(gateway, port, baseline, snapshots[1], carrying_connections(snapshots))
    # And the gateway serves the next client normally.
    follow_up = open_stream(gateway, real_flowise.chatflows.open, f"after the disconnect {marker()}")
    assert follow_up.events[-1].event == "end", follow_up.error()


def test_abort_ends_the_stream_and_closes_the_upstream(real_flowise: FlowiseDeployment,
                                                       gateways: GatewayFactory) -> None:
    gateway = gateways(real_flowise)
    port = real_flowise.port
    baseline = warm_baseline(gateway, real_flowise)
    created = httpx.post(f"{gateway.url}/v1/streams", timeout=TIMEOUT,
                         json={"chatflowId": real_flowise.chatflows.open, "question": slow_question("abort")})
    assert created.status_code == 201, created.text
    stream_id = created.json()["streamId"]

    snapshots: list[dict[int, int]] = []
    events: list[Sse] = []
    with httpx.Client(timeout=TIMEOUT) as client, \
            connect_sse(client, "GET", f"{gateway.url}/v1/streams/{stream_id}/events") as source:
        for event in source.iter_sse():
            events.append(Sse(event.event, event.id, json.loads(event.data)))
            if event.event == "token" and events[-1].data["text"] and len(snapshots) < 2:
                snapshots.append(gateway.upstream_connections(port))
                if len(snapshots) == 2:
                    deleted = httpx.delete(f"{gateway.url}/v1/streams/{stream_id}", timeout=TIMEOUT)
                    assert deleted.status_code == 204, deleted.text

    # The reader stays to the end: the stream's last event says it was aborted.
    assert events[-1].event == "error" and events[-1].data["code"] == "aborted", [e.event for e in events]
    assert "end" not in [e.event for e in events]
    assert len([e for e in events if e.event == "token" and e.data["text"]]) < 25  # stopped, not finished
    assert_upstream_released(gateway, port, baseline, snapshots[1], carrying_connections(snapshots))
    follow_up = open_stream(gateway, real_flowise.chatflows.open, f"after the abort {marker()}")
    assert follow_up.events[-1].event == "end", follow_up.error()


def ask_for_the_tool(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                     flow: str | None) -> tuple[StreamResult, str]:
    """A tool-using flow asked what the mock LLM answers with a calculator call, streamed to its
    `end`, well formed; the stream and the question."""
    assert flow is not None
    question = f"What is 6 times 7? {TOOL_MARKER} {marker()}"
    result = open_stream(gateways(real_flowise), flow, question)
    assert_well_formed(result, flow)
    assert result.events[-1].event == "end", result.error()
    return result, question


def tool_used(events: list[Sse]) -> list[dict[str, Any]]:
    [used] = [e.data for e in events if e.event == "usedTools"]
    return list(used)


@pytest.mark.releases("1.6.2", "3.1.4")
def test_tool_agent_calls_the_tool_and_relays_its_use(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                                      mock_llm: MockLLM) -> None:
    result, question = ask_for_the_tool(real_flowise, gateways, real_flowise.chatflows.tool_agent)
    # The calculator really ran inside Flowise: its answer went back to the LLM as a tool message.
    calls = mock_llm.requests_for(question)
    assert len(calls) == 2, [c.messages for c in calls]
    tool_messages = [m for m in calls[1].messages if m["role"] == "tool"]
    assert [m["content"] for m in tool_messages] == ["42"]
    # The text is the final turn's alone (the tool-call turn streams no text), exactly.
    assert "".join(result.tokens) == result.events[-1].data["text"] == tool_reply_for(question)
    [used] = tool_used(result.events)
    assert used["tool"] == "calculator" and used["toolOutput"] == "42"
    assert used["toolInput"] == {"input": TOOL_EXPRESSION}
    names = result.names
    assert names.index("usedTools") < names.index("end")
    if real_flowise.release.line == "3.x":
        # "Enable Detailed Streaming": the agent's steps as they happen, before the answer's text.
        traces = [e.data for e in result.events if e.event == "agent_trace"]
        steps = [trace["step"] for trace in traces]
        assert steps == ["agent_action", "tool_start", "tool_end"], traces
        assert names.index("agent_trace") < next(i for i, e in enumerate(result.events)
                                                 if e.event == "token" and e.data["text"])


@pytest.mark.releases("3.1.4")
def test_agentflow_relays_its_events_and_exact_text(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                                    mock_llm: MockLLM) -> None:
    result, question = ask_for_the_tool(real_flowise, gateways, real_flowise.chatflows.agentflow)
    assert "".join(result.tokens) == result.events[-1].data["text"] == tool_reply_for(question)
    names = result.names
    # Flowise's own agentflow events, under their own names, in Flowise's order.
    assert result.first("agentFlowEvent").data == "INPROGRESS"
    assert [e.data for e in result.events if e.event == "agentFlowEvent"][-1] == "FINISHED"
    progress = [(e.data["nodeId"], e.data["status"]) for e in result.events if e.event == "nextAgentFlow"]
    assert progress == [("startAgentflow_0", "INPROGRESS"), ("startAgentflow_0", "FINISHED"),
                        ("agentAgentflow_0", "INPROGRESS"), ("agentAgentflow_0", "FINISHED")], progress
    executed = [e.data for e in result.events if e.event == "agentFlowExecutedData"][-1]
    assert [node["nodeId"] for node in executed] == ["startAgentflow_0", "agentAgentflow_0"]
    called = [e.data for e in result.events if e.event == "calledTools"]
    assert called[0][0]["tool"] == "calculator" and called[-1] == []
    [used] = tool_used(result.events)
    assert used["tool"] == "calculator" and used["toolOutput"] == "42"
    assert "usageMetadata" in names
    assert names.index("calledTools") < names.index("usedTools") < names.index("end")
    assert [m["content"] for m in mock_llm.requests_for(question)[-1].messages if m["role"] == "tool"] == ["42"]


@pytest.mark.releases("2.2.8", "3.1.4")
def test_stream_without_tokens_ends_with_the_stored_answer(real_flowise: FlowiseDeployment,
                                                           gateways: GatewayFactory) -> None:
    # Flowise's no-token bug (#4926 & co), forced: a proxy removes every `token` event, so the
    # gateway sees `metadata` and `end` only, while Flowise stored the answer. The gateway reads it
    # back (GET /api/v1/chatmessage/...) with each kind of credentials the line takes.
    proxy = TokenDroppingProxy(real_flowise.url).start()
    try:
        for credentials in CREDENTIAL_KINDS[real_flowise.release.auth]:
            gateway = gateways(real_flowise, via=proxy.url, **credentials)
            question = f"Lost tokens {marker()}"
            dropped = proxy.dropped

            result = open_stream(gateway, real_flowise.chatflows.open, question)

            assert proxy.dropped - dropped == len(reply_tokens(question)), "Flowise streamed no tokens to drop"
            assert_well_formed(result, real_flowise.chatflows.open)
            assert result.events[-1].event == "end", result.error()
            assert result.tokens == [reply_for(question)], (credentials, result.names)
            assert result.events[-1].data["text"] == reply_for(question)
            assert result.names.index("token") < result.names.index("metadata")
    finally:
        proxy.stop()


@pytest.mark.releases("3.1.4")
def test_sequential_agent_relays_its_reasoning_once(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                                    mock_llm: MockLLM) -> None:
    result, question = ask_for_the_tool(real_flowise, gateways, real_flowise.chatflows.sequential_agent)
    assert "".join(result.tokens) == result.events[-1].data["text"] == tool_reply_for(question)
    # Flowise sends the agents' reasoning twice (as `start`, then as `agentReasoning`): once here.
    [reasoning] = [e.data for e in result.events if e.event == "agentReasoning"]
    [step] = reasoning
    assert step["agentName"] == "Calculator" and step["nodeName"] == "seqAgent"
    assert step["messages"] == [tool_reply_for(question)]
    assert step["usedTools"][0]["toolOutput"] == "42"
    [used] = tool_used(result.events)
    assert used["tool"] == "calculator" and used["toolOutput"] == "42"
    assert [m["content"] for m in mock_llm.requests_for(question)[-1].messages if m["role"] == "tool"] == ["42"]
