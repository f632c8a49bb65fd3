"""Streams outlive connections: Last-Event-ID resume, POST /v1/streams, DELETE, memory caps, TTL."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from httpx_sse import EventSource

from flowise_sse.emulator import DEMO_CHATFLOW_ID
from flowise_sse.streams.memory_store import TERMINAL_RESERVE

from .helpers import REPLY, until
from .servers import Sse, aread_sse, joined, parse_sse

SLOW = {"emulator": {"delay": 0.05}}


@pytest.fixture
def gateway(emulators, gateways):
    return gateways(emulators("3.1.4").url)


async def test_resume_onTheStreamEndpoint_whenCutMidway_thenRestWithoutGapOrDuplicate(gateway):
    url = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
    params = {"question": "resume me please"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        async with client.stream("GET", url, params={**params}) as r:
            first = await aread_sse(r, limit=4)
        # What EventSource does: the same URL again, with the last id it saw.
        async with client.stream("GET", url, params=params, headers={"Last-Event-ID": first[-1].id}) as r:
            rest = await aread_sse(r)
        again = await client.get(url, params=params)  # no Last-Event-ID: a new stream
    seqs = [int(e.id.split(":")[1]) for e in first + rest]
    assert seqs == list(range(1, len(seqs) + 1))
    assert joined(first + rest) == rest[-1].data["text"] == REPLY + "resume me please"
    assert again.status_code == 200 and first[0].data["streamId"] not in again.text.split("event: end")[0][:80]


async def test_createThenRead_withEventsUrl_thenWholeStreamForSeveralReaders(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        created = await client.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, "question": "two readers",
                                                         "overrideConfig": SLOW})
        assert created.status_code == 201
        body = created.json()
        assert body["eventsUrl"].startswith(gateway.url + f"/v1/streams/{body['streamId']}/events?token=")

        async def read() -> list:
            async with client.stream("GET", body["eventsUrl"]) as r:
                return await aread_sse(r)

        a, b = await asyncio.gather(read(), read())
        middle = await client.get(body["eventsUrl"], params={"lastEventId": "5"})  # a bare seq is fine here
    assert [e.id for e in a] == [e.id for e in b]
    assert joined(a) == REPLY + "two readers"
    assert a[0].data["chatId"] == body["chatId"]
    assert middle.text.split("\n\n")[0].endswith(f"\nid: {body['streamId']}:6")


async def test_resume_afterTheStreamEnded_thenReplayFromRetention(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "finished"})
        stream_id = r.text.split("id: ")[1].split(":")[0]
        replay = await client.get(f"/v1/streams/{stream_id}/events", headers={"Last-Event-ID": f"{stream_id}:0"})
    assert replay.text == r.text.replace("retry: 2000\n", "retry: 2000\n", 1)


async def test_delete_whileRunning_thenReadersGetAbortedAndFlowiseAbortCalled(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        created = (await client.post("/v1/streams", json={
            "chatflowId": DEMO_CHATFLOW_ID, "question": "stop me", "chatId": "delete-me",
            "overrideConfig": {"emulator": {"delay": 0.3}}})).json()
        events = []
        async with client.stream("GET", created["eventsUrl"]) as r:
            async for sse in EventSource(r).aiter_sse():
                if not sse.data:
                    continue
                events.append(Sse(sse.event, sse.id, json.loads(sse.data)))
                if len(events) == 2:
                    assert (await client.delete(f"/v1/streams/{created['streamId']}")).status_code == 204
        assert (await client.delete(f"/v1/streams/{created['streamId']}")).status_code == 204  # already over
        assert (await client.delete("/v1/streams/" + "0" * 32)).status_code == 404
    assert events[-1].event == "error" and events[-1].data["code"] == "aborted"
    assert "end" not in [e.event for e in events]
    await until(lambda: (DEMO_CHATFLOW_ID, "delete-me") in flowise.app.aborts, timeout=2.0)
    await until(lambda: flowise.app.active_predictions == 0, timeout=2.0)


async def test_streamOverItsCap_thenFailsClearlyNotTruncatedSilently(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, max_stream_bytes=2000)
    tokens = ["x" * 300] * 20
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
                              json={"question": "big", "overrideConfig": {"emulator": {"tokens": tokens}}})
    assert '"code":"stream_too_large"' in r.text.rsplit("event: error", 1)[-1]
    assert "event: end" not in r.text


async def test_globalMemoryCap_thenFinishedStreamsEvictedFirst(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, max_total_bytes=6000)
    ids = []
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        for n in range(6):
            r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": f"q{n}"})
            assert "event: end" in r.text
            ids.append(r.text.split("id: ")[1].split(":")[0])
        first = await client.get(f"/v1/streams/{ids[0]}/events")
        last = await client.get(f"/v1/streams/{ids[-1]}/events")
    assert first.status_code == 404 and first.json()["error"]["code"] == "stream_not_found"
    assert last.status_code == 200 and "event: end" in last.text
    assert gateway.app.state.services.manager.store.total_bytes <= 6000


async def test_retention_whenExpired_thenStreamGone(emulators, gateways, clock):
    gateway = gateways(emulators("3.1.4").url, stream_retention=30)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "brief"})
        stream_id = r.text.split("id: ")[1].split(":")[0]
        clock.now += 29.9
        assert (await client.get(f"/v1/streams/{stream_id}/events")).status_code == 200
        clock.now += 0.2  # the store's clock: beyond the retention
        gone = await client.get(f"/v1/streams/{stream_id}/events")
    assert gone.status_code == 404
    assert stream_id not in gateway.app.state.services.manager.store.logs


async def test_maxStreams_thenOverloaded503(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, max_streams=1)
    body = {"question": "slow", "overrideConfig": {"emulator": {"delay": 0.2}}}
    async with (
        httpx.AsyncClient(base_url=gateway.url, timeout=20) as client,
        client.stream("POST", f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body) as r,
    ):
        assert r.status_code == 200
        second = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body)
    assert second.status_code == 503 and second.json()["error"] == {
        "code": "overloaded", "message": second.json()["error"]["message"], "retryable": True}


async def test_resume_unknownStream_then404(gateway):
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.get(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": "x"},
                             headers={"Last-Event-ID": "f" * 32 + ":3"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found"


async def test_globalMemoryCap_whenRunningStreamsFillIt_thenTheStreamOverItEndsWithStreamTooLarge(emulators, gateways):
    # The stream that passes the total cap must still get its `error` event in (it used to be
    # refused too, leaving the stream without an end and its readers waiting forever).
    # 3000 bytes of frames, plus the terminal reserve each of the two running streams holds.
    gateway = gateways(emulators("3.1.4").url, max_total_bytes=3000 + 2 * TERMINAL_RESERVE)
    url = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
    # Tokens smaller than the error event: when one no longer fits, the error would not either.
    tokens = ["x" * 40] * 40
    holder = {"question": "hold", "overrideConfig": {"emulator": {"tokens": tokens, "hangAfter": 20}}}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        async with client.stream("POST", url, json=holder) as held:
            first = await aread_sse(held, limit=21)  # start and 20 tokens: ~2 KB held by a running stream
            r = await client.post(url, json={"question": "big", "overrideConfig": {"emulator": {"tokens": tokens}}})
            stream_id = first[0].data["streamId"]
            assert (await client.delete(f"/v1/streams/{stream_id}")).status_code == 204
        replay = await client.get(f"/v1/streams/{stream_id}/events")
    events = parse_sse(r)
    assert events[-1].event == "error" and events[-1].data["code"] == "stream_too_large"
    assert parse_sse(replay)[-1].data["code"] == "aborted"
    assert gateway.app.state.services.manager.runs == {}
