"""Streams across replicas: every stream's frames mirrored to a Redis Stream.

The replica running a stream (its owner) keeps the frames in memory and also appends them to its
events key in Redis; any replica can then replay and follow the stream from any `Last-Event-ID`.
A stream whose owner died before its last event is closed with an `error` by the first reader to
notice, and `DELETE` reaches the owner over pub/sub. No event is ever dropped: a stream whose
events Redis does not take in time ends with `error` `store_unavailable` instead.

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

import redis.asyncio as redis

from ..errors import StoreUnavailable
from ..settings import Settings
from .redis.aborts import AbortChannel
from .redis.calls import connect, store_call
from .redis.claims import ChatClaims
from .redis.reader import MirrorReader
from .redis.replicas import ReplicaHeartbeat
from .redis.responses import ResponseRecords
from .redis.writer import MirrorWriter

logger = logging.getLogger("flowise_sse")


class RedisMirror:
    def __init__(
        self, settings: Settings, on_abort: Callable[[str], None], on_failure: Callable[[str, str], None]
    ) -> None:
        self.settings = settings
        self.replica = uuid.uuid4().hex[:12]
        # Readers (one connection each while waiting), chat locks and the abort subscription.
        shared = connect(settings, settings.redis_max_connections)
        # The writer and the heartbeat have connections of their own: never starved by readers.
        own = connect(settings, 2)
        self._clients = (shared, own)
        self._heartbeat = ReplicaHeartbeat(own, self.replica)
        self._writer = MirrorWriter(own, settings, on_failure)
        self._reader = MirrorReader(shared, settings)
        self._claims = ChatClaims(shared, settings)
        self._aborts = AbortChannel(shared, on_abort)
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
        # streams answer 503 store_unavailable until it is back, and the heartbeat retries.
        try:
            await self._heartbeat.beat()
        except redis.RedisError as exc:
            logger.error("flowise-sse: Redis (FLOWISE_SSE_REDIS_URL) did not answer at start-up (%s); "
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
                await client.connection_pool.disconnect()

    # --- the owner's side -----------------------------------------------------------------
    async def claim_chat(self, chat_id: str, stream_id: str) -> bool:
        """Cross-replica form of "one prediction per chatId"; registers the stream with it."""
        return await self._claims.claim(chat_id, stream_id, self.replica)

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
    async def exists(self, stream_id: str) -> bool:
        return await self._reader.exists(stream_id)

    async def ended_by(self, stream_id: str, seq: int) -> bool:
        """Whether the stream's terminal event is at or before `seq` (a resume has nothing left)."""
        return await self._reader.ended_by(stream_id, seq)

    def follow(self, stream_id: str, after: int, should_stop: Callable[[], bool]) -> AsyncGenerator[bytes, None]:
        """The stream's frames after `after`, live to its terminal event (see `MirrorReader.follow`)."""
        return self._reader.follow(stream_id, after, should_stop)
