"""Flowise >= 2.1.0: the prediction POST itself answers with an event stream.

Flowise's framing is not quite SSE: `message:` field lines, `data:` without a space, no `event:`
or `id:`, the event name inside the JSON, and errors as an `error` event inside a 200. A flow that
cannot stream answers plain JSON even though `streaming: true` was sent.

The frames are cut by `_payloads`, a few lines of bytes splitting: a general SSE parser (decoding
text, then line by line) cost the gateway more per token than everything else it does.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import httpx
import orjson

from ..errors import UpstreamError, UpstreamTimeout, UpstreamUnauthorized, UpstreamUnavailable
from ..events import END, ERROR, METADATA, START, TOKEN, Event, token
from ..flowise import FlowiseClient, error_from_response
from ..prediction import Prediction, closing_events, end_event, relayed


async def stream_sse(
    flowise: FlowiseClient, chatflow_id: str, prediction: Prediction
) -> AsyncIterator[Event]:
    request = flowise.http.build_request(
        "POST",
        f"/api/v1/prediction/{chatflow_id}",
        json=prediction.body(streaming=True),
        headers={**flowise.prediction_headers, "Accept": "text/event-stream"},
    )
    try:
        # Flowise flushes the headers before it runs the flow, so their arrival bounds "connect".
        async with asyncio.timeout(flowise.settings.connect_timeout):
            response = await flowise.http.send(request, stream=True)
    except (TimeoutError, httpx.TimeoutException):
        raise UpstreamTimeout("Flowise did not open the stream in time") from None
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"Flowise is unreachable at {flowise.base_url}: {exc!r}") from None
    try:
        if response.status_code != 200:
            raise error_from_response(
                response.status_code, await response.aread(), f"the prediction on {chatflow_id}"
            )
        start = Event(START, {"chatId": prediction.chat_id, "chatflowId": chatflow_id, "transport": "sse"})
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            answer = orjson.loads(await response.aread())
            yield start
            text = answer.get("text") if isinstance(answer, dict) else None
            if isinstance(text, str) and text:
                yield token(text)
            for event in closing_events(answer, set(), None):
                yield event
            return
        yield start
        async for event in _events(response, prediction):
            yield event
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"the Flowise stream broke off: {exc!r}") from None
    finally:
        await response.aclose()


async def _payloads(response: httpx.Response) -> AsyncIterator[bytes]:
    """The `data` of each event of an event stream, per the SSE rules that Flowise's framing needs:
    any line ending, events ended by a blank line, several `data:` lines joined by a newline, one
    space after the colon dropped, comments and other fields (`message:`) ignored."""
    buffer = b""
    async for chunk in response.aiter_bytes():
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
                if data:
                    yield data[1:] if data[:1] == b" " else data
                continue
            data = _joined(block)
            if data or b"data:" in block:
                yield data


def _joined(block: bytes) -> bytes:
    return b"\n".join(
        line[6:] if line[5:6] == b" " else line[5:]
        for line in block.split(b"\n") if line.startswith(b"data:")
    )


async def _events(response: httpx.Response, prediction: Prediction) -> AsyncIterator[Event]:
    parts: list[str] = []
    metadata: dict | None = None
    payloads = _payloads(response)
    async for payload in payloads:
        try:
            message = orjson.loads(payload)
            name, data = message["event"], message.get("data")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamError(f"Flowise sent an event that is not its JSON shape: {payload[:200]!r}") from None
        if name == TOKEN:
            if data:
                text = data if isinstance(data, str) else orjson.dumps(data).decode()
                parts.append(text)
                yield token(text)
        elif name == START:
            # A string `start` repeats the first token (or is ""); agents put their reasoning here.
            if data and not isinstance(data, str):
                yield relayed("agentReasoning", data)
        elif name == ERROR:
            message_text = str(data)
            if message_text.endswith("Unauthorized"):
                raise UpstreamUnauthorized(
                    f"Flowise refused the chatflow key ({message_text}); check FLOWISE_API_KEY"
                )
            raise UpstreamError(message_text)
        elif name == END:
            yield end_event("".join(parts), metadata)
            await _drain(payloads)
            return
        else:
            event = relayed(name, data)
            if name == "thinking" and "duration" in message:
                event.data = {"text": data, "duration": message["duration"]}
            if name == METADATA and isinstance(event.data, dict):
                metadata = event.data
            yield event
    raise UpstreamError("Flowise closed the stream before its end event")


async def _drain(payloads: AsyncIterator[bytes]) -> None:
    """Read the response to its end (Flowise ends it right after `end`), so that its keep-alive
    connection goes back to the pool instead of being closed; a new one costs a TCP handshake."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in payloads:
                pass
    except (TimeoutError, httpx.HTTPError):
        pass
