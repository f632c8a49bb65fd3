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

import json

import orjson

from ..errors import BadRequest
from ..events import Event


def encode(stream_id: str, seq: int, event: Event, retry_ms: int | None = None) -> bytes:
    name = event.event
    if "\n" in name or "\r" in name:
        name = name.replace("\r", " ").replace("\n", " ")
    head = b"retry: %d\n" % retry_ms if retry_ms else b""
    return b"%sid: %s:%d\nevent: %s\ndata: %s\n\n" % (
        head, stream_id.encode(), seq, name.encode("utf-8", "replace"), json_bytes(event.data)
    )


def json_bytes(data: object) -> bytes:
    """Compact JSON of `data`, as on the wire."""
    try:
        return orjson.dumps(data)
    except TypeError:
        # A lone surrogate (a 1.x Flowise's socket.io JSON can carry one: JavaScript strings are
        # UTF-16) is not UTF-8; as a `\udXXX` escape it is valid JSON, and ASCII.
        return json.dumps(data, separators=(",", ":")).encode()


def decode(frame: bytes) -> Event:
    """The inverse of `encode`, for the gateway's own frames only (one `event:` line, then one
    compact JSON `data:` line)."""
    name_at = frame.index(b"\nevent: ") + 8
    data_at = frame.index(b"\ndata: ", name_at)
    data = frame[data_at + 7 : -2]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = json.loads(data)  # a lone surrogate's escape (see `json_bytes`), which orjson refuses
    return Event(frame[name_at:data_at].decode(), value)


def parse_seq(text: str) -> int | None:
    """A position: ASCII digits only (`isdigit` also takes "²", which `int` refuses), and few of
    them (`int` refuses more than 4300)."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def parse_event_id(value: str) -> tuple[str, int]:
    """`<streamId>:<seq>` -> (streamId, seq)."""
    stream_id, sep, seq_text = value.strip().rpartition(":")
    seq = parse_seq(seq_text)
    if not sep or not stream_id or seq is None:
        raise BadRequest(f"Last-Event-ID must look like <streamId>:<seq>, got {value[:100]!r}")
    return stream_id, seq


