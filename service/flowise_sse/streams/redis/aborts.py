"""The abort channel: a `DELETE` on any replica reaches the replica running the stream.

On one Redis (standalone, or Sentinel's primary) it is plain pub/sub. On a cluster, plain
PUBLISH is broadcast to every node over the cluster bus and a subscriber follows one node, so it
is sharded pub/sub instead (SPUBLISH / SSUBSCRIBE, Redis >= 7.0): the channel lives in its slot's
shard, the cluster client subscribes on the node serving that slot and moves the subscription
when the slot moves (a failover, resharding). A message published while no subscription is in
place (mid-failover) is lost, as pub/sub messages are: the `DELETE` that sent it has said 204,
and its stream goes on; a second `DELETE` stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from redis.asyncio.cluster import RedisCluster

from . import keys
from .calls import REDIS_ERRORS, Client, redis_call, store_call

logger = logging.getLogger("flowise_sse")


class AbortChannel:
    def __init__(self, client: Client, on_abort: Callable[[str], None]) -> None:
        self._redis = client
        self._on_abort = on_abort
        self._sharded = isinstance(client, RedisCluster)
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # subscribed (for the tests: a DELETE now reaches us)

    async def publish(self, stream_id: str) -> None:
        with store_call("publish_abort"):
            if self._sharded:
                await self._redis.spublish(keys.ABORT_CHANNEL, stream_id)
            else:
                await self._redis.publish(keys.ABORT_CHANNEL, stream_id)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._listen())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _listen(self) -> None:
        while True:  # through Redis restarts and failovers: a DELETE on another replica must still reach us
            pubsub: Any = self._redis.pubsub()
            try:
                with redis_call("abort_channel", timed=False):
                    if self._sharded:
                        await self._listen_sharded(pubsub)
                    else:
                        await pubsub.subscribe(keys.ABORT_CHANNEL)
                        self.listening.set()
                        async for message in pubsub.listen():
                            if message.get("type") == "message":
                                self._on_abort(message["data"].decode())
            except REDIS_ERRORS as exc:
                self.listening.clear()
                logger.warning("flowise-sse: Redis abort channel lost (%s); resubscribing", exc)
                await asyncio.sleep(1)
                if self._sharded:
                    await self._refresh_topology()
            finally:
                await pubsub.aclose()

    async def _refresh_topology(self) -> None:
        """Ask the cluster where the channel's slot lives now: this client may have sent nothing
        since a failover (its slot map would name the dead node forever)."""
        try:
            with redis_call("abort_channel"):
                await self._redis.nodes_manager.initialize()  # type: ignore[union-attr]
        except REDIS_ERRORS:
            pass  # no node answers yet: the next attempt asks again

    async def _listen_sharded(self, pubsub: Any) -> None:
        await pubsub.ssubscribe(keys.ABORT_CHANNEL)
        self.listening.set()
        while True:
            # The cluster client's poll moves the subscription to the slot's new node on a MOVED
            # answer or a failed node; it raises only when no node answers.
            message = await pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None and message.get("type") == "smessage":
                self._on_abort(message["data"].decode())
