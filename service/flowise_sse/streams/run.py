"""One stream run: one upstream prediction, from its admission to its terminal event.

A run drives `Upstream.stream()` into its `StreamLog`, counts the readers that hold it, ends
exactly once (`end`, or an `error` saying why), and gives back what its admission lent it (the
chat claim at its terminal event, its owner's slot and its registry entry when its task ends).
The connections that read it are not its own: they follow the log, from any position.

Phases, in order (`phase`):

    starting ──start event──▶ streaming ──end | error──▶ ended
        └──failure before start (raised to the requester: an HTTP error)──▶ refused

Who ends a run: the upstream (its `end` or a `GatewayError`), `abort()` (DELETE, the last reader
leaving when nobody can resume, shutdown, a Redis mirror that cannot keep up). An abort cancels
the task; closing the upstream generator closes the connection and asks Flowise to stop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import ExitStack, aclosing
from typing import TYPE_CHECKING, Literal, Protocol

from .. import metrics
from ..errors import GatewayError, StreamAborted, UpstreamError
from ..events import ERROR, START, TERMINAL, TOKEN, Event
from ..logging_setup import fields
from ..upstream.prediction import Prediction
from .event_log import StreamLog

if TYPE_CHECKING:
    from .redis_mirror import RedisMirror

logger = logging.getLogger("flowise_sse")

Phase = Literal["starting", "streaming", "ended", "refused"]


class EventSource(Protocol):
    """What a run reads from: `Upstream`, or a test's scripted double."""

    def stream(self, chatflow_id: str, prediction: Prediction) -> AsyncGenerator[Event, None]: ...


class StreamRun:
    def __init__(
        self, stream_id: str, chatflow_id: str, prediction: Prediction, log: StreamLog, *,
        owner: str | None = None, abort_when_unread: bool = False, mirror: RedisMirror | None = None,
        release_chat: Callable[[], None] = lambda: None, lent: ExitStack | None = None,
    ) -> None:
        """`owner`: who started it. `abort_when_unread`: abort it when its last reader lets go.
        `release_chat` gives its chat back (at its terminal event); `lent` gives back all else
        admission lent it (when its task ends)."""
        self.id = stream_id
        self.chatflow_id = chatflow_id
        self.prediction = prediction
        self.log = log
        self.owner = owner
        self.abort_when_unread = abort_when_unread
        self.phase: Phase = "starting"
        self.readers = 0
        self.task: asyncio.Task[None] | None = None
        self.started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._mirror = mirror
        self._release_chat = release_chat
        self._lent = lent or ExitStack()
        self._abort_reason: str | None = None
        self._abort_failure: GatewayError | None = None
        # For the metrics and the log lines: counted here, reported once at the end.
        self._requested_at = time.monotonic()
        self._transport = "unknown"
        self._tokens = 0
        self._first_token_at: float | None = None

    @property
    def done(self) -> bool:
        return self.task is None or self.task.done()

    def launch(self, upstream: EventSource) -> None:
        self.task = asyncio.get_running_loop().create_task(self._drive(upstream), name=f"stream {self.id}")

    async def until_started(self) -> None:
        """Wait for the `start` event; a failure before it is raised here. The run itself is
        shielded: the waiter leaving decides nothing (the caller does)."""
        await asyncio.shield(self.started)

    def abort(self, reason: str, failure: GatewayError | None = None) -> bool:
        """Stop the run (its readers get `error` `aborted`, or `failure`). False when it is over."""
        task = self.task
        if task is None or task.done():  # `done`, with the task at hand
            return False
        self._abort_reason = self._abort_reason or reason
        self._abort_failure = self._abort_failure or failure
        task.cancel()
        return True

    # --- readers --------------------------------------------------------------------------
    def hold(self, abort_on_client_disconnect: bool = False) -> Callable[[], None]:
        """Count one more reader, at once; the returned callable lets go (once). When the last
        reader lets go of an unfinished run, it is aborted if it was started
        `abort_when_unread` or `abort_on_client_disconnect` says so."""
        self.readers += 1
        held = True

        def release() -> None:
            nonlocal held
            if not held:
                return
            held = False
            self.readers -= 1
            # A finished log needs no abort: the task is only tidying up (and must not be
            # cancelled into writing an `error` after its `end`).
            if self.readers == 0 and not self.log.finished and (self.abort_when_unread or abort_on_client_disconnect):
                self.abort("its last reader disconnected")

        return release

    def event_batches(self) -> AsyncGenerator[list[Event], None]:
        """The run's normalized events from its first, live to its end, in batches (what piled
        up while the reader was busy), for a reader that cannot resume elsewhere: it is not let
        go early on drain (the run's own end, or its abort after the grace period, ends it)."""
        return self.log.events_after(0, lambda: False)

    # --- the drive ------------------------------------------------------------------------
    async def _drive(self, upstream: EventSource) -> None:
        failure: GatewayError | None = None
        error_code: str | None = None  # an `error` event the upstream yielded itself
        try:
            async with aclosing(upstream.stream(self.chatflow_id, self.prediction)) as events:
                async for event in events:
                    name = event.event
                    if name == TOKEN:  # the per-token cost of the metrics: this
                        self._tokens += 1
                        if self._first_token_at is None:
                            self._first_token_at = time.monotonic()
                        self._append(event, terminal=False)
                        continue
                    event.data = self.prediction.client_view(event.data)
                    if name == START:
                        event.data = {"streamId": self.id, **event.data}
                    elif name == ERROR:
                        error_code = str(event.data.get("code", "internal_error"))
                    self._append(event, terminal=name in TERMINAL)
                    if name == START:
                        self._on_start(event)
                    elif name in TERMINAL:
                        # Flowise is done with the chat: a follow-up question on it must not get
                        # 409 while the transport reads the rest of the response (up to 1 s).
                        self._release_chat()
        except asyncio.CancelledError:
            if not self.log.finished:  # stopped after its terminal event: nothing was lost
                failure = self._abort_failure or StreamAborted(
                    f"the stream was stopped: {self._abort_reason or 'cancelled'}")
        except GatewayError as exc:  # StreamTooLarge too: closing `events` aborted the upstream
            # A stop that landed in the same tick as a timeout: the stop was answered, it wins.
            failure = exc if self._abort_reason is None else (
                self._abort_failure or StreamAborted(f"the stream was stopped: {self._abort_reason}"))
        except Exception as exc:  # a bug of ours must still end the stream clearly
            logger.exception("stream %s failed", self.id)
            failure = GatewayError(f"the gateway failed: {type(exc).__name__}")
        else:
            if not self.log.finished:
                failure = UpstreamError("Flowise's stream ended without a final answer")
        finally:
            self._release_chat()
            self._lent.close()
        # No await from here on: a stop landing now must not cut the stream's last word.
        if failure is None or self.log.finished:
            self._on_end(error_code)
        elif self.started.done():
            try:  # always fits (memory_store.TERMINAL_RESERVE); a bug here must not orphan readers
                self._append(Event(ERROR, failure.to_dict()), terminal=True)
            except Exception:
                logger.exception("stream %s: its final error could not be stored", self.id)
                self.log.drop()  # readers stop; a resume gets 404 rather than waiting
            self._on_end(failure.code)
        else:
            self._on_refused(failure)

    def _append(self, event: Event, terminal: bool) -> None:
        seq = self.log.append(event, terminal)
        if terminal:
            self.phase = "ended"
        if self._mirror:
            self._mirror.append(self.id, seq, self.log.frames[-1], terminal)

    def _on_start(self, start: Event) -> None:
        self.phase = "streaming"
        self._transport = str(start.data.get("transport") or "unknown")
        metrics.stream_started(self._transport)
        logger.info("stream started", extra=fields(
            stream_id=self.id, chat_id=self.prediction.chat_id, chatflow_id=self.chatflow_id,
            transport=self._transport, start_ms=round((time.monotonic() - self._requested_at) * 1000, 1),
        ))
        self.started.set_result(None)

    def _on_refused(self, failure: GatewayError) -> None:
        self.phase = "refused"
        self.started.set_exception(failure)
        self.started.exception()  # retrieved: the requester may already be gone
        self.log.drop()
        metrics.stream_rejected(failure.code)
        logger.info("stream refused before start", extra=fields(
            stream_id=self.id, chatflow_id=self.chatflow_id, chat_id=self.prediction.chat_id, code=failure.code,
        ))

    def _on_end(self, code: str | None) -> None:
        """The stream's one `stream ended` line and its metrics, at its terminal event."""
        now = time.monotonic()
        first = None if self._first_token_at is None else self._first_token_at - self._requested_at
        metrics.stream_ended(self._transport, code, self._tokens, self.log.size, first, now - self._requested_at)
        logger.info("stream ended", extra=fields(
            stream_id=self.id, chat_id=self.prediction.chat_id, chatflow_id=self.chatflow_id,
            transport=self._transport, outcome=metrics.outcome(code),
            code=code, tokens=self._tokens, bytes=self.log.size,
            first_token_ms=None if first is None else round(first * 1000, 1),
            duration_ms=round((now - self._requested_at) * 1000, 1),
        ))
