"""The OpenAI Chat Completions API's bodies, as far as the gateway speaks it (`/v1/chat/completions`,
`/v1/models`); they make the OpenAPI document. Field names are OpenAI's, not the gateway's."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: str = Field(description="An http(s) URL (a Flowise `url` upload) or a base64 data URI (a `file` upload).")
    detail: str | None = None


class InputAudio(BaseModel):
    model_config = ConfigDict(extra="ignore")
    data: str = Field(description="Base64 audio: a Flowise `audio` upload, for a chatflow with speech to text.")
    format: str = Field(description="webm, ogg, mp4 or m4a: what Flowise's speech to text reads (not OpenAI's "
                        "wav or mp3: a 400).")


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str = Field(description="`text`, `image_url` and `input_audio` parts are read (images and audio of the "
                                  "last user message only); any other part is refused with a 400.")
    text: str | None = None
    image_url: ImageUrl | None = None
    input_audio: InputAudio | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's request. The chatflow owns its model, prompt and tools: see the README for what
    each parameter does here. Unknown parameters are accepted and ignored (OpenAI clients send
    many); the response lists them in `X-Flowise-Ignored-Params`."""

    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200, description="A chatflow id, or a chatflow's unique name.")
    messages: list[ChatMessage] = Field(min_length=1, description="The last one must be the user's.")
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(
        None, description="Names the Flowise chat (chatId) unless a chat id header does; see the README."
    )
    n: int = Field(1, ge=1, description="Only 1: a chatflow gives one answer.")
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    stop: str | list[str] | None = None
    overrideConfig: dict[str, Any] | None = Field(
        None, description="Flowise's own `overrideConfig`, passed as is (an extension: `extra_body` in the SDKs)."
    )


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class AssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    reasoning_content: str | None = Field(
        None, description="Flowise's `thinking`, when there was some (FLOWISE_SSE_OPENAI_REASONING).")


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str = Field(description="`chatcmpl-<streamId>`")
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = Field(description="What Flowise reported (3.x `usageMetadata`); null when it reported none.")


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = Field(None, description="A piece of Flowise's `thinking` (and the same as "
                                                            "`reasoning`, the name some clients read).")
    reasoning: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None = None
    finish_reason: Literal["stop"] | None


class ChatCompletionChunk(BaseModel):
    id: str = Field(description="The same on every chunk of one completion: `chatcmpl-<streamId>`.")
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChunkChoice] = Field(description="Empty on the usage chunk only.")
    usage: Usage | None = Field(None, description="Present (null until the last chunk) with `include_usage`.")


class Model(BaseModel):
    id: str = Field(description="The chatflow id.")
    object: Literal["model"]
    created: int = Field(description="The chatflow's creation time (Unix seconds); 0 when Flowise does not say.")
    owned_by: str
    name: str | None = Field(None, description="The chatflow's name, which clients show (and which also addresses it).")


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error, server_error, ...")
    code: str | None = Field(description="The gateway's error code (model_not_found, invalid_api_key, chat_busy, ...).")
    param: str | None
    retryable: bool


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


COMPLETION_STREAM_DESCRIPTION = """\
With `stream: true`, a `text/event-stream` of `data: <chat.completion.chunk JSON>` lines (no `event:`
or `id:` lines): a first chunk with `delta.role`, content chunks, a last choice chunk with
`finish_reason`, with `stream_options.include_usage` a chunk with `choices: []` and `usage`, then
`data: [DONE]`. A failure after the first chunk is a `data: {"error": {...}}` line, and the stream ends.
Keep-alives are SSE comments. `X-Flowise-Stream-Id` names the gateway stream (readable at
`/v1/streams/{id}/events`), `X-Flowise-Chat-Id` the Flowise chat."""

COMPLETION_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A `chat.completion`, or with `stream: true` its chunks. " + COMPLETION_STREAM_DESCRIPTION,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
            "text/event-stream": {"schema": {"$ref": "#/components/schemas/ChatCompletionChunk"}},
        },
    }
}

OPENAI_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": OpenAIErrorBody, "description": text}
    for status, text in {
        400: "Bad or malformed input (OpenAI's status for both; never 422 here)",
        401: "Missing or wrong gateway API key (the OpenAI api_key)",
        404: "Unknown model (chatflow)", 409: "The chat id has a prediction running",
        502: "Flowise is down, failed, or refused the gateway's credentials",
        503: "Shutting down or full", 504: "Flowise did not answer in time",
    }.items()
}
