"""`/v1/streams/...`: a stream started now and read later, by id, by any number of readers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from sse_starlette import EventSourceResponse

from ...errors import StreamNotFound
from ..access import allowed_chatflow
from ..bodies import check_body_size, read_model
from ..dependencies import ABSENT, CallerDep, SeqOrLastEventId, ServicesDep, caller, resume_position, services_of
from ..event_stream import event_stream
from ..schemas import SSE_RESPONSE, CreateStream, StreamCreated, json_body_of

router = APIRouter(prefix="/v1/streams", tags=["streams"])

StreamId = Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]


# OpenAPI links: what a client (and schemathesis's stateful phase) does with a new stream's id.
_CREATED_LINKS: dict[int | str, dict[str, Any]] = {
    201: {"links": {
        "ReadEvents": {"operationId": "stream_events_v1_streams__stream_id__events_get",
                       "parameters": {"stream_id": "$response.body#/streamId"}},
        "Stop": {"operationId": "delete_stream_v1_streams__stream_id__delete",
                 "parameters": {"stream_id": "$response.body#/streamId"}},
    }},
}


async def _create_stream_body(request: Request) -> CreateStream:
    body = await read_model(request, CreateStream)  # held once: see bodies.py
    check_body_size(request, services_of(request).settings.max_body_bytes, bool(body.uploads))
    return body


@router.post("", status_code=201, response_model=StreamCreated, dependencies=[Depends(caller)],
             responses=_CREATED_LINKS, openapi_extra=json_body_of(CreateStream))
async def create_stream(
    request: Request, body: Annotated[CreateStream, Depends(_create_stream_body)], services: ServicesDep,
    who: CallerDep,
) -> dict[str, str]:
    """Start a stream now, read it later (or from a browser) at `eventsUrl`."""
    services.overrides.check(body.overrideConfig)
    await allowed_chatflow(who, services.flowise, str(body.chatflowId))
    prediction = body.prediction()
    if who.tenant is not None:
        prediction = prediction.namespaced(who.upstream_chat_id)
    run = await services.manager.start(str(body.chatflowId), prediction, who.tenant_id)
    token = services.access.token_for(run.id)
    url = request.url_for("stream_events", stream_id=run.id).include_query_params(token=token)
    return {"streamId": run.id, "chatId": prediction.visible_chat_id, "eventsUrl": str(url)}


@router.get("/{stream_id}/events", response_class=EventSourceResponse, responses=SSE_RESPONSE)
async def stream_events(
    request: Request,
    stream_id: StreamId,
    services: ServicesDep,
    last_event_id: SeqOrLastEventId,
    token: Annotated[str, Query(description="The read token `eventsUrl` carries")] = ABSENT,
) -> Response:
    """Replay a stream after `Last-Event-ID` (a bare seq is fine here), then follow it live."""
    services.access.check_origin(request)
    who = services.access.caller_or_token(request, stream_id)
    resume = resume_position(last_event_id, stream_id)
    return await event_stream(services.manager, services.settings, stream_id, resume[1] if resume else 0, who)


@router.delete("/{stream_id}", status_code=204)
async def delete_stream(stream_id: StreamId, services: ServicesDep, who: CallerDep) -> Response:
    """Stop a stream: the upstream is closed, Flowise's abort called; readers get `error` `aborted`."""
    if not await services.manager.stop(stream_id, who.tenant_id):
        raise StreamNotFound(f"stream {stream_id} is unknown or has expired")
    return Response(status_code=204)
