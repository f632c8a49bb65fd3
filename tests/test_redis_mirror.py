"""The Redis mirror's parts on a real redis-server: the writer's accounting of what Redis took,
the taken-id answer told from every other refusal, and every call reported to the metrics."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager

import pytest
import redis
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from flowise_sse.errors import StoreUnavailable
from flowise_sse.settings import Settings
from flowise_sse.streams.event_log import StreamLog
from flowise_sse.streams.redis import keys
from flowise_sse.streams.redis.calls import connect, is_taken_id, redis_call
from flowise_sse.streams.redis.writer import MirrorWriter
from flowise_sse.streams.redis_mirror import RedisMirror

from .helpers import until
from .test_redis import redis_url  # noqa: F401  (the module's redis-server fixture)

pytestmark = pytest.mark.redis


def settings(url: str, **overrides) -> Settings:
    return Settings(flowise_url="http://127.0.0.1:9", redis_url=url, **{"redis_timeout": 30.0, **overrides})


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def store(redis_url):  # noqa: F811
    with redis.Redis.from_url(redis_url) as client:
        yield client


# --- the writer's accounting ----------------------------------------------------------------------
@asynccontextmanager
async def commands_seen(url: str) -> AsyncIterator[list[list[str]]]:
    """Every command redis-server runs meanwhile (MONITOR), as its words."""
    client = aioredis.Redis.from_url(url)
    seen: list[list[str]] = []
    async with client.monitor() as monitor:  # monitoring once entered: MONITOR answered OK

        async def collect() -> None:
            async for command in monitor.listen():
                seen.append(command["command"].split())

        task = asyncio.get_running_loop().create_task(collect())
        try:
            yield seen
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    await client.aclose()


def xadd_ids(seen: list[list[str]], stream_id: str) -> list[str]:
    """The entry ids of the XADDs run on a stream's events key (by the writer's script), in order."""
    return [words[2] for words in seen if words[0].upper() == "XADD" and words[1] == keys.events(stream_id)]


def script_calls(seen: list[list[str]], stream_id: str) -> int:
    """How many times the writer's script was called on a stream's keys."""
    return sum(1 for words in seen if words[0].upper() == "EVALSHA" and keys.events(stream_id) in words)


@asynccontextmanager
async def running_writer(
    config: Settings, failures: list[str], logs: Callable[[str], StreamLog | None] = lambda stream_id: None
) -> AsyncIterator[MirrorWriter]:
    """A writer on a client of its own; the streams it reports to `on_failure` go to `failures`;
    `logs`: the streams' logs in memory, which it repairs from."""
    client = connect(config, 2)
    writer = MirrorWriter(client, config, "replica", lambda stream_id, why: failures.append(stream_id), logs)
    writer.start()
    try:
        yield writer
    finally:
        await writer.stop()
        await client.aclose()
        await client.connection_pool.disconnect()


def append_all(writer: MirrorWriter, stream_id: str, count: int, terminal: bool = True) -> None:
    for seq in range(1, count + 1):
        writer.append(stream_id, seq, f"{stream_id} frame {seq}".encode(), terminal and seq == count)


def frames_in_redis(store: redis.Redis, stream_id: str) -> list[tuple[str, bytes, bool]]:
    return [(entry_id.decode(), fields[b"f"], fields.get(b"t") == b"1")
            for entry_id, fields in store.xrange(keys.events(stream_id))]


def expected(stream_id: str, count: int) -> list[tuple[str, bytes, bool]]:
    return [(f"{seq}-0", f"{stream_id} frame {seq}".encode(), seq == count) for seq in range(1, count + 1)]



async def test_writer_whenRedisRefusesOneStreamOfACall_thenOnlyThatStreamsFramesAreSentAgain_andBothEndWhole(
    redis_url, store  # noqa: F811
):
    config = settings(redis_url)
    tag = uuid.uuid4().hex[:keys.TAG_LENGTH]  # one replica's streams: one slot, one script call
    taken, refused = f"{tag}taken", f"{tag}refused"
    store.set(keys.events(refused), "not a stream")  # its script fails with WRONGTYPE, the other's does not
    errors_before = metric("flowise_sse_redis_errors_total", operation="mirror")
    failures: list[str] = []
    async with commands_seen(redis_url) as seen, running_writer(config, failures) as writer:
        append_all(writer, taken, 3)  # one loop turn: one batch for both streams
        append_all(writer, refused, 3)
        await until(lambda: script_calls(seen, refused) >= 3, timeout=10,
                    what="the refused stream's frames sent a third time")
        assert frames_in_redis(store, taken) == expected(taken, 3)
        store.delete(keys.events(refused))  # Redis takes its writes again
        await until(lambda: not writer.busy and writer.unfinished == 0, timeout=10, what="every frame written")
    assert xadd_ids(seen, taken) == ["1-0", "2-0", "3-0"] and script_calls(seen, taken) == 1  # never sent again
    assert xadd_ids(seen, refused) == ["1-0", "2-0", "3-0"]  # refused whole each time, then added once
    assert frames_in_redis(store, refused) == expected(refused, 3)
    for stream_id in (taken, refused):
        assert 0 < store.ttl(keys.events(stream_id)) <= keys.ended_ttl(config)
    assert failures == []  # within redis_timeout: no stream ended
    assert metric("flowise_sse_redis_errors_total", operation="mirror") - errors_before >= 2


async def test_writer_whenAnEntryIsAlreadyInRedis_thenItIsNotAddedAgain_andTheRestFollowsIt(
    redis_url, store  # noqa: F811
):
    stream_id = unique("retried")
    # As a round trip whose answer was lost leaves it: the entry is in, the writer never heard so.
    store.xadd(keys.events(stream_id), {"f": b"written by the lost round trip"}, id="1-0")
    failures: list[str] = []
    async with commands_seen(redis_url) as seen, running_writer(settings(redis_url), failures) as writer:
        append_all(writer, stream_id, 3)
        await until(lambda: not writer.busy and writer.unfinished == 0, timeout=10, what="every frame written")
    assert xadd_ids(seen, stream_id) == ["2-0", "3-0"]
    assert frames_in_redis(store, stream_id) == [("1-0", b"written by the lost round trip", False),
                                                 *expected(stream_id, 3)[1:]]
    assert failures == []


async def test_writer_whenRedisRefusesTheExpiry_thenTheShareGoesAgain_untilTheKeysHaveOne_andNoFrameTwice(
    redis_url, store  # noqa: F811
):
    user = unique("no-expire")
    store.acl_setuser(user, enabled=True, passwords=["+pw"], keys=["*"], categories=["+@all"], commands=["-expire"])
    config = settings(redis_url.replace("redis://", f"redis://{user}:pw@"))
    stream_id = unique("expiry")
    failures: list[str] = []
    try:
        async with commands_seen(redis_url) as seen, running_writer(config, failures) as writer:
            append_all(writer, stream_id, 2, terminal=False)
            await until(lambda: script_calls(seen, stream_id) >= 3, timeout=10, what="the share sent again")
            assert store.ttl(keys.events(stream_id)) == -1  # in, without an expiry yet
            store.acl_setuser(user, enabled=True, commands=["+expire"])
            await until(lambda: not writer.busy, timeout=10, what="the expiry taken")
            assert 0 < store.ttl(keys.events(stream_id)) <= keys.running_ttl(config)
            assert 0 < store.ttl(keys.meta(stream_id)) <= keys.running_ttl(config)
            writer.append(stream_id, 3, f"{stream_id} frame 3".encode(), True)
            await until(lambda: not writer.busy and writer.unfinished == 0, timeout=10, what="the last frame written")
    finally:
        store.acl_deluser(user)
    assert xadd_ids(seen, stream_id) == ["1-0", "2-0", "3-0"]
    assert frames_in_redis(store, stream_id) == expected(stream_id, 3)
    assert 0 < store.ttl(keys.events(stream_id)) <= keys.ended_ttl(config)
    assert failures == []


# --- what a failover loses, the owner writes again ---------------------------------------------
class Logs:
    """Streams' logs in memory as the writer sees them: their frames, by stream."""

    def __init__(self) -> None:
        self.frames: dict[str, list[bytes]] = {}

    def __call__(self, stream_id: str) -> StreamLog | None:
        if stream_id not in self.frames:
            return None
        log = StreamLog.__new__(StreamLog)
        log.frames, log.owner = self.frames[stream_id], "tenant-a"
        return log

    def append(self, writer: MirrorWriter, stream_id: str, seq: int, terminal: bool = False) -> None:
        frame = f"{stream_id} frame {seq}".encode()
        self.frames.setdefault(stream_id, []).append(frame)
        writer.append(stream_id, seq, frame, terminal)


def lose_after(store: redis.Redis, stream_id: str, seq: int) -> None:
    """The stream's events key as a replica that had only its first `seq` entries has it once
    promoted: those entries, no expiry."""
    key = keys.events(stream_id)
    kept = store.xrange(key, max=f"{seq}-0")
    store.delete(key)
    for entry_id, fields in kept:
        store.xadd(key, fields, id=entry_id)


async def test_writer_whenRedisLosesAStreamsEntriesAndMeta_thenTheOwnerWritesThemAgainFromMemory_withTheirExpiries(
    redis_url, store  # noqa: F811
):
    config = settings(redis_url)
    stream_id, logs, failures = unique("lost"), Logs(), []
    async with running_writer(config, failures, logs) as writer:
        for seq in (1, 2, 3):
            logs.append(writer, stream_id, seq)
        await until(lambda: not writer.busy, timeout=10, what="three frames written")
        # A failover to a replica that had only the first entry: the tail and the meta are gone.
        lose_after(store, stream_id, 1)
        store.delete(keys.meta(stream_id))
        logs.append(writer, stream_id, 4)
        await until(lambda: not writer.busy, timeout=10, what="the fourth frame and the repair written")
        assert frames_in_redis(store, stream_id) == expected(stream_id, 5)[:4] and writer.repaired == 2
        assert store.hgetall(keys.meta(stream_id)) == {b"owner": b"replica", b"tenant": b"tenant-a"}
        assert 0 < store.ttl(keys.events(stream_id)) <= keys.running_ttl(config)
        assert 0 < store.ttl(keys.meta(stream_id)) <= keys.running_ttl(config)
        # Lost whole while quiet (a primary restarted empty): the check of quiet streams repairs it.
        store.delete(keys.events(stream_id), keys.meta(stream_id))
        await until(lambda: store.xlen(keys.events(stream_id)) == 4, timeout=10,
                    what="the quiet stream written again by its periodic check")
        logs.append(writer, stream_id, 5, terminal=True)
        await until(lambda: writer.unfinished == 0, timeout=10, what="the stream's end written")
    assert frames_in_redis(store, stream_id) == expected(stream_id, 5)
    assert 0 < store.ttl(keys.events(stream_id)) <= keys.ended_ttl(config)
    assert 0 < store.ttl(keys.meta(stream_id)) <= keys.ended_ttl(config)
    assert failures == []


async def test_writer_whenRedisLostEntriesNoLongerInMemory_thenItEndsInRedisWithStoreUnavailable_rightAfterWhatItHolds(
    redis_url, store  # noqa: F811
):
    config = settings(redis_url)
    stream_id, logs, failures = unique("evicted"), Logs(), []
    async with running_writer(config, failures, logs) as writer:
        for seq in (1, 2):
            logs.append(writer, stream_id, seq)
        await until(lambda: not writer.busy, timeout=10, what="two frames written")
        lose_after(store, stream_id, 1)
        del logs.frames[stream_id]  # the finished stream was evicted from memory meanwhile
        writer.append(stream_id, 3, f"{stream_id} frame 3".encode(), True)
        await until(lambda: writer.unfinished == 0, timeout=10, what="the stream ended in Redis")
    entries = frames_in_redis(store, stream_id)
    assert entries[0] == expected(stream_id, 2)[0] and [entry[0] for entry in entries] == ["1-0", "2-0"]
    assert entries[1][2] and b"store_unavailable" in entries[1][1] and f"id: {stream_id}:2".encode() in entries[1][1]
    assert 0 < store.ttl(keys.events(stream_id)) <= keys.ended_ttl(config)


# --- the taken-id answer ----------------------------------------------------------------------------
async def test_isTakenId_trueForAnXaddOnATakenId_alsoInPipelinesAndTransactions_falseForAnyOtherAnswer(
    redis_url, store  # noqa: F811
):
    key, text_key = keys.events(unique("ids")), keys.events(unique("text"))
    store.xadd(key, {"f": b"x"}, id="5-0")
    store.set(text_key, "not a stream")
    client = aioredis.Redis.from_url(redis_url)

    async def answer(*args: str) -> object:
        try:
            return await client.execute_command("XADD", *args)
        except redis.RedisError as exc:
            return exc

    try:
        assert is_taken_id(await answer(key, "5-0", "f", "x"))  # the same id
        assert is_taken_id(await answer(key, "4-0", "f", "x"))  # a smaller one
        pipeline = client.pipeline(transaction=False)
        pipeline.xadd(key, {"f": b"x"}, id="5-0")
        pipeline.xadd(key, {"f": b"x"}, id="6-0")
        first, second = await pipeline.execute(raise_on_error=False)
        assert is_taken_id(first) and not is_taken_id(second) and second == b"6-0"
        transaction = client.pipeline(transaction=True)  # the orphan's closing error goes this way
        transaction.xadd(key, {"f": b"x"}, id="6-0")
        transaction.expire(key, 60)
        added, _ = await transaction.execute(raise_on_error=False)
        assert is_taken_id(added)

        others = [await answer(keys.events(unique("zero")), "0-0", "f", "x"),  # ERR, another text
                  await answer(key, "not-an-id", "f", "x"),
                  await answer(text_key, "7-0", "f", "x")]  # WRONGTYPE
        store.config_set("maxmemory-policy", "noeviction")
        store.config_set("maxmemory", 1)
        try:
            others.append(await answer(key, "8-0", "f", "x"))  # OOM
        finally:
            store.config_set("maxmemory", 0)
        assert all(isinstance(other, redis.ResponseError) for other in others), others
        assert [is_taken_id(other) for other in others] == [False] * 4
    finally:
        await client.aclose()


# --- every call reported --------------------------------------------------------------------------
async def test_redisCall_whenTheCallFails_thenItsOperationsErrorCountsOne_andEveryCallIsTimed(
    redis_url, store  # noqa: F811
):
    text_key = unique("text")
    store.set(text_key, "not a stream")
    op = unique("probe")
    client = aioredis.Redis.from_url(redis_url)
    try:
        with pytest.raises(redis.ResponseError), redis_call(op):
            await client.xadd(text_key, {"f": b"x"})
        assert metric("flowise_sse_redis_errors_total", operation=op) == 1
        assert metric("flowise_sse_redis_call_seconds_count", operation=op) == 1
        with redis_call(op):
            await client.ping()
        assert metric("flowise_sse_redis_errors_total", operation=op) == 1
        assert metric("flowise_sse_redis_call_seconds_count", operation=op) == 2

        blocking = unique("blocking")
        with pytest.raises(redis.ResponseError), redis_call(blocking, timed=False):
            await client.xread({text_key: "0-0"}, block=100)
        assert metric("flowise_sse_redis_errors_total", operation=blocking) == 1
        assert metric("flowise_sse_redis_call_seconds_count", operation=blocking) == 0

        # A call cancelled (a reader leaving, shutdown) is not a Redis failure.
        cancelled = unique("cancelled")

        async def wait_forever() -> None:
            with redis_call(cancelled, timed=False):
                await client.xread({keys.events(unique("quiet")): "$"}, block=0)

        reading = asyncio.get_running_loop().create_task(wait_forever())
        await until(lambda: any(c["cmd"] == "xread" and "b" in c["flags"] for c in store.client_list()),
                    what="the XREAD blocked in redis-server")
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)
        assert metric("flowise_sse_redis_errors_total", operation=cancelled) == 0
    finally:
        await client.aclose()


async def test_mirror_whenRedisRefusesAReadersCalls_thenEachIsCountedUnderItsOwnOperation(
    redis_url, store  # noqa: F811
):
    mirror = RedisMirror(settings(redis_url, redis_timeout=2.0), lambda stream_id: None, lambda stream_id, why: None)
    await mirror.open()
    try:
        ended = unique("ended")
        store.set(keys.events(ended), "not a stream")
        before = metric("flowise_sse_redis_errors_total", operation="ended_by")
        with pytest.raises(StoreUnavailable):
            await mirror.ended_by(ended, 1)
        assert metric("flowise_sse_redis_errors_total", operation="ended_by") - before == 1

        # A quiet stream whose meta cannot be read: the reader gives up after redis_timeout, each
        # failed look-up counted as such.
        orphan = unique("orphan")
        store.set(keys.meta(orphan), "not a hash")
        before = metric("flowise_sse_redis_errors_total", operation="when_quiet")
        async with aclosing(mirror.follow(orphan, 0, lambda: False)) as frames:
            got = [frame async for frame in frames]
        assert len(got) == 1 and b"store_unavailable" in got[0]
        assert metric("flowise_sse_redis_errors_total", operation="when_quiet") - before >= 2
    finally:
        await mirror.close()
