"""Where a stream's events live while it runs and for `stream_retention` after: in memory.

Each stream is a `StreamLog` of encoded frames (frame N has seq N+1). Readers replay what
follows their position and then wait for more, so a stream outlives any one connection.
Memory is bounded per stream and overall; finished streams are evicted first, oldest first.
"""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator, Callable

from .errors import Overloaded, StreamTooLarge
from .events import Event
from .settings import Settings
from .sse import encode


class StreamLog:
    __slots__ = ("stream_id", "frames", "size", "finished_at", "_store", "_wake", "_waiting", "_retry_ms")

    def __init__(self, stream_id: str, store: MemoryStore, retry_ms: int) -> None:
        self.stream_id = stream_id
        self.frames: list[bytes] = []
        self.size = 0
        self.finished_at: float | None = None
        self._store = store
        self._wake = asyncio.Event()
        self._waiting = 0  # readers parked on `_wake`; with none, an append wakes nobody
        self._retry_ms = retry_ms

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def append(self, event: Event, terminal: bool = False) -> int:
        """Store one event; over a cap it raises `StreamTooLarge` (a terminal event always fits,
        so the stream can say why it stopped)."""
        seq = len(self.frames) + 1
        frame = encode(self.stream_id, seq, event, self._retry_ms if seq == 1 else None)
        self._store.reserve(self, len(frame), must_fit=not terminal)
        if terminal:
            self.finished_at = time.monotonic()
        self.frames.append(frame)
        self.size += len(frame)
        self.wake()
        return seq

    def wake(self) -> None:
        if self._waiting:
            self._wake.set()
            self._wake = asyncio.Event()

    async def frames_after(self, seq: int, should_stop: Callable[[], bool]) -> AsyncIterator[bytes]:
        """Everything after `seq`, then each new event as it comes, until the terminal event.

        Frames that pile up while the reader is busy go out joined, as one write.
        """
        while True:
            if seq < len(self.frames):
                batch = self.frames[seq:]
                seq += len(batch)
                yield batch[0] if len(batch) == 1 else b"".join(batch)
                continue
            if self.finished or should_stop():
                return
            self._waiting += 1
            try:
                await self._wake.wait()
            finally:
                self._waiting -= 1


class MemoryStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.logs: dict[str, StreamLog] = {}  # insertion order is age order
        self.total_bytes = 0

    def create(self, stream_id: str) -> StreamLog:
        # Expired streams go in the periodic sweep; a full store also evicts finished ones here.
        if len(self.logs) >= self.settings.max_streams and not self._evict_finished(0, need_slot=True):
            raise Overloaded(f"the gateway holds its maximum of {self.settings.max_streams} streams")
        log = StreamLog(stream_id, self, self.settings.retry_ms)
        self.logs[stream_id] = log
        return log

    def get(self, stream_id: str) -> StreamLog | None:
        log = self.logs.get(stream_id)
        if log and log.finished_at is not None and self._expired(log):
            self.drop(stream_id)
            return None
        return log

    def drop(self, stream_id: str) -> None:
        log = self.logs.pop(stream_id, None)
        if log:
            self.total_bytes -= log.size

    def reserve(self, log: StreamLog, size: int, must_fit: bool = True) -> None:
        settings = self.settings
        if not must_fit:
            self._evict_finished(size)
        elif log.size + size > settings.max_stream_bytes:
            raise StreamTooLarge(
                f"the stream passed its cap of {settings.max_stream_bytes} bytes (FLOWISE_SSE_MAX_STREAM_BYTES)"
            )
        if self.total_bytes + size > settings.max_total_bytes and not self._evict_finished(size):
            raise StreamTooLarge(
                f"the gateway's event memory is full ({settings.max_total_bytes} bytes, FLOWISE_SSE_MAX_TOTAL_BYTES)"
            )
        self.total_bytes += size

    def evict_expired(self) -> None:
        for stream_id, log in list(self.logs.items()):
            if log.finished_at is not None and self._expired(log):
                self.drop(stream_id)

    def _expired(self, log: StreamLog) -> bool:
        return time.monotonic() - log.finished_at > self.settings.stream_retention  # type: ignore[operator]

    def _evict_finished(self, size: int, need_slot: bool = False) -> bool:
        """Drop finished streams, oldest first, until `size` more bytes (or one more stream) fit."""
        def fits() -> bool:
            if need_slot:
                return len(self.logs) < self.settings.max_streams
            return self.total_bytes + size <= self.settings.max_total_bytes

        for stream_id, log in list(self.logs.items()):
            if fits():
                return True
            if log.finished:
                self.drop(stream_id)
        return fits()
