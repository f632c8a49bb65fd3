"""The mirror's writer: every stream's frames into its Redis Stream, in order, none ever dropped,
none ever missing: what a failover lost, the owner writes again.

`append` only queues a frame in its stream's backlog; one task sends everything queued since its
last round trip as one pipeline (every stream's frames of the last few ms, one round trip per
batch, no task per token), one pipeline at a time, so a stream's frames reach Redis in order.

Each stream's share of a pipeline is one call of `_APPEND`, a script on the stream's two keys
(one hash slot): it checks that the events key ends right before the share's first frame, adds
the frames, sets the keys' expiries when they have none, and writes the meta again if it is
missing. Replication to Redis' replicas is asynchronous, so a primary that fails over (or
restarts empty) can come back without the last entries it acknowledged, or without the keys at
all. The script then adds nothing and answers the seq its key ends at; the writer puts the
missing frames, from the stream's log in memory, in front of the backlog and sends them again.
A stream whose frames are no longer in memory (evicted) is ended in Redis instead, with `error`
`store_unavailable` right after what Redis holds. Entry ids are the frames' seqs, so a retry of a
share whose answer was lost adds nothing twice: the script skips what its key already holds.

A running stream that sends nothing for `VERIFY_EVERY` gets an empty share (the same checks,
no frame), so a quiet stream's keys are repaired within seconds of a failover too; a replica's
heartbeat that finds its own key gone asks for every stream's check at once (`verify_all`).

A stream whose frames wait longer than `redis_timeout`, or more than `redis_buffer_bytes` of them,
is reported to `on_failure`: the manager ends it with `error` `store_unavailable`, a terminal frame
queued after the others, so Redis gets the stream whole, without a hole, once it is back.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import NoScriptError

from ...errors import StoreUnavailable
from ...events import ERROR, Event
from ...settings import Settings
from ..sse_encoder import encode
from . import keys
from .calls import REDIS_ERRORS, Client, redis_call

if TYPE_CHECKING:
    from ..event_log import StreamLog

logger = logging.getLogger("flowise_sse")

WRITE_BATCH_BYTES = 1024 * 1024  # per pipeline, and per stream's share; the rest goes next time
# Woken by a first frame, the writer lets the loop run this long before taking the batch: a round
# trip costs ~85 µs of client CPU, and each stream's share one script call, so gathering a few ms
# of tokens from every stream into one pipeline cuts the cost per token severalfold; readers
# elsewhere see it 5 ms later.
WRITE_LINGER = 0.005
VERIFY_EVERY = 2.0  # seconds: a quiet running stream's keys are checked this often
_FIRST_BACKOFF, _MAX_BACKOFF = 0.05, 1.0

# KEYS: events, meta. ARGV: owner, tenant, running ttl, ended ttl, whether the last frame is the
# stream's terminal one, the first frame's seq, then the frames. Answers -1 when the key now ends
# with the last frame, else the seq the key ends at (0: no key), which is before the first frame:
# a hole that the caller fills first.
_APPEND = """
local top = 0
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if last[1] then top = tonumber(string.match(last[1][1], '^(%d+)')) end
local first = tonumber(ARGV[6])
if top < first - 1 then return top end
local count = #ARGV - 6
for i = 1, count do
  local seq = first + i - 1
  if seq > top then
    if i == count and ARGV[5] == '1' then
      redis.call('XADD', KEYS[1], seq .. '-0', 'f', ARGV[6 + i], 't', '1')
    else
      redis.call('XADD', KEYS[1], seq .. '-0', 'f', ARGV[6 + i])
    end
  end
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('HSET', KEYS[2], 'owner', ARGV[1], 'tenant', ARGV[2])
end
if ARGV[5] == '1' then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
else
  if top == 0 or redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
  if redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[3]) end
end
return -1
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()

Frame = tuple[int, bytes, bool]  # seq, the SSE frame, whether it is the stream's last


class _Backlog:
    """One stream's frames not yet known to be in Redis (queued, or in the pipeline in flight)."""

    __slots__ = ("frames", "bytes", "since", "failed", "next", "tenant", "checked")

    def __init__(self, tenant: str) -> None:
        self.frames: list[Frame] = []  # queued, not yet sent
        self.bytes = 0  # queued + in flight
        self.since = 0.0  # when the oldest of those was queued
        self.failed = False  # `on_failure` was called for the stream
        self.next = 1  # the seq Redis' key is known to end right before
        self.tenant = tenant
        self.checked = time.monotonic()  # when Redis last answered for the stream's keys


class _Share:
    """One stream's part of a pipeline: the frames it sends (none: a check of its keys)."""

    __slots__ = ("stream_id", "backlog", "frames", "first")

    def __init__(self, stream_id: str, backlog: _Backlog, frames: list[Frame]) -> None:
        self.stream_id = stream_id
        self.backlog = backlog
        self.frames = frames
        self.first = frames[0][0] if frames else backlog.next


class MirrorWriter:
    def __init__(
        self, client: Client, settings: Settings, owner: str, on_failure: Callable[[str, str], None],
        logs: Callable[[str], StreamLog | None],
    ) -> None:
        """`owner`: this replica, as the streams' meta names it; `logs`: a stream's log in memory
        (its frames repair what Redis lost, its owner is the tenant the meta names)."""
        self._redis = client
        self._settings = settings
        self._owner = owner
        self._on_failure = on_failure
        self._logs = logs
        self._backlogs: dict[str, _Backlog] = {}  # every stream whose terminal frame is not in Redis yet
        self._queued: dict[str, None] = {}  # streams with frames queued (or a check), in queueing order
        self._wake = asyncio.Event()
        self._in_flight = False
        self._task: asyncio.Task[None] | None = None
        self.repaired = 0  # frames written again after Redis lost them (for the tests and the log)

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
            log = self._logs(stream_id)
            backlog = self._backlogs[stream_id] = _Backlog(keys.tenant_value(log.owner if log else None))
        if not backlog.bytes:
            backlog.since = time.monotonic()
        backlog.frames.append((seq, frame, terminal))
        backlog.bytes += len(frame)
        self._queued[stream_id] = None
        if not terminal and not backlog.failed and backlog.bytes > self._settings.redis_buffer_bytes:
            self._fail(stream_id, backlog, f"more than {self._settings.redis_buffer_bytes} bytes of its events "
                                           "were waiting for Redis (FLOWISE_SSE_REDIS_BUFFER_BYTES)")
        self._wake.set()

    def verify_all(self) -> None:
        """Check every running stream's keys now (Redis was seen to lose data)."""
        for stream_id in self._backlogs:
            self._queued[stream_id] = None
        self._wake.set()

    def _fail(self, stream_id: str, backlog: _Backlog, why: str) -> None:
        backlog.failed = True
        # Called from inside the stream's own append: the manager acts on the next loop turn.
        asyncio.get_running_loop().call_soon(self._on_failure, stream_id, f"Redis is unavailable: {why}")

    async def _run(self) -> None:
        backoff = _FIRST_BACKOFF
        try:  # else the first round trip's calls all come back NOSCRIPT, and go again
            with redis_call("mirror"):
                await self._redis.script_load(_APPEND)
        except REDIS_ERRORS:
            pass  # Redis is away: loaded on the first NOSCRIPT answer
        while True:
            if not self._queued:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), VERIFY_EVERY)
                except TimeoutError:
                    self._queue_checks()
                    continue
                await asyncio.sleep(WRITE_LINGER)
                continue
            try:
                await self._send(self._take())
            except REDIS_ERRORS as exc:
                self._check_deadlines(exc)
                await asyncio.sleep(backoff)
                backoff = min(_MAX_BACKOFF, backoff * 2)
            else:
                backoff = _FIRST_BACKOFF
                self._queue_checks()

    def _queue_checks(self) -> None:
        """Queue a check of each running stream that Redis has not answered for in `VERIFY_EVERY`."""
        stale = time.monotonic() - VERIFY_EVERY
        for stream_id, backlog in self._backlogs.items():
            if backlog.checked < stale:
                self._queued[stream_id] = None
        if self._queued:
            self._wake.set()

    def _take(self) -> list[_Share]:
        shares, size, queued = [], 0, self._queued
        while queued and size < WRITE_BATCH_BYTES:
            stream_id = next(iter(queued))
            del queued[stream_id]
            backlog = self._backlogs.get(stream_id)
            if backlog is None:
                continue
            frames, taken = backlog.frames, 0
            share_size = 0
            while taken < len(frames) and (not taken or share_size + len(frames[taken][1]) <= WRITE_BATCH_BYTES):
                share_size += len(frames[taken][1])
                taken += 1
            backlog.frames = frames[taken:]
            if backlog.frames:  # the rest of a long backlog (a repair): the next round trip
                queued[stream_id] = None
            shares.append(_Share(stream_id, backlog, frames[:taken]))
            size += share_size
        return shares

    async def _send(self, shares: list[_Share]) -> None:
        """One round trip. Raises when Redis took none of it (the whole batch is queued again) or
        refused part of it (only that part is queued again)."""
        if not shares:
            return
        pipe = self._redis.pipeline(transaction=False)
        for share in shares:
            self._queue(pipe, share)
        self._in_flight = True
        try:
            with redis_call("mirror"):
                try:
                    answers = await pipe.execute(raise_on_error=False)
                except REDIS_ERRORS:
                    self._put_back(shares)
                    raise
                refusal = self._account(shares, answers)
                if isinstance(refusal, NoScriptError):  # a new primary, or a restarted one
                    await self._redis.script_load(_APPEND)
                if refusal is not None:
                    raise refusal
        finally:
            self._in_flight = False

    def _queue(self, pipe: Any, share: _Share) -> None:
        settings, frames = self._settings, share.frames
        terminal = bool(frames) and frames[-1][2]
        pipe.evalsha(_APPEND_SHA, 2, keys.events(share.stream_id), keys.meta(share.stream_id),
                     self._owner, share.backlog.tenant, keys.running_ttl(settings), keys.ended_ttl(settings),
                     1 if terminal else 0, share.first, *[frame for _, frame, _ in frames])

    def _put_back(self, shares: list[_Share]) -> None:
        for share in reversed(shares):
            share.backlog.frames[:0] = share.frames
            self._queued[share.stream_id] = None

    def _account(self, shares: list[_Share], answers: list[Any]) -> Exception | None:
        """Each stream's answer: all its frames in, or a hole to fill first, or a refusal (the
        share queued again). Returns the first refusal of the batch, if any."""
        now = time.monotonic()
        first_refusal: Exception | None = None
        for share, answer in zip(shares, answers):
            backlog = share.backlog
            if isinstance(answer, Exception):
                backlog.frames[:0] = share.frames
                self._queued[share.stream_id] = None
                first_refusal = first_refusal or answer
                continue
            backlog.checked = now
            if int(answer) >= 0:
                self._repair(share, int(answer))
                continue
            backlog.bytes -= sum(len(frame) for _, frame, _ in share.frames)
            backlog.since = now if backlog.bytes else 0.0
            if share.frames:
                backlog.next = share.frames[-1][0] + 1
                if share.frames[-1][2]:
                    del self._backlogs[share.stream_id]
        return first_refusal

    def _repair(self, share: _Share, top: int) -> None:
        """Redis' key ends at `top`, before the share's first frame: it lost what followed (a
        failover, a restart). Those frames go first, from the stream's log; the share after them."""
        backlog, stream_id = share.backlog, share.stream_id
        log = self._logs(stream_id)
        backlog.next = top + 1
        backlog.since = backlog.since or time.monotonic()
        self._queued[stream_id] = None
        if log is None or len(log.frames) < share.first - 1:
            # Gone from memory too (a finished stream, evicted: nothing more will be appended):
            # Redis' readers get an explicit end right after what it holds, instead of the rest.
            error = StoreUnavailable("Redis lost events of this stream in a failover and they are no longer "
                                     "held anywhere: the stream ends here for readers served from Redis")
            frame = encode(stream_id, top + 1, Event(ERROR, error.to_dict()))
            backlog.frames, backlog.bytes = [(top + 1, frame, True)], len(frame)
            logger.error("flowise-sse: Redis lost events %d-%d of stream %s, no longer in memory: "
                         "ended there in Redis", top + 1, share.first - 1, stream_id)
            return
        repair = [(seq, log.frames[seq - 1], False) for seq in range(top + 1, share.first)]
        backlog.frames[:0] = repair + share.frames
        backlog.bytes += sum(len(frame) for _, frame, _ in repair)
        self.repaired += len(repair)
        logger.warning("flowise-sse: Redis lacked events %d-%d of stream %s (a failover or a restart); "
                       "written again from memory", top + 1, share.first - 1, stream_id)

    def _check_deadlines(self, exc: BaseException) -> None:
        logger.warning("flowise-sse: writing to Redis failed (%s); retrying", exc)
        now = time.monotonic()
        for stream_id, backlog in self._backlogs.items():
            if backlog.bytes and not backlog.failed and now - backlog.since > self._settings.redis_timeout:
                self._fail(stream_id, backlog, f"its events could not be written for {self._settings.redis_timeout:g} s "
                                               "(FLOWISE_SSE_REDIS_TIMEOUT)")
