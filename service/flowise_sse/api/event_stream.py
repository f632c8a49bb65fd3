"""A stream's frames as an HTTP response: sse-starlette's `EventSourceResponse`, set up once."""

from __future__ import annotations

from sse_starlette import EventSourceResponse, ServerSentEvent

from ..settings import Settings
from ..streams import StreamManager

KEEPALIVE = ServerSentEvent(comment="keep-alive", sep="\n")


async def event_stream(manager: StreamManager, settings: Settings, stream_id: str, after: int) -> EventSourceResponse:
    """The frames of `stream_id` after seq `after`, live to its end. An unknown stream raises
    (a 404) here, before the response starts."""
    return EventSourceResponse(
        await manager.follow(stream_id, after),
        headers={"Cache-Control": "no-cache"},
        ping=settings.keepalive_interval,
        ping_message_factory=lambda: KEEPALIVE,
        sep="\n",
    )
