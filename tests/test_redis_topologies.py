"""Two gateway replicas on the Redis that production runs: a local Redis Cluster (3 primaries, 3
replicas) and a Sentinel group (a primary, a replica, 3 sentinels), started here from Debian's
redis-server; and a primary that dies mid-run, on each and on a standalone Redis restarted empty.

The promise checked after a failover (docs/operations/redis.md, "When the primary fails"): every
reader, on either replica, ends either exact or as an exact prefix followed by `error`
`store_unavailable`, never a gap, a duplicate, a hang or a 404 for a live stream; a stream
replayed from its start once it ended is exact (its owner wrote again what the new primary
lacked); every key has an expiry; new streams work again within seconds of the promotion.

The failover tests run a short version here (CI); `REDIS_LONG_TESTS=1` runs the long one too
(more streams, resumes across replicas all through the failover).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
import redis
from httpx_sse import EventSource
from redis.cluster import key_slot

from flowise_sse.emulator import DEMO_CHATFLOW_ID
from flowise_sse.streams.redis import keys

from .helpers import until, wait_until
from .redis_topologies import Deployment, LocalCluster, SentinelGroup
from .servers import GatewayProcess, RedisServer, Sse, joined

# One worker starts each Redis topology (a cluster of six, a Sentinel group) for all its tests.
pytestmark = [pytest.mark.redis, pytest.mark.xdist_group("redis_topologies")]
LONG = bool(os.environ.get("REDIS_LONG_TESTS"))
long_only = pytest.mark.skipif(not LONG, reason="the long version: REDIS_LONG_TESTS=1")
STREAM = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"


@pytest.fixture(scope="module", params=["cluster", "sentinel"])
def topology(request: pytest.FixtureRequest) -> Iterator[Deployment]:
    with Deployment(request.param) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def replicas(topology: Deployment, emulators: Any) -> Iterator[tuple[GatewayProcess, GatewayProcess]]:
    env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_TOKEN_SECRET": "shared-secret", **topology.env}
    with GatewayProcess(env) as a, GatewayProcess(env) as b:
        yield a, b


def tokens(count: int, delay: float, **extra: Any) -> dict[str, Any]:
    return {"question": "q", "overrideConfig": {"emulator": {"tokens": [f"t{i} " for i in range(count)],
                                                             "delay": delay}}, **extra}


def seqs(events: list[Sse]) -> list[int]:
    return [int(e.id.rsplit(":", 1)[1]) for e in events]


async def read_all(client: httpx.AsyncClient, url: str, headers: dict[str, str] | None = None,
                   limit: int | None = None) -> tuple[int, list[Sse]]:
    events: list[Sse] = []
    async with client.stream("GET", url, headers=headers or {}) as r:
        if r.status_code != 200:
            return r.status_code, events
        async for sse in EventSource(r).aiter_sse():
            if sse.data:
                events.append(Sse(sse.event, sse.id, json.loads(sse.data)))
                if limit and len(events) >= limit:
                    break
    return 200, events


def exact_or_store_unavailable(events: list[Sse], count: int, start: int = 1) -> str:
    """Which way a reader ended ("exact" or "store_unavailable"); fails on anything else: a gap, a
    duplicate, another error, no end."""
    assert seqs(events) == list(range(start, start + len(events))), seqs(events)
    last = events[-1]
    if last.event == "error":
        assert last.data["code"] == "store_unavailable", last.data
        return "store_unavailable"
    assert last.event == "end", last
    if start == 1:
        assert joined(events) == last.data["text"] == "".join(f"t{i} " for i in range(count))
    return "exact"


def test_twoReplicas_startOnA_resumeOnB_exact_deleteOnBStopsA_chatBusyAcross_andEveryKeyExpires(
    topology: Deployment, replicas: tuple[GatewayProcess, GatewayProcess]
) -> None:
    a, b = replicas
    body = tokens(30, 0.05, chatId=f"chat-{topology.mode}")
    events: list[Sse] = []
    with httpx.stream("POST", a.url + STREAM, json=body, timeout=30) as r:
        for sse in EventSource(r).iter_sse():
            if sse.data:
                events.append(Sse(sse.event, sse.id, json.loads(sse.data)))
            if len(events) == 4:
                break
        busy = httpx.post(b.url + STREAM, json=body, timeout=30)
        assert busy.status_code == 409 and busy.json()["error"]["code"] == "chat_busy"
    with httpx.stream("GET", f"{b.url}/v1/streams/{events[0].data['streamId']}/events",
                      headers={"Last-Event-ID": events[-1].id}, timeout=30) as r:
        events += [Sse(s.event, s.id, json.loads(s.data)) for s in EventSource(r).iter_sse() if s.data]
    assert exact_or_store_unavailable(events, 30) == "exact"

    created = httpx.post(f"{a.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **tokens(100, 0.1)}).json()
    on_b: list[Sse] = []
    with httpx.stream("GET", created["eventsUrl"].replace(a.url, b.url), timeout=30) as r:
        for sse in EventSource(r).iter_sse():
            if sse.data:
                on_b.append(Sse(sse.event, sse.id, json.loads(sse.data)))
            if len(on_b) == 3:
                # Over sharded pub/sub on a cluster: B publishes, A (subscribed on the slot's node) aborts.
                assert httpx.delete(f"{b.url}/v1/streams/{created['streamId']}").status_code == 204
    assert on_b[-1].event == "error" and on_b[-1].data["code"] == "aborted"
    assert len(on_b) < 20
    wait_until(lambda: all(ttl > 0 for ttl in topology.all_keys().values()), timeout=10,
               what="every key with an expiry")
    assert any(key.endswith(b":events") for key in topology.all_keys())


def test_responsesApi_startedOnA_thenReadCancelledAndDeletedOnB_itsRecordInItsStreamsSlot_withAnExpiry(
    topology: Deployment, replicas: tuple[GatewayProcess, GatewayProcess]
) -> None:
    first, second = (openai.OpenAI(base_url=replica.url + "/v1", api_key="open", max_retries=0, timeout=30)
                     for replica in replicas)
    done = first.responses.create(model=DEMO_CHATFLOW_ID, input="on replica a", extra_body=tokens(5, 0))
    assert second.responses.retrieve(done.id).model_dump() == done.model_dump()
    stream_id = done.id.removeprefix("resp_")
    # The record shares its stream's hash tag: on a cluster, the same slot as its events.
    assert key_slot(keys.response(stream_id).encode()) == key_slot(keys.events(stream_id).encode())
    left = topology.all_keys()
    assert left[keys.response(stream_id).encode()] > 0 and left[keys.events(stream_id).encode()] > 0

    running = first.responses.create(model=DEMO_CHATFLOW_ID, input="long", background=True,
                                     extra_body=tokens(300, 0.05))
    assert second.responses.cancel(running.id).status == "cancelled"
    wait_until(lambda: first.responses.retrieve(running.id).status == "cancelled", timeout=10,
               what="replica a sees the cancel made on b")
    assert second.responses.delete(done.id) is None
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(done.id)


async def _failover_run(topology: Deployment, replicas: tuple[GatewayProcess, GatewayProcess], streams: int,
                        resumes: int) -> dict[str, Any]:
    """`streams` streams on A, each read live on A (memory) and on B (Redis) from its start; the
    primary holding the first one dies mid-run; `resumes` more readers resume on B at random
    positions all through the failover. Returns what happened, checked."""
    a, b = replicas
    count, delay = 60, 0.1
    outcome: dict[str, Any] = {"endings": {}, "resume_status": {}}
    async with httpx.AsyncClient(timeout=60) as client:
        created = [(await client.post(f"{a.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID,
                                                                   **tokens(count, delay)})).json()
                   for _ in range(streams)]

        async def reader(url: str, seen: list[Sse]) -> str:
            async with client.stream("GET", url) as r:
                assert r.status_code == 200, r.status_code
                async for sse in EventSource(r).aiter_sse():
                    if sse.data:
                        seen.append(Sse(sse.event, sse.id, json.loads(sse.data)))
            return exact_or_store_unavailable(seen, count)

        seen: list[list[Sse]] = [[] for _ in range(2 * streams)]
        readers = [asyncio.ensure_future(reader(item["eventsUrl"].replace(a.url, host), seen[2 * i + j]))
                   for i, item in enumerate(created) for j, host in enumerate((a.url, b.url))]

        async def resume(item: dict[str, Any], at: int) -> tuple[int, str]:
            url = f"{b.url}/v1/streams/{item['streamId']}/events"
            status, events = await read_all(client, url, {"Last-Event-ID": f"{item['streamId']}:{at}"})
            if status != 200:
                return status, ""
            return 200, exact_or_store_unavailable(events, count, start=at + 1) if events else "empty"

        # Killed once every reader is a few events in (the stream in Redis, read from it on B).
        await until(lambda: all(len(events) >= 5 for events in seen), timeout=30,
                    what="every reader a few events in")
        resumers: list[asyncio.Future[tuple[int, str]]] = []
        killed_at = time.monotonic()
        outcome["promotion_s"] = await asyncio.to_thread(topology.fail_over, created[0]["streamId"])
        for index in range(resumes):
            item = created[index % streams]
            resumers.append(asyncio.ensure_future(resume(item, 1 + index % 20)))
            await asyncio.sleep(0.05)

        async def new_stream_works() -> float:
            while True:
                r = await client.post(b.url + STREAM, json=tokens(3, 0))
                if r.status_code == 200 and "event: end" in r.text:
                    return time.monotonic() - killed_at
                await asyncio.sleep(0.1)

        outcome["new_stream_s"] = await asyncio.wait_for(new_stream_works(), 30)
        endings = await asyncio.wait_for(asyncio.gather(*readers), 60)
        outcome["endings"] = {kind: endings.count(kind) for kind in set(endings)}
        resumed = await asyncio.wait_for(asyncio.gather(*resumers), 60)
        outcome["resume_status"] = {status: sum(1 for s, _ in resumed if s == status) for status, _ in resumed}
        # Once over, each stream replayed whole from Redis on B: its owner wrote again what the
        # new primary lacked.
        for item in created:
            status, events = await read_all(client, f"{b.url}/v1/streams/{item['streamId']}/events")
            assert status == 200 and exact_or_store_unavailable(events, count) == "exact", item["streamId"]
    keys_left = await asyncio.to_thread(topology.all_keys)
    assert keys_left and all(ttl > 0 for ttl in keys_left.values()), {k: t for k, t in keys_left.items() if t <= 0}
    return outcome


@pytest.mark.parametrize("size", [pytest.param((3, 6), id="short"),
                                  pytest.param((20, 40), id="long", marks=long_only)])
async def test_primaryKilledMidRun_thenReadersEndExactOrWithStoreUnavailable_replaysExact_andNewStreamsWithinSeconds(
    topology: Deployment, replicas: tuple[GatewayProcess, GatewayProcess], size: tuple[int, int]
) -> None:
    outcome = await _failover_run(topology, replicas, *size)
    assert outcome["new_stream_s"] < 15, outcome
    # While no primary answers, a resume on a replica that must look the stream up in Redis gets
    # 503 store_unavailable (retryable); never a 404 for a live stream.
    assert set(outcome["resume_status"]) <= {200, 204, 503}, outcome
    print(topology.mode, outcome)


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
def test_cluster_primaryOfTheAbortChannelKilled_thenADeleteOnBStillStopsTheRunOnA(
    topology: Deployment, replicas: tuple[GatewayProcess, GatewayProcess]
) -> None:
    a, b = replicas
    cluster: LocalCluster = topology.handle
    # Its shard fails over here, unless it did already in this module (the failover test above
    # killed its primary while these replicas were subscribed): the replica promoted then has no
    # replica of its own, so a second kill would leave the channel's slot without a primary.
    if cluster.primary_of(keys.ABORT_CHANNEL).port in cluster.followed_primaries():
        cluster.fail_over(keys.ABORT_CHANNEL)
    created = httpx.post(f"{a.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID, **tokens(300, 0.1)},
                         timeout=30).json()
    stream = f"{a.url}/v1/streams/{created['streamId']}/events"

    def stopped() -> bool:
        # A DELETE published while no subscription is in place is lost (pub/sub): sent again
        # until one lands, which is what a client that sees its stream go on would do. The read
        # gives up after a second: the next event of a run that goes on (seq 251) is 25 s away.
        assert httpx.delete(f"{b.url}/v1/streams/{created['streamId']}", timeout=30).status_code == 204
        after = {"Last-Event-ID": f"{created['streamId']}:250"}
        try:
            with httpx.stream("GET", stream, headers=after, timeout=httpx.Timeout(30, read=1.0)) as r:
                if r.status_code == 204:
                    return True
                for sse in EventSource(r).iter_sse():
                    if sse.data:
                        return sse.event == "error" and json.loads(sse.data)["code"] == "aborted"
        except httpx.ReadTimeout:
            pass  # still running: that DELETE was lost
        return False

    took = wait_until(stopped, timeout=20, interval=0.5, what="a DELETE on B reaches A after the failover")
    assert took < 15


# --- a standalone Redis restarted empty mid-run --------------------------------------------------
@pytest.fixture
def standalone_pair(emulators: Any) -> Iterator[tuple[GatewayProcess, GatewayProcess, RedisServer]]:
    with RedisServer() as store:
        env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": store.url,
               "FLOWISE_SSE_TOKEN_SECRET": "shared-secret"}
        with GatewayProcess(env) as a, GatewayProcess(env) as b:
            yield a, b, store


async def test_standalone_restartedEmptyMidRun_thenReadersExact_replaysExact_evenOfEndedStreams_keysExpireAtOnce_no404(
    standalone_pair: tuple[GatewayProcess, GatewayProcess, RedisServer]
) -> None:
    a, b, store = standalone_pair
    count, delay = 60, 0.1
    async with httpx.AsyncClient(timeout=60) as client:
        finished = (await client.post(a.url + STREAM, json=tokens(count, 0))).text  # over before the restart
        finished_id = finished.split("id: ", 1)[1].split(":", 1)[0]
        created = [(await client.post(f"{a.url}/v1/streams", json={"chatflowId": DEMO_CHATFLOW_ID,
                                                                   **tokens(count, delay)})).json()
                   for _ in range(3)]
        seen: list[list[Sse]] = [[] for _ in created]

        async def reader(url: str, events: list[Sse]) -> str:
            async with client.stream("GET", url) as r:
                assert r.status_code == 200
                async for sse in EventSource(r).aiter_sse():
                    if sse.data:
                        events.append(Sse(sse.event, sse.id, json.loads(sse.data)))
            return exact_or_store_unavailable(events, count)

        readers = [asyncio.ensure_future(reader(item["eventsUrl"].replace(a.url, b.url), events))
                   for item, events in zip(created, seen, strict=True)]
        await until(lambda: all(len(events) >= 5 for events in seen), timeout=30, what="readers on B 5 events in")
        store.stop()
        await asyncio.to_thread(store.__enter__)  # the same port, no data: a restart without persistence
        restarted = time.monotonic()

        async def resume(item: dict[str, Any], at: int) -> int:  # its status; not read to the end
            async with client.stream("GET", f"{b.url}/v1/streams/{item['streamId']}/events", timeout=60,
                                     headers={"Last-Event-ID": f"{item['streamId']}:{at}"}) as r:
                return r.status_code

        # Resumes on B right after the restart, while the keys are being written again: waited
        # for (the owner is alive), never a 404.
        statuses = await asyncio.gather(*(resume(item, 2) for item in created))
        assert set(statuses) <= {200}, statuses
        with redis.Redis.from_url(store.url) as check:
            def rewritten() -> bool:
                return all(check.exists(keys.events(item["streamId"]), keys.meta(item["streamId"])) == 2
                           for item in created)
            await until(rewritten, timeout=10, what="the owner wrote the streams' keys again")
            took = time.monotonic() - restarted
            for item in created:  # with their expiries at once, not when the stream ends
                assert check.ttl(keys.events(item["streamId"])) > 0 and check.ttl(keys.meta(item["streamId"])) > 0
        assert took < 6
        endings = await asyncio.wait_for(asyncio.gather(*readers), 60)
        assert set(endings) <= {"exact", "store_unavailable"}
        for item in created:  # replayed from its start on the other replica: exact, no jump
            status, events = await read_all(client, f"{b.url}/v1/streams/{item['streamId']}/events")
            assert status == 200 and exact_or_store_unavailable(events, count) == "exact"
        # A stream that had ended before the restart, still held by its owner: asked for on the
        # other replica, written again by its owner, read exact.
        status, events = await read_all(client, f"{b.url}/v1/streams/{finished_id}/events")
        assert status == 200 and exact_or_store_unavailable(events, count) == "exact"
        with redis.Redis.from_url(store.url) as check:
            ttls = {key: check.ttl(key) for key in check.scan_iter(match="fss:*")}
        assert ttls and all(ttl > 0 for ttl in ttls.values()), ttls


# --- tenants across replicas ----------------------------------------------------------------------
def test_twoKeysTwoReplicas_anotherKeysStreamIs404OnTheOtherReplica_forEvents_resume_andDelete_butItsTokenReads(
    emulators: Any
) -> None:
    with RedisServer() as store:
        env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": store.url,
               "FLOWISE_SSE_TOKEN_SECRET": "shared-secret", "FLOWISE_SSE_API_KEYS": "key-alice,key-bob"}
        alice, bob = {"Authorization": "Bearer key-alice"}, {"Authorization": "Bearer key-bob"}
        with GatewayProcess(env) as a, GatewayProcess(env) as b:
            created = httpx.post(f"{a.url}/v1/streams", headers=alice, timeout=30,
                                 json={"chatflowId": DEMO_CHATFLOW_ID, **tokens(100, 0.05)}).json()
            stream_id = created["streamId"]
            events = f"{b.url}/v1/streams/{stream_id}/events"
            for request in (lambda: httpx.get(events, headers=bob, timeout=30),
                            lambda: httpx.get(b.url + STREAM, params={"question": "q"}, timeout=30,
                                              headers={**bob, "Last-Event-ID": f"{stream_id}:1"}),
                            lambda: httpx.delete(f"{b.url}/v1/streams/{stream_id}", headers=bob, timeout=30)):
                r = request()
                assert r.status_code == 404 and r.json()["error"]["code"] == "stream_not_found", r.text
            with httpx.stream("GET", created["eventsUrl"].replace(a.url, b.url), timeout=30) as r:
                assert r.status_code == 200  # the eventsUrl token reads it, whoever holds it
                first = next(s for s in EventSource(r).iter_sse() if s.data)
                assert first.event == "start"
            with httpx.stream("GET", events, headers={**alice, "Last-Event-ID": f"{stream_id}:1"}, timeout=30) as r:
                assert r.status_code == 200
                assert next(s for s in EventSource(r).iter_sse() if s.data).id == f"{stream_id}:2"
            assert httpx.delete(f"{b.url}/v1/streams/{stream_id}", headers=alice, timeout=30).status_code == 204


# --- past the end ----------------------------------------------------------------------------------
def test_readerPastTheEndOnTheOtherReplica_isClosedWithinSecondsOfTheTerminalEvent_withoutAnError(
    emulators: Any
) -> None:
    with RedisServer() as store:
        env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": store.url,
               "FLOWISE_SSE_TOKEN_SECRET": "shared-secret"}
        with GatewayProcess(env) as a, GatewayProcess(env) as b:
            created = httpx.post(f"{a.url}/v1/streams", timeout=30,
                                 json={"chatflowId": DEMO_CHATFLOW_ID, **tokens(30, 0.1)}).json()
            stream_id = created["streamId"]

            def past_the_end() -> tuple[int, list[Any], float]:
                with httpx.stream("GET", f"{b.url}/v1/streams/{stream_id}/events", timeout=60,
                                  headers={"Last-Event-ID": f"{stream_id}:500"}) as r:
                    got = [s for s in EventSource(r).iter_sse() if s.data]
                    return r.status_code, got, time.monotonic()

            with ThreadPoolExecutor(1) as pool:
                reading = pool.submit(past_the_end)
                with httpx.stream("GET", created["eventsUrl"], timeout=60) as r:
                    events = [s for s in EventSource(r).iter_sse() if s.data]
                ended = time.monotonic()
                status, got, closed = reading.result(30)
            assert events[-1].event == "end"
            # The run was going when it came: 200, then closed once the end is known, no event.
            assert status == 200 and got == []
            assert closed - ended < 2.5


def test_resumeAtOrPastTheTerminalEvent_is204AtOnce_onBothReplicas(emulators: Any) -> None:
    with RedisServer() as store:
        env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": store.url,
               "FLOWISE_SSE_TOKEN_SECRET": "shared-secret"}
        with GatewayProcess(env) as a, GatewayProcess(env) as b:
            r = httpx.post(a.url + STREAM, json=tokens(5, 0), timeout=30)
            last = [line for line in r.text.splitlines() if line.startswith("id: ")][-1][4:]
            stream_id, seq = last.rsplit(":", 1)
            with redis.Redis.from_url(store.url) as check:
                wait_until(lambda: check.xlen(keys.events(stream_id)) == int(seq), what="the end in Redis")
            for replica in (a, b):
                for position in (int(seq), int(seq) + 1, 1000):
                    started = time.monotonic()
                    r = httpx.get(f"{replica.url}/v1/streams/{stream_id}/events", timeout=30,
                                  headers={"Last-Event-ID": f"{stream_id}:{position}"})
                    assert r.status_code == 204 and time.monotonic() - started < 1, (replica.url, position)


# --- misconfiguration, said as such ------------------------------------------------------------------
@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
def test_clusterNodeGivenAsAStandaloneUrl_thenStoreMisconfiguredNamingTheSetting_notAnOutage(
    topology: Deployment, emulators: Any, tmp_path: Any
) -> None:
    log = tmp_path / "gateway.log"
    env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": topology.handle.url}
    with GatewayProcess(env, stderr=log) as gateway:
        codes = []
        for index in range(12):  # chat locks land on every node's slots: most are MOVED away
            r = httpx.post(gateway.url + STREAM, json=tokens(2, 0, chatId=f"misconfigured-{index}"), timeout=30)
            codes.append(r.json()["error"]["code"] if r.status_code != 200 else "ok")
            if r.status_code != 200:
                assert r.status_code == 500 and "FLOWISE_SSE_REDIS_CLUSTER=true" in r.json()["error"]["message"]
        assert "store_misconfigured" in codes and "store_unavailable" not in codes, codes
    assert "names a node of a Redis Cluster: set FLOWISE_SSE_REDIS_CLUSTER=true" in log.read_text()


def test_clusterFlagOnAStandaloneRedis_andAMisspeltSetting_thenEachIsNamedAtStartUp(
    emulators: Any, tmp_path: Any
) -> None:
    log = tmp_path / "gateway.log"
    with RedisServer() as store:
        env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_REDIS_URL": store.url,
               "FLOWISE_SSE_REDIS_CLUSTER": "true", "FLOWISE_SSE_REDIS_SENTINEL": "127.0.0.1:26379"}
        with GatewayProcess(env, stderr=log) as gateway:
            r = httpx.post(gateway.url + STREAM, json=tokens(2, 0), timeout=30)
            assert r.status_code == 500 and r.json()["error"]["code"] == "store_misconfigured"
            assert "unset FLOWISE_SSE_REDIS_CLUSTER" in r.json()["error"]["message"]
    text = log.read_text()
    assert "not in cluster mode: unset FLOWISE_SSE_REDIS_CLUSTER" in text
    assert "unknown settings ignored (misspelt, or not of this version): FLOWISE_SSE_REDIS_SENTINEL" in text


@pytest.mark.parametrize("topology", ["cluster"], indirect=True)
def test_cluster_theNodeTheUrlNamesKilled_thenBothReplicasFindTheNewTopology_andANewOneGetsInThroughAnotherNode(
    topology: Deployment, emulators: Any
) -> None:
    cluster: LocalCluster = topology.handle
    followed = cluster.followed_primaries()
    named = next(node for node in cluster.nodes if node.proc.poll() is None and node.port in followed)
    env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_TOKEN_SECRET": "shared-secret",
           "FLOWISE_SSE_REDIS_URL": f"redis://127.0.0.1:{named.port}/0", "FLOWISE_SSE_REDIS_CLUSTER": "true"}
    with GatewayProcess(env) as a, GatewayProcess(env) as b:
        assert "event: end" in httpx.post(a.url + STREAM, json=tokens(3, 0), timeout=30).text
        named.kill()
        cluster.wait_healthy()

        def streams_and_resumes() -> bool:
            r = httpx.post(a.url + STREAM, json=tokens(5, 0), timeout=30)
            if r.status_code != 200:
                return False
            stream_id = r.text.split("id: ", 1)[1].split(":", 1)[0]
            resumed = httpx.get(f"{b.url}/v1/streams/{stream_id}/events", timeout=30,
                                headers={"Last-Event-ID": f"{stream_id}:2"})
            return resumed.status_code == 200 and "event: end" in resumed.text
        assert wait_until(streams_and_resumes, timeout=20, interval=0.5, what="streams after the node died") < 15
    # A gateway (re)started now: through its one dead node it cannot find the cluster, and says
    # so; naming a live node beside it, it gets in.
    other = next(node for node in cluster.nodes if node.proc.poll() is None)
    with GatewayProcess(env) as alone, GatewayProcess(
            {**env, "FLOWISE_SSE_REDIS_URL": f"{env['FLOWISE_SSE_REDIS_URL']}, redis://127.0.0.1:{other.port}/0"}) as c:
        ready = httpx.get(f"{alone.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["error"]["code"] == "store_unavailable", ready.text
        assert httpx.get(f"{c.url}/readyz", timeout=30).status_code == 200
        r = httpx.post(c.url + STREAM, json=tokens(5, 0), timeout=30)
        assert r.status_code == 200 and "event: end" in r.text, r.text


# --- a Sentinel group with passwords and TLS --------------------------------------------------------
def test_sentinel_withPasswordsAndTlsOnly_thenTwoReplicasStreamAndResume_andFollowAFailover(
    emulators: Any, tmp_path: Any
) -> None:
    with SentinelGroup(secured=True) as group:
        env = {"FLOWISE_URL": emulators("3.1.4").url, "FLOWISE_SSE_TOKEN_SECRET": "shared-secret",
               "FLOWISE_SSE_REDIS_SENTINELS": group.addresses, "FLOWISE_SSE_REDIS_SENTINEL_MASTER": group.master,
               "FLOWISE_SSE_REDIS_SENTINEL_PASSWORD": group.SENTINEL_PASSWORD, "FLOWISE_SSE_REDIS_SENTINEL_TLS": "true",
               # The primary's password and TLS; its host is the one the sentinels name.
               "FLOWISE_SSE_REDIS_URL": f"rediss://:{group.PASSWORD}@primary/0?ssl_ca_certs={group.certificate}"}
        log = tmp_path / "a.log"
        with GatewayProcess(env, log_level="info", stderr=log) as a, GatewayProcess(env) as b:
            for round_ in ("before", "after"):
                created = httpx.post(f"{a.url}/v1/streams", timeout=30,
                                     json={"chatflowId": DEMO_CHATFLOW_ID, **tokens(20, 0)}).json()
                assert "eventsUrl" in created, (created, log.read_text()[-3000:])
                r = httpx.get(created["eventsUrl"].replace(a.url, b.url), timeout=30)
                events = [line for line in r.text.splitlines() if line.startswith("event: ")]
                assert r.status_code == 200 and events[-1] == "event: end", round_
                assert events.count("event: token") == 20, round_
                if round_ == "before":
                    group.fail_over()
                    # New streams within seconds of the promotion (503 store_unavailable meanwhile).
                    until_ok = time.monotonic() + 20
                    while httpx.post(a.url + STREAM, json=tokens(2, 0), timeout=30).status_code != 200:
                        assert time.monotonic() < until_ok, "no stream within 20 s of the promotion"
            with group.client() as check:
                ttls = {key: check.ttl(key) for key in check.scan_iter(match="fss:*")}
            assert ttls and all(ttl > 0 for ttl in ttls.values()), ttls
    text = log.read_text()
    assert "FLOWISE_SSE_REDIS_SENTINEL_PASSWORD set, over TLS" in text
    assert group.PASSWORD not in text and group.SENTINEL_PASSWORD not in text
