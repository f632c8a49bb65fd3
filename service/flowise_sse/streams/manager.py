"""Stream runs: one upstream prediction each, living apart from the connections that read it.

A run drives `Upstream.stream()` into a `StreamLog`; readers follow the log from any position.
The HTTP request that created a run only waits for its `start` (or its early failure, which
becomes a plain HTTP error). Who ends a run: the upstream (`end`/`error`), a timeout, `DELETE`,
the last reader leaving (when `on_client_disconnect=abort`), or shutdown. See ARCHITECTURE.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from contextlib import aclosing, asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, AsyncIterator, Callable, Iterator

from .. import metrics
from ..errors import (
    ChatBusy,
    GatewayError,
    ShuttingDown,
    StoreUnavailable,
    StreamAborted,
    StreamNotFound,
    TooManyStreams,
    UpstreamError,
)
from ..events import ERROR, START, TERMINAL, TOKEN, Event
from ..logging_setup import fields
from ..settings import Settings
from ..upstream import Upstream
from ..upstream.prediction import Prediction
from .event_log import StreamLog
from .memory_store import MemoryStore

if TYPE_CHECKING:
    from .redis_mirror import RedisMirror

logger = logging.getLogger("flowise_sse")


class StreamRun:
    def __init__(self, stream_id: str, chatflow_id: str, prediction: Prediction, events: StreamLog) -> None:
        self.id = stream_id
        self.chatflow_id = chatflow_id
        self.prediction = prediction
        self.events = events
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.task: asyncio.Task[None] | None = None
        self.readers = 0
        self.abort_reason: str | None = None
        # For the metrics and the log lines; counted here, reported once at the end.
        self.requested_at = time.monotonic()
        self.transport = "unknown"
        self.tokens = 0
        self.first_token_at: float | None = None
        self.owner: str | None = None  # whose slot it holds (max_streams_per_key)
        self.failure: GatewayError | None = None  # why it was stopped, when not by a client
        # Aborted when its last reader leaves, whatever `on_client_disconnect` says: set for
        # clients that cannot resume (the OpenAI route).
        self.abort_unread = False
        self.chat_released = False

    @property
    def done(self) -> bool:
        return self.task is None or self.task.done()


class _Rejoin:
    """A GET stream that the same GET may join again: its run, and whether a reader already got
    all of it (then the same GET is a new question, not a reconnect)."""

    __slots__ = ("run", "delivered")

    def __init__(self, run: StreamRun) -> None:
        self.run = run
        self.delivered = False


class StreamManager:
    def __init__(self, settings: Settings, upstream: Upstream, store: MemoryStore) -> None:
        self.settings = settings
        self.upstream = upstream
        self.store = store
        metrics.watch_store(store)
        self.mirror: RedisMirror | None = None
        if settings.redis_url:
            from .redis_mirror import RedisMirror

            self.mirror = RedisMirror(settings, self._abort_requested, self._mirror_failed)
        self.runs: dict[str, StreamRun] = {}
        self._chats: dict[str, str] = {}  # chatId -> streamId of the run using it
        self._requests: dict[str, _Rejoin] = {}  # GET request key -> its stream (see `start`)
        self._key_of: dict[str, str] = {}  # and back: streamId -> request key
        self._per_owner: dict[str, int] = {}  # gateway key (or client address) -> predictions running
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
            self._forget_requests()

    def begin_drain(self) -> None:
        """Shutdown has begun: take no new streams; readers are let go (see `_should_stop`)."""
        if not self.draining:
            self.draining = True
            self._drain_started = time.monotonic()
            for run in self.runs.values():
                run.events.wake()

    async def close(self) -> None:
        """Let running upstreams finish within `shutdown_grace`, then abort the rest."""
        self.begin_drain()
        pending = [run.task for run in self.runs.values() if run.task]
        if pending:
            remaining = self.settings.shutdown_grace - (time.monotonic() - self._drain_started)
            await asyncio.wait(pending, timeout=max(0.0, remaining))
        for run in list(self.runs.values()):
            self.abort(run, "the gateway is shutting down")
        await asyncio.gather(*(run.task for run in self.runs.values() if run.task), return_exceptions=True)
        if self._sweeper:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        if self.mirror:
            await self.mirror.close()

    # --- runs -----------------------------------------------------------------------------
    async def start(
        self, chatflow_id: str, prediction: Prediction, owner: str | None = None, *,
        abort_unread: bool = False, request_key: str | None = None,
    ) -> StreamRun:
        """Start a run and wait for its `start`; a failure before it is raised here.
        `owner`: whose `max_streams_per_key` slot it takes (None: nobody's).
        `abort_unread`: abort the run when its last reader leaves (see `hold`).

        With a `request_key` (a GET stream's request, hashed), the same request joins the run it
        started while that run goes on, and for `get_rejoin_window` after it ended unless a reader
        received it whole: an `EventSource` that lost its connection before its first event (so
        without a Last-Event-ID) gets its stream from the beginning, not a second prediction or
        a 409. Such a run is not aborted when its requester leaves before `start`: its reconnect
        is on the way."""
        if request_key is not None and (joined := self._rejoinable(request_key)) is not None:
            await asyncio.shield(joined.started)
            return joined
        if self.draining:
            metrics.stream_rejected(ShuttingDown.code)
            raise ShuttingDown("the gateway is shutting down; retry on another replica")
        stream_id = uuid.uuid4().hex
        try:
            self._claim_chat(prediction.chat_id, f"stream {stream_id}")
        except ChatBusy as exc:
            metrics.stream_rejected(exc.code)
            raise
        try:
            self._take_slot(owner)
        except BaseException as exc:
            if isinstance(exc, GatewayError):
                metrics.stream_rejected(exc.code)
            self._chats.pop(prediction.chat_id, None)
            raise
        claimed = False
        try:
            if self.mirror:
                claimed = await self.mirror.claim_chat(prediction.chat_id, stream_id)
                if not claimed:
                    raise ChatBusy(f"chatId {prediction.chat_id!r} already has a prediction running on another replica")
            run = StreamRun(stream_id, chatflow_id, prediction, self.store.create(stream_id))
            run.owner = owner
            run.abort_unread = abort_unread
        except BaseException as exc:
            if isinstance(exc, GatewayError):
                metrics.stream_rejected(exc.code)
            self._chats.pop(prediction.chat_id, None)
            self._give_slot(owner)
            if claimed:
                await self.mirror.release_chat(prediction.chat_id, stream_id)  # type: ignore[union-attr]
            raise
        self.runs[stream_id] = run
        run.task = asyncio.get_running_loop().create_task(self._drive(run), name=f"stream {stream_id}")
        if request_key is not None:
            self._requests[request_key] = _Rejoin(run)
            self._key_of[stream_id] = request_key
        try:
            await asyncio.shield(run.started)
        except asyncio.CancelledError:
            # The requester left before the stream began: nobody knows its id, nobody can want
            # it, unless the same request can come back for it (and readers may then continue).
            if request_key is None or self.settings.on_client_disconnect == "abort":
                self.abort(run, "the client left before the stream started")
            raise
        return run

    def _rejoinable(self, request_key: str) -> StreamRun | None:
        entry = self._requests.get(request_key)
        if entry is None:
            return None
        run = entry.run
        if not run.done:
            return run
        events = self.store.get(run.id)
        if (
            entry.delivered or events is None or not run.started.done() or run.started.exception() is not None
            or events.finished_at is None
            or time.monotonic() - events.finished_at > self.settings.get_rejoin_window
        ):
            del self._requests[request_key]
            self._key_of.pop(run.id, None)
            return None
        return run

    def _forget_requests(self) -> None:
        """Drop request keys whose stream can no longer be joined (called by the sweep)."""
        for key in list(self._requests):
            self._rejoinable(key)

    def _claim_chat(self, chat_id: str, owner: str) -> None:
        if chat_id in self._chats:
            raise ChatBusy(
                f"chatId {chat_id!r} already has a prediction running ({self._chats[chat_id]}); "
                "Flowise would mix the two up"
            )
        self._chats[chat_id] = owner

    def _take_slot(self, owner: str | None) -> None:
        if owner is None:
            return
        running = self._per_owner.get(owner, 0)
        if running >= self.settings.max_streams_per_key:
            raise TooManyStreams(
                f"{running} predictions are running for this client, its maximum "
                "(FLOWISE_SSE_MAX_STREAMS_PER_KEY); retry when one ends"
            )
        self._per_owner[owner] = running + 1

    def _give_slot(self, owner: str | None) -> None:
        if owner is None:
            return
        running = self._per_owner.get(owner, 0) - 1
        if running > 0:
            self._per_owner[owner] = running
        else:
            self._per_owner.pop(owner, None)

    @contextmanager
    def chat_in_use(self, chat_id: str, owner: str) -> Iterator[None]:
        self._claim_chat(chat_id, owner)
        try:
            yield
        finally:
            self._chats.pop(chat_id, None)

    @asynccontextmanager
    async def prediction_slot(self, chat_id: str, owner: str | None) -> AsyncIterator[None]:
        """A non-streaming prediction holds what a stream holds: its chatId (on every replica,
        through the Redis claim when there is one) and a slot of its owner's."""
        if self.draining:
            raise ShuttingDown("the gateway is shutting down; retry on another replica")
        claim_id = f"p{uuid.uuid4().hex}"  # never a stream id (those are 32 hex digits)
        with self.chat_in_use(chat_id, "a non-streaming prediction"):
            self._take_slot(owner)
            claimed = False
            try:
                if self.mirror:
                    claimed = await self.mirror.claim_chat(chat_id, claim_id)
                    if not claimed:
                        raise ChatBusy(f"chatId {chat_id!r} already has a prediction running on another replica")
                yield
            finally:
                self._give_slot(owner)
                if claimed:  # in a tracked task: the client leaving cancels this one
                    self.mirror.release_chat_soon(chat_id, claim_id)  # type: ignore[union-attr]

    def abort(self, run: StreamRun, reason: str, failure: GatewayError | None = None) -> bool:
        if run.done:
            return False
        run.abort_reason = run.abort_reason or reason
        run.failure = run.failure or failure
        run.task.cancel()  # type: ignore[union-attr]
        return True

    async def _drive(self, run: StreamRun) -> None:
        failure: GatewayError | None = None
        error_code: str | None = None  # an `error` event the upstream yielded itself
        try:
            async with aclosing(self.upstream.stream(run.chatflow_id, run.prediction)) as events:
                async for event in events:
                    name = event.event
                    if name == TOKEN:  # the per-token cost of the metrics: this
                        run.tokens += 1
                        if run.first_token_at is None:
                            run.first_token_at = time.monotonic()
                        self._append(run, event, terminal=False)
                        continue
                    if name == START:
                        event.data = {"streamId": run.id, **event.data}
                    elif name == ERROR:
                        error_code = str(event.data.get("code", "internal_error"))
                    self._append(run, event, terminal=name in TERMINAL)
                    if name == START:
                        self._started(run, event)
                    elif name in TERMINAL:
                        # Flowise is done with the chat: a follow-up question on it must not get
                        # 409 while the transport reads the rest of the response (up to 1 s).
                        self._release_chat(run)
        except asyncio.CancelledError:
            if not run.events.finished:  # stopped after its terminal event: nothing was lost
                failure = run.failure or StreamAborted(f"the stream was stopped: {run.abort_reason or 'cancelled'}")
        except GatewayError as exc:  # StreamTooLarge too: closing `events` aborted the upstream
            # A stop that landed in the same tick as a timeout: the DELETE was answered, it wins.
            failure = (run.failure or StreamAborted(f"the stream was stopped: {run.abort_reason}")) if run.abort_reason else exc
        except Exception as exc:  # a bug of ours must still end the stream clearly
            logger.exception("stream %s failed", run.id)
            failure = GatewayError(f"the gateway failed: {type(exc).__name__}")
        else:
            if not run.events.finished:
                failure = UpstreamError("Flowise's stream ended without a final answer")
        finally:
            self._release_chat(run)
            self.runs.pop(run.id, None)
            self._give_slot(run.owner)
        # No await from here on: a DELETE landing now must not cut the stream's last word.
        if failure is None:
            self._ended(run, error_code)
            return
        if run.started.done():
            if run.events.finished:  # its own terminal event is in: nothing more to say
                self._ended(run, error_code)
                return
            try:  # always fits (memory_store.TERMINAL_RESERVE); a bug here must not orphan readers
                self._append(run, Event(ERROR, failure.to_dict()), terminal=True)
            except Exception:
                logger.exception("stream %s: its final error could not be stored", run.id)
                self.store.drop(run.id)  # readers stop; a resume gets 404 rather than waiting
            self._ended(run, failure.code)
        else:
            run.started.set_exception(failure)
            run.started.exception()  # retrieved: the requester may already be gone
            self.store.drop(run.id)
            metrics.stream_rejected(failure.code)
            logger.info("stream refused before start", extra=fields(
                stream_id=run.id, chatflow_id=run.chatflow_id, chat_id=run.prediction.chat_id, code=failure.code,
            ))

    def _release_chat(self, run: StreamRun) -> None:
        """Once per run, and only its own claim: the chatId may already be another run's."""
        if run.chat_released:
            return
        run.chat_released = True
        if self._chats.get(run.prediction.chat_id) == f"stream {run.id}":
            del self._chats[run.prediction.chat_id]
        if self.mirror:
            self.mirror.release_chat_soon(run.prediction.chat_id, run.id)

    def _started(self, run: StreamRun, start: Event) -> None:
        run.transport = str(start.data.get("transport") or "unknown")
        metrics.stream_started(run.transport)
        logger.info("stream started", extra=fields(
            stream_id=run.id, chat_id=run.prediction.chat_id, chatflow_id=run.chatflow_id, transport=run.transport,
            start_ms=round((time.monotonic() - run.requested_at) * 1000, 1),
        ))
        run.started.set_result(None)

    def _ended(self, run: StreamRun, code: str | None) -> None:
        """The stream's one `stream ended` line and its metrics, at its terminal event."""
        now = time.monotonic()
        first = None if run.first_token_at is None else run.first_token_at - run.requested_at
        metrics.stream_ended(run.transport, code, run.tokens, run.events.size, first, now - run.requested_at)
        logger.info("stream ended", extra=fields(
            stream_id=run.id, chat_id=run.prediction.chat_id, chatflow_id=run.chatflow_id,
            transport=run.transport, outcome=metrics.outcome(code),
            code=code, tokens=run.tokens, bytes=run.events.size,
            first_token_ms=None if first is None else round(first * 1000, 1),
            duration_ms=round((now - run.requested_at) * 1000, 1),
        ))

    def _append(self, run: StreamRun, event: Event, terminal: bool) -> None:
        seq = run.events.append(event, terminal)
        if self.mirror:
            self.mirror.append(run.id, seq, run.events.frames[-1], terminal)

    def _abort_requested(self, stream_id: str) -> None:
        run = self.runs.get(stream_id)
        if run:
            self.abort(run, "stopped by DELETE")

    def _mirror_failed(self, stream_id: str, why: str) -> None:
        """Redis cannot take this stream's events: end it clearly rather than leave a hole."""
        run = self.runs.get(stream_id)
        if run:
            self.abort(run, why, StoreUnavailable(f"the stream was stopped: {why}"))

    async def stop(self, stream_id: str) -> bool:
        """`DELETE`: stop the stream wherever it runs. False when it is unknown or expired."""
        run = self.runs.get(stream_id)
        if run:
            self.abort(run, "stopped by DELETE")
            await asyncio.gather(run.task, return_exceptions=True)  # type: ignore[arg-type]
            return True
        if self.store.get(stream_id) is not None:
            return True  # already over
        if self.mirror and await self.mirror.exists(stream_id):
            await self.mirror.publish_abort(stream_id)
            return True
        return False

    # --- readers --------------------------------------------------------------------------
    async def follow(self, stream_id: str, after: int) -> AsyncIterator[bytes] | None:
        """The stream's frames after seq `after`, live until its end: from memory on the replica
        running it, from Redis on the others. Checked before any byte is sent, so an unknown
        stream is a 404 rather than an empty event stream, and a reader already past the
        terminal event gets None (nothing will ever follow)."""
        after = max(0, after)
        events = self.store.get(stream_id)
        if events is not None:
            if events.finished and after >= len(events.frames):
                return None
            if after:
                logger.info("stream resumed", extra=fields(stream_id=stream_id, after=after, source="memory"))
            return self._follow(events, self.runs.get(stream_id), after)
        if self.mirror and await self.mirror.exists(stream_id):
            if await self.mirror.ended_by(stream_id, after):
                return None
            # Another replica's stream: worth a line, so one stream can be followed across replicas.
            logger.info("stream resumed" if after else "stream read", extra=fields(
                stream_id=stream_id, after=after, source="redis"))
            return self._follow_redis(stream_id, after)
        raise StreamNotFound(f"stream {stream_id} is unknown or has expired")

    async def _follow(self, events: StreamLog, run: StreamRun | None, after: int) -> AsyncIterator[bytes]:
        release = self.hold(run) if run else None
        metrics.reader_joined("memory", after > 0)
        sent = 0
        key = self._key_of.get(events.stream_id)
        try:
            async for chunk in events.frames_after(after, self._should_stop):
                sent += len(chunk)
                yield chunk
            # Resumed here after the last write went out: this reader has the whole stream, so
            # the same GET again is a new question.
            entry = self._requests.get(key) if key is not None else None
            if entry is not None and entry.run.id == events.stream_id and events.finished:
                entry.delivered = True
        finally:
            metrics.reader_left("memory", sent)
            if release:
                release()

    def hold(self, run: StreamRun) -> Callable[[], None]:
        """Count one more reader of `run`, at once; the returned callable lets go (once). When the
        last reader lets go of an unfinished run, it is aborted if `on_client_disconnect=abort`
        or the run was started with `abort_unread`."""
        run.readers += 1
        held = True

        def release() -> None:
            nonlocal held
            if not held:
                return
            held = False
            run.readers -= 1
            # A finished log needs no abort: the run task is only tidying up (and must not be
            # cancelled into writing an `error` after its `end`).
            if run.readers == 0 and not run.events.finished and (
                run.abort_unread or self.settings.on_client_disconnect == "abort"
            ):
                self.abort(run, "its last reader disconnected")

        return release

    def events(self, run: StreamRun) -> AsyncIterator[list[Event]]:
        """`run`'s normalized events from its first, live to its end, in batches (what piled up
        while the reader was busy), for a reader on this replica
        that cannot resume elsewhere: it is not let go early on drain (the run's own end, or its
        abort after `shutdown_grace`, ends it)."""
        return run.events.events_after(0, lambda: False)

    async def _follow_redis(self, stream_id: str, after: int) -> AsyncIterator[bytes]:
        metrics.reader_joined("redis", after > 0)
        sent = 0
        try:
            async with aclosing(self.mirror.follow(stream_id, after, self._should_stop)) as chunks:  # type: ignore[union-attr]
                async for chunk in chunks:
                    sent += len(chunk)
                    yield chunk
        finally:
            metrics.reader_left("redis", sent)

    def _should_stop(self) -> bool:
        """While draining, readers are let go at once when Redis holds the events (clients resume
        on another replica); otherwise they stay to their stream's end, up to the grace period."""
        if not self.draining:
            return False
        return self.mirror is not None or time.monotonic() - self._drain_started >= self.settings.shutdown_grace
