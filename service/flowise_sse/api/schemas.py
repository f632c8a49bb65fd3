"""The HTTP API's bodies, and the SSE event contract, as models (they make the OpenAPI document)."""

from __future__ import annotations

import math
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..upstream.prediction import Prediction
from ..upstream.prediction_inputs import MAX_UPLOADS, NODE_ID_PATTERN, Action, HumanInput, Upload

# It ends up in an upstream URL (abort): no leading dot, so never `.` or `..` (a path segment).
CHAT_ID_PATTERN = r"^[A-Za-z0-9_:@-][A-Za-z0-9._:@-]{0,127}$"
# `<streamId>:<seq>`, seq in ASCII digits; a bare seq too on the route that names its stream.
LAST_EVENT_ID_PATTERN = r"^[0-9a-f]{32}:[0-9]{1,18}$"
SEQ_OR_LAST_EVENT_ID_PATTERN = r"^([0-9a-f]{32}:)?[0-9]{1,18}$"
# Deeper than any real overrideConfig, and far from the recursion limits of the JSON codecs.
MAX_JSON_DEPTH = 64


def json_problem(value: Any, where: str) -> str | None:
    """Why `value` cannot travel to Flowise as JSON, or None: a NaN or an infinity (not JSON),
    a lone surrogate (not UTF-8), nesting deeper than MAX_JSON_DEPTH. Iterative: a deep value
    must not exhaust the stack of the check itself."""
    if value is None:  # most optional fields of most requests
        return None
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"{where}: nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, float) and not math.isfinite(item):
            return f"{path}: {item} is not a JSON number"
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return f"{path}: contains a lone surrogate (not valid UTF-8)"
        elif isinstance(item, dict):
            for key, child in item.items():
                stack.append((key, path, depth + 1))
                stack.append((child, f"{path}.{key}" if isinstance(key, str) else path, depth + 1))
        elif isinstance(item, list):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


class HistoryItem(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["user", "assistant", "userMessage", "apiMessage"]
    content: str


# A lead's e-mail address as Flowise's embed collects it: one @, no spaces or control characters
# (spelled out: `\s` differs between JSON Schema's regexes and pydantic's, U+0085 for one).
EMAIL_PATTERN = r"^[^@\x00-\x20\x7f]{1,64}@[^@\x00-\x20\x7f]{1,255}$"


class StreamRequest(BaseModel):
    """A prediction, with Flowise's fields under Flowise's names. A field the Flowise behind the
    gateway does not read is refused (400 `not_supported_by_flowise`, naming the release that
    has it) rather than dropped there."""

    model_config = ConfigDict(extra="forbid")
    question: str | None = Field(None, min_length=1, description="The user's message. Required, unless `form`, "
                                 "`humanInput` or an `audio` upload (speech-to-text) stands in for it.")
    history: list[HistoryItem] = Field(
        default_factory=list, description="Earlier turns, oldest first; sent in the form every Flowise version reads."
    )
    chatId: str | None = Field(
        None, pattern=CHAT_ID_PATTERN,
        description="Flowise chat (memory session) id; a fresh one per request when absent.",
    )
    sessionId: str | None = Field(
        None, pattern=CHAT_ID_PATTERN,
        description="A memory session apart from the chat (several chats sharing one memory); sent as "
        "`overrideConfig.sessionId`, where every Flowise release reads it. A stopped Agentflow resumes by it "
        "(by chatId without it).",
    )
    overrideConfig: dict[str, Any] | None = Field(
        None, description=f"Passed to Flowise as is: finite numbers, valid UTF-8, at most {MAX_JSON_DEPTH} levels deep."
    )
    uploads: list[Upload] | None = Field(
        None, max_length=MAX_UPLOADS, description="Images, audio and files (Flowise 1.6+; `url` 1.8+; `file:full` "
        "and `file:rag` 2.1.3+). A body with uploads may be up to FLOWISE_SSE_MAX_UPLOAD_BYTES.",
    )
    form: dict[str, Any] | None = Field(
        None, description="An Agentflow V2 form start (Flowise 3.0+): the start node's form inputs by name, "
        "without `question`.",
    )
    humanInput: HumanInput | None = Field(
        None, description="Continue a run stopped for input (Flowise 3.0+; its `end` had `waitingForInput`): "
        "same chatId (and sessionId), `question` optional.",
    )
    action: Action | None = Field(
        None, description="The `action` a run stopped with, sent back with the chosen button's label as "
        "`question` (Flowise 2.0+: sequential agents' approval).",
    )
    leadEmail: str | None = Field(None, max_length=320, pattern=EMAIL_PATTERN,
                                  description="A lead's e-mail, stored with the message (Flowise 1.7+).")
    stopNodeId: str | None = Field(None, pattern=NODE_ID_PATTERN,
                                   description="Passed on as is (Flowise reads it for vector upserts only).")

    @model_validator(mode="after")
    def _sendable(self) -> StreamRequest:
        # What JSON parsing lets through but cannot be sent on (a 500 at encoding otherwise).
        problem = json_problem(self.question, "question") or json_problem(
            [item.content for item in self.history], "history"
        ) or json_problem(self.overrideConfig, "overrideConfig") or json_problem(self.form, "form") or json_problem(
            self.humanInput.feedback if self.humanInput else None, "humanInput.feedback"
        ) or json_problem(self.action.model_dump() if self.action else None, "action") or json_problem(
            # A stored type's data is checked base64 (ASCII) already: not encoded again, it may be 25 MiB.
            [[u.name, u.data if u.type in ("url", "file:full") else ""] for u in self.uploads or ()], "uploads")
        if problem:
            raise ValueError(problem)
        # The rules between fields (a question, or what stands in for it; not with a form; one
        # session) are `Prediction.build`'s: a 400, as the schema cannot state them.
        return self

    def prediction(self) -> Prediction:
        """The prediction this asks for. Its uploads move into it: this model lets go of them, so
        that the one copy is the prediction's (FastAPI keeps the model until the route returns)."""
        prediction = Prediction.build(
            self.question, [item.model_dump() for item in self.history], self.chatId, self.overrideConfig,
            session_id=self.sessionId, uploads=self.uploads, form=self.form, human_input=self.humanInput,
            action=self.action, lead_email=self.leadEmail, stop_node_id=self.stopNodeId,
        )
        self.uploads = None
        return prediction


class CreateStream(StreamRequest):
    chatflowId: UUID


def json_body_of(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for a route that reads its body itself (`bodies.read_model`): the body's
    schema, as FastAPI would have written it (`openapi.py` adds the model to the components)."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


class StreamCreated(BaseModel):
    streamId: str
    chatId: str
    eventsUrl: str = Field(description="Read it with EventSource; it carries a short-lived read token.")


class ErrorDetail(BaseModel):
    code: str = Field(
        description="upstream_unavailable, upstream_timeout, upstream_error, unauthorized, not_found, ...")
    message: str
    retryable: bool


class ErrorBody(BaseModel):
    error: ErrorDetail


class ChatflowSummary(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    name: str | None = None
    deployed: bool | None = None
    isPublic: bool | None = None
    category: str | None = None
    type: str | None = None
    updatedDate: str | None = None


class StreamingCheck(BaseModel):
    isStreaming: bool


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    flowiseVersion: str | None = None
    transport: str | None = None
    error: ErrorDetail | None = None


# --- the SSE contract ------------------------------------------------------------------------
class StartData(BaseModel):
    streamId: str
    chatId: str
    chatflowId: str
    transport: Literal["socketio", "sse"]


class TokenData(BaseModel):
    text: str = Field(description="The next fragment of the answer, exactly as Flowise streamed it.")


class EndData(BaseModel):
    model_config = ConfigDict(extra="allow")
    text: str = Field(description="The whole answer.")
    chatId: str | None = None
    chatMessageId: str | None = None


class _Frame(BaseModel):
    id: str = Field(description="`<streamId>:<seq>`; seq starts at 1 and grows by one. "
                               "Send it back as Last-Event-ID to resume.")


class StartEvent(_Frame):
    event: Literal["start"]
    data: StartData


class TokenEvent(_Frame):
    event: Literal["token"]
    data: TokenData


class EndEvent(_Frame):
    event: Literal["end"]
    data: EndData


class ErrorEvent(_Frame):
    event: Literal["error"]
    data: ErrorDetail


class RelayedEvent(_Frame):
    event: str = Field(
        description="A Flowise event under its own name: metadata, sourceDocuments, usedTools, agentReasoning, "
        "nextAgent, action, artifacts, fileAnnotations, tool, abort, thinking, agent_trace, agentFlowEvent, "
        "nextAgentFlow, agentFlowExecutedData, calledTools, usageMetadata, tts_start, tts_data, tts_end, "
        "tts_abort, executionEnd; or, for a Flowise event named message, open, error, start, token or end, or "
        "unnamed: flowise.message, flowise.open, flowise.error, flowise.start, flowise.token, flowise.end."
    )
    data: Any = Field(description="Flowise's payload (double-encoded JSON strings decoded).")


StreamEvent = StartEvent | TokenEvent | EndEvent | ErrorEvent | RelayedEvent

SSE_DESCRIPTION = """\
A `text/event-stream`. Every event is `event:`, one JSON `data:` line, then `id:` (last, so a frame cut
anywhere never advances a client's last id), then a blank line; U+2028, U+2029 and U+0085 are escaped
inside the JSON. `start` comes first, then `token` events and relayed Flowise events (`metadata`,
`sourceDocuments`, ...; colliding or empty Flowise names as `flowise.<name>`), then exactly one of `end`
(the whole answer) or `error` (`{code, message, retryable}`): close the client on either. A
`: keep-alive` comment line (no blank line of its own) goes out every 15 s. Reconnect with
`Last-Event-ID` to resume; past the terminal event the answer is 204."""


SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": SSE_DESCRIPTION,
        "content": {"text/event-stream": {"schema": {"$ref": "#/components/schemas/StreamEvent"}}},
    },
    204: {"description": "Resumed at or after the terminal event: nothing follows (EventSource stops reconnecting)."},
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Bad input: a malformed Last-Event-ID or `history`, a Host not in FLOWISE_SSE_ALLOWED_HOSTS",
        401: "Missing or wrong gateway API key (with `WWW-Authenticate: Bearer`)",
        403: "A browser origin that is not allowed, or a cross-site request without CORS",
        404: "Unknown chatflow or stream",
        408: "The request body did not arrive within FLOWISE_SSE_BODY_TIMEOUT",
        409: "The chatId has a prediction running",
        413: "The request body is over FLOWISE_SSE_MAX_BODY_BYTES",
        422: "Malformed request (including NaN, Infinity, lone surrogates, nesting deeper than 64)",
        429: "This gateway key has FLOWISE_SSE_MAX_STREAMS_PER_KEY predictions running; "
             "see `Retry-After`",
        502: "Flowise is down, failed, answered what it should not (`upstream_error`), too much "
             "(`upstream_too_large`), or refused the gateway's credentials",
        503: "Shutting down, full, or Redis unreachable",
        504: "Flowise did not answer in time",
        507: "The gateway's memory for streams is full (FLOWISE_SSE_MAX_TOTAL_BYTES)",
    }.items()
}
