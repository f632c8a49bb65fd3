"""What routes get from the app, each one way: typed `Annotated[..., Depends(...)]` aliases.

State lives on `app.state` (set by the lifespan in `app.py`); routes never reach into it directly.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Header, Query, Request

from ..errors import BadRequest
from ..settings import Settings
from ..streams import StreamManager
from ..streams.sse_encoder import parse_event_id, parse_seq
from ..upstream.flowise_client import FlowiseClient
from .access import Access


# Dependencies are async: FastAPI runs plain functions in its threadpool, a hop per request.
async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _access(request: Request) -> Access:
    return request.app.state.access


async def _manager(request: Request) -> StreamManager:
    return request.app.state.manager


async def _flowise(request: Request) -> FlowiseClient:
    return request.app.state.upstream.flowise


SettingsDep = Annotated[Settings, Depends(_settings)]
AccessDep = Annotated[Access, Depends(_access)]
Manager = Annotated[StreamManager, Depends(_manager)]
Flowise = Annotated[FlowiseClient, Depends(_flowise)]


async def require_key(request: Request, access: AccessDep) -> None:
    """The gateway's API key (when keys are set), from an allowed origin."""
    access.check_origin(request)
    access.require_key(request)


async def _last_event_id(
    last_event_id: Annotated[str | None, Header(description="`<streamId>:<seq>` of the last event received")] = None,
    lastEventId: Annotated[str | None, Query(description="The same, for clients that cannot set headers")] = None,
) -> str | None:
    return last_event_id or lastEventId


LastEventId = Annotated[str | None, Depends(_last_event_id)]


def resume_position(last_event_id: str | None, stream_id: str | None = None) -> tuple[str, int] | None:
    """Where a reader resumes: (streamId, seq), or None to start a new stream. On a route that
    names its stream, a bare seq is enough and an id of another stream is refused."""
    if not last_event_id:
        return None
    if stream_id is not None and (seq := parse_seq(last_event_id)) is not None:
        return stream_id, seq
    found, seq = parse_event_id(last_event_id)
    if stream_id is not None and found != stream_id:
        raise BadRequest("Last-Event-ID belongs to another stream")
    return found, seq
