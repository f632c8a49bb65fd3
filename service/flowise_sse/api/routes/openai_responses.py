"""`/v1/responses`: any chatflow behind OpenAI's Responses API, streamed or not, in the background.

A response is a gateway stream like any other (`StreamManager.start`: the chat guard, caps,
timeouts, tenancy, Redis mirroring), read back as normalized events and written as Responses
events (`openai_response_events.py`). Its id is `resp_<streamId>`; its record
(`response_records.py`) names its Flowise chat, so `previous_response_id` continues that chat and
Flowise's memory carries the conversation. Every reading of a response, live or later, from any
replica, runs the stream's log through a fresh encoder, so `starting_after=N` resumes exactly.

A response without `background` is its connection's: when the client leaves, the run is aborted
(as a chat completion is). A background one runs on by itself until it ends or is cancelled.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from ...errors import BadRequest, StreamNotFound, error_from_event
from ...events import ERROR, TERMINAL, Event
from ...settings import Settings
from ...streams import StreamManager, StreamRun
from ...streams.sse_encoder import KEEPALIVE, json_bytes
from ...upstream.prediction import Prediction
from ..bodies import check_body_size, read_model
from ..dependencies import CallerDep, ServicesDep, caller
from ..openai_response_events import ResponseEncoder, sse
from ..openai_response_schemas import (
    RESPONSE_RESPONSES,
    ConversationRef,
    CreateResponse,
    DeletedResponse,
    InputItemList,
    ResponseObject,
)
from ..openai_schemas import OPENAI_ERROR_RESPONSES
from ..openai_uploads import Media, UploadRefused, audio_upload, checked_uploads, image_upload
from ..response_records import ResponseNotFound, ResponseRecord, ResponseRecords, decode_frames
from ..schemas import json_body_of, json_problem
from .openai_compat import (
    _CHAT_ID,
    _SYSTEM_INPUTS,
    HeldEventSourceResponse,
    OpenAIRoute,
    ParamError,
    _until_client_leaves,
    check_caller_override,
    ignored_params_header,
    resolve_model,
)

router = APIRouter(
    prefix="/v1", tags=["openai"], route_class=OpenAIRoute, dependencies=[Depends(caller)],
    responses=OPENAI_ERROR_RESPONSES,
)


ResponseId = Annotated[str, Path(max_length=200, description="`resp_<streamId>`")]

# Sampling parameters under the input names of Flowise's chat model nodes (as on Chat Completions).
_SAMPLING = {"temperature": "temperature", "top_p": "topP", "max_output_tokens": "maxTokens"}
_READ = {"model", "input", "stream", "background", "store", "previous_response_id", "conversation", "metadata",
         "overrideConfig"}
# Input items that say nothing to a chatflow: a model's reasoning, and tools the chatflow ran
# itself (this gateway's `mcp_call` items, sent back with the rest of a conversation).
_SKIPPED_ITEMS = frozenset({"reasoning", "mcp_call", "mcp_list_tools", "compaction"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "summary_text"})


# --- create -------------------------------------------------------------------------------------
async def _create_response_body(request: Request) -> CreateResponse:
    return await read_model(request, CreateResponse)  # held once: see bodies.py


@router.post("/responses", responses=RESPONSE_RESPONSES, response_model=None,
             openapi_extra=json_body_of(CreateResponse))
async def create_response(
    request: Request, body: Annotated[CreateResponse, Depends(_create_response_body)], services: ServicesDep,
    who: CallerDep,
) -> Response:
    """A chatflow's answer as an OpenAI `response`, streamed with `stream: true`, returned at once
    with `background: true`. See the docs' Responses page for how each field maps onto Flowise."""
    manager, flowise, settings, records = services.manager, services.flowise, services.settings, services.responses
    check_caller_override(body.overrideConfig, services.overrides, settings.openai_pass_params)
    if body.background and not body.store:
        raise ParamError("a background response must be stored (store: true): it is read back by its id", "store")
    conversation = body.conversation.id if isinstance(body.conversation, ConversationRef) else body.conversation
    if conversation is not None and body.previous_response_id is not None:
        raise ParamError("give previous_response_id or conversation, not both", "conversation")
    chatflow_id = await resolve_model(flowise, body.model, who)
    chat_id: str | None = None
    if body.previous_response_id is not None:
        previous = await records.find(body.previous_response_id, who.tenant_id, "previous_response_id")
        if previous.chatflow_id != chatflow_id:
            raise ParamError(f"previous_response_id {previous.id} was answered by chatflow {previous.chatflow_id}: "
                             "a Flowise chat's memory belongs to its chatflow", "previous_response_id")
        chat_id, conversation = previous.chat_id, previous.conversation
    elif conversation is not None:
        chat_id = _named_chat(conversation)
    turns = _Turns(body.input)
    system = ([body.instructions] if body.instructions else []) + turns.system
    override, ignored = _overrides(body, system, settings.openai_pass_params)
    ignored |= turns.ignored
    history = turns.history
    if chat_id is not None and (await flowise.version()).prepends_history:
        history = []  # Flowise keeps this chat's turns itself; sent again they would count twice
    problem = json_problem(turns.question, "input") or json_problem(
        [item["content"] for item in history], "input") or json_problem(override, "overrideConfig")
    if problem:
        raise BadRequest(problem)
    uploads = await checked_uploads(flowise, chatflow_id, turns.uploads, settings.max_upload_bytes, "input")
    check_body_size(request, settings.max_body_bytes, bool(uploads))
    prediction = Prediction.build(turns.question, history, chat_id, override, uploads=uploads)
    if who.tenant is not None:
        prediction = prediction.namespaced(who.upstream_chat_id)
    run = await manager.start(chatflow_id, prediction, who.tenant_id, abort_when_unread=not body.background)
    release = manager.hold(run)
    record = ResponseRecord(
        run.id, chatflow_id, body.model, int(time.time()), who.tenant_id, prediction.visible_chat_id,
        instructions=body.instructions, previous_response_id=body.previous_response_id, conversation=conversation,
        background=body.background, metadata=body.metadata or {}, input_items=turns.items,
    )
    try:
        if body.store:
            await records.put(record)
    except BaseException:
        run.abort("its response could not be recorded")
        release()
        raise
    head = record.head()
    head.store = body.store
    headers = {"X-Flowise-Stream-Id": run.id, "X-Flowise-Chat-Id": prediction.visible_chat_id}
    if ignored:
        headers["X-Flowise-Ignored-Params"] = ignored_params_header(ignored)
    if body.stream:
        return _event_source(_live_events(run, ResponseEncoder(head), records, record, release), release,
                             settings, headers)
    if body.background:
        release()
        return _json(ResponseEncoder(head).response(), headers)
    try:
        encoder = await _until_client_leaves(request, _whole(run, ResponseEncoder(head), records, record))
    finally:
        release()
    if encoder.status == "failed":
        raise error_from_event(encoder.failure)
    return _json(encoder.response(), headers)


def _named_chat(conversation: str) -> str:
    try:
        return _CHAT_ID.validate_python(conversation)
    except ValueError:
        raise ParamError("conversation must be 1-128 characters of A-Z a-z 0-9 . _ : @ - (it names the Flowise "
                         "chat)", "conversation") from None


def _overrides(body: CreateResponse, system: list[str], pass_params: bool) -> tuple[dict[str, Any] | None, set[str]]:
    """Flowise's `overrideConfig` from the request, and the names of the parameters not used."""
    given = body.model_dump(exclude_unset=True, exclude_none=True)
    ignored = {name for name in given if name not in _READ and name not in _SAMPLING and name != "instructions"}
    override: dict[str, Any] = {}
    if pass_params:
        for name, flowise_name in _SAMPLING.items():
            if name in given:
                override[flowise_name] = given[name]
        if system:
            override.update(dict.fromkeys(_SYSTEM_INPUTS, "\n\n".join(system)))
    else:
        ignored |= {name for name in _SAMPLING if name in given}
        if body.instructions:
            ignored.add("instructions")
        if len(system) > (1 if body.instructions else 0):
            ignored.add("input[role=system]")
    override.update(body.overrideConfig or {})
    return override or None, ignored


class _Turns:
    """The input as a chatflow takes it: the question (the last user message), earlier user and
    assistant turns (the history), system and developer texts, the question's images and audio,
    and the input items as they are kept for `input_items` (inline data left out)."""

    def __init__(self, given: str | list[dict[str, Any]]) -> None:
        self.history: list[dict[str, str]] = []
        self.system: list[str] = []
        self.uploads: list[Media] = []
        self.ignored: set[str] = set()
        self.items: list[dict[str, Any]] = []
        if isinstance(given, str):
            given = [{"type": "message", "role": "user", "content": given}]
        messages = [(index, item) for index, item in enumerate(given) if self._is_message(index, item)]
        if not messages:
            raise ParamError("input has no message: the last user message is the question", "input")
        last, question = messages[-1]
        if question.get("role") != "user":
            raise ParamError(f"the last message must be the user's (input[{last}] is {question.get('role')!r})",
                             "input")
        for index, item in messages:
            role = item.get("role")
            text, parts = self._content(index, item, asked=index == last)
            self.items.append({"type": "message", "role": role, "content": parts})
            if index == last:
                self.question = text
            elif role in ("system", "developer"):
                self.system.append(text)
            else:
                self.history.append({"role": str(role), "content": text})
        if not self.question.strip() and not self.uploads:
            raise ParamError("the last user message has no text", "input")

    @staticmethod
    def _is_message(index: int, item: Any) -> bool:
        if not isinstance(item, dict):
            raise ParamError(f"input[{index}] must be an object", "input")
        kind = item.get("type", "message")
        if kind == "message":
            if item.get("role") not in ("user", "assistant", "system", "developer"):
                raise ParamError(f"input[{index}].role must be user, assistant, system or developer", "input")
            return True
        if kind in _SKIPPED_ITEMS:
            return False
        raise ParamError(f"input[{index}] is a {str(kind)[:50]!r} item: the chatflow runs its own tools, so tool calls "
                         "and their results cannot be sent to it", "input")

    def _content(self, index: int, item: dict[str, Any], asked: bool) -> tuple[str, list[dict[str, Any]]]:
        content = item.get("content")
        if isinstance(content, str):
            return content, [{"type": "input_text" if item["role"] != "assistant" else "output_text", "text": content}]
        if not isinstance(content, list):
            raise ParamError(f"input[{index}].content must be a string or a list of parts", "input")
        texts: list[str] = []
        kept: list[dict[str, Any]] = []
        for number, part in enumerate(content):
            where = f"input[{index}].content[{number}]"
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in _TEXT_PARTS and isinstance(part.get("text"), str):
                texts.append(part["text"])
                kept.append({"type": kind, "text": part["text"]})
            elif kind == "refusal":
                continue
            elif kind in ("input_image", "input_audio"):
                kept.append(self._media(where, part, asked))
            else:
                raise ParamError(f"{where} is a {str(kind)[:50]!r} part: text, input_image and input_audio parts can "
                                 "be sent to a chatflow", "input")
        return "\n".join(texts), kept

    def _media(self, where: str, part: dict[str, Any], asked: bool) -> dict[str, Any]:
        """An image or audio part of the question becomes an upload; in an earlier turn, Flowise
        has no place for it (uploads go with the question): left out, and said so."""
        if not asked:
            self.ignored.add(f"{where.split('.')[0]}[{part['type']}]")
            return {"type": part["type"]}
        number = len(self.uploads) + 1
        if part["type"] == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise UploadRefused(f"{where}.image_url must be a URL or a data URI (file_id is not supported)",
                                    "input")
            self.uploads.append(image_upload(url, number, where, "input"))
            return {"type": "input_image", "image_url": None if url.startswith("data:") else url,
                    "detail": part.get("detail", "auto")}
        audio = part.get("input_audio")
        if not isinstance(audio, dict) or not all(isinstance(audio.get(key), str) for key in ("data", "format")):
            raise UploadRefused(f"{where}.input_audio must be {{data: <base64>, format}}", "input")
        self.uploads.append(audio_upload(audio["data"], audio["format"], number, where, "input"))
        return {"type": "input_audio", "format": audio["format"]}


# --- read back ----------------------------------------------------------------------------------
@router.get("/responses/{response_id}", responses=RESPONSE_RESPONSES, response_model=None)
async def get_response(
    response_id: ResponseId, services: ServicesDep, who: CallerDep,
    stream: Annotated[bool, Query(description="Its events, from the first, live to its end")] = False,
    starting_after: Annotated[int, Query(ge=-1, description="With stream: the events after this sequence_number")] = -1,
) -> Response:
    """A response as it stands; with `stream=true` its events (all of them, or those after
    `starting_after`: the same events with the same sequence numbers), then live to its end."""
    records = services.responses
    record = await records.find(response_id, who.tenant_id)
    if not stream:
        return _json(await _snapshot(record, records), {})
    reading = await services.manager.follow(record.stream_id, 0, who.tenant_id)
    if reading is None:
        raise ResponseNotFound(response_id)
    encoder = ResponseEncoder(record.head())
    return _event_source(_replayed_events(reading.frames, encoder, records, record, starting_after),
                         reading.release, services.settings, {"X-Flowise-Stream-Id": record.stream_id})


@router.get("/responses/{response_id}/input_items", response_model=InputItemList)
async def list_input_items(
    response_id: ResponseId, services: ServicesDep, who: CallerDep,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "desc",
) -> dict[str, Any]:
    """The input items the response was asked with (images given inline listed without their data)."""
    record = await services.responses.find(response_id, who.tenant_id)
    items = [{"id": f"msg_{record.stream_id}_in{index}", **item} for index, item in enumerate(record.input_items)]
    if order == "desc":
        items.reverse()
    return {"object": "list", "data": items, "first_id": items[0]["id"] if items else None,
            "last_id": items[-1]["id"] if items else None, "has_more": False}


@router.post("/responses/{response_id}/cancel", response_model=ResponseObject)
async def cancel_response(response_id: ResponseId, services: ServicesDep, who: CallerDep) -> Response:
    """Stop a response that is running (on any replica): it ends `cancelled`. One that has ended
    is returned as it is."""
    records = services.responses
    record = await records.find(response_id, who.tenant_id)
    await _stop(record, services.manager, records, who.tenant_id)
    return _json(await _snapshot(record, records), {})


@router.delete("/responses/{response_id}", response_model=DeletedResponse)
async def delete_response(response_id: ResponseId, services: ServicesDep, who: CallerDep) -> Response:
    """Forget a response (a running one is cancelled first); its id then finds nothing."""
    records = services.responses
    record = await records.find(response_id, who.tenant_id)
    await _stop(record, services.manager, records, who.tenant_id)
    await records.drop(record)
    return _json({"id": record.id, "object": "response", "deleted": True}, {})


async def _stop(record: ResponseRecord, manager: StreamManager, records: ResponseRecords, owner: str | None) -> None:
    events = await records.events(record)
    if events and events[-1].event in TERMINAL:
        return
    await records.cancel(record)  # first: whoever encodes the run's end then knows it as a cancel
    await manager.stop(record.stream_id, owner)


async def _snapshot(record: ResponseRecord, records: ResponseRecords) -> dict[str, Any]:
    events = await records.events(record)
    if events is None:
        raise ResponseNotFound(record.id)
    encoder = ResponseEncoder(record.head())
    encoder.opening()
    for event in events:
        encoder.feed(event, cancelled=record.cancelled)
    # A cancel on its way to the replica running the response: what it will be.
    return encoder.response("cancelled" if record.cancelled and not encoder.finished else None)


# --- writing ------------------------------------------------------------------------------------
async def _live_events(run: StreamRun, encoder: ResponseEncoder, records: ResponseRecords, record: ResponseRecord,
                       release: Callable[[], None]) -> AsyncIterator[bytes]:
    """The response's events as its run makes them; what piled up goes out as one write."""
    try:
        yield sse(encoder.opening())
        async with aclosing(run.event_batches()) as batches:
            async for batch in batches:
                yield sse(await _encoded(encoder, batch, records, record))
                if batch[-1].event in TERMINAL:
                    return
    finally:
        release()


async def _replayed_events(frames: AsyncGenerator[bytes, None], encoder: ResponseEncoder, records: ResponseRecords,
                           record: ResponseRecord, after: int) -> AsyncIterator[bytes]:
    """The stream's log from its first event through a fresh encoder: the events numbered after
    `after`, then live."""
    async with aclosing(frames):
        out = [event for event in encoder.opening() if event["sequence_number"] > after]
        if out:
            yield sse(out)
        async for chunk in frames:
            out = [event for event in await _encoded(encoder, decode_frames(chunk), records, record)
                   if event["sequence_number"] > after]
            if out:
                yield sse(out)


async def _encoded(encoder: ResponseEncoder, batch: list[Event], records: ResponseRecords,
                   record: ResponseRecord) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in batch:
        # Whether a failure is a cancel: the record says, read when it matters (on any replica).
        cancelled = event.event == ERROR and await records.cancelled(record)
        out += encoder.feed(event, cancelled)
    return out


async def _whole(run: StreamRun, encoder: ResponseEncoder, records: ResponseRecords,
                 record: ResponseRecord) -> ResponseEncoder:
    """The response once its run has ended (a failure is the encoder's status)."""
    encoder.opening()
    async with aclosing(run.event_batches()) as batches:
        async for batch in batches:
            await _encoded(encoder, batch, records, record)
            if encoder.finished:
                return encoder
    raise StreamNotFound(f"the stream of {record.id} ended without a final event")


def _event_source(content: AsyncIterator[bytes], release: Callable[[], None], settings: Settings,
                  headers: dict[str, str]) -> Response:
    return HeldEventSourceResponse(
        content, release, headers={"Cache-Control": "no-cache", **headers},
        ping=settings.keepalive_interval, ping_message_factory=lambda: KEEPALIVE, sep="\n",
        send_timeout=settings.send_timeout,
    )


def _json(body: dict[str, Any], headers: dict[str, str]) -> Response:
    # Not JSONResponse: its `json.dumps(...).encode()` fails on a lone surrogate (1.x can stream one).
    return Response(json_bytes(body), media_type="application/json", headers=headers)

