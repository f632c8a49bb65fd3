"""`/v1/chatflows/...`: Flowise's chatflows, and asking one (streamed, or whole at once)."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import TypeAdapter, ValidationError
from sse_starlette import EventSourceResponse

from ...errors import BadRequest
from ..dependencies import Flowise, LastEventId, Manager, SettingsDep, require_key, resume_position
from ..event_stream import event_stream
from ..schemas import (
    CHAT_ID_PATTERN,
    SSE_RESPONSE,
    ChatflowSummary,
    HistoryItem,
    StreamingCheck,
    StreamRequest,
)

router = APIRouter(prefix="/v1/chatflows", dependencies=[Depends(require_key)])

LISTED_FIELDS = ("id", "name", "deployed", "isPublic", "category", "type", "updatedDate")


@router.get("", response_model=list[ChatflowSummary], tags=["chatflows"], response_model_exclude_unset=True)
async def list_chatflows(flowise: Flowise, full: bool = False) -> list[dict[str, Any]]:
    """Flowise's chatflows; `flowData` only with `?full=true`."""
    flows = await flowise.list_chatflows()
    fields = LISTED_FIELDS + (("flowData",) if full else ())
    return [{k: flow.get(k) for k in fields} for flow in flows if isinstance(flow, dict)]


@router.get("/{chatflow_id}/streaming", response_model=StreamingCheck, tags=["chatflows"])
async def streaming_check(chatflow_id: UUID, flowise: Flowise) -> dict[str, bool]:
    """Whether Flowise can stream this chatflow (otherwise the stream carries one token)."""
    return {"isStreaming": await flowise.is_streaming(str(chatflow_id))}


@router.post("/{chatflow_id}/stream", tags=["streams"], response_class=EventSourceResponse, responses=SSE_RESPONSE)
async def stream_post(
    chatflow_id: UUID, body: StreamRequest, manager: Manager, settings: SettingsDep, last_event_id: LastEventId
) -> Response:
    """Ask a chatflow and stream the answer. With `Last-Event-ID`, resume that stream instead."""
    return await _ask_or_resume(manager, settings, chatflow_id, body, last_event_id)


@router.get("/{chatflow_id}/stream", tags=["streams"], response_class=EventSourceResponse, responses=SSE_RESPONSE)
async def stream_get(
    request: Request,
    chatflow_id: UUID,
    manager: Manager,
    settings: SettingsDep,
    last_event_id: LastEventId,
    question: Annotated[str, Query(min_length=1)],
    history: Annotated[str | None, Query(description="JSON array of {role, content}")] = None,
    chatId: Annotated[str | None, Query(pattern=CHAT_ID_PATTERN)] = None,
    requestId: Annotated[str | None, Query(
        max_length=200, description="Makes this ask distinct from an identical one (a \"regenerate\"): "
        "the same GET joins the same stream (see the README)")] = None,
) -> Response:
    """The same for `EventSource`, which can only GET. Its reconnects resume the stream, and a
    reconnect that has no Last-Event-ID yet (dropped before the first event) joins it again."""
    body = StreamRequest(question=question, history=_history_param(history), chatId=chatId)
    key = _request_key(request, chatflow_id, question, history, chatId, requestId)
    return await _ask_or_resume(manager, settings, chatflow_id, body, last_event_id, key)


@router.post("/{chatflow_id}/prediction", tags=["prediction"])
async def prediction(
    chatflow_id: UUID, body: StreamRequest, flowise: Flowise, manager: Manager, settings: SettingsDep
) -> dict[str, Any]:
    """The whole answer at once, as Flowise's JSON."""
    pred = body.prediction()
    with manager.chat_in_use(pred.chat_id, "a non-streaming prediction"):
        return await flowise.predict(str(chatflow_id), pred.body(), timeout=settings.total_timeout)


async def _ask_or_resume(
    manager: Manager, settings: SettingsDep, chatflow_id: UUID, body: StreamRequest, last_event_id: str | None,
    request_key: str | None = None,
) -> Response:
    resume = resume_position(last_event_id)
    if resume:
        return await event_stream(manager, settings, *resume)
    run = await manager.start(str(chatflow_id), body.prediction(), request_key)
    return await event_stream(manager, settings, run.id, 0)


def _request_key(
    request: Request, chatflow_id: UUID, question: str, history: str | None, chat_id: str | None,
    request_id: str | None,
) -> str:
    """What makes two GETs the same ask: the chatflow, the question, the history, the chatId, the
    optional requestId, and who asks (the gateway key, when keys are used). A digest, so that
    no question is kept in the clear."""
    who = request.headers.get("authorization", "")
    parts = (str(chatflow_id), question, history or "", chat_id or "", request_id or "", who)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


_HISTORY = TypeAdapter(list[HistoryItem])


def _history_param(raw: str | None) -> list[HistoryItem]:
    if not raw:
        return []
    try:
        return _HISTORY.validate_python(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise BadRequest(f"history must be a JSON array of {{role, content}}: {str(exc)[:300]}") from None
