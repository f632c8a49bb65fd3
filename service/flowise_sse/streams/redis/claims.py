"""Cross-replica "one prediction per chatId": the chat lock, then the stream's meta; released by
compare-and-delete.

The lock and the meta are two keys in two hash slots (on a cluster, maybe two nodes), so the claim
is two calls: `SET NX` on the lock (the claim itself, atomic), then the meta (owner and tenant)
with its expiry. A meta that cannot be written gives the lock back. Between the two calls the
stream's id is known to nobody (it is first sent in its `start` event), so no reader can look for
the meta before it exists.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ...settings import Settings
from . import keys
from .calls import REDIS_ERRORS, Client, redis_call, store_call

logger = logging.getLogger("flowise_sse")

# Release the lock only if this stream still holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class ChatClaims:
    def __init__(self, client: Client, settings: Settings) -> None:
        self._redis = client
        self._settings = settings
        self._release = client.register_script(_RELEASE)
        self._releases: set[asyncio.Task[None]] = set()

    @property
    def releasing(self) -> bool:
        return bool(self._releases)

    async def claim(
        self, chat_id: str, stream_id: str, owner: str, tenant: str | None, *, stream: bool = True
    ) -> bool:
        """Whether the chat was free; if so `stream_id` holds it, and (a `stream`) its meta says
        that `owner` runs it for `tenant`."""
        with store_call("claim_chat"):
            claimed = await self._redis.set(keys.chat_lock(chat_id), stream_id, nx=True,
                                            ex=keys.chat_lock_ttl(self._settings))
        if not claimed or not stream:
            return bool(claimed)
        try:
            with store_call("claim_chat"):
                pipe = self._redis.pipeline(transaction=False)
                pipe.hset(keys.meta(stream_id), mapping={keys.OWNER_FIELD: owner,
                                                         keys.TENANT_FIELD: keys.tenant_value(tenant)})
                pipe.expire(keys.meta(stream_id), keys.running_ttl(self._settings))
                await pipe.execute()
        except BaseException:
            self.release_soon(chat_id, stream_id)
            raise
        return True

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
            except REDIS_ERRORS as exc:
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
