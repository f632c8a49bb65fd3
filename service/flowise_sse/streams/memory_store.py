"""Where streams' event logs live while they run and for `stream_retention` after: in memory.

Bounded per stream (`max_stream_bytes`), overall (`max_total_bytes`) and in count (`max_streams`).
Every operation costs O(1) per stream, whatever the store holds: finished streams sit in an
ordered dict in finish order, which is also their expiry order (one retention for all), so
expiry and eviction pop from its front and never scan the running ones.

The terminal event always fits: each running stream holds a `TERMINAL_RESERVE` of the total
cap from its creation to its end, so `error`/`end` can always be stored even when running
streams have filled the rest; a terminal event larger than what is free (an `end` carrying a
long answer, with nothing finished left to evict) is stored as a short `error`
`stream_too_large` instead. The store thus never holds more than `max_total_bytes`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

from ..errors import Overloaded, StreamTooLarge
from ..settings import Settings
from .event_log import StreamLog

logger = logging.getLogger("flowise_sse")

TERMINAL_RESERVE = 1024
"""Bytes of the total cap each running stream keeps for its terminal event (an `error` frame
is ~250 bytes; the substitute `stream_too_large` error always fits)."""


class MemoryStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.logs: dict[str, StreamLog] = {}  # every stream held, running or finished
        self.finished: OrderedDict[str, StreamLog] = OrderedDict()  # finish order = expiry order
        self.total_bytes = 0  # frames stored
        self.reserved = 0  # TERMINAL_RESERVE per running stream
        self._warned_full = 0.0

    @property
    def used(self) -> int:
        return self.total_bytes + self.reserved

    def create(self, stream_id: str, owner: str | None = None) -> StreamLog:
        settings = self.settings
        if len(self.logs) >= settings.max_streams and not self._evict(0, need_slot=True):
            raise Overloaded(f"the gateway holds its maximum of {settings.max_streams} streams")
        if not self._evict(TERMINAL_RESERVE):
            self._warn_full()
            raise Overloaded(
                f"the gateway's event memory is full ({settings.max_total_bytes} bytes, "
                "FLOWISE_SSE_MAX_TOTAL_BYTES) with running streams"
            )
        events = StreamLog(stream_id, self, settings.retry_ms, owner)
        self.logs[stream_id] = events
        self.reserved += TERMINAL_RESERVE
        return events

    def get(self, stream_id: str) -> StreamLog | None:
        events = self.logs.get(stream_id)
        if events is not None and events.finished_at is not None and self._expired(events, time.monotonic()):
            self.drop(stream_id)
            return None
        return events

    def drop(self, stream_id: str) -> None:
        events = self.logs.pop(stream_id, None)
        if events is None:
            return
        self.total_bytes -= events.size
        if events.finished_at is None:
            self.reserved -= TERMINAL_RESERVE
        else:
            self.finished.pop(stream_id, None)
        events.evict()

    def reserve(self, events: StreamLog, size: int) -> None:
        """Count `size` more bytes of a running stream; over a cap, `StreamTooLarge`."""
        settings = self.settings
        if events.size + size > settings.max_stream_bytes:
            raise StreamTooLarge(
                f"the stream passed its cap of {settings.max_stream_bytes} bytes (FLOWISE_SSE_MAX_STREAM_BYTES)"
            )
        if not self._evict(size):
            self._warn_full()
            raise StreamTooLarge(
                f"the gateway's event memory is full ({settings.max_total_bytes} bytes, FLOWISE_SSE_MAX_TOTAL_BYTES)"
            )
        self.total_bytes += size

    def finish(self, events: StreamLog, size: int, force: bool = False) -> bool:
        """Count a terminal frame of `size` bytes and mark the stream finished. Exempt from the
        per-stream cap (a stream must be able to say why it stopped). False, and nothing
        changed, when it does not fit in the total even with the stream's reserve given back;
        `force` is for a frame no larger than the reserve, which always fits."""
        self.reserved -= TERMINAL_RESERVE
        if not self._evict(size) and not (force and size <= TERMINAL_RESERVE):
            self.reserved += TERMINAL_RESERVE
            return False
        self.total_bytes += size
        events.finished_at = time.monotonic()
        self.finished[events.stream_id] = events
        return True

    def _warn_full(self) -> None:
        now = time.monotonic()
        if now - self._warned_full >= 10:  # at most one line per 10 s
            self._warned_full = now
            logger.warning(
                "flowise-sse: event memory full (FLOWISE_SSE_MAX_TOTAL_BYTES=%d) with %d running streams: "
                "streams that grow end with stream_too_large, new ones get 503",
                self.settings.max_total_bytes, len(self.logs) - len(self.finished),
            )

    def evict_expired(self) -> None:
        now = time.monotonic()
        finished = self.finished
        while finished:
            stream_id, events = next(iter(finished.items()))
            if not self._expired(events, now):
                return
            self.drop(stream_id)

    def _expired(self, events: StreamLog, now: float) -> bool:
        # Only finished logs are asked about: `finished_at` is set.
        return events.finished_at is not None and now - events.finished_at > self.settings.stream_retention

    def _evict(self, size: int, need_slot: bool = False) -> bool:
        """Drop finished streams, oldest first, until `size` more bytes (or one more stream) fit."""
        settings = self.settings
        finished = self.finished
        while True:
            if need_slot:
                if len(self.logs) < settings.max_streams:
                    return True
            elif self.total_bytes + self.reserved + size <= settings.max_total_bytes:
                return True
            if not finished:
                return False
            self.drop(next(iter(finished)))
