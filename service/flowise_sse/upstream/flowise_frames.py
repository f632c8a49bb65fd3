"""The parser of Flowise's event stream (>= 2.1.0): bytes in, each event's `data` out.

Flowise's framing is not quite SSE: `message:` field lines, `data:` without a space, no `event:`
or `id:`, the event name inside the JSON. A few lines of bytes splitting cut its frames: a general
SSE parser (decoding text, then line by line) cost the gateway more per token than everything
else it does.
"""

from __future__ import annotations

from typing import AsyncIterable, AsyncIterator


async def event_payloads(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    """The `data` of each event of an event stream, per the SSE rules that Flowise's framing needs:
    any line ending, events ended by a blank line, several `data:` lines joined by a newline, one
    space after the colon dropped, comments and other fields (`message:`) ignored, an event
    without a `data` field not dispatched (one with an empty `data:` is: its data is b"")."""
    buffer = b""
    source = aiter(chunks)
    while True:
        try:
            chunk = await anext(source)
        except StopAsyncIteration:
            if not buffer.endswith(b"\r"):
                return
            # The CR held back as maybe half a CRLF was a whole line end: the stream is over.
            chunk = b"\n"
        if b"\r" in chunk or buffer.endswith(b"\r"):
            buffer += chunk
            held = buffer.endswith(b"\r")  # maybe the first half of a CRLF
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if held:
                buffer = buffer[:-1] + b"\r"
        else:
            buffer += chunk
            if b"\n" not in chunk:  # no new event boundary: don't rescan a growing buffer
                continue
        *blocks, buffer = buffer.split(b"\n\n")
        for block in blocks:
            # Flowise's own frames have one data line: take it without splitting the block.
            if block.startswith(b"data:"):
                data = block[5:]
            elif block.startswith((b"message:\ndata:", b"message\ndata:")):
                data = block[block.index(b"data:") + 5:]
            else:
                data = b"\n"  # anything else takes the general path below
            if b"\n" not in data:
                yield data[1:] if data[:1] == b" " else data
                continue
            joined = _joined(block)
            if joined is not None:
                yield joined


def _joined(block: bytes) -> bytes | None:
    """The block's data lines joined, or None when it has none (a `data` line without a colon is
    one, with an empty value)."""
    values = [
        line[6:] if line[5:6] == b" " else line[5:]
        for line in block.split(b"\n") if line.startswith(b"data:") or line == b"data"
    ]
    return b"\n".join(values) if values else None
