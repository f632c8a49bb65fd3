"""The mirror's writer: every stream's frames into its Redis Stream, in order, none ever dropped.

`append` only queues a frame in its stream's backlog; one task sends everything queued since its
last round trip as one pipeline (every stream's frames of the last few ms, one round trip per
batch, no task per token), one pipeline at a time, so a stream's frames reach Redis in order.
Queuing a stream's commands records which of the pipeline's answers are theirs (a `_Share`), and
the answers are read back through that record alone: what Redis refused goes back to the front
of its stream's backlog and is sent again, the rest is done. Entry ids are the frames' seqs, so a
retry is idempotent (an id already taken is an entry already written).

A stream whose frames wait longer than `redis_timeout`, or more than `redis_buffer_bytes` of them,
is reported to `on_failure`: the manager ends it with `error` `store_unavailable`, a terminal frame
queued after the others, so Redis gets the stream whole, without a hole, once it is back. An
events key gets its expiry with the stream's first write and again with its last.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as redis

from ...settings import Settings
from . import keys
from .calls import is_taken_id, redis_call

logger = logging.getLogger("flowise_sse")

WRITE_BATCH_BYTES = 1024 * 1024  # per pipeline; what is left goes in the next round trip
# Woken by a first frame, the writer lets the loop run this long before taking the batch: a round
# trip costs ~85 µs of client CPU plus ~17 µs per entry, so gathering a few ms of tokens from every
# stream into one pipeline cuts the cost per token severalfold; readers elsewhere see it 5 ms later.
WRITE_LINGER = 0.005
_FIRST_BACKOFF, _MAX_BACKOFF = 0.05, 1.0

Frame = tuple[int, bytes, bool]  # seq, the SSE frame, whether it is the stream's last


class _Backlog:
    """One stream's frames not yet known to be in Redis (queued, or in the pipeline in flight)."""

    __slots__ = ("frames", "bytes", "since", "expiring", "failed")

    def __init__(self) -> None:
        self.frames: list[Frame] = []  # queued, not yet sent
        self.bytes = 0  # queued + in flight
        self.since = 0.0  # when the oldest of those was queued
        self.expiring = False  # the events key got its expiry
        self.failed = False  # `on_failure` was called for the stream


class _Share:
    """One stream's part of a pipeline: the frames it sends, and which of the pipeline's answers
    belong to their XADDs and to the EXPIREs sent with them."""

    __slots__ = ("stream_id", "backlog", "frames", "xadds", "expires")

    def __init__(self, stream_id: str, backlog: _Backlog, frames: list[Frame]) -> None:
        self.stream_id = stream_id
        self.backlog = backlog
        self.frames = frames
        self.xadds = slice(0)
        self.expires = slice(0)


class MirrorWriter:
    def __init__(self, client: redis.Redis, settings: Settings, on_failure: Callable[[str, str], None]) -> None:
        self._redis = client
        self._settings = settings
        self._on_failure = on_failure
        self._backlogs: dict[str, _Backlog] = {}  # every stream whose terminal frame is not in Redis yet
        self._queued: dict[str, None] = {}  # streams with frames queued, in queueing order
        self._wake = asyncio.Event()
        self._in_flight = False
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Frames are queued or in flight."""
        return bool(self._queued) or self._in_flight

    @property
    def unfinished(self) -> int:
        """Streams whose frames Redis has not all taken."""
        return len(self._backlogs)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def append(self, stream_id: str, seq: int, frame: bytes, terminal: bool) -> None:
        """Queue one frame; never blocks, never drops."""
        backlog = self._backlogs.get(stream_id)
        if backlog is None:
            backlog = self._backlogs[stream_id] = _Backlog()
        if not backlog.bytes:
            backlog.since = time.monotonic()
        backlog.frames.append((seq, frame, terminal))
        backlog.bytes += len(frame)
        self._queued[stream_id] = None
        if not terminal and not backlog.failed and backlog.bytes > self._settings.redis_buffer_bytes:
            self._fail(stream_id, backlog, f"more than {self._settings.redis_buffer_bytes} bytes of its events "
                                           "were waiting for Redis (FLOWISE_SSE_REDIS_BUFFER_BYTES)")
        self._wake.set()

    def _fail(self, stream_id: str, backlog: _Backlog, why: str) -> None:
        backlog.failed = True
        # Called from inside the stream's own append: the manager acts on the next loop turn.
        asyncio.get_running_loop().call_soon(self._on_failure, stream_id, f"Redis is unavailable: {why}")

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        while True:
            if not self._queued:
                self._wake.clear()
                await self._wake.wait()
                await asyncio.sleep(WRITE_LINGER)
                continue
            try:
                await self._send(self._take())
            except (redis.RedisError, OSError) as exc:
                self._check_deadlines(exc)
                await asyncio.sleep(backoff)
                backoff = min(_MAX_BACKOFF, backoff * 2)
            else:
                backoff = _FIRST_BACKOFF

    def _take(self) -> list[_Share]:
        shares, size, queued = [], 0, self._queued
        while queued and size < WRITE_BATCH_BYTES:
            stream_id = next(iter(queued))
            del queued[stream_id]
            backlog = self._backlogs[stream_id]
            frames, backlog.frames = backlog.frames, []
            shares.append(_Share(stream_id, backlog, frames))
            size += sum(len(frame) for _, frame, _ in frames)
        return shares

    async def _send(self, shares: list[_Share]) -> None:
        """One round trip. Raises when Redis took none of it (the whole batch is queued again) or
        refused part of it (only that part is queued again)."""
        pipe = self._redis.pipeline(transaction=False)
        for share in shares:
            self._queue(pipe, share)
        self._in_flight = True
        try:
            with redis_call("mirror"):
                try:
                    answers = await pipe.execute(raise_on_error=False)
                except (redis.RedisError, OSError):
                    self._put_back(shares)
                    raise
                refusal = self._account(shares, answers)
                if refusal is not None:
                    raise refusal
        finally:
            self._in_flight = False

    def _queue(self, pipe: Any, share: _Share) -> None:
        key = keys.events(share.stream_id)
        first = len(pipe)
        for seq, frame, terminal in share.frames:
            pipe.xadd(key, keys.entry(frame, terminal), id=keys.entry_id(seq))
        share.xadds = slice(first, len(pipe))
        if share.frames[-1][2]:
            pipe.expire(key, keys.ended_ttl(self._settings))
            pipe.expire(keys.meta(share.stream_id), keys.ended_ttl(self._settings))
        elif not share.backlog.expiring:
            pipe.expire(key, keys.running_ttl(self._settings))
        share.expires = slice(share.xadds.stop, len(pipe))

    def _put_back(self, shares: list[_Share]) -> None:
        for share in reversed(shares):
            share.backlog.frames[:0] = share.frames
            self._queued[share.stream_id] = None

    def _account(self, shares: list[_Share], answers: list[Any]) -> Exception | None:
        """Each stream's answers, read through its share: its frames up to the first one Redis
        refused are done, that one and the rest are queued again, at the front of its backlog.
        Returns the first refusal of the batch, if any."""
        now = time.monotonic()
        first_refusal: Exception | None = None
        for share in shares:
            backlog = share.backlog
            written, refusal = _written(answers[share.xadds])
            if refusal is None:
                refusal = next((answer for answer in answers[share.expires] if isinstance(answer, Exception)), None)
                if refusal is not None:
                    # Every frame is in but the key has no expiry: its last frame goes again (its
                    # id then found taken), and the expiry with it.
                    written -= 1
            backlog.bytes -= sum(len(frame) for _, frame, _ in share.frames[:written])
            if refusal is not None:
                backlog.frames[:0] = share.frames[written:]
                self._queued[share.stream_id] = None
                first_refusal = first_refusal or refusal
                continue
            backlog.expiring = True
            backlog.since = now if backlog.bytes else 0.0
            if share.frames[-1][2]:
                del self._backlogs[share.stream_id]
        return first_refusal

    def _check_deadlines(self, exc: BaseException) -> None:
        logger.warning("flowise-sse: writing to Redis failed (%s); retrying", exc)
        now = time.monotonic()
        for stream_id, backlog in self._backlogs.items():
            if backlog.bytes and not backlog.failed and now - backlog.since > self._settings.redis_timeout:
                self._fail(stream_id, backlog,
                           f"its events could not be written for {self._settings.redis_timeout:g} s "
                           "(FLOWISE_SSE_REDIS_TIMEOUT)")


def _written(answers: list[Any]) -> tuple[int, Exception | None]:
    """How many of a stream's XADDs, in order, put their entry in Redis (one whose id was taken
    did: the entry is there), and the refusal that stopped the rest."""
    for index, answer in enumerate(answers):
        if isinstance(answer, Exception) and not is_taken_id(answer):
            return index, answer
    return len(answers), None
