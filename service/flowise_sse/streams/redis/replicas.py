"""Which replicas are alive: this one's heartbeat, and whether a stream's owner still runs.

Each replica keeps its `keys.replica` key alive (refreshed every `REPLICA_REFRESH` s, gone
`REPLICA_TTL` s after the last refresh), and a stream's meta names its owner (set with the chat
claim), so a reader on another replica tells a quiet stream from one whose owner died.
"""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import redis.asyncio as redis

from . import keys
from .calls import redis_call

logger = logging.getLogger("flowise_sse")


class ReplicaHeartbeat:
    def __init__(self, client: redis.Redis, replica_id: str) -> None:
        self._redis = client
        self._key = keys.replica(replica_id)
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        with redis_call("keep_alive"):
            await self._redis.set(self._key, 1, ex=keys.REPLICA_TTL)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(keys.REPLICA_REFRESH)
            try:
                await self.beat()
            except redis.RedisError as exc:
                logger.warning("flowise-sse: Redis keep-alive failed: %s", exc)

    async def stop(self) -> None:
        """Stop beating and say so: readers elsewhere close this replica's unfinished streams at once."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            with redis_call("leave"):
                await self._redis.delete(self._key)
        except redis.RedisError:
            pass  # it expires within REPLICA_TTL


async def owner_alive(client: redis.Redis, stream_id: str) -> bool:
    with redis_call("owner_alive"):
        owner = cast("bytes | None", await client.hget(keys.meta(stream_id), keys.OWNER_FIELD))  # no decoding
        return owner is not None and bool(await client.exists(keys.replica(owner.decode())))
