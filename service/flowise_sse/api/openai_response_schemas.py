"""OpenAI's Responses API bodies, as far as the gateway speaks it (`/v1/responses`); they make the
OpenAPI document. Field names are OpenAI's. Input items are read by hand (`routes/openai_responses.py`):
clients send many kinds, and each one the gateway cannot use gets a 400 saying which and why."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ConversationRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str


class CreateResponse(BaseModel):
    """OpenAI's request. The chatflow owns its model, prompt and tools (see the docs' Responses
    page for each parameter). Unknown parameters are accepted and ignored (clients send many:
    `tools`, `reasoning`, `include`, `prompt_cache_key`, ...); the response lists them in
    `X-Flowise-Ignored-Params`."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200, description="A chatflow id, or a chatflow's unique name.")
    input: str | list[dict[str, Any]] = Field(
        description="The question, or a list of input items: messages (`role` user, assistant, system or developer; "
                    "`content` a string or `input_text`, `output_text`, `input_image` and `input_audio` parts); "
                    "the last user message is the question. Reasoning and `mcp_call` items are skipped.")
    instructions: str | None = Field(None, description="Handled as a system message is (see the docs).")
    stream: bool = False
    background: bool = Field(False, description="Return at once; the run goes on without the connection.")
    store: bool = Field(True, description="Keep the response for `GET`, `cancel` and `previous_response_id`.")
    previous_response_id: str | None = Field(None, description="Continue that response's Flowise chat.")
    conversation: str | ConversationRef | None = Field(
        None, description="A chat id of yours: the Flowise chat (memory session) to continue or start.")
    metadata: dict[str, str] | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_output_tokens: int | None = Field(None, ge=1)
    overrideConfig: dict[str, Any] | None = Field(
        None, description="Flowise's own `overrideConfig`, passed as is (an extension: `extra_body` in the SDKs).")


class OutputText(BaseModel):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]] = Field(description="`url_citation` / `file_citation`: Flowise's sources.")


class OutputItem(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str
    type: Literal["message", "reasoning", "mcp_call"] = Field(
        description="`message`: the answer; `reasoning`: Flowise's `thinking` (as `summary`); `mcp_call`: a tool "
                    "the chatflow ran (`server_label` flowise), never one for the client to run.")
    status: str


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class ResponseObject(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = Field(description="`resp_<streamId>`")
    object: Literal["response"]
    created_at: int
    status: Literal["in_progress", "completed", "failed", "cancelled"]
    background: bool
    error: ResponseError | None
    instructions: str | None
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    previous_response_id: str | None
    conversation: ConversationRef | None
    store: bool
    usage: ResponseUsage | None = Field(description="What Flowise reported (`usageMetadata`); null when none.")


class DeletedResponse(BaseModel):
    id: str
    object: Literal["response"]
    deleted: Literal[True]


class InputItemList(BaseModel):
    object: Literal["list"]
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


RESPONSE_STREAM_DESCRIPTION = """\
With `stream: true` (or `GET ...?stream=true`), a `text/event-stream` of OpenAI's Responses events,
each `event: <type>` and one `data:` line holding the event with its `sequence_number`:
`response.created`, `response.in_progress`, then per output item `response.output_item.added`,
its parts and deltas (`response.output_text.delta`, `response.reasoning_summary_text.delta`), their
`.done` events and `response.output_item.done`, and last `response.completed`, or `response.failed`
(its `response.error` says why; status `cancelled` after a cancel). Keep-alives are SSE comments."""

RESPONSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The `response`, or with `stream: true` its events. " + RESPONSE_STREAM_DESCRIPTION,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ResponseObject"}},
            "text/event-stream": {"schema": {"type": "string"}},
        },
    }
}
