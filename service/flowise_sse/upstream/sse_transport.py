"""Flowise >= 2.1.0: the prediction POST itself answers with an event stream.

Errors come as an `error` event inside a 200; `end` closes the answer. A flow that cannot stream
answers plain JSON even though `streaming: true` was sent: its text becomes one token. A stream
that reaches `metadata` without a single token (a Flowise bug: #4926, #5253, #5193, #5592) gets
the answer Flowise stored, as one token, before `metadata`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson

from ..errors import GatewayError, UpstreamError, UpstreamUnauthorized
from ..events import END, ERROR, METADATA, TOKEN, Event, token
from .flowise_client import FlowiseClient, prediction_answer, read_limited
from .flowise_frames import event_payloads
from .normalizer import Normalizer, closing_events, end_event
from .prediction import Prediction

logger = logging.getLogger(__name__)


async def stream_sse(
    flowise: FlowiseClient, chatflow_id: str, prediction: Prediction
) -> AsyncGenerator[Event, None]:
    normalizer = Normalizer(chatflow_id, prediction, "sse")
    async with flowise.prediction_stream(chatflow_id, lambda: prediction.encoded_body(streaming=True)) as response:
        content_type = response.headers.get("content-type", "")
        if not content_type.startswith("text/event-stream"):
            if not content_type.startswith("application/json"):
                raise UpstreamError(f"Flowise answered the prediction with {content_type[:100] or 'no content type'}, "
                                    "neither an event stream nor JSON")
            answer = prediction_answer(await read_limited(
                response.content.iter_any(), response.headers, flowise.settings.max_upstream_answer_bytes,
                "the prediction"))
            yield normalizer.start()
            text = answer.get("text") if isinstance(answer, dict) else None
            if isinstance(text, str) and text:
                yield token(text)
            for event in closing_events(answer, set(), None):
                yield event
            return
        yield normalizer.start()
        async for event in _events(flowise, response, normalizer):
            yield event


async def _events(
    flowise: FlowiseClient, response: aiohttp.ClientResponse, normalizer: Normalizer,
) -> AsyncIterator[Event]:
    payloads = event_payloads(response.content.iter_any(), flowise.settings.max_upstream_frame_bytes)
    async for payload in payloads:
        if not payload:  # an event with empty data (`data:`) carries nothing; Flowise sends none
            continue
        try:
            message = orjson.loads(payload)
            name, data = message["event"], message.get("data")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            raise UpstreamError(f"Flowise sent an event that is not its JSON shape: {payload[:200]!r}") from None
        # An empty name is a name (the normalizer sends it as `flowise.message`); a non-string is not.
        if not isinstance(name, str) or len(name) > 200:
            raise UpstreamError(f"Flowise sent an event whose name is not a name: {payload[:200]!r}")
        if name == ERROR:
            message_text = str(data)
            if message_text.endswith("Unauthorized"):
                raise UpstreamUnauthorized(
                    f"Flowise refused the chatflow key ({message_text}); check FLOWISE_API_KEY"
                )
            raise normalizer.prediction.client_error(UpstreamError(message_text))
        if name == END:
            yield end_event(normalizer.text, normalizer.metadata, None, normalizer.action)
            await _drain(payloads)
            return
        if name == METADATA and not normalizer.text and isinstance(data, dict):
            missing = await _stored_answer(flowise, normalizer.chatflow_id, data)
            if missing and (recovered := normalizer.feed(TOKEN, missing)):
                yield recovered
        event = normalizer.feed(name, data)
        if event is None:
            continue
        if name == "thinking" and "duration" in message:
            event.data = {"text": data, "duration": message["duration"]}
        yield event
    raise UpstreamError("Flowise closed the stream before its end event")


async def _stored_answer(flowise: FlowiseClient, chatflow_id: str, metadata: dict[str, Any]) -> str:
    """The stored text of an answer that streamed no token; "" when it is really empty or cannot
    be read (then the stream ends as Flowise sent it, and the log says why)."""
    chat_id, message_id = metadata.get("chatId"), metadata.get("chatMessageId")
    if not isinstance(chat_id, str) or not isinstance(message_id, str):
        return ""
    try:
        return await flowise.stored_answer(chatflow_id, chat_id, message_id)
    except GatewayError as exc:
        logger.warning("stream on chatflow %s ended without tokens and its stored answer could not be read "
                       "(%s); FLOWISE_API_KEY / FLOWISE_USERNAME give the gateway access", chatflow_id, exc.code)
        return ""


async def _drain(payloads: AsyncIterator[bytes]) -> None:
    """Read the response to its end (Flowise ends it right after `end`), so that its keep-alive
    connection goes back to the pool instead of being closed; a new one costs a TCP handshake."""
    try:
        async with asyncio.timeout(1.0):
            async for _ in payloads:
                pass
    except (TimeoutError, aiohttp.ClientError):
        pass
