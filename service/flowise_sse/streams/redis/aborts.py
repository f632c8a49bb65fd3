"""The abort channel: a `DELETE` on any replica reaches the replica running the stream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import redis.asyncio as redis

from . import keys
from .calls import redis_call, store_call

logger = logging.getLogger("flowise_sse")


class AbortChannel:
    def __init__(self, client: redis.Redis, on_abort: Callable[[str], None]) -> None:
        self._redis = client
        self._on_abort = on_abort
        self._task: asyncio.Task[None] | None = None

    async def publish(self, stream_id: str) -> None:
        with store_call("publish_abort"):
            await self._redis.publish(keys.ABORT_CHANNEL, stream_id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self) -> None:
        while True:  # through Redis restarts: a DELETE on another replica must still reach us
            pubsub = self._redis.pubsub()
            try:
                with redis_call("abort_channel", timed=False):
                    await pubsub.subscribe(keys.ABORT_CHANNEL)
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._on_abort(message["data"].decode())
            except redis.RedisError as exc:
                logger.warning("flowise-sse: Redis abort channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()
