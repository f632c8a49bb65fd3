"""The parser of Flowise's event stream (>= 2.1.0): bytes in, each event's `data` out.

Flowise's framing is not quite SSE: `message:` field lines, `data:` without a space, no `event:`
or `id:`, the event name inside the JSON. A few lines of bytes splitting cut its frames: a general
SSE parser (decoding text, then line by line) cost the gateway more per token than everything
else it does.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

from ..errors import UpstreamTooLarge


async def event_payloads(chunks: AsyncIterable[bytes], max_frame_bytes: int = 4 * 1024 * 1024) -> AsyncIterator[bytes]:
    """The `data` of each event of an event stream, per the SSE rules that Flowise's framing needs:
    any line ending, events ended by a blank line, several `data:` lines joined by a newline, one
    space after the colon dropped, comments and other fields (`message:`) ignored, an event
    without a `data` field not dispatched (one with an empty `data:` is: its data is b"").

    Each byte is looked at a bounded number of times (line endings rewritten once per chunk, the
    search for a boundary resumed where it stopped): an endless frame costs linear time, and past
    `max_frame_bytes` it is refused with `UpstreamTooLarge` rather than held."""
    buffer = bytearray()
    held_cr = False  # a chunk ended in CR: maybe the first half of a CRLF
    for_boundary = 0  # where the search for the next blank line resumes
    source = aiter(chunks)
    ended = False
    while not ended:
        try:
            chunk = await anext(source)
        except StopAsyncIteration:
            if not held_cr:
                return
            # The CR held back as maybe half a CRLF was a whole line end: the stream is over.
            chunk, ended = b"\n", True
        if held_cr:
            chunk = b"\r" + chunk
        held_cr = chunk.endswith(b"\r")
        if held_cr:
            chunk = chunk[:-1]
        if b"\r" in chunk:
            chunk = chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        buffer += chunk
        start = 0
        while True:
            end = buffer.find(b"\n\n", max(start, for_boundary - 1))
            if end < 0:
                break
            block = bytes(buffer[start:end])
            start = end + 2
            for_boundary = start
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
        if start:
            del buffer[:start]
        for_boundary = max(0, len(buffer) - 1)
        if len(buffer) > max_frame_bytes:
            raise UpstreamTooLarge(
                f"Flowise sent an event frame over the limit of {max_frame_bytes} bytes "
                "(FLOWISE_SSE_MAX_UPSTREAM_FRAME_BYTES)"
            )


def _joined(block: bytes) -> bytes | None:
    """The block's data lines joined, or None when it has none (a `data` line without a colon is
    one, with an empty value)."""
    values = [
        line[6:] if line[5:6] == b" " else line[5:]
        for line in block.split(b"\n") if line.startswith(b"data:") or line == b"data"
    ]
    return b"\n".join(values) if values else None
