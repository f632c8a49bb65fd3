"""`/v1/chatflows/{id}/...`: what a chat front-end calls besides the prediction (what Flowise's own
embed calls): the chatbot config, feedback, attachments, RAG upserts, stored files, the stored
conversation.

Flowise leaves most of these public (its whitelist); here each is behind the gateway's key, its
chatflow allowlist and its chat namespace (`api/tenants.py`): a key reaches only its own chats'
files, messages and feedback, because the chat ids it names are mapped into its own space before
they reach Flowise, and mapped back in every answer. Flowise's failures (a 500 for a missing file
or a refused attachment) come back in the gateway's words: a 4xx where the caller can do
something about it, a 502 where Flowise failed.
"""

from __future__ import annotations

import mimetypes
import re
from contextlib import AsyncExitStack
from typing import Annotated, Any
from urllib.parse import quote
from uuid import UUID

import aiohttp
import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response, StreamingResponse
from starlette.datastructures import UploadFile
from starlette.types import Receive, Scope, Send

from ...errors import (
    BadRequest,
    ChatNotFound,
    FileNotFound,
    GatewayError,
    UploadNotAllowed,
    UpstreamError,
)
from ...upstream.fields import ATTACHMENTS_SINCE, FEEDBACK_CHECKED_SINCE, at_least, check_endpoint
from ..access import Caller, allowed_chatflow
from ..conversation_schemas import (
    Attachment,
    ChatbotConfig,
    ChatMessage,
    Feedback,
    FeedbackCreate,
    FeedbackUpdate,
)
from ..dependencies import CallerDep, ServicesDep, caller
from ..schemas import CHAT_ID_PATTERN

router = APIRouter(prefix="/v1/chatflows", tags=["conversation"], dependencies=[Depends(caller)])

ChatIdQuery = Annotated[str, Query(pattern=CHAT_ID_PATTERN, description="The chat (yours: namespaced per key)")]
# Not for the public: where the chatbot may be embedded (2.x returns it), the chatflow's graph
# (its form inputs are taken out of it first).
PRIVATE_CONFIG = ("allowedOrigins", "allowedOriginsError", "flowData")
FORM_FIELDS = ("startInputType", "formTitle", "formDescription", "formInputTypes")
# Multipart bounds besides the body's size (the guard's FLOWISE_SSE_MAX_UPLOAD_BYTES).
MAX_FILES = 20
MAX_FIELDS = 20
# Served as data, never run: a stored file of these types goes out as bytes to save.
ACTIVE_TYPES = {"text/html", "application/xhtml+xml", "image/svg+xml", "text/xml", "application/xml",
                "text/javascript", "application/javascript"}
_FILE_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,255}$")


@router.get("/{chatflow_id}/config", response_model=ChatbotConfig, response_model_exclude_none=True)
async def chatbot_config(chatflow_id: UUID, services: ServicesDep, who: CallerDep) -> dict[str, Any]:
    """The chatbot config a front-end starts from: welcome message, starter prompts, upload policy
    and sizes, whether feedback, leads and text-to-speech are on, and an Agentflow's form inputs."""
    flow = str(chatflow_id)
    flowise = services.flowise
    await allowed_chatflow(who, flowise, flow)
    config = await flowise.chatbot_config(flow)
    public = {key: value for key, value in config.items() if key not in PRIVATE_CONFIG}
    public.update(_form_start(config.get("flowData")))
    return public


def _form_start(flow_data: Any) -> dict[str, Any]:
    """An Agentflow's start node's form settings, from the sanitised flowData (a JSON string) that
    3.x adds to the config: they are nowhere else in it."""
    try:
        nodes = orjson.loads(flow_data).get("nodes") if isinstance(flow_data, str) else None
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    for node in nodes if isinstance(nodes, list) else ():
        data = node.get("data") if isinstance(node, dict) else None
        if isinstance(data, dict) and data.get("name") == "startAgentflow" and isinstance(data.get("inputs"), dict):
            inputs = data["inputs"]
            return {key: inputs[key] for key in FORM_FIELDS if inputs.get(key) not in (None, "")}
    return {}


@router.post("/{chatflow_id}/feedback", response_model=Feedback)
async def create_feedback(chatflow_id: UUID, body: FeedbackCreate, services: ServicesDep, who: CallerDep) -> Any:
    """Thumbs up or down (with an optional comment) on an answer of one of this key's chats."""
    flow = str(chatflow_id)
    flowise = services.flowise
    await allowed_chatflow(who, flowise, flow)
    chat = who.upstream_chat_id(body.chatId)
    # Before 2.2.8 Flowise stores feedback on any message id: a key could rate another key's answer.
    if who.tenant is not None and not at_least(await flowise.version(), FEEDBACK_CHECKED_SINCE):
        messages = await flowise.chat_messages(flow, chat)
        if not any(isinstance(m, dict) and m.get("id") == body.messageId for m in messages):
            raise ChatNotFound(f"message {body.messageId} is not in chat {body.chatId!r}")
    sent = {"chatflowid": flow, "chatId": chat, "messageId": body.messageId, "rating": body.rating}
    if body.content is not None:
        sent["content"] = body.content
    try:
        row = await flowise.create_feedback(flow, sent)
    except UpstreamError as exc:
        if "Inconsistent chat ID" in exc.message or "not found" in exc.message.lower():
            raise ChatNotFound(f"message {body.messageId} is not in chat {body.chatId!r}") from None
        raise
    if not isinstance(row, dict) or not isinstance(row.get("id"), str):
        raise UpstreamError("Flowise's answer to the feedback has no feedback id")
    return _client_ids(row, who)


@router.patch("/{chatflow_id}/feedback/{feedback_id}", response_model=Feedback)
async def update_feedback(
    chatflow_id: UUID, feedback_id: Annotated[str, Path(pattern=r"^[0-9A-Fa-f-]{36}$")], body: FeedbackUpdate,
    services: ServicesDep, who: CallerDep,
) -> Any:
    """Change a rating or its comment: feedback on one of this key's chats only (Flowise is asked
    which feedback that chat has)."""
    flow = str(chatflow_id)
    flowise = services.flowise
    await allowed_chatflow(who, flowise, flow)
    chat = who.upstream_chat_id(body.chatId)
    row = next((r for r in await flowise.list_feedback(flow, chat)
                if isinstance(r, dict) and r.get("id") == feedback_id and r.get("chatId") == chat), None)
    if row is None:
        raise ChatNotFound(f"feedback {feedback_id} is not on chat {body.chatId!r}")
    changes = body.model_dump(exclude_none=True, exclude={"chatId"})
    if changes:
        await flowise.update_feedback(feedback_id, changes)
    return _client_ids({**row, **changes}, who)


@router.post("/{chatflow_id}/attachments", response_model=list[Attachment],
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "properties": {"files": {"type": "array", "items": {
                     "type": "string", "format": "binary"}}}, "required": ["files"]}}}}})
async def attachments(request: Request, chatflow_id: UUID, chatId: ChatIdQuery, services: ServicesDep,
                      who: CallerDep) -> Any:
    """Files in (multipart `files`), their text out: send each back as an upload of type
    `file:full` (Flowise 2.1.3+; the chatflow's full-file upload must be on, and the type allowed).
    Flowise stores the files under the chat: `GET .../files` fetches them back."""
    flow = str(chatflow_id)
    flowise = services.flowise
    await allowed_chatflow(who, flowise, flow)
    check_endpoint(await flowise.version(), ATTACHMENTS_SINCE, "attachments")
    async with AsyncExitStack() as stack:
        form = await _multipart(request, stack)
        try:
            answer = await flowise.attachments(flow, who.upstream_chat_id(chatId), form)
        except UpstreamError as exc:
            raise _refused_upload(exc) from None
    if not isinstance(answer, list):
        raise UpstreamError("Flowise's answer to the attachments is not a list")
    return answer


@router.post("/{chatflow_id}/upsert",
             openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                 "type": "object", "properties": {"files": {"type": "array", "items": {
                     "type": "string", "format": "binary"}}}, "required": ["files"]}}}}})
async def upsert(request: Request, chatflow_id: UUID, chatId: ChatIdQuery, services: ServicesDep,
                 who: CallerDep) -> Response:
    """RAG files into the chatflow's vector store, for this chat (then send uploads of type
    `file:rag`): only where the chatflow allows RAG file uploads (its config's
    `uploads.isRAGFileUploadAllowed`)."""
    flow = str(chatflow_id)
    flowise = services.flowise
    await allowed_chatflow(who, flowise, flow)
    if not (await flowise.upload_policy(flow)).get("isRAGFileUploadAllowed"):
        raise UploadNotAllowed("this chatflow does not take RAG file uploads (its file upload setting is off)")
    chat = who.upstream_chat_id(chatId)
    async with AsyncExitStack() as stack:
        form = await _multipart(request, stack)
        form.add_field("chatId", chat)
        try:
            answer = await flowise.upsert(flow, form)
        except UpstreamError as exc:
            raise _refused_upload(exc) from None
    content = orjson.dumps(answer)
    if chat != chatId:  # the chat id in the documents' metadata, in the caller's name
        content = content.replace(orjson.dumps(chat), orjson.dumps(chatId))
    return Response(content, media_type="application/json")


@router.get("/{chatflow_id}/files", response_class=StreamingResponse, responses={
    200: {"description": "The file's bytes, with its type (from its name), `Content-Disposition: attachment` "
          "and `X-Content-Type-Options: nosniff`", "content": {"application/octet-stream": {}}}})
async def stored_file(
    chatflow_id: UUID, chatId: ChatIdQuery, services: ServicesDep, who: CallerDep,
    fileName: Annotated[str, Query(max_length=255, description="The upload's `name`, or an artifact's file name")],
) -> Response:
    """A file stored under one of this key's chats (an upload, an attachment, an artifact),
    streamed back byte for byte."""
    if not _FILE_NAME.match(fileName) or ".." in fileName:
        raise BadRequest("fileName must be a plain file name: no /, \\, .. or control characters")
    flow = str(chatflow_id)
    flowise = services.flowise
    await allowed_chatflow(who, flowise, flow)
    stack = AsyncExitStack()
    try:
        upstream = await stack.enter_async_context(flowise.upload_file(flow, who.upstream_chat_id(chatId), fileName))
    except GatewayError as exc:
        await stack.aclose()
        if exc.status in (404, 502) and _missing_file(exc):
            raise FileNotFound(f"no file {fileName!r} in chat {chatId!r}") from None
        raise
    except BaseException:
        await stack.aclose()
        raise
    media_type = mimetypes.guess_type(fileName)[0] or "application/octet-stream"
    if media_type in ACTIVE_TYPES:
        media_type = "application/octet-stream"
    headers = {"Content-Disposition": _disposition(fileName)}
    if length := upstream.headers.get("content-length"):
        headers["Content-Length"] = length
    return _ClosingStream(upstream.content.iter_chunked(64 * 1024), stack, media_type=media_type, headers=headers)


@router.get("/{chatflow_id}/chats/{chat_id}/messages", response_model=list[ChatMessage])
async def chat_messages(
    chatflow_id: UUID, chat_id: Annotated[str, Path(pattern=CHAT_ID_PATTERN)], services: ServicesDep, who: CallerDep,
) -> Any:
    """The stored conversation of one of this key's chats, oldest first, as Flowise stored it
    (needs the gateway's Flowise credentials: Flowise keeps this route behind its key)."""
    flow = str(chatflow_id)
    flowise = services.flowise
    await allowed_chatflow(who, flowise, flow)
    chat = who.upstream_chat_id(chat_id)
    messages = [m for m in await flowise.chat_messages(flow, chat) if isinstance(m, dict) and m.get("chatId") == chat]
    if not messages:
        raise ChatNotFound(f"chat {chat_id!r} has no stored messages")
    return [_client_ids(message, who) for message in messages]


# --- helpers ---------------------------------------------------------------------------------
def _client_ids(row: dict[str, Any], who: Caller) -> dict[str, Any]:
    """A row of Flowise's with its chat and session ids in the caller's names."""
    row = dict(row)
    for key in ("chatId", "sessionId"):
        if isinstance(row.get(key), str):
            row[key] = who.client_chat_id(row[key])
    return row


async def _multipart(request: Request, stack: AsyncExitStack) -> aiohttp.FormData:
    """The request's `files` (python-multipart, through Starlette: spooled to disk past 1 MiB,
    the body's size bounded while it arrives), as a form for Flowise that streams them from there."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest("the body must be multipart/form-data with the files in `files`")
    parsed = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    stack.push_async_callback(parsed.close)
    files = [item for item in parsed.getlist("files") if isinstance(item, UploadFile)]
    if not files:
        raise BadRequest("no file in the multipart field `files`")
    form = aiohttp.FormData()
    for item in files:
        name = item.filename or "file"
        if not _FILE_NAME.match(name) or ".." in name:
            raise BadRequest(f"file name {name[:100]!r}: a plain file name is needed "
                             "(no /, \\, .. or control characters)")
        await item.seek(0)
        form.add_field("files", item.file, filename=name, content_type=item.content_type or "application/octet-stream")
    return form


def _refused_upload(exc: UpstreamError) -> GatewayError:
    """Flowise's refusal of a file (a 500 or 400 naming its settings) as the caller's 403."""
    lowered = exc.message.lower()
    if "not enabled" in lowered or "not allowed" in lowered or "invalid file" in lowered:
        reason = exc.message.rpartition(" - ")[2][:300]
        return UploadNotAllowed(f"the chatflow refused the file: {reason}")
    return exc


def _missing_file(exc: GatewayError) -> bool:
    """Flowise's answers for a file it does not have: 1.6.2's 404 "File x not found", 1.8+'s 500
    "Error: streamStorageFile" (its storage returned nothing), an ENOENT."""
    lowered = exc.message.lower()
    return exc.status == 404 or "streamstoragefile" in lowered or "not found" in lowered or "enoent" in lowered


def _disposition(file_name: str) -> str:
    ascii_name = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "_" for c in file_name)
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(file_name, safe='')}"


class _ClosingStream(StreamingResponse):
    """Streams the upstream file and closes its response when done, whatever ends the answer (a
    generator never started would leave it to the garbage collector)."""

    def __init__(self, content: Any, stack: AsyncExitStack, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._stack = stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._stack.aclose()
