"""Streams across replicas: two gateway processes sharing a real redis-server on loopback."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time

import httpx
import pytest
import redis
from httpx_sse import EventSource

from flowise_sse.emulator import DEMO_CHATFLOW_ID
from flowise_sse.streams.redis import keys

from .helpers import REPLY, wait_until
from .servers import GatewayProcess, RedisServer, Sse, joined, started_together

pytestmark = pytest.mark.redis
QUESTION = "one two three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def redis_url():
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (tests/setup.sh installs it)")
    with RedisServer() as server:
        yield server.url


@pytest.fixture
def replicas(redis_url, emulators):
    flowise = emulators("3.1.4")
    env = {"FLOWISE_URL": flowise.url, "FLOWISE_SSE_REDIS_URL": redis_url, "FLOWISE_SSE_TOKEN_SECRET": "shared-secret",
           "FLOWISE_SSE_SHUTDOWN_GRACE": "10"}
    with started_together(GatewayProcess(env), GatewayProcess(env)) as (a, b):
        yield a, b, flowise


def read(response: httpx.Response, events: list[Sse], limit: int | None = None) -> list[Sse]:
    """Read on from where the last call stopped (one SSE iterator per response)."""
    if not hasattr(response, "sse"):
        response.sse = EventSource(response).iter_sse()  # type: ignore[attr-defined]
    for sse in response.sse:  # type: ignore[attr-defined]
        if not sse.data:  # a keep-alive comment
            continue
        events.append(Sse(sse.event, sse.id, json.loads(sse.data)))
        if limit and len(events) >= limit:
            break
    return events


def slow(question: str = QUESTION, delay: float = 0.1, **extra) -> dict:
    return {"question": question, "overrideConfig": {"emulator": {"delay": delay}}, **extra}


def test_startOnA_cutClient_resumeOnB_thenJoinedTextExact(replicas):
    a, b, _ = replicas
    events: list[Sse] = []
    with httpx.stream("POST", f"{a.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=slow(), timeout=20) as r:
        read(r, events, limit=4)
    with httpx.stream("GET", f"{b.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": QUESTION},
                      headers={"Last-Event-ID": events[-1].id}, timeout=20) as r:
        read(r, events)
    seqs = [int(e.id.rsplit(":", 1)[1]) for e in events]
    assert seqs == list(range(1, len(events) + 1))
    assert joined(events) == events[-1].data["text"] == REPLY + QUESTION


def test_resumeOnB_afterTheEndOnA_then204(replicas):
    a, b, _ = replicas
    events: list[Sse] = []
    with httpx.stream("POST", f"{a.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "short"},
                      timeout=20) as r:
        read(r, events)
    assert events[-1].event == "end"
    url = f"{b.url}/v1/streams/{events[-1].id.split(':')[0]}/events"
    past = httpx.get(url, headers={"Last-Event-ID": events[-1].id}, timeout=20)
    before = httpx.get(url, headers={"Last-Event-ID": events[-2].id}, timeout=20)
    assert past.status_code == 204 and past.content == b""  # from Redis: the last entry is the end
    assert before.status_code == 200 and "event: end" in before.text


def test_eventsUrlFromA_readOnB_andDeleteOnB_stopsTheRunOnA(replicas):
    a, b, flowise = replicas
    created = httpx.post(f"{a.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow(delay=0.3)}).json()
    on_b = created["eventsUrl"].replace(a.url, b.url)
    events: list[Sse] = []
    with httpx.stream("GET", on_b, timeout=20) as r:
        read(r, events, limit=2)
        assert httpx.delete(f"{b.url}/v1/streams/{created['streamId']}").status_code == 204
        read(r, events)
    assert events[-1].event == "error" and events[-1].data["code"] == "aborted"
    assert 1 <= len([e for e in events if e.event == "token"]) < 10


def test_sameChatIdOnTwoReplicas_then409(replicas, redis_url):
    a, b, _ = replicas
    body = slow(chatId="shared-chat", delay=0.1)
    with httpx.stream("POST", f"{a.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body, timeout=20) as r:
        read(r, [], limit=2)
        second = httpx.post(f"{b.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body, timeout=20)
        assert second.status_code == 409 and second.json()["error"]["code"] == "chat_busy"
        read(r, [])
    with redis.Redis.from_url(redis_url) as store:  # A lets go of the chatId once its stream is over
        wait_until(lambda: not store.exists("fss:chat:shared-chat"), what="the chat lock released in Redis")
    assert "event: end" in httpx.post(f"{b.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body, timeout=20).text


def test_sigtermOnA_midStream_thenClientFinishesOnBWithNothingLostOrDoubled(replicas):
    a, b, _ = replicas
    events: list[Sse] = []
    with httpx.stream("POST", f"{a.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=slow(delay=0.15),
                      timeout=20) as r:
        read(r, events, limit=4)
        a.proc.send_signal(signal.SIGTERM)
        read(r, events)  # A lets its readers go: the connection closes without end or error
    cut = len(events)
    assert events[-1].event not in ("end", "error")
    works = httpx.post(f"{b.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, "question": "b works"})
    assert works.status_code == 201
    with httpx.stream("GET", f"{b.url}/v1/streams/{events[0].data['streamId']}/events",
                      headers={"Last-Event-ID": events[-1].id}, timeout=20) as r:
        read(r, events)
    assert len(events) > cut
    assert [int(e.id.rsplit(":", 1)[1]) for e in events] == list(range(1, len(events) + 1))
    assert joined(events) == events[-1].data["text"] == REPLY + QUESTION
    # A exits once its upstream is done (uvicorn re-raises the SIGTERM it handled, hence -15).
    assert a.proc.wait(15) in (0, -signal.SIGTERM)


def test_replicaKilled_midStream_thenReadersOnBGetAClearError(replicas, redis_url):
    a, b, _ = replicas
    created = httpx.post(f"{a.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **slow(delay=0.5)}).json()
    with redis.Redis.from_url(redis_url) as store:  # killed once its stream is in Redis
        wait_until(lambda: store.xlen(keys.events(created["streamId"])) >= 1, what="the start event mirrored")
    a.proc.kill()
    events: list[Sse] = []
    started = time.monotonic()
    with httpx.stream("GET", created["eventsUrl"].replace(a.url, b.url), timeout=30) as r:
        read(r, events)
    assert events[-1].event == "error" and events[-1].data["code"] == "upstream_unavailable"
    assert time.monotonic() - started < 15


def test_redisDown_thenNewStreamsGet503NotA500(emulators):
    with RedisServer() as store:
        env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": store.url}
        with GatewayProcess(env) as gateway:
            assert "event: end" in httpx.post(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream",
                                              json={"question": "up"}, timeout=20).text
            store.stop()
            r = httpx.post(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "down"},
                           timeout=20)
            assert r.status_code == 503 and r.json()["error"] == {
                "code": "store_unavailable", "message": r.json()["error"]["message"], "retryable": True}
            # Redis' address and redis-py's reprs are for the log, not the client.
            assert str(store.port) not in r.text and "127.0.0.1" not in r.text and "<" not in r.text, r.text
            assert httpx.get(f"{gateway.url}/healthz").status_code == 200


def test_redisDownAtStartUp_thenGatewayStarts_answers503_andStreamsOnceRedisIsUp(emulators):
    store = RedisServer()  # its port is chosen, nothing listens on it yet
    env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": store.url}
    with GatewayProcess(env) as gateway:  # started: no crash loop while Redis is away
        r = httpx.post(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "down"}, timeout=20)
        assert r.status_code == 503 and r.json()["error"]["code"] == "store_unavailable"
        with store:
            def streams() -> bool:
                r = httpx.post(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json={"question": "up"},
                               timeout=20)
                return r.status_code == 200 and "event: end" in r.text
            wait_until(streams, timeout=15, what="a stream through the gateway once Redis is up")


def _tokens(count: int, delay: float) -> dict:
    tokens = [f"t{i} " for i in range(count)]
    return {"question": "q", "overrideConfig": {"emulator": {"tokens": tokens, "delay": delay}}}


@pytest.mark.parametrize("outage", ["paused", "out_of_memory"])
async def test_redisStopsTakingWrites_midStream_thenStreamEndsWithStoreUnavailable_andRedisGetsItWholeAfter(
    redis_url, emulators, gateways, outage
):
    import redis as sync_redis

    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url, redis_url=redis_url, redis_timeout=1.0, stream_retention=300)
    client = sync_redis.Redis.from_url(redis_url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
        created = (await http.post("/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **_tokens(200, 0.05)})).json()
        key = keys.events(created["streamId"])
        events: list[Sse] = []
        async with http.stream("GET", created["eventsUrl"]) as r:
            async for sse in EventSource(r).aiter_sse():
                if sse.data:
                    events.append(Sse(sse.event, sse.id, json.loads(sse.data)))
                if len(events) == 5:
                    assert client.ttl(key) > 0  # the expiry comes with the first write
                    if outage == "paused":
                        client.execute_command("CLIENT", "PAUSE", 3000, "WRITE")  # no write for 3 s
                    else:  # every write refused with OOM until the stream has ended
                        client.config_set("maxmemory-policy", "noeviction")
                        client.config_set("maxmemory", 1)
        client.config_set("maxmemory", 0)
    assert events[-1].event == "error" and events[-1].data["code"] == "store_unavailable", events[-1]
    assert "FLOWISE_SSE_REDIS_TIMEOUT" in events[-1].data["message"]
    assert [int(e.id.rsplit(":", 1)[1]) for e in events] == list(range(1, len(events) + 1))
    # Once Redis takes writes again, the mirror writes what waited: every entry, in order, the
    # terminal one last, and the key expires.
    deadline = time.monotonic() + 15
    while client.xlen(key) < len(events) and time.monotonic() < deadline:
        time.sleep(0.1)
    entries = client.xrange(key)
    assert [entry_id for entry_id, _ in entries] == [f"{i}-0".encode() for i in range(1, len(events) + 1)]
    assert entries[-1][1][b"t"] == b"1" and b"store_unavailable" in entries[-1][1][b"f"]
    assert 0 < client.ttl(key) <= 300 and 0 < client.ttl(keys.meta(created["streamId"])) <= 300
    lock = f"fss:chat:{created['chatId']}"  # other tests here leave a killed replica's locks
    while client.exists(lock) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not client.exists(lock)


async def test_moreRemoteReadersThanRedisConnections_thenTheyWaitForOne_andEveryOneReadsItAll(redis_url, emulators):
    flowise = emulators("3.1.4")
    env = {"FLOWISE_URL": flowise.url, "FLOWISE_SSE_REDIS_URL": redis_url, "FLOWISE_SSE_TOKEN_SECRET": "shared-secret"}
    # B: 3 connections, one of them the abort subscription: 2 for 12 readers.
    with started_together(GatewayProcess(env),
                          GatewayProcess({**env, "FLOWISE_SSE_REDIS_MAX_CONNECTIONS": "3"})) as (a, b):
        async with httpx.AsyncClient(timeout=30) as client:
            created = (await client.post(f"{a.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID,
                                                                      **_tokens(40, 0.05)})).json()

            async def read_on_b() -> list[Sse]:
                events: list[Sse] = []
                async with client.stream("GET", created["eventsUrl"].replace(a.url, b.url)) as r:
                    assert r.status_code == 200
                    async for sse in EventSource(r).aiter_sse():
                        if sse.data:
                            events.append(Sse(sse.event, sse.id, json.loads(sse.data)))
                return events

            results = await asyncio.gather(*(read_on_b() for _ in range(12)))
    for events in results:
        assert events[-1].event == "end", events[-1]
        assert [int(e.id.rsplit(":", 1)[1]) for e in events] == list(range(1, len(events) + 1))
        assert joined(events) == events[-1].data["text"] == "".join(f"t{i} " for i in range(40))


def test_openAICompletionOnA_thenChatGuardedOnBAndItsStreamReadableOnB(replicas):
    import openai

    a, b, _ = replicas
    headers = {"X-Flowise-Chat-Id": "openai-shared-chat"}
    on_a = openai.OpenAI(base_url=a.url + "/v1", api_key="k", max_retries=0, default_headers=headers)
    on_b = openai.OpenAI(base_url=b.url + "/v1", api_key="k", max_retries=0, default_headers=headers)
    messages = [{"role": "user", "content": QUESTION}]
    with on_a.chat.completions.with_streaming_response.create(
            model=DEMO_CHATFLOW_ID, messages=messages, stream=True,
            extra_body={"overrideConfig": {"emulator": {"delay": 0.1}}}) as response:
        stream_id = response.headers["x-flowise-stream-id"]
        chunks = response.parse()
        first = next(iter(chunks))
        assert first.choices[0].delta.role == "assistant"
        with pytest.raises(openai.ConflictError):
            on_b.chat.completions.create(model=DEMO_CHATFLOW_ID, messages=messages)
        text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == REPLY + QUESTION
    # The run was mirrored: replica B replays it from Redis.
    with httpx.stream("GET", f"{b.url}/v1/streams/{stream_id}/events", timeout=20) as r:
        assert joined(read(r, [])) == REPLY + QUESTION
