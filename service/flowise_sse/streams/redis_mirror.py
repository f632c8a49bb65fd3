"""Streams across replicas: every stream's frames mirrored to a Redis Stream.

The replica running a stream (its owner) keeps the frames in memory and also appends them to its
events key in Redis; any replica can then replay and follow the stream from any `Last-Event-ID`.
A stream whose owner died before its last event is closed with an `error` by the first reader to
notice, and `DELETE` reaches the owner over pub/sub. No event is ever dropped: a stream whose
events Redis does not take in time ends with `error` `store_unavailable` instead, and what a
failover lost, the owner writes again from memory.

Redis is standalone, a Cluster or a primary behind Sentinel (`redis/calls.py`); the promise made
when a primary fails over is in docs/operations/redis.md ("When the primary fails").

`RedisMirror` is what the stream manager sees; each of its parts lives in `streams/redis/`:
the writer (`writer.py`), the reader (`reader.py`), the heartbeat (`replicas.py`), the chat
lock (`claims.py`), the abort channel (`aborts.py`), the Responses API's records
(`responses.py`), on the keys of `keys.py`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import StoreUnavailable
from ..settings import Settings
from .redis import keys
from .redis.aborts import AbortChannel
from .redis.calls import REDIS_ERRORS, connect, misconfiguration, store_call
from .redis.claims import ChatClaims
from .redis.reader import LOSS_GRACE, MirrorReader
from .redis.replicas import ReplicaHeartbeat
from .redis.responses import ResponseRecords
from .redis.writer import MirrorWriter

if TYPE_CHECKING:
    from .event_log import StreamLog

logger = logging.getLogger("flowise_sse")


@dataclass(frozen=True, slots=True)
class RemoteStream:
    """A stream Redis holds: whose it is."""

    tenant: str | None  # the gateway key that started it (None: an open gateway's)


class RedisMirror:
    def __init__(
        self, settings: Settings, on_abort: Callable[[str], None], on_failure: Callable[[str, str], None],
        logs: Callable[[str], StreamLog | None] = lambda stream_id: None,
    ) -> None:
        """`logs`: this replica's log of a stream, from which the writer repairs what Redis lost."""
        self.settings = settings
        self.replica = uuid.uuid4().hex[:keys.TAG_LENGTH]
        # Readers (one connection each while waiting), chat locks and the abort subscription.
        shared = connect(settings, settings.redis_max_connections)
        # The writer and the heartbeat have connections of their own: never starved by readers.
        own = connect(settings, 2)
        self._clients = (shared, own)
        self._writer = MirrorWriter(own, settings, self.replica, on_failure, logs)
        self._heartbeat = ReplicaHeartbeat(own, self.replica, self._writer.verify_all)
        # A cluster client's pools refuse past their size rather than wait: readers wait here.
        slots = asyncio.Semaphore(max(1, settings.redis_max_connections - 1)) if settings.redis_cluster else None
        self._aborts = AbortChannel(shared, on_abort, self._writer.rewrite)
        self._reader = MirrorReader(shared, settings, slots, self._aborts.ask_repair)
        self._claims = ChatClaims(shared, settings)
        self.responses = ResponseRecords(shared, settings)  # the Responses API's records

    async def ping(self, timeout: float) -> None:
        """Raises `StoreUnavailable` unless Redis answers within `timeout` (readiness: a replica
        whose Redis is away refuses every stream, so it must not say it is ready)."""
        try:
            with store_call("ping"):
                async with asyncio.timeout(timeout):
                    await self._clients[1].ping()
        except TimeoutError:
            raise StoreUnavailable(f"Redis did not answer within {timeout:g} s") from None

    async def open(self) -> None:
        # A Redis that is down at start-up is an outage like any other, not a reason to crash-loop:
        # streams answer 503 store_unavailable until it is back, and the heartbeat retries. A Redis
        # of another kind than the settings say is a mistake to fix: said as such.
        try:
            if not self.settings.redis_cluster and not self.settings.redis_sentinels:
                info = await self._clients[1].info("cluster")
                if info.get("cluster_enabled"):
                    logger.error("flowise-sse: FLOWISE_SSE_REDIS_URL names a node of a Redis Cluster: set "
                                 "FLOWISE_SSE_REDIS_CLUSTER=true (until then, most streams fail with "
                                 "store_misconfigured)")
            await self._heartbeat.beat()
        except REDIS_ERRORS as exc:
            if (wrong := misconfiguration(exc)) is not None:
                logger.error("flowise-sse: %s", wrong)
            else:
                logger.error("flowise-sse: Redis did not answer at start-up (%s); "
                             "streams answer 503 store_unavailable until it does", exc)
        self._heartbeat.start()
        self._aborts.start()
        self._writer.start()

    async def close(self) -> None:
        """Write what is queued (Redis gets `redis_timeout` to take it), then let go."""
        deadline = time.monotonic() + self.settings.redis_timeout
        while (self._writer.busy or self._claims.releasing) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._writer.unfinished:
            logger.error("flowise-sse: Redis did not take the last events of %d streams before shutdown",
                         self._writer.unfinished)
        try:
            await asyncio.gather(self._writer.stop(), self._claims.stop(), self._aborts.stop(),
                                 self._heartbeat.stop())
        finally:
            for client in self._clients:
                await client.aclose()
                # A client made on a pool it was given does not close that pool itself.
                if (pool := getattr(client, "connection_pool", None)) is not None:
                    await pool.disconnect()

    # --- the owner's side -----------------------------------------------------------------
    def new_stream_id(self) -> str:
        """A stream id (32 hex digits) that starts with this replica's id, so that a replica
        that finds no trace of it in Redis can tell whether its owner is alive to write it again."""
        return self.replica + uuid.uuid4().hex[keys.TAG_LENGTH:]

    async def claim_chat(self, chat_id: str, holder: str, tenant: str | None = None, *, stream: bool = True) -> bool:
        """Cross-replica form of "one prediction per chatId"; registers the stream `holder` with
        it, as `tenant`'s (`stream` False: a prediction's claim, no stream to register)."""
        return await self._claims.claim(chat_id, holder, self.replica, tenant if stream else None, stream=stream)

    async def release_chat(self, chat_id: str, stream_id: str) -> None:
        await self._claims.release(chat_id, stream_id)

    def release_chat_soon(self, chat_id: str, stream_id: str) -> None:
        """`release_chat` in a tracked task: a stream's end never waits on Redis."""
        self._claims.release_soon(chat_id, stream_id)

    def append(self, stream_id: str, seq: int, frame: bytes, terminal: bool) -> None:
        """Queue one frame for the writer; never blocks, never drops."""
        self._writer.append(stream_id, seq, frame, terminal)

    async def publish_abort(self, stream_id: str) -> None:
        await self._aborts.publish(stream_id)

    # --- any replica's side ---------------------------------------------------------------
    async def lookup(self, stream_id: str) -> RemoteStream | None:
        """The stream as Redis knows it, or None. A stream missing from Redis, or missing its
        meta, whose owner may write it again after a failover (the owner is alive, or this replica
        saw Redis lose data) is asked for (a finished stream is written again only when asked) and
        waited for, up to `LOSS_GRACE`: a stream its owner still holds is not a 404."""
        deadline = time.monotonic() + LOSS_GRACE
        asked = False
        while True:
            meta = await self._reader.meta(stream_id)
            if meta:
                tenant = meta.get(keys.TENANT_FIELD.encode(), b"").decode()
                return RemoteStream(tenant or None)
            if time.monotonic() >= deadline or not await self._may_be_repaired(stream_id):
                return None
            if not asked:  # a finished stream still in its owner's memory: written again
                asked = True
                await self._aborts.ask_repair(stream_id)
            await asyncio.sleep(0.2)

    async def _may_be_repaired(self, stream_id: str) -> bool:
        """Whether the stream's owner may be writing it again: it is alive, or Redis lost data
        lately (this replica's own heartbeat key went missing: then the owner's did too, and
        comes back within `REPLICA_REFRESH`)."""
        if time.monotonic() - self._heartbeat.lost_at < LOSS_GRACE:
            return True
        try:
            return (await self._heartbeat.alive(stream_id[:keys.TAG_LENGTH])
                    or not await self._heartbeat.alive(self.replica))
        except REDIS_ERRORS:
            return False

    async def ended_by(self, stream_id: str, seq: int) -> bool:
        """Whether the stream's terminal event is at or before `seq` (a resume has nothing left)."""
        return await self._reader.ended_by(stream_id, seq)

    def follow(self, stream_id: str, after: int, should_stop: Callable[[], bool]) -> AsyncGenerator[bytes, None]:
        """The stream's frames after `after`, live to its terminal event (see `MirrorReader.follow`)."""
        return self._reader.follow(stream_id, after, should_stop)
