"""The Responses API's records: what a response id names (its stream, chatflow and Flowise chat,
its tenant, what it was asked), on this replica or, with Redis, on any.

A response is a gateway stream (`resp_<streamId>`): its events are the stream's log; the record
holds the rest. Records live as long as their stream can be read: in memory, until the stream's
log leaves the store (`stream_retention` after its end); in Redis, beside the stream's keys, with
their running expiry (`total_timeout + stream_retention` from the start). A response stored with
`store: false` has no record: nothing can find it again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from ..errors import GatewayError
from ..events import Event
from ..streams import StreamManager
from ..streams.sse_encoder import decode
from .openai_response_events import RESPONSE_PREFIX, ResponseHead

_SWEEP_EVERY = 256  # records put between two sweeps of those whose stream is gone (no Redis)


class ResponseNotFound(GatewayError):
    code, status = "response_not_found", 404

    def __init__(self, response_id: str, param: str | None = None) -> None:
        super().__init__(f"no response {response_id[:100]!r}: unknown, deleted, stored with store false, "
                         "or expired (FLOWISE_SSE_STREAM_RETENTION)")
        self.param = param


@dataclass(slots=True)
class ResponseRecord:
    stream_id: str
    chatflow_id: str
    model: str  # as the client named it
    created_at: int
    owner: str | None  # the tenant whose response it is (None: an open gateway's)
    chat_id: str  # the client's name for the Flowise chat (namespaced per tenant on its way there)
    instructions: str | None = None
    previous_response_id: str | None = None
    conversation: str | None = None
    background: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    input_items: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False

    @property
    def id(self) -> str:
        return RESPONSE_PREFIX + self.stream_id

    def head(self) -> ResponseHead:
        return ResponseHead(self.stream_id, self.created_at, self.model, instructions=self.instructions,
                            previous_response_id=self.previous_response_id, conversation=self.conversation,
                            background=self.background, store=True, metadata=self.metadata)

    def to_json(self) -> bytes:
        data = asdict(self)
        del data["cancelled"]  # a mark of its own in Redis: set by any replica, never rewritten
        return orjson.dumps(data)

    @classmethod
    def from_json(cls, raw: bytes, cancelled: bool) -> ResponseRecord:
        return cls(**orjson.loads(raw), cancelled=cancelled)


def stream_id_of(response_id: str) -> str | None:
    """The stream a response id names, or None for an id that is not one of ours."""
    stream_id = response_id.removeprefix(RESPONSE_PREFIX)
    if stream_id == response_id or len(stream_id) != 32 or not all(c in "0123456789abcdef" for c in stream_id):
        return None
    return stream_id


class ResponseRecords:
    def __init__(self, manager: StreamManager) -> None:
        self._manager = manager
        self._redis = manager.mirror.responses if manager.mirror else None
        self._local: dict[str, ResponseRecord] = {}
        self._puts = 0

    async def put(self, record: ResponseRecord) -> None:
        if self._redis is not None:
            await self._redis.save(record.stream_id, record.to_json())
            return
        self._local[record.stream_id] = record
        self._puts += 1
        if self._puts % _SWEEP_EVERY == 0:
            for stream_id in [s for s in self._local if not self._readable(s)]:
                del self._local[stream_id]

    async def find(self, response_id: str, owner: str | None, param: str | None = None) -> ResponseRecord:
        """`owner`'s response by id; 404 for anything else (another tenant's does not exist)."""
        stream_id = stream_id_of(response_id)
        record = None
        if stream_id is not None:
            if self._redis is not None:
                loaded = await self._redis.load(stream_id)
                record = ResponseRecord.from_json(*loaded) if loaded else None
            else:
                record = self._local.get(stream_id)
                if record is not None and not self._readable(stream_id):
                    del self._local[stream_id]
                    record = None
        if record is None or record.owner != owner:
            raise ResponseNotFound(response_id, param)
        return record

    async def cancel(self, record: ResponseRecord) -> None:
        record.cancelled = True
        if self._redis is not None:
            await self._redis.mark_cancelled(record.stream_id)

    async def cancelled(self, record: ResponseRecord) -> bool:
        """Whether the response was cancelled, as its record says now (on any replica)."""
        if self._redis is not None and not record.cancelled:
            loaded = await self._redis.load(record.stream_id)
            record.cancelled = bool(loaded and loaded[1])
        return record.cancelled

    async def drop(self, record: ResponseRecord) -> None:
        self._local.pop(record.stream_id, None)
        if self._redis is not None:
            await self._redis.drop(record.stream_id)

    async def events(self, record: ResponseRecord) -> list[Event] | None:
        """The response's events so far (a point-in-time read of its stream's log, from memory on
        the replica that runs it, from Redis on the others: maybe none yet, its first frames on
        their way there); None when the log is gone."""
        log = self._manager.store.get(record.stream_id)
        if log is not None:
            frames = list(log.frames)
        elif self._redis is not None and self._manager.mirror is not None:
            frames = await self._redis.frames(record.stream_id)
            # None yet: just started (its keys are made at admission), or expired before its record.
            if not frames and await self._manager.mirror.lookup(record.stream_id) is None:
                return None
        else:
            return None
        return [decode(frame) for frame in frames]

    def _readable(self, stream_id: str) -> bool:
        return stream_id in self._manager.runs or self._manager.store.get(stream_id) is not None


def decode_frames(chunk: bytes) -> list[Event]:
    """The gateway's own SSE frames, as a reader gets them (several joined), back as events:
    a frame's data is one line, so a blank line only ever ends a frame."""
    return [decode(frame + b"\n") for frame in chunk.split(b"\n\n") if frame]
