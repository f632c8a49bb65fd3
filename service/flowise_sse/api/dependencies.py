"""What routes get from the app, each one way: typed `Annotated[..., Depends(...)]` aliases.

State lives on `app.state` (set by the lifespan in `app.py`); routes never reach into it directly.
"""

from __future__ import annotations

import re
from typing import Annotated, cast

from fastapi import Depends, Header, Query, Request

from ..errors import BadRequest
from ..settings import Settings
from ..streams import StreamManager
from ..streams.sse_encoder import parse_event_id, parse_seq
from ..upstream import Upstream
from ..upstream.flowise_client import FlowiseClient
from .access import Access, Caller
from .override_policy import OverridePolicy
from .schemas import LAST_EVENT_ID_PATTERN, SEQ_OR_LAST_EVENT_ID_PATTERN


# Dependencies are async: FastAPI runs plain functions in its threadpool, a hop per request.
# Starlette's app.state is untyped: each value is named with the type create_app gives it.
async def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _access(request: Request) -> Access:
    access: Access = request.app.state.access
    return access


async def _manager(request: Request) -> StreamManager:
    manager: StreamManager = request.app.state.manager
    return manager


async def _flowise(request: Request) -> FlowiseClient:
    upstream: Upstream = request.app.state.upstream
    return upstream.flowise


async def _upstream(request: Request) -> Upstream:
    upstream: Upstream = request.app.state.upstream
    return upstream


async def _override_policy(request: Request) -> OverridePolicy:
    policy: OverridePolicy = request.app.state.override_policy
    return policy


SettingsDep = Annotated[Settings, Depends(_settings)]
AccessDep = Annotated[Access, Depends(_access)]
Manager = Annotated[StreamManager, Depends(_manager)]
Flowise = Annotated[FlowiseClient, Depends(_flowise)]
UpstreamDep = Annotated[Upstream, Depends(_upstream)]
Overrides = Annotated[OverridePolicy, Depends(_override_policy)]


async def caller(request: Request, access: AccessDep) -> Caller:
    """Who asks: the tenant of its gateway key (401 without one when keys are set), from an
    allowed origin. A router that lists it among its dependencies has it computed once."""
    access.check_origin(request)
    return access.caller(request)


CallerDep = Annotated[Caller, Depends(caller)]


_LAST_EVENT_ID = re.compile(SEQ_OR_LAST_EVENT_ID_PATTERN)


# Plain `str` with a None default (not `str | None`): the document then says "a string" rather
# than "a string or null", and a generated client never sends the text "null". `ABSENT` is that
# None, typed as the str the parameter is declared to be (FastAPI sees the None).
ABSENT: str = cast(str, None)


async def _last_event_id(
    last_event_id: Annotated[str, Header(
        description="`<streamId>:<seq>` of the last event received; anything else is a 400",
        json_schema_extra={"pattern": LAST_EVENT_ID_PATTERN})] = ABSENT,
    lastEventId: Annotated[str, Query(
        description="The same, for clients that cannot set headers",
        json_schema_extra={"pattern": LAST_EVENT_ID_PATTERN})] = ABSENT,
) -> str | None:
    return last_event_id if last_event_id is not None else lastEventId  # "" is a 400, not absent


async def _seq_or_last_event_id(
    last_event_id: Annotated[str, Header(
        description="`<streamId>:<seq>` of the last event received, or the bare `<seq>`; anything else is a 400",
        json_schema_extra={"pattern": SEQ_OR_LAST_EVENT_ID_PATTERN})] = ABSENT,
    lastEventId: Annotated[str, Query(
        description="The same, for clients that cannot set headers",
        json_schema_extra={"pattern": SEQ_OR_LAST_EVENT_ID_PATTERN})] = ABSENT,
) -> str | None:
    return last_event_id if last_event_id is not None else lastEventId


LastEventId = Annotated[str | None, Depends(_last_event_id)]
SeqOrLastEventId = Annotated[str | None, Depends(_seq_or_last_event_id)]


def resume_position(last_event_id: str | None, stream_id: str | None = None) -> tuple[str, int] | None:
    """Where a reader resumes: (streamId, seq), or None to start a new stream. On a route that
    names its stream, a bare seq is enough and an id of another stream is refused."""
    if last_event_id is None:
        return None
    # The documented form (a stream id of ours, at most 18 ASCII digits), before any parsing.
    if not _LAST_EVENT_ID.match(last_event_id.strip()):
        raise BadRequest(f"Last-Event-ID must look like <streamId>:<seq>, got {last_event_id[:100]!r}")
    if stream_id is not None and (seq := parse_seq(last_event_id)) is not None:
        return stream_id, seq
    found, seq = parse_event_id(last_event_id)
    if stream_id is not None and found != stream_id:
        raise BadRequest("Last-Event-ID belongs to another stream")
    return found, seq
