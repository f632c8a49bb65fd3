"""One stream's event log: its encoded SSE frames, in order, and the readers waiting for more.

Frame N has seq N+1. Readers replay what follows their position and then wait for more, so a
stream outlives any one connection. Memory is counted by the store (`memory_store.py`); readers
share the log's frame objects and copy at most `READ_BATCH_BYTES` each.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Literal, overload

from ..errors import StreamTooLarge
from ..events import ERROR, Event
from .sse_encoder import decode, encode

if TYPE_CHECKING:
    from .memory_store import MemoryStore

READ_BATCH_BYTES = 64 * 1024
"""Frames that piled up while a reader was busy go out joined into writes of at most this many
bytes (a frame larger than that goes out alone, as the log's own bytes object): a reader that
does not read pins at most one such batch, never a copy of the stream."""

MEMORY_FULL = StreamTooLarge(
    "the gateway's event memory was full (FLOWISE_SSE_MAX_TOTAL_BYTES): the stream's last event could not be kept"
)


class StreamLog:
    __slots__ = ("stream_id", "owner", "frames", "size", "finished_at", "evicted", "_store", "_wake", "_waiting",
                 "_retry_ms")

    def __init__(self, stream_id: str, store: MemoryStore, retry_ms: int, owner: str | None = None) -> None:
        self.stream_id = stream_id
        self.owner = owner  # the tenant whose stream it is (None: an open gateway's)
        self.frames: list[bytes] = []
        self.size = 0
        self.finished_at: float | None = None
        self.evicted = False
        self._store = store
        self._wake = asyncio.Event()
        self._waiting = 0  # readers parked on `_wake`; with none, an append wakes nobody
        self._retry_ms = retry_ms

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def append(self, event: Event, terminal: bool = False) -> int:
        """Store one event. Over a cap a non-terminal event raises `StreamTooLarge`; a terminal
        event always goes in (as a short `stream_too_large` error if it does not fit)."""
        seq = len(self.frames) + 1
        retry = self._retry_ms if seq == 1 else None
        frame = encode(self.stream_id, seq, event, retry)
        if not terminal:
            self._store.reserve(self, len(frame))
        elif not self._store.finish(self, len(frame)):
            frame = encode(self.stream_id, seq, Event(ERROR, MEMORY_FULL.to_dict()), retry)
            self._store.finish(self, len(frame), force=True)
        self.frames.append(frame)
        self.size += len(frame)
        self.wake()
        return seq

    def wake(self) -> None:
        if self._waiting:
            # set() resolves every parked reader's future at once; clearing right after only
            # affects waits that start later (no new Event per wake: it ran once per token).
            self._wake.set()
            self._wake.clear()

    def drop(self) -> None:
        """Leave the store now (a stream refused before it started, or one whose end could not
        be stored): its readers stop and a lookup finds nothing."""
        self._store.drop(self.stream_id)

    def evict(self) -> None:
        """The store let go of this log: its frames are freed and its readers stop."""
        self.evicted = True
        self.frames = []
        self.wake()

    def frames_after(self, seq: int, should_stop: Callable[[], bool]) -> AsyncGenerator[bytes, None]:
        """Everything after `seq`, then each new event as it comes, until the terminal event.

        Frames that pile up while the reader is busy go out joined, in writes of at most
        `READ_BATCH_BYTES` (a larger frame alone, as the log's own object)."""
        return self._batches_after(seq, should_stop, True)

    async def events_after(
        self, seq: int, should_stop: Callable[[], bool]
    ) -> AsyncGenerator[list[Event], None]:
        """The same, decoded back into normalized events, for readers that speak another wire
        format (the OpenAI route); a batch of events that piled up comes as one list, so that the
        reader can write it at once too. The frames are the one copy kept; decoding one is two
        `find`s and an `orjson.loads` of its data line."""
        async for batch in self._batches_after(seq, should_stop, False):
            yield [decode(frame) for frame in batch]

    @overload
    def _batches_after(
        self, seq: int, should_stop: Callable[[], bool], joined: Literal[True]
    ) -> AsyncGenerator[bytes, None]: ...

    @overload
    def _batches_after(
        self, seq: int, should_stop: Callable[[], bool], joined: Literal[False]
    ) -> AsyncGenerator[list[bytes], None]: ...

    async def _batches_after(
        self, seq: int, should_stop: Callable[[], bool], joined: bool
    ) -> AsyncGenerator[list[bytes] | bytes, None]:
        """The log's own frames after `seq`, in batches of at most `READ_BATCH_BYTES` (or one
        larger frame), then live until the terminal event; `joined`: each batch as one bytes
        (one generator between the log and the socket, not two: a few µs per relayed token)."""
        while True:
            frames = self.frames
            count = len(frames)
            if seq < count:
                if joined and seq + 1 == count:  # the live case: one new frame, sent as it is
                    seq += 1
                    yield frames[seq - 1]
                    continue
                batch = [frames[seq]]
                size = len(batch[0])
                seq += 1
                while seq < count and size + len(frames[seq]) <= READ_BATCH_BYTES:
                    batch.append(frames[seq])
                    size += len(frames[seq])
                    seq += 1
                if joined:
                    yield batch[0] if len(batch) == 1 else b"".join(batch)
                else:
                    yield batch
                continue
            if self.finished or self.evicted or should_stop():
                return
            self._waiting += 1
            try:
                await self._wake.wait()
            finally:
                self._waiting -= 1
