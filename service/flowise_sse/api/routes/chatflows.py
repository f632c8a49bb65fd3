"""`/v1/chatflows/...`: Flowise's chatflows, and asking one (streamed, or whole at once)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sse_starlette import EventSourceResponse

from ...errors import BadRequest, ClientLeft, Forbidden, GatewayError, UpstreamError
from ...upstream.flowise_client import FlowiseClient
from ...upstream.prediction import Prediction
from ..access import Caller, allowed_chatflow, visible_chatflows
from ..bodies import check_body_size, read_model
from ..dependencies import ABSENT, CallerDep, LastEventId, Services, ServicesDep, caller, resume_position, services_of
from ..event_stream import event_stream
from ..schemas import (
    CHAT_ID_PATTERN,
    SSE_RESPONSE,
    ChatflowSummary,
    ErrorBody,
    HistoryItem,
    StreamingCheck,
    StreamRequest,
    json_body_of,
)

router = APIRouter(prefix="/v1/chatflows", dependencies=[Depends(caller)])


async def _stream_request(request: Request) -> StreamRequest:
    body = await read_model(request, StreamRequest)
    check_body_size(request, services_of(request).settings.max_body_bytes, bool(body.uploads))
    return body


# Read by `read_model`, not FastAPI: a body with uploads is held once (see bodies.py).
StreamBody = Annotated[StreamRequest, Depends(_stream_request)]

LISTED_FIELDS = ("id", "name", "deployed", "isPublic", "category", "type", "updatedDate")


@router.get("", response_model=list[ChatflowSummary], tags=["chatflows"], response_model_exclude_unset=True)
async def list_chatflows(services: ServicesDep, who: CallerDep, full: bool = False) -> list[dict[str, Any]]:
    """The chatflows this key may use; `flowData` only with `?full=true`, for a key allowed it."""
    if full and who.tenant is not None and not who.tenant.flow_data:
        raise Forbidden("this key may not read chatflows' flowData (flow_data in FLOWISE_SSE_KEYS_FILE)")
    flows = visible_chatflows(who, await services.flowise.list_chatflows())
    fields = LISTED_FIELDS + (("flowData",) if full else ())
    listed = [{k: flow.get(k) for k in fields} for flow in flows if isinstance(flow, dict)]
    try:  # checked here: a listing that is not what it claims is Flowise's fault (502), not a 500
        checked: list[dict[str, Any]] = _LISTING.dump_python(_LISTING.validate_python(listed), exclude_unset=True)
        return checked
    except (ValidationError, ValueError) as exc:
        raise UpstreamError(f"Flowise's chatflow listing is not in its usual shape: {str(exc)[:300]}") from None


@router.get("/{chatflow_id}/streaming", response_model=StreamingCheck, tags=["chatflows"])
async def streaming_check(chatflow_id: UUID, services: ServicesDep, who: CallerDep) -> dict[str, bool]:
    """Whether Flowise can stream this chatflow (otherwise the stream carries one token)."""
    flowise = services.flowise
    await allowed_chatflow(who, flowise, str(chatflow_id))
    return {"isStreaming": await flowise.is_streaming(str(chatflow_id))}


@router.post("/{chatflow_id}/stream", tags=["streams"], response_class=EventSourceResponse, responses=SSE_RESPONSE,
             openapi_extra=json_body_of(StreamRequest))
async def stream_post(
    chatflow_id: UUID, body: StreamBody, services: ServicesDep, last_event_id: LastEventId, who: CallerDep,
) -> Response:
    """Ask a chatflow and stream the answer. With `Last-Event-ID`, resume that stream instead."""
    services.overrides.check(body.overrideConfig)
    return await _ask_or_resume(services, chatflow_id, body, last_event_id, who)


@router.get("/{chatflow_id}/stream", tags=["streams"], response_class=EventSourceResponse, responses=SSE_RESPONSE)
async def stream_get(
    request: Request,
    chatflow_id: UUID,
    services: ServicesDep,
    last_event_id: LastEventId,
    who: CallerDep,
    question: Annotated[str, Query(min_length=1)],
    history: Annotated[str, Query(
        description='JSON array of `{"role", "content"}` (role: user, assistant, userMessage, apiMessage), '
                    'oldest first',
        examples=['[{"role":"user","content":"I am Ada"},{"role":"assistant","content":"Hi Ada"}]'],
    )] = ABSENT,
    chatId: Annotated[str, Query(pattern=CHAT_ID_PATTERN)] = ABSENT,
    requestId: Annotated[str | None, Query(
        max_length=200, description="Makes this ask distinct from an identical one (a \"regenerate\"): "
        "the same GET joins the same stream (see the README)")] = None,
) -> Response:
    """The same for `EventSource`, which can only GET. Its reconnects resume the stream, and a
    reconnect that has no Last-Event-ID yet (dropped before the first event) joins it again."""
    try:
        body = StreamRequest(question=question, history=_history_param(history), chatId=chatId)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    key = _request_key(who, chatflow_id, question, history, chatId, requestId)
    return await _ask_or_resume(services, chatflow_id, body, last_event_id, who, key)


@router.post(
    "/{chatflow_id}/prediction", tags=["prediction"], response_class=Response,
    responses={
        200: {"description": "Flowise's JSON answer, as Flowise sent it",
              "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}},
        499: {"model": ErrorBody, "description": "The client left: the upstream request was cancelled"},
    },
    openapi_extra=json_body_of(StreamRequest),
)
async def prediction(
    request: Request, chatflow_id: UUID, body: StreamBody, services: ServicesDep, who: CallerDep,
) -> Response:
    """The whole answer at once, as Flowise's JSON. A client that leaves cancels it upstream."""
    services.overrides.check(body.overrideConfig)
    flowise = services.flowise
    pred = body.prediction().namespaced(who.upstream_chat_id) if who.tenant else body.prediction()
    await allowed_chatflow(who, flowise, str(chatflow_id))
    await flowise.check_chatflow(str(chatflow_id))  # an unknown chatflow is a 404, as on the stream routes
    pred.check_supported(await flowise.version())
    async with services.manager.prediction_slot(pred.chat_id, who.tenant_id):
        answer = asyncio.ensure_future(_predict(flowise, str(chatflow_id), pred, services.settings.total_timeout))
        left = asyncio.ensure_future(_client_left(request))
        try:
            await asyncio.wait((answer, left), return_when=asyncio.FIRST_COMPLETED)
        finally:
            left.cancel()
            if not answer.done():  # the client left: close the upstream connection, ask Flowise to stop
                answer.cancel()
                services.upstream.abort_upstream(str(chatflow_id), pred.chat_id)
            await asyncio.gather(answer, left, return_exceptions=True)
        if answer.cancelled():
            raise ClientLeft("the client left before the answer came; the upstream request was cancelled")
        content = answer.result()
    return Response(pred.client_answer(content), media_type="application/json")


async def _predict(flowise: FlowiseClient, chatflow_id: str, prediction: Prediction, timeout: float) -> bytes:
    try:
        return await flowise.predict_bytes(chatflow_id, prediction.encoded_body(), timeout=timeout)
    except GatewayError as exc:
        raise prediction.client_error(exc) from None


async def _client_left(request: Request) -> None:
    """Returns when the client closes its connection (the body is read: only a disconnect comes)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _ask_or_resume(
    services: Services, chatflow_id: UUID, body: StreamRequest, last_event_id: str | None, who: Caller,
    request_key: str | None = None,
) -> Response:
    manager, settings = services.manager, services.settings
    resume = resume_position(last_event_id)
    if resume:
        return await event_stream(manager, settings, *resume, who)
    await allowed_chatflow(who, services.flowise, str(chatflow_id))
    prediction = body.prediction()
    if who.tenant is not None:
        prediction = prediction.namespaced(who.upstream_chat_id)
    run = await manager.start(str(chatflow_id), prediction, who.tenant_id, request_key=request_key)
    return await event_stream(manager, settings, run.id, 0, who)


def _request_key(
    who: Caller, chatflow_id: UUID, question: str, history: str | None, chat_id: str | None,
    request_id: str | None,
) -> str:
    """What makes two GETs the same ask: the chatflow, the question, the history, the chatId, the
    optional requestId, and who asks (the tenant, when keys are used). A digest, so that no
    question is kept in the clear."""
    parts = (str(chatflow_id), question, history or "", chat_id or "", request_id or "", who.tenant_id or "")
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


_HISTORY = TypeAdapter(list[HistoryItem])
_LISTING = TypeAdapter(list[ChatflowSummary])


def _history_param(raw: str | None) -> list[HistoryItem]:
    if not raw:
        return []
    try:
        return _HISTORY.validate_python(json.loads(raw))
    except RecursionError:  # `[[[[...`: json.loads recurses per level
        raise BadRequest("history must be a JSON array of {role, content}: nested too deeply") from None
    except (ValueError, ValidationError) as exc:
        raise BadRequest(f"history must be a JSON array of {{role, content}}: {str(exc)[:300]}") from None
