"""A stream's frames as an HTTP response: sse-starlette's `EventSourceResponse`, set up once."""

from __future__ import annotations

from fastapi import Response
from sse_starlette import EventSourceResponse

from ..settings import Settings
from ..streams import StreamManager
from ..streams.sse_encoder import KEEPALIVE


async def event_stream(
    manager: StreamManager, settings: Settings, stream_id: str, after: int
) -> Response:
    """The frames of `stream_id` after seq `after`, live to its end. An unknown stream raises
    (a 404) here, before the response starts; a reader already past the terminal event gets
    204, the one answer that makes an `EventSource` stop reconnecting."""
    frames = await manager.follow(stream_id, after)
    if frames is None:
        return Response(status_code=204)
    return EventSourceResponse(
        frames,
        headers={"Cache-Control": "no-cache"},
        ping=settings.keepalive_interval,
        ping_message_factory=lambda: KEEPALIVE,  # type: ignore[arg-type,return-value]  # bytes go out as they are
        # Every write, pings included (sse-starlette >= 3.7), gives up after this: a reader that
        # stopped reading is let go, its generator closed, its frames and buffers freed.
        send_timeout=settings.send_timeout,
        sep="\n",
    )
