"""`/v1/models` and `/v1/chat/completions`: any chatflow behind OpenAI's Chat Completions API.

A completion is a gateway stream like any other (`StreamManager.start`: the chatId guard, caps,
timeouts, Redis mirroring), read back as normalized events and written in OpenAI's wire format
(`openai_chunks.py`). OpenAI clients do not resume, so the run is started `abort_when_unread`: when the
client leaves, the upstream is aborted unless someone else reads the stream by its id.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import StringConstraints, TypeAdapter
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from ... import metrics
from ...errors import (
    BadRequest,
    ChatflowNotFound,
    GatewayError,
    UpstreamError,
    error_from_event,
)
from ...events import END, ERROR, TERMINAL
from ...streams import StreamRun
from ...streams.sse_encoder import KEEPALIVE, json_bytes
from ...upstream.flowise_client import FlowiseClient
from ...upstream.prediction import Prediction
from ..access import Caller, allowed_chatflow, visible_chatflows
from ..bodies import check_body_size
from ..dependencies import CallerDep, ServicesDep, caller
from ..openai_chunks import ChunkEncoder, UsageReport, completion, error_body, openai_error
from ..openai_schemas import (
    COMPLETION_RESPONSES,
    OPENAI_ERROR_RESPONSES,
    ChatCompletionRequest,
    ChatMessage,
    Model,
    ModelList,
)
from ..openai_uploads import Media, UploadRefused, audio_upload, checked_uploads, image_upload
from ..override_policy import OverridePolicy
from ..schemas import CHAT_ID_PATTERN, json_problem


class OpenAIRoute(APIRoute):
    """Every failure on these routes, including a missing key and a malformed body, in OpenAI's
    error shape, so the SDKs raise their typed errors with the gateway's message. `x-should-retry`
    tells the SDKs (which otherwise retry any 409 and 5xx) whether a retry can help."""

    def get_route_handler(self) -> Callable[[Request], Any]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except GatewayError as exc:
                metrics.request_refused(exc.status, exc.code)
                param = getattr(exc, "param", None) or ("model" if isinstance(exc, ChatflowNotFound) else None)
                return _error_response(exc.status, error_body(exc, param), exc.retryable)
            except RequestValidationError as exc:
                errors = exc.errors()
                first = errors[0] if errors else {}
                loc = [str(part) for part in first.get("loc", ())[1:]]
                message = "; ".join(
                    f"{'.'.join(map(str, err.get('loc', ())[1:])) or 'body'}: {err.get('msg', '')}" for err in errors
                )
                body = openai_error(400, "invalid_request", message[:2000], False, ".".join(loc) or None)
                return _error_response(400, body, False)
            except StarletteHTTPException as exc:  # a body that is not text, too big (413), too slow (408)
                code = {408: "request_timeout", 413: "payload_too_large"}.get(exc.status_code, "invalid_request")
                response = _error_response(
                    exc.status_code, openai_error(exc.status_code, code, str(exc.detail), False, None), False)
                response.headers.update(exc.headers or {})
                return response

        return route


def _error_response(status: int, body: dict[str, Any], retryable: bool) -> JSONResponse:
    return JSONResponse(body, status_code=status, headers={"x-should-retry": "true" if retryable else "false"})


router = APIRouter(
    prefix="/v1", tags=["openai"], route_class=OpenAIRoute, dependencies=[Depends(caller)],
    responses=OPENAI_ERROR_RESPONSES,
)


class ParamError(BadRequest):
    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(ChatflowNotFound):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.param = "model"


# --- models -------------------------------------------------------------------------------------
@router.get("/models", response_model=ModelList)
async def list_models(services: ServicesDep, who: CallerDep) -> dict[str, Any]:
    """The chatflows this key may use, as models: `id` is the chatflow id, `name` its name
    (either addresses it)."""
    flows = visible_chatflows(who, await services.flowise.list_chatflows())
    return {"object": "list", "data": [_model(flow) for flow in flows if flow.get("id")]}


@router.get("/models/{model}", response_model=Model)
async def get_model(model: str, services: ServicesDep, who: CallerDep) -> dict[str, Any]:
    """One chatflow as a model, by id or unique name."""
    flowise = services.flowise
    chatflow_id = await resolve_model(flowise, model, who)
    flows = await flowise.list_chatflows(cached=True)
    found = next((flow for flow in flows if flow.get("id") == chatflow_id), None)
    if found is None:
        raise ModelNotFound(f"The model {model!r} does not exist: no chatflow has that id or name")
    return _model(found)


def _model(flow: dict[str, Any]) -> dict[str, Any]:
    return {"id": str(flow["id"]), "object": "model", "created": _epoch(flow.get("createdDate")),
            "owned_by": "flowise", "name": flow.get("name")}


def _epoch(value: Any) -> int:
    if not isinstance(value, str):
        return 0
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return 0


async def resolve_model(flowise: FlowiseClient, model: str, who: Caller) -> str:
    """A chatflow id as given, or the id of the one chatflow with that name, among those the
    caller's key may use. A name missing from the cached listing is looked up once more, fresh
    (a chatflow created a moment ago)."""
    try:
        chatflow_id = str(uuid.UUID(model))
    except ValueError:
        pass
    else:
        try:
            await allowed_chatflow(who, flowise, chatflow_id)
        except ChatflowNotFound:
            raise ModelNotFound(f"The model {model!r} does not exist: no chatflow has that id or name") from None
        return chatflow_id
    for cached in (True, False):
        flows = visible_chatflows(who, await flowise.list_chatflows(cached=cached))
        matches = [flow for flow in flows if flow.get("name") == model]
        if len(matches) > 1:
            raise ParamError(f"{len(matches)} chatflows are named {model!r}: use the chatflow id as the model", "model")
        if matches:
            return str(matches[0]["id"])
    raise ModelNotFound(f"The model {model!r} does not exist: no chatflow has that id or name")


# --- chat completions ---------------------------------------------------------------------------
# Sampling parameters under the input names of Flowise's chat model nodes (ChatOpenAI and most
# others), and the prompt inputs a system message replaces (conversation chain, agents).
_SAMPLING = {"temperature": "temperature", "top_p": "topP", "max_tokens": "maxTokens",
             "max_completion_tokens": "maxTokens", "presence_penalty": "presencePenalty",
             "frequency_penalty": "frequencyPenalty", "stop": "stopSequence"}
_SYSTEM_INPUTS = ("systemMessagePrompt", "systemMessage")
_PASSED_INPUTS = frozenset(_SAMPLING.values()) | frozenset(_SYSTEM_INPUTS)
_READ = {"model", "messages", "stream", "stream_options", "user", "n", "overrideConfig"}
_CHAT_ID = TypeAdapter(Annotated[str, StringConstraints(pattern=CHAT_ID_PATTERN)])


@router.post("/chat/completions", responses=COMPLETION_RESPONSES, response_model=None)
async def chat_completions(
    request: Request,
    body: ChatCompletionRequest,
    services: ServicesDep,
    who: CallerDep,
    x_flowise_chat_id: Annotated[
        str | None, Header(description="The Flowise chat (memory session) to continue")] = None,
    x_openwebui_chat_id: Annotated[str | None, Header(description="Open WebUI's chat id (forwarded user info)")] = None,
) -> Response:
    """A chatflow's answer in OpenAI's shape, streamed with `stream: true`. See the README for how
    messages, system prompts, sampling parameters and the chat id map onto Flowise."""
    if body.n != 1:
        raise ParamError("n must be 1: a chatflow gives one answer", "n")
    manager, flowise, settings = services.manager, services.flowise, services.settings
    check_caller_override(body.overrideConfig, services.overrides, settings.openai_pass_params)
    chatflow_id = await resolve_model(flowise, body.model, who)
    chat_id = _chat_id(x_flowise_chat_id, x_openwebui_chat_id, body.user)
    question, history, system, media, left_out = _conversation(body.messages)
    override, ignored = _overrides(body, system, settings.openai_pass_params)
    ignored |= left_out
    if chat_id and (await flowise.version()).prepends_history:
        history = []  # Flowise keeps this chat's turns itself; sent again they would count twice
    # What JSON parsing lets through but cannot be sent on (issue 11): a 400, never a 500.
    problem = json_problem(question, "messages") or json_problem(
        [item.get("content") for item in history], "messages") or json_problem(override, "overrideConfig")
    if problem:
        raise BadRequest(problem)
    uploads = await checked_uploads(flowise, chatflow_id, media, settings.max_upload_bytes, "messages")
    check_body_size(request, settings.max_body_bytes, bool(uploads))
    prediction = Prediction.build(question, history, chat_id, override, uploads=uploads)
    if who.tenant is not None:
        prediction = prediction.namespaced(who.upstream_chat_id)
    run = await manager.start(chatflow_id, prediction, who.tenant_id, abort_when_unread=True)
    release = manager.hold(run)
    completion_id, created = f"chatcmpl-{run.id}", int(time.time())
    headers = {"X-Flowise-Stream-Id": run.id, "X-Flowise-Chat-Id": prediction.visible_chat_id}
    if ignored:
        headers["X-Flowise-Ignored-Params"] = ignored_params_header(ignored)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        encoder = ChunkEncoder(completion_id, created, body.model, include_usage, settings.openai_reasoning)
        return HeldEventSourceResponse(
            _chunks(run, encoder, release), release,
            headers={"Cache-Control": "no-cache", **headers},
            ping=settings.keepalive_interval, ping_message_factory=lambda: KEEPALIVE, sep="\n",
            send_timeout=settings.send_timeout,  # a reader that stops reading is let go (pings too)
        )
    try:
        text, usage, thought = await _until_client_leaves(request, _answer(run))
    finally:
        release()
    reasoning = thought if settings.openai_reasoning else None
    # Not JSONResponse: its `json.dumps(...).encode()` fails on a lone surrogate (1.x can stream one).
    return Response(json_bytes(completion(completion_id, created, body.model, text, usage, reasoning)),
                    media_type="application/json", headers=headers)


def _chat_id(*candidates: str | None) -> str | None:
    """The first chat id given: `X-Flowise-Chat-Id`, `X-OpenWebUI-Chat-Id`, then `user`."""
    for value, param in zip(candidates, ("X-Flowise-Chat-Id", "X-OpenWebUI-Chat-Id", "user"), strict=True):
        if value:
            try:
                return _CHAT_ID.validate_python(value)
            except ValueError:
                raise ParamError(
                    f"{param} must be 1-128 characters of A-Z a-z 0-9 . _ : @ - (it names the Flowise chat)", param
                ) from None
    return None


def _text(message: ChatMessage, index: int, media: list[Media], left_out: set[str], asked: bool = False) -> str:
    """A message's text; the images and audio of the question (`asked`) go to `media`; an earlier
    turn's, which Flowise has no place for, are left out, and said so in `left_out`."""
    content = message.content
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for part_index, part in enumerate(content):
        where = f"messages[{index}].content[{part_index}]"
        if part.type == "text" and part.text is not None:
            texts.append(part.text)
        elif part.type in ("image_url", "input_audio") and not asked:
            left_out.add(f"messages[{index}][{part.type}]")
        elif part.type == "image_url" and part.image_url is not None:
            media.append(image_upload(part.image_url.url, len(media) + 1, where, f"messages[{index}].content"))
        elif part.type == "input_audio" and part.input_audio is not None:
            audio = part.input_audio
            media.append(audio_upload(audio.data, audio.format, len(media) + 1, where, f"messages[{index}].content"))
        elif part.type in ("image_url", "input_audio"):
            raise UploadRefused(f"{where} has no {part.type}", f"messages[{index}].content")
        else:
            raise ParamError(
                f"{where} is a {part.type!r} part: text, image_url and input_audio parts can be sent to a chatflow",
                f"messages[{index}].content")
    return "\n".join(texts)


def _conversation(
    messages: list[ChatMessage],
) -> tuple[str, list[dict[str, str]], list[str], list[Media], set[str]]:
    """(question, history, system texts, the question's images and audio, what was left out): the
    last message must be the user's question; earlier user and assistant turns are the history;
    tool and function results have no Flowise form."""
    last = len(messages) - 1
    if messages[last].role != "user":
        raise ParamError(f"the last message must be the user's (it is {messages[last].role!r})", "messages")
    media: list[Media] = []
    left_out: set[str] = set()
    question = _text(messages[last], last, media, left_out, asked=True)
    if not question.strip() and not media:
        raise ParamError("the last user message has no text", "messages")
    history: list[dict[str, str]] = []
    system: list[str] = []
    for index, message in enumerate(messages[:last]):
        if message.role in ("system", "developer"):
            system.append(_text(message, index, media, left_out))
        elif message.role in ("user", "assistant"):
            history.append({"role": message.role, "content": _text(message, index, media, left_out)})
        else:
            raise ParamError(
                f"messages[{index}] is a {message.role!r} message: the chatflow runs its own tools, "
                "so tool results cannot be sent to it", "messages")
    return question, history, system, media, left_out


def _overrides(
    body: ChatCompletionRequest, system: list[str], pass_params: bool,
) -> tuple[dict[str, Any] | None, set[str]]:
    """Flowise's `overrideConfig` from the request, and the names of the parameters not used."""
    given = body.model_dump(exclude_unset=True, exclude_none=True)
    ignored = {name for name in given if name not in _READ}
    override: dict[str, Any] = {}
    if pass_params:
        for name, flowise_name in _SAMPLING.items():
            if name in given:
                value = given[name]
                override[flowise_name] = ",".join(value) if isinstance(value, list) else value
                ignored.discard(name)
        if system:
            override.update(dict.fromkeys(_SYSTEM_INPUTS, "\n\n".join(system)))
    elif system:
        ignored.add("messages[role=system]")
    override.update(body.overrideConfig or {})
    return override or None, ignored


def check_caller_override(override: dict[str, Any] | None, policy: OverridePolicy, pass_params: bool) -> None:
    """The caller's own `overrideConfig` on an OpenAI route: the gateway's policy, and with
    FLOWISE_SSE_OPENAI_PASS_PARAMS off none of the inputs that setting governs (off means the
    chatflow owns its sampling and its prompt: overrideConfig must not reopen that)."""
    policy.check(override)
    if override and not pass_params:
        reopened = sorted(set(override) & _PASSED_INPUTS)
        if reopened:
            raise ParamError(f"overrideConfig may not set {', '.join(reopened)} while FLOWISE_SSE_OPENAI_PASS_PARAMS "
                             "is off (the chatflow owns its sampling and its prompt)", "overrideConfig")


IGNORED_HEADER_BYTES = 300


def ignored_params_header(names: set[str]) -> str:
    """The ignored parameters' names as one header value a client can read: what is not printable
    ASCII escaped (a name is the caller's text: a CR, a non-ASCII letter or a comma must neither
    break the header nor fake another one), and past a few hundred bytes a count of the rest."""
    shown: list[str] = []
    size = 0
    ordered = sorted(names)
    for name in ordered:
        safe = "".join(c if "!" <= c <= "~" and c not in ",\\" else c.encode("unicode_escape").decode()
                       if ord(c) > 0x7f else f"\\x{ord(c):02x}" for c in name)[:100]
        if shown and size + len(safe) + 1 > IGNORED_HEADER_BYTES:
            break
        shown.append(safe)
        size += len(safe) + 1
    more = len(ordered) - len(shown)
    return ",".join(shown) + (f",... ({more} more)" if more else "")


async def _answer(run: StreamRun) -> tuple[str, dict[str, int] | None, str]:
    """The whole answer, its usage and Flowise's thinking, once the run ends; a failure raises
    its `GatewayError`."""
    usage = UsageReport()
    parts: list[str] = []
    thoughts: list[str] = []
    async with aclosing(run.event_batches()) as batches:
        async for batch in batches:
            for event in batch:
                if event.event == END:
                    answer = event.text
                    streamed = "".join(parts)
                    text = answer if answer.startswith(streamed) else streamed
                    return text, usage.totals(), "".join(thoughts)
                if event.event == ERROR:
                    raise error_from_event(event.data)
                if event.text:
                    parts.append(event.text)
                elif event.event == "thinking" and isinstance(event.data, str):
                    thoughts.append(event.data)
                else:
                    usage.feed(event)
    raise UpstreamError("the stream ended without a final answer")


async def _until_client_leaves(request: Request, work: Any) -> Any:
    """Await `work`, unless the client disconnects first: then cancel it (which lets go of the
    run, and so aborts it). A plain response's handler is not cancelled by a disconnect."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():
            task.cancel()
    await asyncio.gather(gone, return_exceptions=True)
    return await task


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _chunks(run: StreamRun, encoder: ChunkEncoder, release: Callable[[], None]) -> AsyncIterator[bytes]:
    """The completion's chunks; what piled up while the client was slow goes out as one write."""
    try:
        yield encoder.first()
        async with aclosing(run.event_batches()) as batches:
            async for batch in batches:
                out = b"".join([chunk for chunk in map(encoder.feed, batch) if chunk])
                if out:
                    yield out
                if batch[-1].event in TERMINAL:
                    return
    finally:
        release()


class HeldEventSourceResponse(EventSourceResponse):
    """Lets go of its run when the response ends however it ends, even if the client left before
    the body iterator ever started (an unstarted generator's `finally` never runs). It wraps
    only the public `__call__` (ARCHITECTURE.md, "Divergences from upstream")."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()

