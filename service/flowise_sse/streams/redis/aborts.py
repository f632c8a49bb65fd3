"""The control channel: a `DELETE` on any replica reaches the replica running the stream, and a
replica that finds a stream missing from Redis (a failover lost it) asks its owner to write it
again from memory (`repair:<streamId>`; an abort is the bare stream id).

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

REPAIR = "repair:"


class AbortChannel:
    def __init__(
        self, client: Client, on_abort: Callable[[str], None], on_repair: Callable[[str], None] = lambda _: None
    ) -> None:
        self._redis = client
        self._on_abort = on_abort
        self._on_repair = on_repair
        self._sharded = isinstance(client, RedisCluster)
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # subscribed (for the tests: a DELETE now reaches us)

    async def publish(self, stream_id: str) -> None:
        with store_call("publish_abort"):
            await self._publish(stream_id)

    async def ask_repair(self, stream_id: str) -> None:
        """Best effort: if nobody hears it, the stream stays missing and its reader says so."""
        try:
            with redis_call("publish_repair"):
                await self._publish(REPAIR + stream_id)
        except REDIS_ERRORS:
            pass

    async def _publish(self, message: str) -> None:
        if self._sharded:
            await self._redis.spublish(keys.ABORT_CHANNEL, message)
        else:
            await self._redis.publish(keys.ABORT_CHANNEL, message)

    def _received(self, data: bytes) -> None:
        message = data.decode()
        if message.startswith(REPAIR):
            self._on_repair(message[len(REPAIR):])
        else:
            self._on_abort(message)

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
                                self._received(message["data"])
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
        if not isinstance(self._redis, RedisCluster):
            return
        try:
            with redis_call("abort_channel"):
                await self._redis.nodes_manager.initialize()
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
                self._received(message["data"])
