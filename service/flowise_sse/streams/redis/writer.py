"""The mirror's writer: every stream's frames into its Redis Stream, in order, none ever dropped,
none ever missing: what a failover lost, the owner writes again.

`append` only queues a frame in its stream's backlog; one task sends everything queued since its
last round trip as one pipeline (every stream's frames of the last few ms, one round trip per
batch, no task per token), one pipeline at a time, so a stream's frames reach Redis in order.

A round trip is one call of `_APPEND` per hash slot (one in all, as every stream of a replica
shares its slot, `keys.py`): for each stream's share, the script checks that the events key ends
right before the share's first frame, adds the frames, sets the keys' expiries when they have
none, and writes the meta again if it is missing; each stream answers for itself, so a refusal
of one (a wrong type, say) leaves the others written. One call rather than one per stream: a
command costs redis-py ~15 µs to pack and parse, whatever it carries, and that was most of what
the mirror added per token. Replication to Redis' replicas is asynchronous, so a primary that fails over (or
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
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from redis import exceptions as redis_exceptions
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
WRITE_LINGER = 0.02
VERIFY_EVERY = 2.0  # seconds: a quiet running stream's keys are checked this often
_FIRST_BACKOFF, _MAX_BACKOFF = 0.05, 1.0

# KEYS: one key of the call's slot (every key it touches is in that slot). ARGV: owner, running
# ttl, ended ttl, then a line per stream, "<events key> <meta key> <tenant's length> <first frame's
# seq> <whether its last frame is the stream's terminal one> <frames' lengths, comma-separated
# (- for none)>", then each stream's tenant and frames, end to end. Answers, for each stream that
# is not now whole up to its last frame, its line number and either the seq its key ends at (0:
# no key), which is before its first frame: a hole that the caller fills first; or the text of
# the refusal of one of its commands. A call, not a command per stream, and its frames as one
# argument, not one each: redis-py packs every argument in Python (1-2 µs each), and what the
# mirror cost per token was mostly that; Lua cuts them apart in C.
_APPEND = """
local function append(events, meta, tenant, first, terminal, sizes, blob, offset)
  local top = 0
  local last = redis.call('XREVRANGE', events, '+', '-', 'COUNT', 1)
  if last[1] then top = tonumber(string.match(last[1][1], '^(%d+)')) end
  if top < first - 1 then return top end
  for i = 1, #sizes do
    local seq, frame = first + i - 1, string.sub(blob, offset, offset + sizes[i] - 1)
    offset = offset + sizes[i]
    if seq > top then
      if i == #sizes and terminal == '1' then
        redis.call('XADD', events, seq .. '-0', 'f', frame, 't', '1')
      else
        redis.call('XADD', events, seq .. '-0', 'f', frame)
      end
    end
  end
  if redis.call('EXISTS', meta) == 0 then
    redis.call('HSET', meta, 'owner', ARGV[1], 'tenant', tenant)
  end
  if terminal == '1' then
    redis.call('EXPIRE', events, ARGV[3])
    redis.call('EXPIRE', meta, ARGV[3])
  else
    if top == 0 or redis.call('TTL', events) < 0 then redis.call('EXPIRE', events, ARGV[2]) end
    if redis.call('TTL', meta) < 0 then redis.call('EXPIRE', meta, ARGV[2]) end
  end
  return -1
end

local answers, blob, offset, line = {}, ARGV[5], 1, 0
for events, meta, tenant_size, first, terminal, lengths in
    string.gmatch(ARGV[4], '(%S+) (%S+) (%d+) (%d+) (%d) (%S+)') do
  line = line + 1
  local tenant = string.sub(blob, offset, offset + tonumber(tenant_size) - 1)
  offset = offset + tonumber(tenant_size)
  local sizes, total = {}, 0
  for size in string.gmatch(lengths, '%d+') do
    sizes[#sizes + 1] = tonumber(size)
    total = total + sizes[#sizes]
  end
  local ok, answer = pcall(append, events, meta, tenant, tonumber(first), terminal, sizes, blob, offset)
  offset = offset + total
  if not ok then answer = type(answer) == 'table' and answer.err or tostring(answer) end
  if answer ~= -1 then
    answers[#answers + 1] = line
    answers[#answers + 1] = answer
  end
end
return answers
"""
_APPEND_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()

Frame = tuple[int, bytes, bool]  # seq, the SSE frame, whether it is the stream's last


class _Backlog:
    """One stream's frames not yet known to be in Redis (queued, or in the pipeline in flight)."""

    __slots__ = ("frames", "bytes", "since", "failed", "next", "tenant", "checked", "head")

    def __init__(self, stream_id: str, tenant: str) -> None:
        self.frames: list[Frame] = []  # queued, not yet sent
        self.bytes = 0  # queued + in flight
        self.since = 0.0  # when the oldest of those was queued
        self.failed = False  # `on_failure` was called for the stream
        self.next = 1  # the seq Redis' key is known to end right before
        self.tenant = tenant
        self.checked = time.monotonic()  # when Redis last answered for the stream's keys
        # The start of its line in the script's arguments, made once (a few µs a round trip).
        self.head = f"{keys.events(stream_id)} {keys.meta(stream_id)} {len(tenant.encode())} "


class _Share:
    """One stream's part of a pipeline: the frames it sends (none: a check of its keys)."""

    __slots__ = ("stream_id", "backlog", "frames", "first", "size")

    def __init__(self, stream_id: str, backlog: _Backlog, frames: list[Frame], size: int) -> None:
        self.stream_id = stream_id
        self.backlog = backlog
        self.frames = frames
        self.first = frames[0][0] if frames else backlog.next
        self.size = size  # the frames' bytes


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
        self._ticker: asyncio.TimerHandle | None = None
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
        self._tick()

    def _tick(self) -> None:
        """Every `VERIFY_EVERY`: queue the checks of quiet streams (a timer, not a timeout on
        each of the writer's waits: that cost a task per round trip)."""
        self._queue_checks()
        self._ticker = asyncio.get_running_loop().call_later(VERIFY_EVERY, self._tick)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def append(self, stream_id: str, seq: int, frame: bytes, terminal: bool) -> None:
        """Queue one frame; never blocks, never drops."""
        backlog = self._backlogs.get(stream_id)
        if backlog is None:
            log = self._logs(stream_id)
            backlog = self._backlogs[stream_id] = _Backlog(stream_id, keys.tenant_value(log.owner if log else None))
        if not backlog.bytes:
            backlog.since = time.monotonic()
        backlog.frames.append((seq, frame, terminal))
        backlog.bytes += len(frame)
        self._queued[stream_id] = None
        if not terminal and not backlog.failed and backlog.bytes > self._settings.redis_buffer_bytes:
            self._fail(stream_id, backlog, f"more than {self._settings.redis_buffer_bytes} bytes of its events "
                                           "were waiting for Redis (FLOWISE_SSE_REDIS_BUFFER_BYTES)")
        self._wake.set()

    def rewrite(self, stream_id: str) -> None:
        """Write the stream again from its log, if this replica holds it: Redis lost it, and a
        replica that was asked for it says so. A running stream's own check does it; a finished
        one gets a backlog again, of all its frames (what Redis still holds is skipped)."""
        if stream_id in self._backlogs:
            self._queued[stream_id] = None
        else:
            log = self._logs(stream_id)
            if log is None or not log.finished or not log.frames:
                return
            backlog = self._backlogs[stream_id] = _Backlog(stream_id, keys.tenant_value(log.owner))
            last = len(log.frames)
            backlog.frames = [(seq, log.frames[seq - 1], seq == last) for seq in range(1, last + 1)]
            backlog.bytes, backlog.since = sum(len(frame) for _, frame, _ in backlog.frames), time.monotonic()
            self._queued[stream_id] = None
            logger.warning("flowise-sse: stream %s asked for by another replica, missing from Redis: written again "
                           "from memory", stream_id)
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
                await self._wake.wait()
                if self._queued:
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

    def _queue_checks(self) -> None:
        """Queue a check of each running stream that Redis has not answered for in `VERIFY_EVERY`."""
        stale = time.monotonic() - VERIFY_EVERY
        for stream_id, backlog in self._backlogs.items():
            if backlog.checked < stale:
                self._queued[stream_id] = None
        if self._queued:
            self._wake.set()

    def _take(self) -> list[_Share]:
        shares, size, queued, backlogs = [], 0, self._queued, self._backlogs
        while queued and size < WRITE_BATCH_BYTES:
            stream_id = next(iter(queued))
            del queued[stream_id]
            backlog = backlogs.get(stream_id)
            if backlog is None:
                continue
            frames = backlog.frames
            if backlog.bytes <= WRITE_BATCH_BYTES:  # the usual: all of it (a token or a few)
                backlog.frames = []
                share_size = sum([len(frame) for _, frame, _ in frames])
            else:  # a long backlog (Redis was away, or a repair): the rest in the next round trip
                taken = share_size = 0
                while taken < len(frames) and (
                        not taken or share_size + len(frames[taken][1]) <= WRITE_BATCH_BYTES):
                    share_size += len(frames[taken][1])
                    taken += 1
                frames, backlog.frames = frames[:taken], frames[taken:]
                if backlog.frames:
                    queued[stream_id] = None
            shares.append(_Share(stream_id, backlog, frames, share_size))
            size += share_size
        return shares

    async def _send(self, shares: list[_Share]) -> None:
        """One round trip. Raises when Redis took none of it (the whole batch is queued again) or
        refused part of it (only that part is queued again)."""
        if not shares:
            return
        groups: dict[str, list[_Share]] = {}
        for share in shares:
            groups.setdefault(keys.slot_tag(share.stream_id), []).append(share)
        shares = [share for group in groups.values() for share in group]  # in the answers' order
        self._in_flight = True
        try:
            with redis_call("mirror"):
                try:
                    answers = await self._call(list(groups.values()))
                except REDIS_ERRORS:
                    self._put_back(shares)
                    raise
                refusal = self._account(shares, _per_share(groups.values(), answers))
                if isinstance(refusal, NoScriptError):  # a new primary, or a restarted one
                    await self._redis.script_load(_APPEND)
                if refusal is not None:
                    raise refusal
        finally:
            self._in_flight = False

    async def _call(self, groups: list[list[_Share]]) -> list[Any]:
        """Each group's script call, in one round trip; each call's answer, or what it raised.
        A single call (the usual: one replica's streams share a slot) goes without a pipeline,
        whose own bookkeeping costs as much as the call."""
        if len(groups) == 1:
            try:
                return [await self._redis.evalsha(*self._arguments(groups[0]))]
            except redis_exceptions.ResponseError as refusal:  # an answer: the group's own
                return [refusal]
        pipe = self._redis.pipeline(transaction=False)
        for group in groups:
            pipe.evalsha(*self._arguments(group))
        return list(await pipe.execute(raise_on_error=False))

    def _arguments(self, group: list[_Share]) -> tuple[Any, ...]:
        """One script call's arguments, for the shares of one hash slot."""
        lines: list[str] = []
        parts: list[bytes] = []
        for share in group:
            frames, backlog = share.frames, share.backlog
            lengths = ",".join([str(len(frame)) for _, frame, _ in frames]) or "-"
            lines.append(f"{backlog.head}{share.first} {1 if frames and frames[-1][2] else 0} {lengths}")
            parts.append(backlog.tenant.encode())
            parts += [frame for _, frame, _ in frames]
        settings = self._settings
        return (_APPEND_SHA, 1, keys.events(group[0].stream_id), self._owner, keys.running_ttl(settings),
                keys.ended_ttl(settings), "\n".join(lines), b"".join(parts))

    def _put_back(self, shares: list[_Share]) -> None:
        for share in reversed(shares):
            share.backlog.frames[:0] = share.frames
            self._queued[share.stream_id] = None

    def _account(self, shares: list[_Share], answers: list[Any]) -> Exception | None:
        """Each stream's answer: all its frames in, or a hole to fill first, or a refusal (the
        share queued again). Returns the first refusal of the batch, if any."""
        now = time.monotonic()
        first_refusal: Exception | None = None
        for share, answer in zip(shares, answers, strict=True):
            backlog = share.backlog
            if isinstance(answer, bytes):  # Redis refused one of the stream's commands
                answer = redis_exceptions.ResponseError(answer.decode(errors="replace"))
            if isinstance(answer, Exception):
                backlog.frames[:0] = share.frames
                self._queued[share.stream_id] = None
                first_refusal = first_refusal or answer
                continue
            backlog.checked = now
            if int(answer) >= 0:
                self._repair(share, int(answer))
                continue
            backlog.bytes -= share.size
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
        timeout = self._settings.redis_timeout
        for stream_id, backlog in self._backlogs.items():
            if backlog.bytes and not backlog.failed and now - backlog.since > timeout:
                self._fail(stream_id, backlog, f"its events could not be written for {timeout:g} s "
                                               "(FLOWISE_SSE_REDIS_TIMEOUT)")


def _per_share(groups: Iterable[list[_Share]], answers: list[Any]) -> list[Any]:
    """Each share's answer, in the shares's order: -1 (done) unless its call answered otherwise
    for it (by its line number, from 1), or failed whole (NOSCRIPT, a connection: the answer of
    each of its shares)."""
    flat: list[Any] = []
    for group, answer in zip(groups, answers, strict=True):
        if not isinstance(answer, list):
            flat += [answer] * len(group)
            continue
        mine = [-1] * len(group)
        for line, value in zip(answer[::2], answer[1::2], strict=True):
            mine[int(line) - 1] = value
        flat += mine
    return flat
