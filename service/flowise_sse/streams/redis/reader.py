"""Following a stream from Redis: what a replica that does not run a stream sends its readers.

A reader replays and follows the stream's events key with XREAD from `<Last-Event-ID seq>-0`.
Each time the key stays quiet for a read (`_READ_BLOCK_MS`), the reader looks at where the key
ends and who runs the stream, and decides:

- a terminal entry at or before its position, the reader having read nothing from Redis: it
  came past the end (its `Last-Event-ID` was ahead of Redis); it ends, without an error;
- the same, the reader having read entries from Redis: Redis lost what it had read (a
  failover); it ends with `store_unavailable`;
- entries only up to before its position: it waits for the owner to write them again (up to
  `redis_timeout`, at least `LOSS_GRACE`), then ends with `store_unavailable`;
- no key, for `LOSS_GRACE`: lost in a failover and written again by nobody: `store_unavailable`;
- its position is the end, and the owner's heartbeat has been gone for `ORPHAN_CONFIRM`: it
  closes the stream with `upstream_unavailable` (the owner died before the stream's last event).

So every reader ends either exactly (the stream's own terminal event) or as an exact prefix
followed by an explicit error: entries are contiguous (`writer.py`'s script never leaves a
hole), and an XREAD answer that does not start right after the reader's position ends it with
`store_unavailable` rather than a gap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import cast

from ...errors import StoreUnavailable, UpstreamUnavailable
from ...events import ERROR, Event
from ...settings import Settings
from ..event_log import READ_BATCH_BYTES
from ..sse_encoder import encode
from . import keys
from .calls import REDIS_ERRORS, Client, is_taken_id, redis_call, store_call, xread
from .writer import VERIFY_EVERY

logger = logging.getLogger("flowise_sse")

_READ_BLOCK_MS = 1000  # how long an XREAD waits for new entries before the key is looked at
_READ_COUNT = 200  # entries per XREAD
# The owner's heartbeat key must stay missing this long before its streams are declared orphans:
# a failover can lose the key of a replica that is alive, which writes it again within
# REPLICA_REFRESH (and retries faster after a failure).
ORPHAN_CONFIRM = 2 * keys.REPLICA_REFRESH
# A stream whose keys are gone (or whose key lacks what a reader read) gets this long for its
# owner to write them again (its check of quiet streams runs every VERIFY_EVERY).
LOSS_GRACE = 2 * VERIFY_EVERY + 1


class MirrorReader:
    def __init__(
        self, client: Client, settings: Settings, slots: asyncio.Semaphore | None = None,
        ask_repair: Callable[[str], Awaitable[None]] | None = None,
    ) -> None:
        """`slots`: readers blocked in XREAD at once (a cluster client's pools cannot make a
        caller wait for a connection; this does). `ask_repair`: asks the stream's owner to
        write it again (its key is gone)."""
        self._redis = client
        self._settings = settings
        self._slots = slots
        self._ask_repair = ask_repair

    async def meta(self, stream_id: str) -> dict[bytes, bytes] | None:
        """The stream's meta (owner, tenant), or None when Redis holds neither of its keys; {}
        when it holds the events but has lost the meta (its owner writes it again)."""
        with store_call("exists"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.hgetall(keys.meta(stream_id))
            pipe.exists(keys.events(stream_id))
            found, events = await pipe.execute()
        return found if found or events else None

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
        watch = _Watch()
        while not should_stop():
            try:
                async with AsyncExitStack() as held:
                    if self._slots is not None:
                        await asyncio.wait_for(self._slots.acquire(), self._settings.redis_timeout)
                        held.callback(self._slots.release)
                    with redis_call("read", timed=False):
                        answer = cast("list[tuple[bytes, list[keys.Entry]]]", await xread(
                            self._redis, key, keys.entry_id(last), _READ_BLOCK_MS, _READ_COUNT))
                failure = None if answer else await self._when_quiet(stream_id, last, after, watch)
            except (TimeoutError, *REDIS_ERRORS) as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since < self._settings.redis_timeout:
                    await asyncio.sleep(0.2)
                    continue
                logger.warning("flowise-sse: stream %s: Redis did not answer for %g s: %s",
                               stream_id, self._settings.redis_timeout, exc)
                yield encode(stream_id, last + 1, Event(ERROR, StoreUnavailable(
                    f"Redis did not answer for {self._settings.redis_timeout:g} s ({type(exc).__name__}); "
                    "resume later from the last event's id").to_dict()))
                return
            failing_since = 0.0
            if isinstance(failure, _Done):
                return
            if failure is not None:
                yield encode(stream_id, last + 1, Event(ERROR, StoreUnavailable(failure).to_dict()))
                return
            if not answer:
                continue
            entries = answer[0][1]
            if keys.entry_seq(entries[0][0]) != last + 1:  # never written so: end, rather than skip
                yield encode(stream_id, last + 1, Event(ERROR, StoreUnavailable(
                    "Redis lost events of this stream (a failover); resume from the last event's id").to_dict()))
                return
            watch.read_any = True
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

    async def _when_quiet(self, stream_id: str, last: int, after: int, watch: _Watch) -> str | _Done | None:
        """The key had nothing after `last` for a whole read: None (read on), `_DONE` (end
        without a word), or why the reader ends with `store_unavailable` (see the table above)."""
        with redis_call("when_quiet"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.xrevrange(keys.events(stream_id), count=1)
            pipe.hget(keys.meta(stream_id), keys.OWNER_FIELD)
            top_entry, owner = await pipe.execute()
        now = time.monotonic()
        if not top_entry:
            if not watch.missing_since and self._ask_repair is not None:
                await self._ask_repair(stream_id)
            watch.missing_since = watch.missing_since or now
            if now - watch.missing_since >= LOSS_GRACE:
                return "Redis lost this stream (a failover) and nobody wrote it again"
            return None
        watch.missing_since = 0.0
        top, terminal = keys.entry_seq(top_entry[0][0]), keys.entry_is_terminal(top_entry[0][1])
        if terminal:
            if top > last:
                return None  # written since the read: the next one gets it
            if watch.read_any:
                return "Redis lost events of this stream that this reader had read (a failover)"
            return _DONE  # it came past the end: nothing follows
        if top < last:
            watch.lacking_since = watch.lacking_since or now
            if now - watch.lacking_since >= max(LOSS_GRACE, self._settings.redis_timeout):
                return "Redis lost events of this stream (a failover) and its owner did not write them again"
        else:
            watch.lacking_since = 0.0
        # A meta lost in a failover (its owner writes it again): the owner is the replica whose
        # id starts the stream's (`RedisMirror.new_stream_id`).
        alive = await owner_alive(self._redis, owner.decode() if owner else keys.slot_tag(stream_id))
        if alive:
            watch.owner_gone_since = 0.0
            return None
        watch.owner_gone_since = watch.owner_gone_since or now
        if now - watch.owner_gone_since >= ORPHAN_CONFIRM:
            await self._close_orphan(stream_id, top)  # read back on the next turn (or past it: above)
        return None

    async def _close_orphan(self, stream_id: str, top: int) -> None:
        error = UpstreamUnavailable("the gateway replica running this stream stopped before it ended")
        frame = encode(stream_id, top + 1, Event(ERROR, error.to_dict()))
        key = keys.events(stream_id)
        # The first reader to notice writes it (the others find its id taken); the expiry is
        # set either way (the key already has one: this only shortens it).
        with redis_call("close_orphan"):
            pipe = self._redis.pipeline(transaction=False)
            pipe.xadd(key, keys.entry(frame, True), id=keys.entry_id(top + 1))
            pipe.expire(key, keys.ended_ttl(self._settings))
            added = (await pipe.execute(raise_on_error=False))[0]
            if isinstance(added, Exception) and not is_taken_id(added):
                raise added  # Redis refuses writes: the reader's `redis_timeout` then applies


class _Done:
    """The reader ends without a word (it came past the stream's end)."""


_DONE = _Done()


class _Watch:
    """What one reader has seen of its stream's key across quiet reads."""

    __slots__ = ("read_any", "missing_since", "lacking_since", "owner_gone_since")

    def __init__(self) -> None:
        self.read_any = False  # it read entries from Redis
        self.missing_since = 0.0
        self.lacking_since = 0.0
        self.owner_gone_since = 0.0


async def owner_alive(client: Client, owner: str) -> bool:
    with redis_call("owner_alive"):
        return bool(await client.exists(keys.replica(owner)))
