"""Streams across replicas: every stream's frames mirrored to a Redis Stream.

The replica running a stream (its owner) keeps the frames in memory and also appends them, in
pipelined batches, to `fss:{streamId}:events` with entry id `<seq>-0`; any replica can then
replay and follow a stream with XREAD from `<Last-Event-ID seq>-0`. Each replica keeps a
`fss:replica:{id}` key alive; a stream whose owner died before its last event is closed with an
`error` by the first reader to notice. `DELETE` reaches the owner over pub/sub.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import AsyncIterator, Callable

import redis.asyncio as redis

from ..errors import StoreUnavailable, UpstreamUnavailable
from ..events import ERROR, Event
from ..settings import Settings
from .sse_encoder import encode

logger = logging.getLogger("flowise_sse")

ABORT_CHANNEL = "fss:abort"
_ALIVE_TTL = 6  # seconds; refreshed every 2


def _events_key(stream_id: str) -> str:
    return f"fss:{stream_id}:events"


def _meta_key(stream_id: str) -> str:
    return f"fss:{stream_id}:meta"


class RedisMirror:
    def __init__(self, settings: Settings, on_abort: Callable[[str], None]) -> None:
        self.settings = settings
        self.redis = redis.from_url(settings.redis_url)  # type: ignore[arg-type]
        self.replica = uuid.uuid4().hex[:12]
        self._on_abort = on_abort
        self._pending: dict[str, list[tuple[int, bytes, bool]]] = {}
        self._flushers: dict[str, asyncio.Task[None]] = {}
        self._background: list[asyncio.Task[None]] = []

    async def open(self) -> None:
        await self.redis.set(f"fss:replica:{self.replica}", 1, ex=_ALIVE_TTL)
        loop = asyncio.get_running_loop()
        self._background = [loop.create_task(self._keep_alive()), loop.create_task(self._listen_aborts())]

    async def close(self) -> None:
        await asyncio.gather(*self._flushers.values(), return_exceptions=True)
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await self.redis.delete(f"fss:replica:{self.replica}")
        finally:
            await self.redis.aclose()

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(2)
            try:
                await self.redis.set(f"fss:replica:{self.replica}", 1, ex=_ALIVE_TTL)
            except redis.RedisError as exc:
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
                logger.warning("flowise-sse: Redis abort channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()

    # --- the owner's side -----------------------------------------------------------------
    async def claim_chat(self, chat_id: str, stream_id: str) -> bool:
        """Cross-replica form of "one prediction per chatId"; registers the stream with it."""
        ttl = int(self.settings.total_timeout) + 60
        try:
            if not await self.redis.set(f"fss:chat:{chat_id}", stream_id, nx=True, ex=ttl):
                return False
            meta = _meta_key(stream_id)
            await self.redis.hset(meta, mapping={"owner": self.replica})
            await self.redis.expire(meta, int(self.settings.total_timeout + self.settings.stream_retention))
            return True
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None

    async def release_chat(self, chat_id: str, stream_id: str) -> None:
        key = f"fss:chat:{chat_id}"
        try:
            if await self.redis.get(key) == stream_id.encode():
                await self.redis.delete(key)
        except redis.RedisError as exc:  # the lock expires by itself
            logger.warning("flowise-sse: releasing chatId %s in Redis failed: %s", chat_id, exc)

    def append(self, stream_id: str, seq: int, frame: bytes, terminal: bool) -> None:
        """Queue one frame; a flusher per stream writes what queued up as one pipeline."""
        self._pending.setdefault(stream_id, []).append((seq, frame, terminal))
        if stream_id not in self._flushers:
            task = asyncio.get_running_loop().create_task(self._flush(stream_id))
            self._flushers[stream_id] = task

    async def _flush(self, stream_id: str) -> None:
        key = _events_key(stream_id)
        try:
            while batch := self._pending.pop(stream_id, None):
                pipe = self.redis.pipeline(transaction=False)
                for seq, frame, terminal in batch:
                    pipe.xadd(key, {"f": frame, "t": int(terminal)}, id=f"{seq}-0")
                    if terminal:
                        pipe.expire(key, int(self.settings.stream_retention))
                        pipe.expire(_meta_key(stream_id), int(self.settings.stream_retention))
                await pipe.execute()
        except redis.RedisError as exc:
            logger.error("flowise-sse: mirroring stream %s to Redis failed: %s", stream_id, exc)
        finally:
            self._flushers.pop(stream_id, None)

    async def publish_abort(self, stream_id: str) -> None:
        try:
            await self.redis.publish(ABORT_CHANNEL, stream_id)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None

    # --- any replica's side ---------------------------------------------------------------
    async def exists(self, stream_id: str) -> bool:
        try:
            return bool(await self.redis.exists(_meta_key(stream_id), _events_key(stream_id)))
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None

    async def ended_by(self, stream_id: str, seq: int) -> bool:
        """Whether the stream's terminal event is at or before `seq` (a resume has nothing left)."""
        try:
            last = await self.redis.xrevrange(_events_key(stream_id), count=1)
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis did not answer: {exc}") from None
        return bool(last) and last[0][1].get(b"t") == b"1" and int(last[0][0].split(b"-")[0]) <= seq

    async def follow(self, stream_id: str, after: int, should_stop: Callable[[], bool]) -> AsyncIterator[bytes]:
        key, last = _events_key(stream_id), after
        while not should_stop():
            answer = await self.redis.xread({key: f"{last}-0"}, block=1000, count=1000)
            if not answer:
                if not await self._owner_alive(stream_id):
                    await self._close_orphan(stream_id, last)  # read back on the next turn
                continue
            entries = answer[0][1]
            last = int(entries[-1][0].split(b"-")[0])
            yield b"".join(fields[b"f"] for _, fields in entries)
            if entries[-1][1].get(b"t") == b"1":
                return

    async def _owner_alive(self, stream_id: str) -> bool:
        owner = await self.redis.hget(_meta_key(stream_id), "owner")
        return owner is not None and bool(await self.redis.exists(f"fss:replica:{owner.decode()}"))

    async def _close_orphan(self, stream_id: str, last: int) -> None:
        error = UpstreamUnavailable("the gateway replica running this stream stopped before it ended")
        frame = encode(stream_id, last + 1, Event(ERROR, error.to_dict()))
        try:  # the first reader to notice writes it; the others' XADD fails on the taken id
            await self.redis.xadd(_events_key(stream_id), {"f": frame, "t": 1}, id=f"{last + 1}-0")
            await self.redis.expire(_events_key(stream_id), int(self.settings.stream_retention))
        except redis.ResponseError:
            pass
