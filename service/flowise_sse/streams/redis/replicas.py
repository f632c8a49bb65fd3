"""Which replicas are alive: this one's heartbeat, and whether a stream's owner still runs.

Each replica keeps its `keys.replica` key alive (refreshed every `REPLICA_REFRESH` s, gone
`REPLICA_TTL` s after the last refresh), and a stream's meta names its owner, so a reader on
another replica tells a quiet stream from one whose owner died.

The refresh reads the key's previous value as it writes (`SET ... GET`): a key that is missing
although this replica wrote it means Redis lost data (a failover to a replica that lagged, a
primary restarted empty) or an outage outlasted its TTL, and `on_loss` is called (the writer
then checks every running stream's keys at once, and repairs them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from . import keys
from .calls import REDIS_ERRORS, Client, redis_call

logger = logging.getLogger("flowise_sse")

_RETRY = 0.5  # seconds between attempts while the refresh fails (a failover is under way)


class ReplicaHeartbeat:
    def __init__(self, client: Client, replica_id: str, on_loss: Callable[[], None] = lambda: None) -> None:
        self._redis = client
        self._key = keys.replica(replica_id)
        self._on_loss = on_loss
        self._written = 0.0  # when the key was last written (monotonic), 0: never
        self.lost_at = 0.0  # when Redis was last seen to have lost data
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        with redis_call("keep_alive"):
            previous = await self._redis.set(self._key, 1, ex=keys.REPLICA_TTL, get=True)
        now = time.monotonic()
        if previous is None and self._written:
            # Missing within its TTL: Redis lost it. Missing after an outage longer than that: it
            # may have expired, or been lost with everything else; a check costs little.
            self.lost_at = now
            logger.warning("flowise-sse: Redis lost this replica's heartbeat key (a failover or a restart): "
                           "checking the keys of its running streams")
            self._on_loss()
        self._written = now

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        delay: float = keys.REPLICA_REFRESH
        while True:
            await asyncio.sleep(delay)
            try:
                await self.beat()
                delay = keys.REPLICA_REFRESH
            except REDIS_ERRORS as exc:
                logger.warning("flowise-sse: Redis keep-alive failed: %s", exc)
                delay = _RETRY

    async def stop(self) -> None:
        """Stop beating and say so: readers elsewhere close this replica's unfinished streams soon."""
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        try:
            with redis_call("leave"):
                await self._redis.delete(self._key)
        except REDIS_ERRORS:
            pass  # it expires within REPLICA_TTL

    async def alive(self, replica_id: str) -> bool:
        with redis_call("owner_alive"):
            return bool(await self._redis.exists(keys.replica(replica_id)))
