"""An emulated Flowise server that behaves on the wire like real Flowise 1.x to 3.x.

The ASGI app answers like the Flowise version named in `EmulatorConfig.version`. Up to 2.0.x it
streams over socket.io; from 2.1.0 it streams SSE on the prediction POST. Each version keeps its own
auth, error shapes, history handling and framing quirks. Version boundaries come from the Flowise git
tags, and where a raw capture of a real server exists, the emulator matches it. The mock LLM answers
`reply_prefix + question` word by word, like the OpenAI-compatible mock behind the captures. A request
can steer it through `overrideConfig.emulator` (tokens, delay, errors, stalls, extra events; see
`_plan`). For tests it records what it saw (`requests`, `aborts`) and keeps live counters, also served
as JSON at `/__emulator/state`.

What Flowise's memory hands the LLM from the request's `history`, per item form:

    item                                   <1.6.5    1.6.5-1.7  1.8-2.0.1  2.0.2-2.x       3.x
    {type: user/apiMessage, message}       replayed  ignored    ignored    empty, ai only  empty
    {role: user/apiMessage, content}       ignored   ignored    replayed   replayed        replayed
    {role: user/assistant, content}        ignored   ignored    ignored    ignored         ignored

Unlike real Flowise, a prediction stops once its HTTP client goes away (real Flowise runs the flow to
the end). Tests can then see that a gateway closed its upstream request (`client_disconnects`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
import socketio
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send


DEMO_CHATFLOW_ID = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"
KEYED_CHATFLOW_ID = "a11fa90f-86df-4ab3-9f78-30d246bf5254"
NONSTREAMING_CHATFLOW_ID = "d3b059cf-c070-4f62-a55e-5304b4d2c05f"


@dataclass
class EmulatorConfig:
    """How the emulated Flowise behaves; the defaults suit the demo."""

    # "1.6.2" and "2.0.7" stream over socket.io; "2.1.0" and later stream SSE on the prediction POST.
    version: str = "3.1.4"
    # Seconds between tokens.
    token_delay: float = 0.0
    # FLOWISE_USERNAME / FLOWISE_PASSWORD: basic auth on management routes (1.x; 2.x only for
    # `x-request-from: internal`).
    username: str | None = None
    password: str | None = None
    # The key the keyed chatflow is bound to. From 2.0.6 the management routes need it too, as a Bearer
    # key. None leaves them open (a real 2.x/3.x without keys refuses all external management calls).
    api_key: str | None = None
    # Seconds between `:heartbeat` comments on SSE streams. None means the version's own: 30 s from
    # 3.1.2, none before.
    heartbeat_interval: float | None = None
    # socket.io versions: the HTTP JSON answer comes this long after the `end` frame.
    answer_lag: float = 0.01
    # An LLM stream without the empty role/finish chunks. `start` then carries the first token, which
    # is repeated as a `token`.
    first_token_in_start: bool = False
    # SSE: write each event in several small odd-sized chunks, to test parsers.
    split_writes: bool = False
    reply_prefix: str = "This is a deterministic mock reply. You said: "


# The first Flowise version with each behaviour, in release order.
_HISTORY_FROM_DB = (1, 6, 5)  # memory no longer replays the request's {type, message} history
_CONTROLLERS = (1, 8, 0)  # routes move to controllers: JSON errors, abort route, {role, content} history
_PING = (1, 8, 2)
_AI_TYPE_FALLBACK = (2, 0, 2)  # a {type: apiMessage} history item counts (with empty content)
_KEY_GATE = (2, 0, 6)  # external management calls need a Bearer API key instead of basic auth
_SSE = (2, 1, 0)  # PR #3125: SSE on the prediction POST replaces socket.io; JSON gains isStreamValid
_VERSION_WHITELISTED = (2, 1, 2)  # also the first with the X-Accel-Buffering header
_SKIP_EMPTY_TOKENS = (2, 2, 0)
_STREAM_VALID_NEEDS_FLAG = (2, 2, 5)  # isStreamValid also requires streaming:true
_V3 = (3, 0, 0)  # workspaces; a {type: userMessage} history item counts too (with empty content)
_TOKEN_GATE = (3, 0, 1)  # `x-request-from: internal` now means a login cookie, not basic auth
_STRICT_LOOKUP = (3, 0, 13)  # unknown chatflow: 404 (400 for a non-uuid), no longer a wrapped 500
_ABORT_WHITELISTED = (3, 1, 0)
_COLON_EVERYWHERE = (3, 1, 2)  # end/error frames get `message:` like the others; heartbeat comments

_UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$", re.IGNORECASE)
_WORDS = re.compile(r"\s*\S+(?:\s+$)?")  # "This", " is", ...; trailing blanks stay on the last word
_TRIGGER = re.compile(r"\[\[.*?\]\]")
_DELAY_TRIGGER = re.compile(r"\[\[delay=(\d+(?:\.\d+)?)\]\]")
_SYSTEM_PROMPT = "You are a mock assistant."
_ANSWER_FIELDS = ("sourceDocuments", "usedTools", "fileAnnotations", "agentReasoning", "artifacts")
_SPLIT_SIZES = (1, 3, 2, 7, 5, 11)
_HEARTBEAT = b":heartbeat\n\n"
_HEAD = b"message:\ndata:"
_CREATED, _UPDATED = "2026-11-24T22:53:02.000Z", "2026-11-24T23:15:48.000Z"
_APIKEY_ID = "e312cb12-76cc-4347-9724-d7d661900c87"
_WORKSPACE_ID = "06a45604-46c2-4da8-b150-084a673512dc"

Version = tuple[int, int, int]
Work = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class _Chatflow:
    id: str
    name: str
    streaming: bool
    keyed: bool = False

    @property
    def flow_data(self) -> str:
        # 1.6.2 refuses to stream with chatOpenAICustom, which explains the non-streaming flow.
        model = "chatOpenAI" if self.streaming else "chatOpenAICustom"
        nodes = [(f"{model}_0", model, "Chat Models"), ("bufferMemory_0", "bufferMemory", "Memory"),
                 ("conversationChain_0", "conversationChain", "Chains")]
        return orjson.dumps({
            "nodes": [{"id": id_, "data": {"name": name, "category": category}} for id_, name, category in nodes],
            "edges": [{"source": source, "target": "conversationChain_0"} for source, _, _ in nodes[:2]],
        }).decode()


_CHATFLOWS = {
    flow.id: flow
    for flow in (
        _Chatflow(DEMO_CHATFLOW_ID, "Demo chat (emulated Flowise)", streaming=True),
        _Chatflow(KEYED_CHATFLOW_ID, "Keyed chat (emulated Flowise)", streaming=True, keyed=True),
        _Chatflow(NONSTREAMING_CHATFLOW_ID, "Non-streaming chat (emulated Flowise)", streaming=False),
    )
}


class _FlowError(Exception):
    """buildChatflow failed (bad chatflow key, LLM error). `status` is what 1.x answers with."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class _Plan:
    """What the mock LLM does for one prediction."""

    tokens: list[str]
    delay: float
    cut: int | None  # tokens streamed before the LLM fails or stalls; None: it completes
    error: str | None  # the failure at `cut`; None there means a stall forever
    boundary: bool  # OpenAI-style empty role and finish chunks around the tokens
    events: list[dict[str, Any]]
    drop_tokens: bool = False  # SSE: no start/token events, the answer only stored (Flowise #4926)

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    async def chunks(self) -> AsyncIterator[str]:
        tokens = self.tokens if self.cut is None else self.tokens[: self.cut]
        if tokens or self.cut is None:  # an LLM call that fails or stalls up front streams nothing
            if self.boundary:
                yield ""
            for token in tokens:
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield token
        if self.cut is None:
            if self.boundary:
                yield ""
        elif self.error is not None:
            raise _FlowError(self.error)
        else:
            await _forever()


@dataclass(slots=True)
class _Turn:
    """One prediction request, as Flowise's buildChatflow sees it."""

    flow: _Chatflow
    body: dict[str, Any]
    question: str
    chat_id: str
    session_id: str
    authorized: bool
    streaming_requested: bool
    plan: _Plan
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))


class Emulator:
    """The emulated Flowise: an ASGI app that also exposes what it saw, for tests."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.requests: list[dict[str, Any]] = []
        self.aborts: list[tuple[str, str]] = []
        self.messages: dict[str, dict[str, Any]] = {}  # stored answers by chatMessageId
        self.active_predictions = 0
        self.client_disconnects = 0
        self.connected_sockets = 0
        self.socket_connects = 0

        v = self._v = _parse_version(config.version)
        self._sse = v >= _SSE
        interval = config.heartbeat_interval
        if interval is None:
            interval = 30.0 if v >= _COLON_EVERYWHERE else None
        self._heartbeat = interval if interval and interval > 0 else None
        # 2.1.0 to 3.1.1 wrote `end` and `error` (and `abort`) after `message`, without the colon.
        self._closing_head = _HEAD if v >= _COLON_EVERYWHERE else b"message\ndata:"
        self._end_frame = _frame("end", "[DONE]", self._closing_head)
        self._sse_headers = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
                             (b"connection", b"keep-alive")]
        if v >= _VERSION_WHITELISTED:
            self._sse_headers.append((b"x-accel-buffering", b"no"))
        whitelist = ["/api/v1/prediction/", "/api/v1/chatflows-streaming"]
        whitelist += ["/api/v1/ping"] if v >= _PING else []
        whitelist += ["/api/v1/version"] if v >= _VERSION_WHITELISTED else []
        whitelist += ["/api/v1/chatmessage/abort"] if v >= _ABORT_WHITELISTED else []
        self._whitelist = tuple(whitelist)

        routes = [
            Route("/api/v1/version", self._version),
            Route("/api/v1/chatflows", self._list_chatflows),
            Route("/api/v1/chatflows/{id}", self._get_chatflow),
            Route("/api/v1/chatflows-streaming/{id}", self._streaming_check),
            Route("/api/v1/prediction/{id}", self._predict, methods=["POST"]),
            Route("/api/v1/chatmessage/{id}", self._chat_messages),
            Route("/__emulator/state", self._state, methods=["GET", "DELETE"]),
        ]
        if v >= _PING:
            routes.append(Route("/api/v1/ping", self._ping))
        if v >= _CONTROLLERS:
            routes.append(Route("/api/v1/chatmessage/abort/{chatflowid}/{chatid}", self._abort, methods=["PUT"]))
        http_app = Starlette(routes=routes)
        self._sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")
        self._sio.on("connect", self._on_connect)
        self._sio.on("disconnect", self._on_disconnect)
        # SSE versions serve no socket.io at all, like 2.2.5+ (2.1.x kept an unused server).
        self._app: ASGIApp = http_app if self._sse else socketio.ASGIApp(self._sio, other_asgi_app=http_app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            denial = self._gate(scope)
            if denial is not None:
                await denial(scope, receive, send)
                return
        await self._app(scope, receive, send)

    def _gate(self, scope: Scope) -> Response | None:
        """Flowise's auth middleware in front of /api/v1 (the per-chatflow key is checked later)."""
        path: str = scope["path"]
        if not path.startswith("/api/v1/") or path.startswith(self._whitelist):
            return None
        headers, cfg = Headers(scope=scope), self.config
        if self._v < _KEY_GATE or (self._v < _TOKEN_GATE and headers.get("x-request-from") == "internal"):
            credentials = (cfg.username, cfg.password)
            if None in credentials or _basic_credentials(headers) == credentials:
                return None
            return HTMLResponse("", 401)  # express-basic-auth: empty body, no challenge
        if cfg.api_key is None or _bearer(headers) == cfg.api_key:
            return None
        return _json({"error": "Unauthorized Access"}, 401)

    # Management routes

    async def _version(self, request: Request) -> Response:
        return _json({"version": self.config.version})

    async def _ping(self, request: Request) -> Response:
        return HTMLResponse("pong")

    async def _list_chatflows(self, request: Request) -> Response:
        return _json([self._entity(flow) for flow in _CHATFLOWS.values()])

    async def _get_chatflow(self, request: Request) -> Response:
        flow = _CHATFLOWS.get(request.path_params["id"])
        return _json(self._entity(flow)) if flow else self._unknown_chatflow(request.path_params["id"])

    async def _streaming_check(self, request: Request) -> Response:
        flow_id = request.path_params["id"]
        flow = _CHATFLOWS.get(flow_id)
        if flow is not None:
            return _json({"isStreaming": flow.streaming})
        if self._v < _CONTROLLERS:
            return self._error(404, f"Chatflow {flow_id} not found")
        message = f"Error: chatflowsService.checkIfChatflowIsValidForStreaming - Chatflow {flow_id} not found"
        return self._error(500, message)

    async def _chat_messages(self, request: Request) -> Response:
        """The stored answers of a chatflow, filtered by `chatId` and `messageId` like Flowise's."""
        query = request.query_params
        found = [m for m in self.messages.values() if m["chatflowid"] == request.path_params["id"]
                 and query.get("chatId", m["chatId"]) == m["chatId"] and query.get("messageId", m["id"]) == m["id"]]
        return _json(found)

    async def _abort(self, request: Request) -> Response:
        # Like real Flowise, this does not stop a chain's stream: it only aborts agent flows.
        self.aborts.append((request.path_params["chatflowid"], request.path_params["chatid"]))
        return _json({"status": 200, "message": "Chat message aborted"})

    async def _state(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.requests.clear()
            self.aborts.clear()
            self.client_disconnects = self.socket_connects = 0
        return _json({
            "requests": self.requests, "aborts": self.aborts, "active_predictions": self.active_predictions,
            "client_disconnects": self.client_disconnects, "connected_sockets": self.connected_sockets,
            "socket_connects": self.socket_connects,
        })

    async def _on_connect(self, sid: str, *_: Any) -> None:
        self.connected_sockets += 1
        self.socket_connects += 1

    async def _on_disconnect(self, sid: str, *_: Any) -> None:
        self.connected_sockets -= 1

    def _entity(self, flow: _Chatflow) -> dict[str, Any]:
        entity: dict[str, Any] = {
            "id": flow.id, "name": flow.name, "flowData": flow.flow_data, "deployed": False, "isPublic": False,
            "apikeyid": _APIKEY_ID if flow.keyed else None, "chatbotConfig": None, "apiConfig": None,
            "analytic": None, "speechToText": None,
        }
        if self._v < _CONTROLLERS:  # 1.x databases got `category` from a later migration, hence last
            return entity | {"createdDate": _CREATED, "updatedDate": _UPDATED, "category": None}
        if self._v < _V3:
            return entity | {"category": None, "type": "CHATFLOW", "createdDate": _CREATED, "updatedDate": _UPDATED}
        return entity | {
            "textToSpeech": None, "followUpPrompts": None, "category": None, "type": "CHATFLOW",
            "createdDate": _CREATED, "updatedDate": _UPDATED, "mcpServerConfig": None,
            "webhookSecretConfigured": False, "workspaceId": _WORKSPACE_ID,
        }

    # Errors, per version

    def _error(self, status: int, message: str) -> Response:
        if self._v < _CONTROLLERS:  # 1.x: res.status(..).send(message)
            return HTMLResponse(message, status)
        return _json({"statusCode": status, "success": False, "message": message, "stack": {}}, status)

    def _unknown_chatflow(self, flow_id: str) -> Response:
        if self._v < _CONTROLLERS:
            return self._error(404, f"Chatflow {flow_id} not found")
        if self._v < _STRICT_LOOKUP:
            message = f"Error: chatflowsService.getChatflowById - Chatflow {flow_id} not found in the database!"
            return self._error(500, message)
        if not _UUID4.match(flow_id):
            return self._error(400, "Invalid Chatflow ID")
        return self._error(404, f"Chatflow {flow_id} not found in the database!")

    def _failure(self, exc: _FlowError) -> Response:
        if self._v < _CONTROLLERS:
            return self._error(exc.status, str(exc))
        return self._error(500, f"Error: predictionsServices.buildChatflow - {exc}")

    def _silenced(self, body: dict[str, Any]) -> bool:
        """From 2.1.0 the error middleware writes nothing while `streaming` is truthy: the request hangs."""
        return self._sse and body.get("streaming") not in (None, False, 0, "", "false")

    # Prediction

    async def _predict(self, request: Request) -> Response:
        flow_id = request.path_params["id"]
        try:
            body = orjson.loads(await request.body() or b"{}")
        except orjson.JSONDecodeError:
            return PlainTextResponse("Bad Request", 400)
        body = body if isinstance(body, dict) else {}
        overrides = _mapping(body.get("overrideConfig"))
        question = str(body.get("question") or "")
        flow = _CHATFLOWS.get(flow_id)
        streaming = body.get("streaming")
        streaming_requested = streaming is True or streaming == "true"
        streamable = flow is not None and flow.streaming
        sid = body.get("socketIOClientId")
        if self._sse:
            transport = "sse" if streamable and streaming_requested else "json"
        else:
            transport = "socketio" if streamable and sid else "json"
        self.requests.append({
            "chatflowId": flow_id, "body": body, "headers": dict(request.headers),
            "llm_messages": [
                {"role": "system", "content": _SYSTEM_PROMPT},
                *self._replayed_history(body.get("history")),
                {"role": "user", "content": question},
            ],
            "transport": transport,
        })
        controls = _mapping(overrides.get("emulator"))
        if controls.get("hang"):
            return _Prediction(self, _hang)
        if flow is None:
            return _Prediction(self, _hang) if self._silenced(body) else self._unknown_chatflow(flow_id)

        session_id = overrides.get("sessionId")  # `??` chains: an empty string still counts
        chat_id = body.get("chatId")
        if chat_id is None:
            chat_id = str(uuid.uuid4()) if session_id is None else session_id
        api_key = self.config.api_key
        turn = _Turn(
            flow=flow, body=body, question=question, chat_id=chat_id,
            session_id=chat_id if session_id is None else session_id,
            authorized=not flow.keyed or (api_key is not None and _bearer(request.headers) == api_key),
            streaming_requested=streaming_requested, plan=self._plan(question, controls),
        )
        if transport == "sse":
            return _Prediction(self, partial(self._stream_sse, turn))
        return _Prediction(self, partial(self._answer_json, turn, sid if transport == "socketio" else None))

    def _plan(self, question: str, controls: dict[str, Any]) -> _Plan:
        """The mock LLM for one request.

        The question can carry triggers, like the mock behind the captures: `[[delay=300]]` (ms per
        token) and `[[http400]]` (the LLM fails with "400 mock error 400"). `overrideConfig.emulator`
        overrides them: `tokens` (list[str]), `delay` (s), `events` ([{event, data}] sent after the
        tokens), `error` (str) with `errorAfter` (tokens first, default 0) and `hangAfter` (the LLM
        stalls after that many tokens; SSE headers are out by then), `dropTokens` (SSE: the answer is
        stored but not streamed, Flowise's no-token bug). `hang: true` is handled before
        the plan: the server never answers at all, not even headers.
        """
        delay_trigger = _DELAY_TRIGGER.search(question)
        delay = controls.get("delay", float(delay_trigger[1]) / 1000 if delay_trigger else self.config.token_delay)
        error = controls.get("error", "400 mock error 400" if "[[http400]]" in question else None)
        cut = controls.get("errorAfter", 0) if error is not None else controls.get("hangAfter")
        tokens = controls.get("tokens")
        if tokens is None:
            tokens = _WORDS.findall(self.config.reply_prefix + _TRIGGER.sub("", question).strip())
        return _Plan(tokens=list(tokens), delay=float(delay), cut=None if cut is None else int(cut), error=error,
                     boundary=not self.config.first_token_in_start, events=list(controls.get("events", [])),
                     drop_tokens=bool(controls.get("dropTokens")))

    def _replayed_history(self, history: Any) -> list[dict[str, Any]]:
        """The request-history messages this version's memory hands the LLM (see the module table)."""
        items = [item for item in history if isinstance(item, dict)] if isinstance(history, list) else []
        replayed: list[dict[str, Any]] = []
        if self._v < _HISTORY_FROM_DB:  # BufferMemory.getChatMessages(prevHistory)
            for item in items:
                kind, message = item.get("type"), item.get("message")
                if kind in ("userMessage", "apiMessage") and isinstance(message, str):
                    replayed.append({"role": "user" if kind == "userMessage" else "assistant", "content": message})
            return replayed
        if self._v < _CONTROLLERS:  # the field is gone; memory comes from the database only
            return replayed
        for item in items:  # mapChatMessageToBaseMessage
            role, kind = item.get("role"), item.get("type")
            if role == "apiMessage" or (kind == "apiMessage" and self._v >= _AI_TYPE_FALLBACK):
                speaker = "assistant"
            elif role == "userMessage" or (kind == "userMessage" and self._v >= _V3):
                speaker = "user"
            else:
                continue
            replayed.append({"role": speaker, "content": item.get("content") or ""})
        return replayed

    async def _handler_events(self, plan: _Plan) -> AsyncIterator[tuple[str, Any]]:
        """What Flowise's chain callback handler makes of the LLM stream, then the flow's extra events."""
        forward_empty = self._v < _SKIP_EMPTY_TOKENS
        started = False
        async for chunk in plan.chunks():
            if not started:
                started = True
                yield "start", chunk
            if chunk or forward_empty:
                yield "token", chunk
        for event in plan.events:
            yield event["event"], event.get("data")

    async def _answer_json(self, turn: _Turn, sid: str | None, scope: Scope, receive: Receive, send: Send) -> None:
        """socket.io versions: stream to the socket, then answer JSON; any version without streaming: JSON."""
        try:
            if not turn.authorized:
                raise _FlowError("Unauthorized", 401)
            if sid is None:
                async for _ in turn.plan.chunks():
                    pass
            else:
                emit = self._sio.emit
                async for event, data in self._handler_events(turn.plan):
                    await emit(event, data, to=sid)
                await emit("end", to=sid)
                await asyncio.sleep(self.config.answer_lag)
        except _FlowError as exc:
            if self._silenced(turn.body):
                await _forever()
            response = self._failure(exc)
        else:
            answer = {"text": turn.plan.text}
            answer |= {e["event"]: e.get("data") for e in turn.plan.events if e["event"] in _ANSWER_FIELDS}
            answer |= {"question": turn.question, "chatId": turn.chat_id, "chatMessageId": turn.message_id}
            if self._sse:
                answer["isStreamValid"] = turn.flow.streaming and (
                    turn.streaming_requested or self._v < _STREAM_VALID_NEEDS_FLAG)
            answer |= {"sessionId": turn.session_id, "memoryType": "Buffer Memory"}
            response = _json(answer)
        await response(scope, receive, send)

    async def _stream_sse(self, turn: _Turn, scope: Scope, receive: Receive, send: Send) -> None:
        """2.1.0+: the headers go out before buildChatflow runs, so its failures become `error` events."""
        await send({"type": "http.response.start", "status": 200, "headers": self._sse_headers})
        write = self._writer(send)
        heartbeat = asyncio.create_task(_heartbeats(write, self._heartbeat)) if self._heartbeat else None
        try:
            try:
                if not turn.authorized:
                    raise _FlowError("Unauthorized")
                async for event, data in self._handler_events(turn.plan):
                    if not (turn.plan.drop_tokens and event in ("start", "token")):
                        await write(_frame(event, data))
                self.messages[turn.message_id] = {
                    "id": turn.message_id, "role": "apiMessage", "chatflowid": turn.flow.id,
                    "chatId": turn.chat_id, "content": turn.plan.text,
                }
                await write(_frame("metadata", {
                    "chatId": turn.chat_id, "chatMessageId": turn.message_id, "question": turn.question,
                    "sessionId": turn.session_id, "memoryType": "Buffer Memory",
                }))
            except _FlowError as exc:
                await write(_frame("error", f"Error: predictionsServices.buildChatflow - {exc}", self._closing_head))
            await write(self._end_frame)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _writer(self, send: Send) -> Callable[[bytes], Awaitable[None]]:
        async def write(data: bytes) -> None:
            await send({"type": "http.response.body", "body": data, "more_body": True})

        if not self.config.split_writes:
            return write
        lock = asyncio.Lock()

        async def write_split(data: bytes) -> None:
            async with lock:  # a heartbeat must not land inside a split event
                for piece in _pieces(data):
                    await write(piece)

        return write_split


class _Prediction:
    """The ASGI response of one prediction: runs it and stops it when the HTTP client goes away."""

    def __init__(self, emulator: Emulator, work: Work) -> None:
        self._emulator = emulator
        self._work = work

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        emulator = self._emulator
        emulator.active_predictions += 1
        work = asyncio.ensure_future(self._work(scope, receive, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted = work.cancel()  # True only if the work was still running
            gone.cancel()
            emulator.active_predictions -= 1
        if interrupted:
            emulator.client_disconnects += 1
        else:
            work.result()  # surface the emulator's own failures


def create_emulator_app(config: EmulatorConfig | None = None) -> Emulator:
    return Emulator(config or EmulatorConfig())


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _forever() -> None:
    await asyncio.get_running_loop().create_future()


async def _hang(scope: Scope, receive: Receive, send: Send) -> None:
    await _forever()


async def _heartbeats(write: Callable[[bytes], Awaitable[None]], interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        await write(_HEARTBEAT)


def _frame(event: str, data: Any, head: bytes = _HEAD) -> bytes:
    # Flowise: res.write('message:\ndata:' + JSON.stringify({event, data}) + '\n\n')
    return head + orjson.dumps({"event": event, "data": data}) + b"\n\n"


def _pieces(data: bytes) -> Iterator[bytes]:
    start = 0
    for size in itertools.cycle(_SPLIT_SIZES):
        if start >= len(data):
            return
        yield data[start : start + size]
        start += size


def _json(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json; charset=utf-8")


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _bearer(headers: Headers) -> str:
    # Flowise reads the key as `authorization.split('Bearer ').pop()`.
    return headers.get("authorization", "").split("Bearer ")[-1]


def _basic_credentials(headers: Headers) -> tuple[str, str] | None:
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:
        return None
    return (user, password) if colon else None


def _parse_version(text: str) -> Version:
    match = re.match(r"(\d+)\.(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not a Flowise version: {text!r}")
    major, minor, patch = (int(part) for part in match.groups())
    return major, minor, patch
