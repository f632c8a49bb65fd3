"""The SSE encoder: one normalized event, one wire frame, encoded once and replayed as bytes.

    retry: 2000            (first event only)
    event: token
    data: {"text":"Hel"}
    id: <streamId>:<seq>
    <blank line>

The layout is chosen for the clients as they are (README, "The wire format"):

- `id:` comes last, right before the blank line. Some clients (fetch-event-source, npm
  `eventsource` 2.x) take an `id:` as the last event id as soon as they read its line, before the
  event is dispatched; with `id:` first, a connection cut inside the frame made them resume *after*
  an event they never received. Last, a cut anywhere before the id line's end changes nothing.
- `data` is one line of compact JSON: it never holds a raw CR or LF, and the three characters that
  `str.splitlines()`-style readers also split on (U+2028, U+2029, U+0085: valid raw in JSON) are
  escaped as `\\u2028`, `\\u2029`, `\\u0085`. Any token (newlines, `data:`, NUL, 200 KB) travels
  as one data line, losslessly.
- The id names the stream as well as the position, so a reconnecting `EventSource` (which only
  resends `Last-Event-ID`) can be resumed on any endpoint.

The keep-alive is `KEEPALIVE`: a comment line with no blank line of its own (see there).
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

import orjson

from ..errors import BadRequest
from ..events import Event

# A comment line alone. A blank line after it would end an (empty) event: spec clients ignore
# that, but httpx-sse dispatches an event with empty data once it has seen an id, and
# fetch-event-source dispatches one on every blank line. Without it, every client skips the line,
# and the next frame starts on a fresh line as before (frames and keep-alives are whole writes).
KEEPALIVE = b": keep-alive\n"

# Line breaks for `str.splitlines()` that JSON leaves raw (CR, LF and the C0/C1 controls that
# splitlines also knows are escaped by orjson already, except NEL, which is a C1 control).
_LINE_BREAKS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))
# What ends a line for some reader (str.splitlines()'s set): inside an event name it would cut the
# field line. Names are chosen by the normalizer (upstream/normalizer.py); this is the last guard.
_LINE_BREAK = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def encode(stream_id: str, seq: int, event: Event, retry_ms: int | None = None) -> bytes:
    head = b"retry: %d\n" % retry_ms if retry_ms else b""
    return b"%sevent: %s\ndata: %s\nid: %s:%d\n\n" % (
        head, _field_name(event.event), json_bytes(event.data), stream_id.encode(), seq
    )


@lru_cache(maxsize=1024)  # a stream uses a handful of names; this runs once per token otherwise
def _field_name(name: str) -> bytes:
    return (_LINE_BREAK.sub("_", name) or "flowise.message").encode("utf-8", "replace")


def json_bytes(data: object) -> bytes:
    """Compact JSON of `data`, as on the wire: no line reader splits it (no raw CR, LF, U+2028,
    U+2029 or U+0085)."""
    try:
        out = orjson.dumps(data)
    except TypeError:
        # A lone surrogate (a 1.x Flowise's socket.io JSON can carry one: JavaScript strings are
        # UTF-16) is not UTF-8; as a `\udXXX` escape it is valid JSON, and ASCII (so are the
        # line separators then).
        return json.dumps(data, separators=(",", ":")).encode()
    if b"\xe2\x80" in out or b"\xc2\x85" in out:
        for raw, escaped in _LINE_BREAKS:
            out = out.replace(raw, escaped)
    return out


def decode(frame: bytes) -> Event:
    """The inverse of `encode`, for the gateway's own frames only ([`retry:`], `event:`, one
    compact JSON `data:` line, `id:`)."""
    name_at = frame.index(b"event: ") + 7  # a `retry:` line before it holds digits only
    name_end = frame.index(b"\n", name_at)
    data_at = name_end + 7  # past "\ndata: "
    data = frame[data_at : frame.index(b"\nid: ", data_at)]
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        value = json.loads(data)  # a lone surrogate's escape (see `json_bytes`), which orjson refuses
    return Event(frame[name_at:name_end].decode(), value)


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
