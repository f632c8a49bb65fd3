"""Following a stream from Redis: what a replica that does not run a stream sends its readers.

A reader replays and follows the stream's events key with XREAD from `<Last-Event-ID seq>-0`.
When the key is quiet and its owner's heartbeat is gone, the owner died before the stream's last
event: the first reader to notice closes it with `error` `upstream_unavailable`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator, Callable
from typing import cast

import redis.asyncio as redis

from ...errors import StoreUnavailable, UpstreamUnavailable
from ...events import ERROR, Event
from ...settings import Settings
from ..event_log import READ_BATCH_BYTES
from ..sse_encoder import encode
from . import keys
from .calls import is_taken_id, redis_call, store_call
from .replicas import owner_alive

_READ_BLOCK_MS = 1000  # how long an XREAD waits for new entries before the owner is checked
_READ_COUNT = 200  # entries per XREAD


class MirrorReader:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._redis = client
        self._settings = settings

    async def exists(self, stream_id: str) -> bool:
        with store_call("exists"):
            return bool(await self._redis.exists(keys.meta(stream_id), keys.events(stream_id)))

    async def ended_by(self, stream_id: str, seq: int) -> bool:
        """Whether the stream's terminal event is at or before `seq` (a resume has nothing left)."""
        with store_call("ended_by"):
            last = cast("list[keys.Entry]", await self._redis.xrevrange(keys.events(stream_id), count=1))
        return bool(last) and keys.entry_is_terminal(last[0][1]) and keys.entry_seq(last[0][0]) <= seq

    async def follow(
        self, stream_id: str, after: int, should_stop: Callable[[], bool]
    ) -> AsyncGenerator[bytes, None]:
        """The stream's frames after `after`, live to its terminal event. If Redis stays away
        for `redis_timeout`, an `error` `store_unavailable` carrying the last position read (a
        resume from it later loses nothing) ends the response."""
        key, last = keys.events(stream_id), after
        failing_since = 0.0
        while not should_stop():
            try:
                with redis_call("read", timed=False):
                    answer = cast("list[tuple[bytes, list[keys.Entry]]]", await self._redis.xread(
                        {key: keys.entry_id(last)}, block=_READ_BLOCK_MS, count=_READ_COUNT))
                if not answer and not await owner_alive(self._redis, stream_id):
                    await self._close_orphan(stream_id, last)  # read back on the next turn
            except redis.RedisError as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since < self._settings.redis_timeout:
                    await asyncio.sleep(0.2)
                    continue
                error = StoreUnavailable(f"Redis did not answer for {self._settings.redis_timeout:g} s ({exc}); "
                                         "resume later from this event's id")
                yield encode(stream_id, last, Event(ERROR, error.to_dict()))
                return
            failing_since = 0.0
            if not answer:
                continue
            entries = answer[0][1]
            last = keys.entry_seq(entries[-1][0])
            batch: list[bytes] = []
            size = 0
            for _, fields in entries:  # writes of at most READ_BATCH_BYTES, as from memory
                frame = keys.entry_frame(fields)
                if batch and size + len(frame) > READ_BATCH_BYTES:
                    yield b"".join(batch)
                    batch, size = [], 0
                batch.append(frame)
                size += len(frame)
            yield b"".join(batch) if len(batch) > 1 else batch[0]
            if keys.entry_is_terminal(entries[-1][1]):
                return

    async def _close_orphan(self, stream_id: str, last: int) -> None:
        error = UpstreamUnavailable("the gateway replica running this stream stopped before it ended")
        frame = encode(stream_id, last + 1, Event(ERROR, error.to_dict()))
        key = keys.events(stream_id)
        # The first reader to notice writes it (the others find its id taken); the expiry is
        # set either way, in the same transaction.
        with redis_call("close_orphan"):
            pipe = self._redis.pipeline(transaction=True)
            pipe.xadd(key, keys.entry(frame, True), id=keys.entry_id(last + 1))
            pipe.expire(key, keys.ended_ttl(self._settings))
            added = (await pipe.execute(raise_on_error=False))[0]
            if isinstance(added, redis.ResponseError) and not is_taken_id(added):
                raise added  # Redis refuses writes: the reader's `redis_timeout` then applies
