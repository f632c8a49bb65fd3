"""Flowise >= 2.1.0: the prediction POST itself answers with an event stream.

Flowise's framing is not quite SSE: `message:` field lines, `data:` without a space, no `event:`
or `id:`, the event name inside the JSON, and errors as an `error` event inside a 200. A flow that
cannot stream answers plain JSON even though `streaming: true` was sent.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import httpx
import orjson
from httpx_sse import EventSource

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
        raise UpstreamTimeout("Flowise did not open the stream in time")
    except httpx.HTTPError as exc:
        raise UpstreamUnavailable(f"Flowise is unreachable at {flowise.base_url}: {exc!r}")
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
        raise UpstreamUnavailable(f"the Flowise stream broke off: {exc!r}")
    finally:
        await response.aclose()


async def _events(response: httpx.Response, prediction: Prediction) -> AsyncIterator[Event]:
    parts: list[str] = []
    metadata: dict | None = None
    async for sse in EventSource(response).aiter_sse():
        if not sse.data:  # a comment (`:heartbeat`) is not an event
            continue
        try:
            message = orjson.loads(sse.data)
            name, data = message["event"], message.get("data")
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise UpstreamError(f"Flowise sent an event that is not its JSON shape: {sse.data[:200]!r}")
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
            return
        else:
            event = relayed(name, data)
            if name == "thinking" and "duration" in message:
                event.data = {"text": data, "duration": message["duration"]}
            if name == METADATA and isinstance(event.data, dict):
                metadata = event.data
            yield event
    raise UpstreamError("Flowise closed the stream before its end event")
