"""What routes get from the app, each one way: typed `Annotated[..., Depends(...)]` aliases.

The app's parts live on `app.state.services` (set by the lifespan in `app.py`); routes never
reach into `app.state` directly.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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
from .response_records import ResponseRecords
from .schemas import LAST_EVENT_ID_PATTERN, SEQ_OR_LAST_EVENT_ID_PATTERN


@dataclass(frozen=True, slots=True)
class Services:
    """The app's long-lived parts, as routes use them. One dependency for all of them: FastAPI
    spends some 6 µs of CPU per dependency per request, so a route asks for this once rather than
    for each part. Made by the lifespan (`app.py`), when the upstream and the manager exist."""

    settings: Settings
    access: Access
    overrides: OverridePolicy
    upstream: Upstream
    manager: StreamManager
    responses: ResponseRecords

    @property
    def flowise(self) -> FlowiseClient:
        return self.upstream.flowise


def services_of(request: Request) -> Services:
    """For the dependencies below and the body readers of the routes: FastAPI solves a
    dependency's own dependencies again each time it is named, cached or not, so these take the
    request alone."""
    services: Services = request.app.state.services  # app.state is untyped: named with its type
    return services


# Async: FastAPI runs a plain function in its threadpool, a hop per request.
async def _services(request: Request) -> Services:
    return services_of(request)


ServicesDep = Annotated[Services, Depends(_services)]


async def caller(request: Request) -> Caller:
    """Who asks: the tenant of its gateway key (401 without one when keys are set), from an
    allowed origin. A router that lists it among its dependencies has it computed once."""
    access = services_of(request).access
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
