"""The emulated Flowise as one ASGI app: its configuration, and the routes the configured version serves.

Every version difference comes from `quirks.py` (`self.quirks`, resolved once); the handlers here
only read it. A prediction goes: auth gate (auth_gate.py) -> `_predict` (parses and records the
request, plans the mock LLM: mock_llm.py) -> one of sse_stream.py (2.1.0+), socketio_stream.py then
the JSON answer (≤2.0.x), or the JSON answer alone (prediction_run.py).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import partial
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth_gate import bearer, denial
from .conversation_state import Conversation
from .emulated_chatflows import AGENTFLOWS, CHATFLOWS
from .flowise_errors import json_response, silenced, unknown_chatflow, unknown_streaming_chatflow
from .mock_llm import MockLlm, llm_messages
from .prediction_run import PredictionResponse, Turn, Work, answer_json, hang, run_silently
from .quirks import quirks_for
from .records import Records
from .socketio_stream import SocketioStream
from .sse_stream import SseStream


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
    # How many of the most recent prediction requests (and aborts) `requests` (`aborts`) keep; older
    # ones are dropped (`requests_seen` still counts them).
    max_recorded_requests: int = 1000


class Emulator(Records):
    """The emulated Flowise: an ASGI app that also exposes what it saw, for tests (its `Records`)."""

    def __init__(self, config: EmulatorConfig) -> None:
        super().__init__(config.max_recorded_requests)
        self.config = config
        self.quirks = quirks = quirks_for(config.version)
        self._llm = MockLlm(config.reply_prefix, config.token_delay, config.first_token_in_start)
        self._sse = SseStream(quirks, config.heartbeat_interval, config.split_writes)
        self._socketio = SocketioStream(quirks, self, config.answer_lag)
        self.chatflows = {**CHATFLOWS, **(AGENTFLOWS if quirks.agentflow_v2 else {})}
        self.conversation = conversation = Conversation(quirks, self.chatflows, self.answers)

        routes = [
            Route("/api/v1/version", self._version),
            Route("/api/v1/chatflows", self._list_chatflows),
            Route("/api/v1/chatflows/{id}", self._get_chatflow),
            Route("/api/v1/chatflows-streaming/{id}", self._streaming_check),
            Route("/api/v1/prediction/{id}", self._predict, methods=["POST"]),
            Route("/api/v1/chatmessage/{id}", self._chat_messages),
            Route("/api/v1/public-chatbotConfig/{id}", conversation.public_config),
            Route("/api/v1/feedback/{id}", conversation.create_feedback, methods=["POST"]),
            Route("/api/v1/feedback/{id}", conversation.update_feedback, methods=["PUT"]),
            Route("/api/v1/feedback/{id}", conversation.list_feedback, methods=["GET"]),
            Route("/api/v1/get-upload-file", conversation.upload_file),
            Route("/api/v1/vector/upsert/{id}", conversation.upsert, methods=["POST"]),
            Route("/__emulator/state", self._state, methods=["GET", "DELETE"]),
        ]
        if quirks.full_file_uploads:
            routes.append(Route("/api/v1/attachments/{chatflowId}/{chatId}", conversation.attachments,
                                methods=["POST"]))
        if quirks.ping_route:
            routes.append(Route("/api/v1/ping", self._ping))
        if quirks.abort_route:
            routes.append(Route("/api/v1/chatmessage/abort/{chatflowid}/{chatid}", self._abort, methods=["PUT"]))
        http_app = Starlette(routes=routes)
        # SSE versions serve no socket.io at all, like 2.2.5+ (2.1.x kept an unused server).
        self._app: ASGIApp = http_app if quirks.sse_streaming else self._socketio.mount(http_app)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refused = denial(scope, self.quirks, (self.config.username, self.config.password), self.config.api_key)
            if refused is not None:
                await refused(scope, receive, send)
                return
        await self._app(scope, receive, send)

    # Management routes

    async def _version(self, request: Request) -> Response:
        return json_response({"version": self.config.version})

    async def _ping(self, request: Request) -> Response:
        return HTMLResponse("pong")

    async def _list_chatflows(self, request: Request) -> Response:
        return json_response([flow.entity(self.quirks) for flow in self.chatflows.values()])

    async def _get_chatflow(self, request: Request) -> Response:
        flow_id = request.path_params["id"]
        flow = self.chatflows.get(flow_id)
        return json_response(flow.entity(self.quirks)) if flow else unknown_chatflow(self.quirks, flow_id)

    async def _streaming_check(self, request: Request) -> Response:
        flow_id = request.path_params["id"]
        flow = self.chatflows.get(flow_id)
        if flow is None:
            return unknown_streaming_chatflow(self.quirks, flow_id)
        return json_response({"isStreaming": flow.streaming})

    async def _chat_messages(self, request: Request) -> Response:
        """The stored answers of a chatflow, filtered by `chatId` and `messageId` like Flowise's."""
        query = request.query_params
        return json_response([
            m for m in self.answers if m["chatflowid"] == request.path_params["id"]
            and query.get("chatId", m["chatId"]) == m["chatId"] and query.get("messageId", m["id"]) == m["id"]
        ])

    async def _abort(self, request: Request) -> Response:
        # Like real Flowise, this does not stop a chain's stream: it only aborts agent flows.
        self.aborts.append((request.path_params["chatflowid"], request.path_params["chatid"]))
        return json_response({"status": 200, "message": "Chat message aborted"})

    async def _state(self, request: Request) -> Response:
        if request.method == "DELETE":
            self.clear_records()
        return json_response(self.records_state())

    # Prediction

    async def _predict(self, request: Request) -> Response | PredictionResponse:
        quirks = self.quirks
        flow_id = request.path_params["id"]
        try:
            # Read without `request.body()`, which keeps the raw bytes for the response's life.
            body = orjson.loads(b"".join([chunk async for chunk in request.stream()]) or b"{}")
        except orjson.JSONDecodeError:
            return PlainTextResponse("Bad Request", 400)
        body = body if isinstance(body, dict) else {}
        overrides = _mapping(body.get("overrideConfig"))
        question = str(body.get("question") or "")
        flow = self.chatflows.get(flow_id)
        streaming = body.get("streaming")
        streaming_requested = streaming is True or streaming == "true"
        streamable = flow is not None and flow.streaming
        sid = body.get("socketIOClientId")
        if quirks.sse_streaming:
            transport = "sse" if streamable and streaming_requested else "json"
        else:
            transport = "socketio" if streamable and sid else "json"
        session_id = overrides.get("sessionId")  # `??` chains: an empty string still counts
        chat_id = body.get("chatId")
        if chat_id is None:
            chat_id = str(uuid.uuid4()) if session_id is None else session_id
        session = chat_id if session_id is None else session_id
        api_key = self.config.api_key
        authorized = flow is None or not flow.keyed or (api_key is not None and bearer(request.headers) == api_key)
        prepared = self.conversation.prepare(flow, body, chat_id, session) if flow and authorized else None
        if prepared is not None:
            question = prepared.question
        body = _summarised(body)  # the uploads are stored: their data is not kept twice
        self.add_request({
            "chatflowId": flow_id, "body": body, "headers": dict(request.headers),
            "llm_messages": llm_messages(question, body.get("history"), quirks,
                                         [_short(url) for url in prepared.images] if prepared else None),
            "transport": transport,
        })
        controls = _mapping(overrides.get("emulator"))
        if controls.get("hang"):
            return PredictionResponse(self, hang)
        if flow is None:
            return PredictionResponse(self, hang) if silenced(quirks, body) else unknown_chatflow(quirks, flow_id)

        if prepared is not None and prepared.failure is not None:
            controls = {**controls, "error": prepared.failure, "errorAfter": 0}
        plan = self._llm.plan(question, controls)
        if prepared is not None and prepared.agentflow:
            plan.agentflow, plan.leading = True, prepared.leading
            plan.events = [*prepared.trailing, *plan.events]
        turn = Turn(
            flow=flow, body=body, question=question, chat_id=chat_id, session_id=session,
            authorized=authorized, streaming_requested=streaming_requested, plan=plan,
            metadata=prepared.metadata if prepared else {},
        )
        if turn.authorized and turn.plan.cut is None:  # an answer that will complete is stored
            user = {"id": str(uuid.uuid4()), "role": "userMessage", "chatflowid": flow.id, "chatId": chat_id,
                    "sessionId": session, "content": question}
            if quirks.lead_email and body.get("leadEmail"):
                user["leadEmail"] = body["leadEmail"]
            if prepared and prepared.file_uploads:
                user["fileUploads"] = orjson.dumps(prepared.file_uploads).decode()
            self.answers.append(user)
            self.answers.append({"id": turn.message_id, "role": "apiMessage", "chatflowid": flow.id,
                                 "chatId": chat_id, "sessionId": session, "content": turn.plan.text})
        work: Work
        if transport == "sse":
            work = partial(self._sse, turn)
        elif transport == "socketio":
            assert sid  # the transport is socket.io only for a request that names its socket
            work = partial(answer_json, turn, quirks, partial(self._socketio.stream_to, sid))
        else:
            work = partial(answer_json, turn, quirks, run_silently)
        return PredictionResponse(self, work)


def create_emulator_app(config: EmulatorConfig | None = None) -> Emulator:
    return Emulator(config or EmulatorConfig())


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _short(text: str) -> str:
    """A long data URI as recorded: its head and its size."""
    return text if len(text) <= 65536 else f"{text[:64]}...<{len(text)} characters>"


def _summarised(body: dict[str, Any]) -> dict[str, Any]:
    """The body as recorded: an upload's data by its size, not itself (a recorded 25 MiB image
    would outlive its test, and tests look for the gateway's copies of it)."""
    uploads = body.get("uploads")
    if not isinstance(uploads, list):
        return body
    return {**body, "uploads": [
        {**item, "data": f"<{len(item['data'])} characters>"} if isinstance(item, dict)
        and isinstance(item.get("data"), str) and len(item["data"]) > 1024 else item for item in uploads]}
