"""Where streams' event logs live while they run and for `stream_retention` after: in memory.

Memory is bounded per stream and overall; finished streams are evicted first, oldest first.
"""

from __future__ import annotations

import time

from ..errors import Overloaded, StreamTooLarge
from ..settings import Settings
from .event_log import StreamLog


class MemoryStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.logs: dict[str, StreamLog] = {}  # insertion order is age order
        self.total_bytes = 0

    def create(self, stream_id: str) -> StreamLog:
        # Expired streams go in the periodic sweep; a full store also evicts finished ones here.
        if len(self.logs) >= self.settings.max_streams and not self._evict_finished(0, need_slot=True):
            raise Overloaded(f"the gateway holds its maximum of {self.settings.max_streams} streams")
        events = StreamLog(stream_id, self, self.settings.retry_ms)
        self.logs[stream_id] = events
        return events

    def get(self, stream_id: str) -> StreamLog | None:
        events = self.logs.get(stream_id)
        if events and events.finished_at is not None and self._expired(events):
            self.drop(stream_id)
            return None
        return events

    def drop(self, stream_id: str) -> None:
        events = self.logs.pop(stream_id, None)
        if events:
            self.total_bytes -= events.size

    def reserve(self, events: StreamLog, size: int, terminal: bool = False) -> None:
        """Count `size` more bytes for `events`; over a cap, `StreamTooLarge`. A terminal event is
        exempt from both caps: the stream must be able to say why it stopped, or its readers would
        wait forever. It makes room for itself by evicting finished streams first, and past that
        overshoots the total by its one frame."""
        settings = self.settings
        if terminal:
            self._evict_finished(size)
        elif events.size + size > settings.max_stream_bytes:
            raise StreamTooLarge(
                f"the stream passed its cap of {settings.max_stream_bytes} bytes (FLOWISE_SSE_MAX_STREAM_BYTES)"
            )
        elif self.total_bytes + size > settings.max_total_bytes and not self._evict_finished(size):
            raise StreamTooLarge(
                f"the gateway's event memory is full ({settings.max_total_bytes} bytes, FLOWISE_SSE_MAX_TOTAL_BYTES)"
            )
        self.total_bytes += size

    def evict_expired(self) -> None:
        for stream_id, events in list(self.logs.items()):
            if events.finished_at is not None and self._expired(events):
                self.drop(stream_id)

    def _expired(self, events: StreamLog) -> bool:
        return time.monotonic() - events.finished_at > self.settings.stream_retention  # type: ignore[operator]

    def _evict_finished(self, size: int, need_slot: bool = False) -> bool:
        """Drop finished streams, oldest first, until `size` more bytes (or one more stream) fit."""
        def fits() -> bool:
            if need_slot:
                return len(self.logs) < self.settings.max_streams
            return self.total_bytes + size <= self.settings.max_total_bytes

        for stream_id, events in list(self.logs.items()):
            if fits():
                return True
            if events.finished:
                self.drop(stream_id)
        return fits()
