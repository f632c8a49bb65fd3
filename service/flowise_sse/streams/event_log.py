"""One stream's event log: its encoded SSE frames, in order, and the readers waiting for more.

Frame N has seq N+1. Readers replay what follows their position and then wait for more, so a
stream outlives any one connection. Memory is counted by the store (`memory_store.py`).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, AsyncIterator, Callable

from ..events import Event
from .sse_encoder import decode, encode

if TYPE_CHECKING:
    from .memory_store import MemoryStore


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
        self._store.reserve(self, len(frame), terminal)
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
        async for batch in self._batches_after(seq, should_stop):
            yield batch[0] if len(batch) == 1 else b"".join(batch)

    async def events_after(self, seq: int, should_stop: Callable[[], bool]) -> AsyncIterator[list[Event]]:
        """The same, decoded back into normalized events, for readers that speak another wire
        format (the OpenAI route); a batch of events that piled up comes as one list, so that the
        reader can write it at once too. The frames are the one copy kept; decoding one is two
        `find`s and an `orjson.loads` of its data line."""
        async for batch in self._batches_after(seq, should_stop):
            yield [decode(frame) for frame in batch]

    async def _batches_after(self, seq: int, should_stop: Callable[[], bool]) -> AsyncIterator[list[bytes]]:
        while True:
            if seq < len(self.frames):
                batch = self.frames[seq:]
                seq += len(batch)
                yield batch
                continue
            if self.finished or should_stop():
                return
            self._waiting += 1
            try:
                await self._wake.wait()
            finally:
                self._waiting -= 1
