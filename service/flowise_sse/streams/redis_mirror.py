"""Streams across replicas: every stream's frames mirrored to a Redis Stream.

The replica running a stream (its owner) keeps the frames in memory and also appends them to
`fss:{streamId}:events` with entry id `<seq>-0`; any replica can then replay and follow a
stream with XREAD from `<Last-Event-ID seq>-0`. Each replica keeps a `fss:replica:{id}` key
alive; a stream whose owner died before its last event is closed with an `error` by the first
reader to notice. `DELETE` reaches the owner over pub/sub.

Writes never drop an event. `append` only queues a frame in its stream's buffer; one writer task
sends everything queued since its last round trip as one pipeline (every stream's frames of the
last few ms, one round trip per batch, no task per token), in order, one pipeline at a time, and on failure puts the batch
back and retries. Entry ids make a retry idempotent (an id already taken is an entry already
written). A stream whose frames wait longer than `redis_timeout`, or more than
`redis_buffer_bytes` of them, is ended with `error` `store_unavailable` by the manager; that
terminal frame is queued after the others, so Redis gets the stream whole, without a hole, once
it is back. Every events key gets an expiry with its first write (`total_timeout +
stream_retention`), set to `stream_retention` with its last.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import AsyncIterator, Callable

import redis.asyncio as redis

from .. import metrics
from ..errors import StoreUnavailable, UpstreamUnavailable
from ..events import ERROR, Event
from ..settings import Settings
from .event_log import READ_BATCH_BYTES
from .sse_encoder import encode

logger = logging.getLogger("flowise_sse")

ABORT_CHANNEL = "fss:abort"
_ALIVE_TTL = 6  # seconds; refreshed every 2
WRITE_BATCH_BYTES = 1024 * 1024  # per pipeline; what is left goes in the next round trip
# Woken by a first frame, the writer lets the loop run this long before taking the batch: a round
# trip costs ~85 µs of client CPU plus ~17 µs per entry, so gathering a few ms of tokens from every
# stream into one pipeline cuts the cost per token severalfold; readers elsewhere see it 5 ms later.
WRITE_LINGER = 0.005

# One round trip, atomic: the chatId lock and the stream's owner, with their expiries.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('HSET', KEYS[2], 'owner', ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
  return 1
end
return 0
"""
# Release the lock only if this stream still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _events_key(stream_id: str) -> str:
    return f"fss:{stream_id}:events"


def _meta_key(stream_id: str) -> str:
    return f"fss:{stream_id}:meta"


class _Pending:
    """One stream's frames not yet known to be in Redis (queued, or in the pipeline in flight)."""

    __slots__ = ("items", "bytes", "since", "expiring", "failed")

    def __init__(self) -> None:
        self.items: list[tuple[int, bytes, bool]] = []  # queued, not yet sent
        self.bytes = 0  # queued + in flight
        self.since = 0.0  # when the oldest of those was queued
        self.expiring = False  # the events key got its expiry
        self.failed = False  # the manager was told to end the stream


class RedisMirror:
    def __init__(
        self, settings: Settings, on_abort: Callable[[str], None], on_failure: Callable[[str, str], None]
    ) -> None:
        self.settings = settings
        url = settings.redis_url
        timeouts = {"socket_timeout": settings.redis_timeout, "socket_connect_timeout": min(5.0, settings.redis_timeout)}
        # Readers, locks, aborts: a blocking pool, so a burst waits for a connection instead of
        # failing with "Too many connections" (redis-py's default pool).
        self.redis = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=settings.redis_max_connections, timeout=settings.redis_timeout, **timeouts))  # type: ignore[arg-type]
        # The writer and the heartbeat have connections of their own: never starved by readers.
        self.writer = redis.Redis(connection_pool=redis.BlockingConnectionPool.from_url(
            url, max_connections=2, timeout=settings.redis_timeout, **timeouts))  # type: ignore[arg-type]
        self.replica = uuid.uuid4().hex[:12]
        self._on_abort = on_abort
        self._on_failure = on_failure
        self._claim = self.redis.register_script(_CLAIM)
        self._release = self.redis.register_script(_RELEASE)
        self._pending: dict[str, _Pending] = {}
        self._dirty: dict[str, None] = {}  # streams with queued frames, in queueing order
        self._wake = asyncio.Event()
        self._in_flight = False
        self._background: list[asyncio.Task[None]] = []
        self._releases: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        # A Redis that is down at start-up is an outage like any other, not a reason to crash-loop:
        # streams answer 503 store_unavailable until it is back, and the keep-alive retries.
        try:
            await self.writer.set(f"fss:replica:{self.replica}", 1, ex=_ALIVE_TTL)
        except redis.RedisError as exc:
            metrics.redis_error("keep_alive")
            logger.error("flowise-sse: Redis (FLOWISE_SSE_REDIS_URL) did not answer at start-up (%s); "
                         "streams answer 503 store_unavailable until it does", exc)
        loop = asyncio.get_running_loop()
        self._background = [
            loop.create_task(self._keep_alive()),
            loop.create_task(self._listen_aborts()),
            loop.create_task(self._write_loop()),
        ]

    async def close(self) -> None:
        """Write what is queued (Redis gets `redis_timeout` to take it), then let go."""
        deadline = time.monotonic() + self.settings.redis_timeout
        while (self._dirty or self._in_flight or self._releases) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._pending:
            logger.error("flowise-sse: Redis did not take the last events of %d streams before shutdown",
                         len(self._pending))
        for task in [*self._background, *self._releases]:
            task.cancel()
        await asyncio.gather(*self._background, *self._releases, return_exceptions=True)
        try:
            await self.writer.delete(f"fss:replica:{self.replica}")
        except redis.RedisError:
            pass  # it expires within _ALIVE_TTL
        finally:
            await self.redis.aclose()
            await self.writer.aclose()
            await self.redis.connection_pool.disconnect()
            await self.writer.connection_pool.disconnect()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(2)
            try:
                await self.writer.set(f"fss:replica:{self.replica}", 1, ex=_ALIVE_TTL)
            except redis.RedisError as exc:
                metrics.redis_error("keep_alive")
                logger.warning("flowise-sse: Redis keep-alive failed: %s", exc)

    async def _listen_aborts(self) -> None:
        while True:  # through Redis restarts: a DELETE on another replica must still reach us
            pubsub = self.redis.pubsub()
            try:
                await pubsub.subscribe(ABORT_CHANNEL)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_abort(message["data"].decode())
            except redis.RedisError as exc:
                metrics.redis_error("abort_channel")
                logger.warning("flowise-sse: Redis abort channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()

    # --- the owner's side -----------------------------------------------------------------
    async def claim_chat(self, chat_id: str, stream_id: str) -> bool:
        """Cross-replica form of "one prediction per chatId"; registers the stream with it."""
        settings = self.settings
        lock_ttl = int(settings.total_timeout) + 60
        meta_ttl = int(settings.total_timeout + settings.stream_retention)
        try:
            return bool(await self._claim(keys=[f"fss:chat:{chat_id}", _meta_key(stream_id)],
                                          args=[stream_id, lock_ttl, self.replica, meta_ttl]))
        except redis.RedisError as exc:
            metrics.redis_error("claim_chat")
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None

    async def release_chat(self, chat_id: str, stream_id: str) -> None:
        """Release the lock, retrying while Redis is away (until the lock would have expired by
        itself, or shutdown)."""
        deadline = time.monotonic() + self.settings.total_timeout + 60
        delay = 0.1
        while True:
            try:
                await self._release(keys=[f"fss:chat:{chat_id}"], args=[stream_id])
                return
            except redis.RedisError as exc:
                metrics.redis_error("release_chat")
                if time.monotonic() >= deadline:
                    logger.warning("flowise-sse: releasing a chatId lock in Redis failed (%s)", exc)
                    return
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    def release_chat_soon(self, chat_id: str, stream_id: str) -> None:
        """`release_chat` in a tracked task: a stream's end never waits on Redis."""
        task = asyncio.get_running_loop().create_task(self.release_chat(chat_id, stream_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def append(self, stream_id: str, seq: int, frame: bytes, terminal: bool) -> None:
        """Queue one frame for the writer; never blocks, never drops."""
        pending = self._pending.get(stream_id)
        if pending is None:
            pending = self._pending[stream_id] = _Pending()
        if not pending.bytes:
            pending.since = time.monotonic()
        pending.items.append((seq, frame, terminal))
        pending.bytes += len(frame)
        self._dirty[stream_id] = None
        if not terminal and not pending.failed and pending.bytes > self.settings.redis_buffer_bytes:
            self._fail(stream_id, pending, f"more than {self.settings.redis_buffer_bytes} bytes of its events "
                                           "were waiting for Redis (FLOWISE_SSE_REDIS_BUFFER_BYTES)")
        self._wake.set()

    def _fail(self, stream_id: str, pending: _Pending, why: str) -> None:
        pending.failed = True
        # Called from inside the stream's own append: the manager acts on the next loop turn.
        asyncio.get_running_loop().call_soon(self._on_failure, stream_id, f"Redis is unavailable: {why}")

    async def _write_loop(self) -> None:
        backoff = 0.05
        while True:
            if not self._dirty:
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(WRITE_LINGER)
                continue
            batch = self._take()
            self._in_flight = True
            try:
                results = await self._write(batch)
            except (redis.RedisError, OSError) as exc:
                metrics.redis_error("mirror")
                self._put_back(batch)
                self._check_deadlines(exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            finally:
                self._in_flight = False
            if self._written(batch, results):
                backoff = 0.05
            else:  # Redis refused some writes (out of memory, say): retried like a lost connection
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)

    def _take(self) -> list[tuple[str, _Pending, list[tuple[int, bytes, bool]]]]:
        batch, size, dirty = [], 0, self._dirty
        while dirty and size < WRITE_BATCH_BYTES:
            stream_id = next(iter(dirty))
            del dirty[stream_id]
            pending = self._pending[stream_id]
            items, pending.items = pending.items, []
            batch.append((stream_id, pending, items))
            size += sum(len(item[1]) for item in items)
        return batch

    async def _write(self, batch: list[tuple[str, _Pending, list[tuple[int, bytes, bool]]]]) -> list:
        settings = self.settings
        pipe = self.writer.pipeline(transaction=False)
        for stream_id, pending, items in batch:
            key = _events_key(stream_id)
            for seq, frame, terminal in items:
                pipe.xadd(key, {"f": frame, "t": 1} if terminal else {"f": frame}, id=f"{seq}-0")
            if items[-1][2]:
                pipe.expire(key, int(settings.stream_retention))
                pipe.expire(_meta_key(stream_id), int(settings.stream_retention))
            elif not pending.expiring:
                pipe.expire(key, int(settings.total_timeout + settings.stream_retention))
        return await pipe.execute(raise_on_error=False)

    def _put_back(self, batch: list[tuple[str, _Pending, list[tuple[int, bytes, bool]]]]) -> None:
        for stream_id, pending, items in reversed(batch):
            pending.items[:0] = items
            self._dirty[stream_id] = None

    def _check_deadlines(self, exc: BaseException) -> None:
        logger.warning("flowise-sse: writing to Redis failed (%s); retrying", exc)
        now = time.monotonic()
        for stream_id, pending in self._pending.items():
            if pending.bytes and not pending.failed and now - pending.since > self.settings.redis_timeout:
                self._fail(stream_id, pending, f"its events could not be written for {self.settings.redis_timeout:g} s "
                                               "(FLOWISE_SSE_REDIS_TIMEOUT)")

    def _written(self, batch: list[tuple[str, _Pending, list[tuple[int, bytes, bool]]]], results: list) -> bool:
        """Account for a pipeline's answers; False when some entries were refused (those are
        queued again, at the front of their stream's buffer)."""
        now = time.monotonic()
        position, refused = 0, None
        for stream_id, pending, items in batch:
            done = len(items)
            for index in range(len(items)):
                result = results[position + index]
                # An id already taken: written by a retry whose answer was lost, or the stream was
                # closed by a reader that thought this replica dead. Nothing to redo either way.
                if isinstance(result, redis.ResponseError) and "equal or smaller" not in str(result):
                    done, refused = index, result
                    break
            position += len(items) + (2 if items[-1][2] else 0 if pending.expiring else 1)
            pending.bytes -= sum(len(item[1]) for item in items[:done])
            if done < len(items):
                pending.items[:0] = items[done:]
                self._dirty[stream_id] = None
                continue
            pending.expiring = True
            pending.since = now if pending.bytes else 0.0
            if items[-1][2]:
                del self._pending[stream_id]
        if refused is not None:
            metrics.redis_error("mirror")
            self._check_deadlines(refused)
        return refused is None

    async def publish_abort(self, stream_id: str) -> None:
        try:
            await self.redis.publish(ABORT_CHANNEL, stream_id)
        except redis.RedisError as exc:
            metrics.redis_error("publish_abort")
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None

    # --- any replica's side ---------------------------------------------------------------
    async def exists(self, stream_id: str) -> bool:
        try:
            return bool(await self.redis.exists(_meta_key(stream_id), _events_key(stream_id)))
        except redis.RedisError as exc:
            metrics.redis_error("exists")
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None

    async def ended_by(self, stream_id: str, seq: int) -> bool:
        """Whether the stream's terminal event is at or before `seq` (a resume has nothing left)."""
        try:
            last = await self.redis.xrevrange(_events_key(stream_id), count=1)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None
        return bool(last) and last[0][1].get(b"t") == b"1" and int(last[0][0].split(b"-")[0]) <= seq

    async def follow(self, stream_id: str, after: int, should_stop: Callable[[], bool]) -> AsyncIterator[bytes]:
        """The stream's frames after `after`, live to its terminal event. If Redis stays away
        for `redis_timeout`, an `error` `store_unavailable` carrying the last position read (a
        resume from it later loses nothing) ends the response."""
        key, last = _events_key(stream_id), after
        failing_since = 0.0
        while not should_stop():
            try:
                answer = await self.redis.xread({key: f"{last}-0"}, block=1000, count=200)
                if not answer and not await self._owner_alive(stream_id):
                    await self._close_orphan(stream_id, last)  # read back on the next turn
            except redis.RedisError as exc:
                metrics.redis_error("read")
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since < self.settings.redis_timeout:
                    await asyncio.sleep(0.2)
                    continue
                error = StoreUnavailable(f"Redis did not answer for {self.settings.redis_timeout:g} s ({exc}); "
                                         "resume later from this event's id")
                yield encode(stream_id, last, Event(ERROR, error.to_dict()))
                return
            failing_since = 0.0
            if not answer:
                continue
            entries = answer[0][1]
            last = int(entries[-1][0].split(b"-")[0])
            batch: list[bytes] = []
            size = 0
            for _, fields in entries:  # writes of at most READ_BATCH_BYTES, as from memory
                frame = fields[b"f"]
                if batch and size + len(frame) > READ_BATCH_BYTES:
                    yield b"".join(batch)
                    batch, size = [], 0
                batch.append(frame)
                size += len(frame)
            yield b"".join(batch) if len(batch) > 1 else batch[0]
            if entries[-1][1].get(b"t") == b"1":
                return

    async def _owner_alive(self, stream_id: str) -> bool:
        owner = await self.redis.hget(_meta_key(stream_id), "owner")
        return owner is not None and bool(await self.redis.exists(f"fss:replica:{owner.decode()}"))

    async def _close_orphan(self, stream_id: str, last: int) -> None:
        error = UpstreamUnavailable("the gateway replica running this stream stopped before it ended")
        frame = encode(stream_id, last + 1, Event(ERROR, error.to_dict()))
        # The first reader to notice writes it (the others' XADD fails on the taken id); the
        # expiry is set either way, in the same transaction.
        pipe = self.redis.pipeline(transaction=True)
        pipe.xadd(_events_key(stream_id), {"f": frame, "t": 1}, id=f"{last + 1}-0")
        pipe.expire(_events_key(stream_id), int(self.settings.stream_retention))
        added = (await pipe.execute(raise_on_error=False))[0]
        if isinstance(added, redis.ResponseError) and "equal or smaller" not in str(added):
            raise added  # Redis refuses writes: the reader's `redis_timeout` then applies
