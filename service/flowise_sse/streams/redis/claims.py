"""Cross-replica "one prediction per chatId": the chat lock, claimed with the stream's owner in
one atomic call and released by compare-and-delete."""

from __future__ import annotations

import asyncio
import logging
import time

import redis.asyncio as redis

from ...settings import Settings
from . import keys
from .calls import redis_call, store_call

logger = logging.getLogger("flowise_sse")

# One round trip, atomic: the chat lock and the stream's owner, with their expiries.
_CLAIM = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[5])
  return 1
end
return 0
"""
# Release the lock only if this stream still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ChatClaims:
    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self._settings = settings
        self._claim = client.register_script(_CLAIM)
        self._release = client.register_script(_RELEASE)
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def releasing(self) -> bool:
        return bool(self._releases)

    async def claim(self, chat_id: str, stream_id: str, owner: str) -> bool:
        """Whether the chat was free; if so `stream_id` holds it, and `owner` runs the stream."""
        with store_call("claim_chat"):
            return bool(await self._claim(
                keys=[keys.chat_lock(chat_id), keys.meta(stream_id)],
                args=[stream_id, keys.chat_lock_ttl(self._settings), keys.OWNER_FIELD, owner,
                      keys.running_ttl(self._settings)]))

    async def release(self, chat_id: str, stream_id: str) -> None:
        """Release the lock, retrying while Redis is away (until the lock would have expired by
        itself, or shutdown)."""
        deadline = time.monotonic() + keys.chat_lock_ttl(self._settings)
        delay = 0.1
        while True:
            try:
                with redis_call("release_chat"):
                    await self._release(keys=[keys.chat_lock(chat_id)], args=[stream_id])
                return
            except redis.RedisError as exc:
                if time.monotonic() >= deadline:
                    logger.warning("flowise-sse: releasing a chatId lock in Redis failed (%s)", exc)
                    return
                await asyncio.sleep(delay)
                delay = min(2.0, delay * 2)

    def release_soon(self, chat_id: str, stream_id: str) -> None:
        """`release` in a tracked task: a stream's end never waits on Redis."""
        task = asyncio.get_running_loop().create_task(self.release(chat_id, stream_id))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def stop(self) -> None:
        releases = list(self._releases)
        for task in releases:
            task.cancel()
        await asyncio.gather(*releases, return_exceptions=True)
