"""The SSE encoder: one normalized event, one wire frame, encoded once and replayed as bytes.

    retry: 2000            (first event only)
    id: <streamId>:<seq>
    event: token
    data: {"text":"Hel"}

The id names the stream as well as the position, so a reconnecting `EventSource` (which only
resends `Last-Event-ID`) can be resumed on any endpoint. `data` is compact JSON: it never holds
a raw CR or LF, so any token (newlines, `data:`, 100 KB) travels as one data line, losslessly.
"""

from __future__ import annotations

import orjson

from ..errors import BadRequest
from ..events import Event


def encode(stream_id: str, seq: int, event: Event, retry_ms: int | None = None) -> bytes:
    name = event.event
    if "\n" in name or "\r" in name:
        name = name.replace("\r", " ").replace("\n", " ")
    head = b"retry: %d\n" % retry_ms if retry_ms else b""
    return b"%sid: %s:%d\nevent: %s\ndata: %s\n\n" % (
        head, stream_id.encode(), seq, name.encode(), orjson.dumps(event.data)
    )


def decode(frame: bytes) -> Event:
    """The inverse of `encode`, for the gateway's own frames only (one `event:` line, then one
    compact JSON `data:` line)."""
    name_at = frame.index(b"\nevent: ") + 8
    data_at = frame.index(b"\ndata: ", name_at)
    return Event(frame[name_at:data_at].decode(), orjson.loads(frame[data_at + 7 : -2]))


def parse_event_id(value: str) -> tuple[str, int]:
    """`<streamId>:<seq>` -> (streamId, seq)."""
    stream_id, sep, seq = value.strip().rpartition(":")
    if not sep or not stream_id or not seq.isdigit():
        raise BadRequest(f"Last-Event-ID must look like <streamId>:<seq>, got {value[:100]!r}")
    return stream_id, int(seq)
