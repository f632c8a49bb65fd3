"""The stream runs of this replica: admitted, registered, found again, drained on shutdown.

`start` admits a prediction (the replica is not draining, its chat is free, its owner has a slot,
the store has room), registers a `StreamRun` and waits for its `start`. Everything after that is
the run's own business (`run.py`). Readers find a stream by id here: in memory on the replica that
runs it, in Redis on the others. See ARCHITECTURE.md for the lifecycle and its races.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import ExitStack, aclosing, asynccontextmanager
from dataclasses import dataclass

from .. import metrics
from ..errors import GatewayError, ShuttingDown, StoreUnavailable, StreamNotFound
from ..logging_setup import fields
from ..settings import Settings
from ..upstream.prediction import Prediction
from .admission import ChatClaims, OwnerSlots
from .event_log import StreamLog
from .memory_store import MemoryStore
from .readers import ReaderLimits
from .redis_mirror import RedisMirror
from .rejoin import RejoinRegistry
from .run import EventSource, StreamRun

logger = logging.getLogger("flowise_sse")


@dataclass(frozen=True, slots=True)
class Reading:
    """A reader admitted to a stream: its frames, and the release of its place among the
    stream's readers. The frames' own end releases it; whoever serves them must release it too
    when the response ends (a generator that never started never runs its `finally`)."""

    frames: AsyncGenerator[bytes, None]
    release: Callable[[], None]


class StreamManager:
    def __init__(self, settings: Settings, upstream: EventSource, store: MemoryStore) -> None:
        self.settings = settings
        self.upstream = upstream
        self.store = store
        metrics.watch_store(store)
        self.mirror = RedisMirror(
            settings, self._abort_requested, self._mirror_failed, store.logs.get) if settings.uses_redis else None
        self.runs: dict[str, StreamRun] = {}
        self.chats = ChatClaims(self.mirror)
        self.slots = OwnerSlots(settings.max_streams_per_key)
        self.rejoins = RejoinRegistry(settings.get_rejoin_window)
        self.readers = ReaderLimits(settings)
        self.draining = False
        self._drain_started = 0.0
        self._sweeper: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------
    async def open(self) -> None:
        if self.mirror:
            await self.mirror.open()
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        period = max(1.0, min(30.0, self.settings.stream_retention / 10))
        while True:
            await asyncio.sleep(period)
            self.store.evict_expired()
            self.rejoins.sweep()

    def begin_drain(self) -> None:
        """Shutdown has begun: take no new streams; readers are let go (see `_should_stop`)."""
        if not self.draining:
            self.draining = True
            self._drain_started = time.monotonic()
            for run in self.runs.values():
                run.log.wake()

    async def close(self) -> None:
        """Let running upstreams finish within `shutdown_grace`, then abort the rest."""
        self.begin_drain()
        pending = [run.task for run in self.runs.values() if run.task]
        if pending:
            remaining = self.settings.shutdown_grace - (time.monotonic() - self._drain_started)
            await asyncio.wait(pending, timeout=max(0.0, remaining))
        for run in list(self.runs.values()):
            run.abort("the gateway is shutting down")
        await asyncio.gather(*(run.task for run in self.runs.values() if run.task), return_exceptions=True)
        if self._sweeper:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.mirror:
            await self.mirror.close()

    # --- admission ------------------------------------------------------------------------
    async def start(
        self, chatflow_id: str, prediction: Prediction, owner: str | None = None, *,
        abort_when_unread: bool = False, request_key: str | None = None,
    ) -> StreamRun:
        """Start a run and wait for its `start`; a failure before it is raised here.
        `owner`: whose `max_streams_per_key` slot it takes (None: nobody's).
        `abort_when_unread`: abort the run when its last reader leaves (see `StreamRun.hold`).
        `request_key`: a GET stream's request, hashed: the same request joins its run
        (`rejoin.py`), and such a run is not aborted when its requester leaves before `start`
        (its reconnect is on the way)."""
        if request_key is not None and (joined := self.rejoins.join(request_key)) is not None:
            await joined.until_started()
            return joined
        run = await self._admit(chatflow_id, prediction, owner, abort_when_unread)
        self.runs[run.id] = run
        run.launch(self.upstream)
        if request_key is not None:
            self.rejoins.register(request_key, run)
        try:
            await run.until_started()
        except asyncio.CancelledError:
            # The requester left before the stream began: nobody knows its id, nobody can want
            # it, unless the same request can come back for it.
            if request_key is None or self.settings.on_client_disconnect == "abort":
                run.abort("the client left before the stream started")
            raise
        return run

    async def _admit(
        self, chatflow_id: str, prediction: Prediction, owner: str | None, abort_when_unread: bool
    ) -> StreamRun:
        """A registered-to-be run holding its chat, its owner's slot and its log; on any
        refusal, whatever was taken is given back (the exit stack) and the refusal counted."""
        stream_id = self.mirror.new_stream_id() if self.mirror else uuid.uuid4().hex
        try:
            with ExitStack() as lent:
                if self.draining:
                    raise ShuttingDown("the gateway is shutting down; retry on another replica")
                release_chat = await self.chats.claim(prediction.chat_id, stream_id, owner)
                lent.callback(release_chat)
                lent.callback(self.slots.take(owner))
                log = self.store.create(stream_id, owner)
                lent.callback(self.runs.pop, stream_id, None)
                return StreamRun(
                    stream_id, chatflow_id, prediction, log, owner=owner, mirror=self.mirror,
                    abort_when_unread=abort_when_unread, release_chat=release_chat, lent=lent.pop_all(),
                )
        except GatewayError as exc:
            metrics.stream_rejected(exc.code)
            raise

    @asynccontextmanager
    async def prediction_slot(self, chat_id: str, owner: str | None) -> AsyncIterator[None]:
        """A non-streaming prediction holds what a stream holds: its chat (on every replica,
        through the Redis claim when there is one) and a slot of its owner's."""
        with ExitStack() as lent:
            if self.draining:
                raise ShuttingDown("the gateway is shutting down; retry on another replica")
            # Never a stream id (those are 32 hex digits): a prediction is no stream to read.
            lent.callback(await self.chats.claim(chat_id, f"p{uuid.uuid4().hex}", stream=False))
            lent.callback(self.slots.take(owner))
            yield

    # --- stopping -------------------------------------------------------------------------
    async def stop(self, stream_id: str, owner: str | None = None) -> bool:
        """`DELETE`: stop `owner`'s stream wherever it runs. False when it is unknown, expired,
        or another tenant's (to whom it does not exist)."""
        run = self.runs.get(stream_id)
        if run and run.owner == owner:
            run.abort("stopped by DELETE")
            if run.task is not None:  # always: a registered run is launched
                await asyncio.gather(run.task, return_exceptions=True)
            return True
        log = self.store.get(stream_id)
        if log is not None:
            return log.owner == owner  # already over
        if self.mirror and (remote := await self.mirror.lookup(stream_id)) is not None and remote.tenant == owner:
            await self.mirror.publish_abort(stream_id)
            return True
        return False

    def _abort_requested(self, stream_id: str) -> None:
        """A DELETE on another replica, for a run of ours (Redis pub/sub)."""
        run = self.runs.get(stream_id)
        if run:
            run.abort("stopped by DELETE")

    def _mirror_failed(self, stream_id: str, why: str) -> None:
        """Redis cannot take this stream's events: end it clearly rather than leave a hole."""
        run = self.runs.get(stream_id)
        if run:
            run.abort(why, StoreUnavailable(f"the stream was stopped: {why}"))

    # --- readers --------------------------------------------------------------------------
    async def follow(
        self, stream_id: str, after: int, owner: str | None = None, *, any_owner: bool = False
    ) -> Reading | None:
        """`owner`'s stream's frames after seq `after`, live until its end: from memory on the
        replica running it, from Redis on the others (`any_owner`: a reader with the stream's
        own eventsUrl token). Checked before any byte is sent: an unknown stream, or another
        tenant's, is a 404 rather than an empty event stream; a reader past the cap is refused;
        a reader already past the terminal event gets None (nothing will ever follow)."""
        after = max(0, after)
        # Counted per key, or per token (a token reads one stream): never the stream's owner's.
        reader = f"token:{stream_id}" if any_owner else owner
        log = self.store.get(stream_id)
        if log is not None:
            if not any_owner and log.owner != owner:
                raise StreamNotFound(f"stream {stream_id} is unknown or has expired")
            if log.finished and after >= len(log.frames):
                return None
            release = self.readers.admit(stream_id, reader)
            if after:
                logger.info("stream resumed", extra=fields(stream_id=stream_id, after=after, source="memory"))
            return Reading(self._follow_memory(log, self.runs.get(stream_id), after, release), release)
        if self.mirror and (remote := await self.mirror.lookup(stream_id)) is not None:
            if not any_owner and remote.tenant != owner:
                raise StreamNotFound(f"stream {stream_id} is unknown or has expired")
            if await self.mirror.ended_by(stream_id, after):
                return None
            release = self.readers.admit(stream_id, reader)
            # Another replica's stream: worth a line, so one stream can be followed across replicas.
            logger.info("stream resumed" if after else "stream read", extra=fields(
                stream_id=stream_id, after=after, source="redis"))
            return Reading(self._follow_redis(self.mirror, stream_id, after, release), release)
        raise StreamNotFound(f"stream {stream_id} is unknown or has expired")

    async def _follow_memory(
        self, log: StreamLog, run: StreamRun | None, after: int, release_place: Callable[[], None]
    ) -> AsyncGenerator[bytes, None]:
        release = run.hold(self.settings.on_client_disconnect == "abort") if run else None
        metrics.reader_joined("memory", after > 0)
        sent = 0
        try:
            async for chunk in log.frames_after(after, self._should_stop):
                sent += len(chunk)
                yield chunk
            # Resumed here after the last write went out: this reader has the whole stream.
            if log.finished:
                self.rejoins.delivered(log.stream_id)
        finally:
            metrics.reader_left("memory", sent)
            release_place()
            if release:
                release()

    async def _follow_redis(
        self, mirror: RedisMirror, stream_id: str, after: int, release_place: Callable[[], None]
    ) -> AsyncGenerator[bytes, None]:
        metrics.reader_joined("redis", after > 0)
        sent = 0
        try:
            async with aclosing(mirror.follow(stream_id, after, self._should_stop)) as chunks:
                async for chunk in chunks:
                    sent += len(chunk)
                    yield chunk
        finally:
            metrics.reader_left("redis", sent)
            release_place()

    def hold(self, run: StreamRun) -> Callable[[], None]:
        """A reader of `run` on this replica that is not a `follow` (the OpenAI routes)."""
        return run.hold(self.settings.on_client_disconnect == "abort")

    def _should_stop(self) -> bool:
        """While draining, readers are let go at once when Redis holds the events (clients resume
        on another replica); otherwise they stay to their stream's end, up to the grace period."""
        if not self.draining:
            return False
        return self.mirror is not None or time.monotonic() - self._drain_started >= self.settings.shutdown_grace
