"""Normalized events -> OpenAI Chat Completions: stream chunks, the whole completion, errors.

What clients parse (see the README's OpenAI section): `data: ` with a space, one `id` and `created`
for every chunk, a first chunk with the role, `delta` always present, `finish_reason` only on the
last choice chunk, with `include_usage` a `choices: []` chunk carrying `usage`, then `data: [DONE]`.
No `event:` and no `id:` lines: the `openai` SDK parses every event's data as a chunk, and once it has
seen an `id:` it turns a keep-alive comment into an empty event, which it cannot parse.

Flowise's `thinking` (a reasoning model's thoughts, 3.1+) goes out as `delta.reasoning_content`
(DeepSeek's name, which most clients render) and `delta.reasoning` (OpenRouter's and vLLM's),
unless FLOWISE_SSE_OPENAI_REASONING is off.

Usage is only ever what Flowise reported: its `usageMetadata` events (3.x agentflow LLM and Agent
nodes), or the per-node usage in the last `agentFlowExecutedData`, which covers every node.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import GatewayError
from ..events import END, ERROR, TOKEN, Event
from ..streams.sse_encoder import json_bytes

DONE = b"data: [DONE]\n\n"

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "invalid_request_error", 409: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error"}
# OpenAI's own codes where a client may look for them; the gateway's code otherwise.
_CODES = {"not_authenticated": "invalid_api_key", "not_found": "model_not_found"}


def openai_error(status: int, code: str, message: str, retryable: bool, param: str | None = None) -> dict[str, Any]:
    return {"error": {
        "message": message, "type": _TYPES.get(status, "server_error"), "code": _CODES.get(code, code),
        "param": param, "retryable": retryable,
    }}


def error_body(exc: GatewayError, param: str | None = None) -> dict[str, Any]:
    return openai_error(exc.status, exc.code, exc.message, exc.retryable, param)


class UsageReport:
    """The token usage Flowise reported during one run, if any."""

    __slots__ = ("_events", "_nodes")

    def __init__(self) -> None:
        self._events: list[Mapping[str, Any]] = []
        self._nodes: list[Mapping[str, Any]] | None = None

    def feed(self, event: Event) -> None:
        if event.event == "usageMetadata" and isinstance(event.data, Mapping):
            self._events.append(event.data)
        elif event.event == "agentFlowExecutedData" and isinstance(event.data, list):
            # Cumulative: the last one lists every node that ran.
            nodes = [_node_usage(node) for node in event.data]
            self._nodes = [usage for usage in nodes if usage is not None]

    def totals(self) -> dict[str, int] | None:
        reports = self._nodes if self._nodes else self._events
        if not reports:
            return None
        prompt = sum(_count(r, "input_tokens") for r in reports)
        completion = sum(_count(r, "output_tokens") for r in reports)
        total = sum(_count(r, "total_tokens") or _count(r, "input_tokens") + _count(r, "output_tokens")
                    for r in reports)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total}


def _node_usage(node: Any) -> Mapping[str, Any] | None:
    output = node.get("data", {}).get("output") if isinstance(node, Mapping) else None
    usage = output.get("usageMetadata") if isinstance(output, Mapping) else None
    return usage if isinstance(usage, Mapping) and usage else None


def _count(report: Mapping[str, Any], key: str) -> int:
    value = report.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class ChunkEncoder:
    """One streamed completion: each normalized event in, the bytes to send out (often none).

    A content chunk is two constant byte strings around the token's JSON, so a token costs one
    `orjson.dumps` of its text (`json_bytes`: a lone surrogate from 1.x becomes its JSON escape)."""

    def __init__(self, completion_id: str, created: int, model: str, include_usage: bool,
                 reasoning: bool = False) -> None:
        self.include_usage = include_usage
        self.reasoning = reasoning
        self.usage = UsageReport()
        self.parts: list[str] = []
        head = json_bytes({"id": completion_id, "object": "chat.completion.chunk", "created": created,
                             "model": model})[:-1]
        self._choice_head = b'data: ' + head + b',"choices":[{"index":0,"delta":'
        self._usage_tail = b',"usage":null' if include_usage else b""
        self._content_tail = b',"logprobs":null,"finish_reason":null}]' + self._usage_tail + b"}\n\n"
        self._head = head

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return b"%s%s,\"logprobs\":null,\"finish_reason\":%s}]%s}\n\n" % (
            self._choice_head, delta, finish, self._usage_tail)

    def first(self) -> bytes:
        return self._chunk(b'{"role":"assistant","content":""}')

    def feed(self, event: Event) -> bytes | None:
        name = event.event
        if name == TOKEN:
            text = event.text
            if not text:
                return None
            self.parts.append(text)
            return self._choice_head + b'{"content":' + json_bytes(text) + b"}" + self._content_tail
        if name == "thinking":
            thought = event.data
            if not self.reasoning or not isinstance(thought, str) or not thought:
                return None  # off, or Flowise's closing `thinking` (no text, a duration)
            encoded = json_bytes(thought)
            delta = b'{"reasoning_content":' + encoded + b',"reasoning":' + encoded + b"}"
            return self._choice_head + delta + self._content_tail
        if name == END:
            return self._end(event.text)
        if name == ERROR:
            data = event.data if isinstance(event.data, Mapping) else {}
            body = openai_error(502, str(data.get("code", "upstream_error")), str(data.get("message", "")),
                                bool(data.get("retryable", False)))
            return b"data: " + json_bytes(body) + b"\n\n"
        self.usage.feed(event)
        return None

    def _end(self, answer: str) -> bytes:
        out = b""
        streamed = "".join(self.parts)
        # Flowise's final answer is the last word: what the stream did not carry of it still goes out.
        if len(answer) > len(streamed) and answer.startswith(streamed):
            rest = answer[len(streamed):]
            self.parts.append(rest)
            out += self._choice_head + b'{"content":' + json_bytes(rest) + b"}" + self._content_tail
        out += self._chunk(b"{}", b'"stop"')
        if self.include_usage:
            usage = self.usage.totals()
            out += b"data: %s,\"choices\":[],\"usage\":%s}\n\n" % (self._head, json_bytes(usage))
        return out + DONE


def completion(completion_id: str, created: int, model: str, text: str, usage: dict[str, int] | None,
               reasoning: str | None = None) -> dict[str, Any]:
    """The non-streaming `chat.completion` (`reasoning`: Flowise's thinking, to show)."""
    message = {"role": "assistant", "content": text}
    if reasoning:
        message["reasoning_content"] = reasoning
    return {
        "id": completion_id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage,
    }
