"""The gateway client (`flowise_sse.client`), async and blocking, against real gateways in front of
the emulated Flowise: streams read whole, resumed exactly once across cut connections, stopped;
keys; the gateway's refusals and `error` events as its error types."""

from __future__ import annotations

import threading

import pytest

from flowise_sse import (
    AsyncGatewayClient,
    GatewayClient,
    GatewayUnreachable,
    StreamAborted,
    StreamNotFound,
    UpstreamError,
)
from flowise_sse.client import GatewayRefused
from flowise_sse.emulator import DEMO_CHATFLOW_ID, NONSTREAMING_CHATFLOW_ID
from flowise_sse.errors import ChatflowNotFound, NotAuthenticated

from .cutting_proxy import CuttingProxy
from .helpers import REPLY, free_port, until, wait_until

QUESTION = "alpha beta gamma delta epsilon zeta eta theta"
UNKNOWN_FLOW = "00000000-0000-4000-8000-000000000000"


def seqs(events) -> list[int]:
    return [int(e.id.rsplit(":", 1)[1]) for e in events]


async def test_asyncStream_thenStartTokensEnd_withTheirIds(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    async with AsyncGatewayClient(gateway.url) as client:
        events = [e async for e in client.stream(DEMO_CHATFLOW_ID, QUESTION)]
        flows = await client.list_chatflows()
        assert await client.is_streaming(DEMO_CHATFLOW_ID) is True
        assert await client.is_streaming(NONSTREAMING_CHATFLOW_ID) is False
    assert events[0].event == "start" and events[-1].event == "end"
    assert "".join(e.text for e in events if e.event == "token") == events[-1].text == REPLY + QUESTION
    stream_id = events[0].data["streamId"]
    assert all(e.id.startswith(stream_id + ":") for e in events)
    assert seqs(events) == list(range(1, len(events) + 1))
    assert DEMO_CHATFLOW_ID in [flow["id"] for flow in flows]


def test_syncStream_thenTheSameEvents_andItsThreadEndsWithTheClient(emulators, gateways):
    gateway = gateways(emulators("1.6.2").url)  # socket.io behind the gateway: the same contract
    before = set(threading.enumerate())
    with GatewayClient(gateway.url) as client:
        events = list(client.stream(DEMO_CHATFLOW_ID, QUESTION, history=[{"role": "user", "content": "I am Ada"}]))
        assert [f["id"] for f in client.list_chatflows()].count(DEMO_CHATFLOW_ID) == 1
    assert [e.event for e in events][0] == "start" and events[-1].event == "end"
    assert events[-1].text == REPLY + QUESTION
    assert seqs(events) == list(range(1, len(events) + 1))
    wait_until(lambda: set(threading.enumerate()) <= before, what="the client's loop thread ends")


async def test_asyncStream_cutMidStream_thenResumedWithLastEventId_eachEventOnce(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    with CuttingProxy(gateway.port) as proxy:
        async with AsyncGatewayClient(proxy.url) as client:
            events, cuts = [], 0
            async for event in client.stream(DEMO_CHATFLOW_ID, QUESTION, override_config={"emulator": {"delay": 0.1}}):
                events.append(event)
                if event.event == "token" and len(events) in (3, 6):
                    cuts += proxy.cut()
    assert cuts == 2
    assert seqs(events) == list(range(1, len(events) + 1))  # no gap, no duplicate
    assert "".join(e.text for e in events if e.event == "token") == REPLY + QUESTION
    resumed = [head for head in proxy.requests if head.startswith("GET /v1/streams/")]
    assert len(resumed) == 2 and all("last-event-id:" in head.lower() for head in resumed)


def test_syncCreateThenEvents_cutMidStream_thenResumed_andReadAgainFromAnId(emulators, gateways):
    gateway = gateways(emulators("2.0.7").url)
    with CuttingProxy(gateway.port) as proxy, GatewayClient(proxy.url) as client:
        created = client.create_stream(DEMO_CHATFLOW_ID, QUESTION, override_config={"emulator": {"delay": 0.1}})
        events = []
        for event in client.events(created.stream_id):
            events.append(event)
            if len(events) == 4:
                assert proxy.cut() >= 1
        again = list(client.events(created.stream_id, last_event_id=events[5].id))
    assert seqs(events) == list(range(1, len(events) + 1))
    assert events[0].data["chatId"] == created.chat_id and events[-1].text == REPLY + QUESTION
    assert again == events[6:]  # after that id, as a resuming reader gets it


async def test_deleteStream_whileRead_thenTheReaderGetsStreamAborted(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    async with AsyncGatewayClient(gateway.url) as client:
        created = await client.create_stream(DEMO_CHATFLOW_ID, QUESTION, override_config={"emulator": {"delay": 0.2}})
        tokens = []
        with pytest.raises(StreamAborted):
            async for event in client.events(created.stream_id):
                if event.event == "token":
                    tokens.append(event.text)
                    if len(tokens) == 2:
                        await client.delete_stream(created.stream_id)
        assert tokens and "".join(tokens) != REPLY + QUESTION
        with pytest.raises(StreamNotFound):
            await client.delete_stream("f" * 32)
    await until(lambda: flowise.app.active_predictions == 0, what="Flowise's run was closed")


async def test_refusalsAndFailures_thenTheGatewaysErrorTypes_inItsWords(emulators, gateways):
    open_gateway = gateways(emulators("3.1.4").url)
    keyed = gateways(emulators("3.1.4").url, api_keys=["k-1"])
    async with AsyncGatewayClient(open_gateway.url) as client:
        with pytest.raises(ChatflowNotFound) as unknown:
            [e async for e in client.stream(UNKNOWN_FLOW, "x")]
        assert UNKNOWN_FLOW in unknown.value.message and unknown.value.code == "not_found"
        with pytest.raises(UpstreamError, match="400 mock error 400"):  # the `error` event
            [e async for e in client.stream(DEMO_CHATFLOW_ID, "[[http400]] x")]
        with pytest.raises(GatewayRefused) as invalid:  # a code without a type of its own
            await client.create_stream("not-a-uuid", "x")
        assert invalid.value.code == "invalid_request" and invalid.value.status == 422
    async with AsyncGatewayClient(keyed.url) as client:
        with pytest.raises(NotAuthenticated):
            await client.list_chatflows()
    async with AsyncGatewayClient(keyed.url, api_key="k-1") as client:
        events = [e async for e in client.stream(DEMO_CHATFLOW_ID, "with a key")]
        assert events[-1].text == REPLY + "with a key"
    async with AsyncGatewayClient(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(GatewayUnreachable) as down:
            await client.list_chatflows()
    # The gateway's words and the cause, no library repr.
    assert down.value.message.startswith("the gateway is unreachable at http://127.0.0.1:")
    assert "ConnectError(" not in down.value.message and "ConnectionKey" not in down.value.message


def test_syncStream_leftEarly_thenItsConnectionCloses_andTheClientGoesOn(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    with CuttingProxy(gateway.port) as proxy, GatewayClient(proxy.url) as client:
        for event in client.stream(DEMO_CHATFLOW_ID, QUESTION, override_config={"emulator": {"delay": 0.2}}):
            if event.event == "token":
                break  # the generator closes: its task is cancelled on the loop, its response closed
        wait_until(lambda: proxy.open_connections == 0, what="the stream's connection is closed")
        assert [e.event for e in client.stream(DEMO_CHATFLOW_ID, "next")][-1] == "end"
