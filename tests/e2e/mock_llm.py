"""A deterministic OpenAI-compatible chat-completions server for the real-Flowise e2e tests.

Flowise's `chatOpenAI` node is pointed at it through its `basepath` input, so every prediction
reaches this process instead of a paid API, answers the same way each time, and leaves a record
of the `messages` the LLM actually received (which is how the tests see Flowise's history handling).

It also speaks OpenAI's Responses API (`POST /v1/responses`), which LangChain's ChatOpenAI uses for a
reasoning model with a reasoning summary: given `reasoning`, it first streams a summary of its
"thoughts" (`thought_for`), which Flowise 3.1 relays as `thinking` events.

The reply is "This is a deterministic mock reply. You said: <last user message>", streamed one word
per chunk (" word" with a leading space after the first word), the same way OpenAI splits text.
Markers in the user message change the behaviour and are removed from the echoed text:
    [[delay=300]]  wait 300 ms before each token (slow streams for disconnect tests)
    [[http400]]    answer HTTP 400 at once; [[http401]] likewise with 401. LangChain retries 429 and
                   5xx with a long backoff, so only 4xx errors make fast error tests.
    POST /v1/audio/transcriptions answers a recording's own bytes as its transcript.
    [[tool]]       when the request offers tools (`tools`, or 1.x's legacy `functions`), call the
                   calculator with `6 * 7` first (a streamed tool call, arguments in pieces); once
                   the tool's answer follows the last user message, reply with the usual text plus
                   " The calculator tool returned: <answer>." (see `tool_reply_for`).

Run in-process with `MockLLM().start()` (a uvicorn thread), or standalone:
    python tests/e2e/mock_llm.py --port 8199 [--token-delay-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

if TYPE_CHECKING:
    from ..servers import ServerThread

REPLY_PREFIX = "This is a deterministic mock reply. You said: "
MODEL_ID = "gpt-4o-mini"

_MARKER = re.compile(r"\[\[(delay=(\d+)|http(4\d\d)|tool)\]\]")
TOOL_MARKER = "[[tool]]"
TOOL_EXPRESSION = "6 * 7"


@dataclass(frozen=True)
class RecordedRequest:
    """One chat-completions call as the LLM received it."""

    body: dict[str, Any]

    @property
    def messages(self) -> list[dict[str, Any]]:
        """Chat Completions' `messages`; for a Responses API call, its `instructions` and `input`
        in that form."""
        if "input" in self.body:
            return _responses_messages(self.body)
        return list(self.body.get("messages") or [])

    @property
    def last_user_text(self) -> str:
        return _last_user_text(self.messages)


def _content_text(content: Any) -> str:
    # LangChain sends a plain string, or a list of parts when the model may take images.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            return _content_text(message.get("content"))
    return ""


def _responses_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    given = body.get("input")
    items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given or [])
    messages = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    for item in items:
        if isinstance(item, dict) and item.get("role"):
            content = item.get("content")
            if isinstance(content, list):
                content = "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
            messages.append({"role": item["role"], "content": content})
    return messages


def thought_for(question: str) -> str:
    """The reasoning summary the mock streams on the Responses API, in two pieces."""
    return "Thinking about: " + " ".join(_MARKER.sub("", question).split())


def reply_for(question: str) -> str:
    """The answer the mock gives to `question` (markers removed), for the tests' expectations."""
    return REPLY_PREFIX + " ".join(_MARKER.sub("", question).split())


def tool_reply_for(question: str, tool_output: str = "42") -> str:
    """The final answer after the calculator ran (it computes TOOL_EXPRESSION: 42)."""
    return f"{reply_for(question)} The calculator tool returned: {tool_output}."


def reply_tokens(question: str) -> list[str]:
    return _words(reply_for(question))


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [words[0]] + [" " + word for word in words[1:]]


def _tool_result_after_user(messages: list[dict[str, Any]]) -> str | None:
    """The tool's (or legacy function's) answer, if one follows the last user message."""
    result = None
    for message in messages:
        if message.get("role") == "user":
            result = None
        elif message.get("role") in ("tool", "function"):
            result = _content_text(message.get("content"))
    return result


def _offered_tool(body: dict[str, Any]) -> tuple[str, str] | None:
    """(style, name) of the calculator the request offers: "tools" or legacy "functions"."""
    for style, items in (("tools", body.get("tools")), ("functions", body.get("functions"))):
        for item in items or ():
            name = (item.get("function") or {}).get("name") if style == "tools" else item.get("name")
            if isinstance(name, str) and "calculator" in name.lower():
                return style, name
    return None


def _count_words(messages: list[dict[str, Any]]) -> int:
    return sum(len(_content_text(m.get("content")).split()) for m in messages)


class MockLLM:
    """The mock server; `requests` lists every chat-completions body received, oldest first."""

    def __init__(self, token_delay: float = 0.02, host: str = "127.0.0.1", port: int = 0) -> None:
        self.token_delay = token_delay
        self.host = host
        self.port = port
        self._requests: list[RecordedRequest] = []
        self.transcriptions: list[bytes] = []  # the audio files speech-to-text was asked for
        self._lock = threading.Lock()
        self._server: ServerThread | None = None
        self.app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._chat_completions, methods=["POST"]),
                Route("/v1/responses", self._responses, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/v1/audio/transcriptions", self._transcribe, methods=["POST"]),
            ]
        )

    @property
    def base_url(self) -> str:
        """What goes into the chatOpenAI node's `basepath`."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def requests_for(self, marker: str) -> list[RecordedRequest]:
        """Calls whose last user message contains `marker` (tests put a unique marker in each question)."""
        return [r for r in self.requests if marker in r.last_user_text]

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> MockLLM:
        from ..servers import ServerThread  # imported here: `python tests/e2e/mock_llm.py` runs it alone

        self._server = ServerThread(self.app, config=uvicorn.Config(
            self.app, host=self.host, port=self.port, log_level="warning", lifespan="off")).__enter__()
        self.port = self._server.port  # port 0: the free one it took, known before Flowise is configured
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.__exit__()

    # -- endpoints -------------------------------------------------------------------------------

    async def _transcribe(self, request: Request) -> Response:
        """Speech-to-text (OpenAI's transcriptions, which Flowise's LocalAI STT calls): a test's
        "recording" holds its own transcript as UTF-8 text."""
        async with request.form() as form:
            upload = form.get("file")
            audio = await upload.read() if upload is not None and not isinstance(upload, str) else b""
        self.transcriptions.append(audio)
        return JSONResponse({"text": audio.decode("utf-8", "replace")})

    async def _models(self, request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "mock"}]}
        )

    async def _chat_completions(self, request: Request) -> Response:
        body = await request.json()
        with self._lock:
            self._requests.append(RecordedRequest(body))
        messages: list[dict[str, Any]] = body.get("messages") or []
        question = _last_user_text(messages)
        delay = self.token_delay
        for match in _MARKER.finditer(question):
            if match.group(3):
                status = int(match.group(3))
                return JSONResponse(
                    {"error": {"message": f"mock error {status}", "type": "invalid_request_error",
                               "param": None, "code": None}},
                    status_code=status,
                )
            if match.group(2):
                delay = int(match.group(2)) / 1000
        tokens = reply_tokens(question)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        model = body.get("model") or MODEL_ID
        offered = _offered_tool(body) if TOOL_MARKER in question else None
        if offered is not None:
            tool_output = _tool_result_after_user(messages)
            if tool_output is None:
                return self._tool_call(body, completion_id, model, *offered)
            tokens = _words(tool_reply_for(question, tool_output))
        usage = {
            "prompt_tokens": _count_words(messages),
            "completion_tokens": len(tokens),
            "total_tokens": _count_words(messages) + len(tokens),
        }
        if not body.get("stream"):
            return JSONResponse(
                {
                    "id": completion_id,
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": model,
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "".join(tokens)},
                            "logprobs": None,
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": usage,
                }
            )
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(
            self._stream(completion_id, model, tokens, delay, usage if include_usage else None),
            media_type="text/event-stream",
        )

    async def _responses(self, request: Request) -> Response:
        """OpenAI's Responses API: a reasoning item first when `reasoning` is asked, then the reply."""
        body = await request.json()
        recorded = RecordedRequest(body)
        with self._lock:
            self._requests.append(recorded)
        question = recorded.last_user_text
        response_id = f"resp_{uuid.uuid4().hex[:24]}"
        thought = thought_for(question) if body.get("reasoning") else None
        tokens = reply_tokens(question)
        reasoning_item = {"id": f"rs_{response_id}", "type": "reasoning",
                          "summary": [{"type": "summary_text", "text": thought}]} if thought else None
        message = {"id": f"msg_{response_id}", "type": "message", "role": "assistant", "status": "completed",
                   "content": [{"type": "output_text", "text": "".join(tokens), "annotations": []}]}
        words = len(question.split())
        response = {"id": response_id, "object": "response", "created_at": int(time.time()), "status": "completed",
                    "model": body.get("model") or MODEL_ID, "output": [*([reasoning_item] if thought else []), message],
                    "usage": {"input_tokens": words, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": len(tokens), "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": words + len(tokens)}}
        if not body.get("stream"):
            return JSONResponse(response)

        async def events() -> AsyncIterator[bytes]:
            sequence = 0

            def event(kind: str, **fields: Any) -> bytes:
                nonlocal sequence
                payload = {"type": kind, "sequence_number": sequence, **fields}
                sequence += 1
                return f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode()

            yield event("response.created", response={**response, "status": "in_progress", "output": []})
            index = 0
            if thought and reasoning_item:
                yield event("response.output_item.added", output_index=0, item={**reasoning_item, "summary": []})
                yield event("response.reasoning_summary_part.added", item_id=reasoning_item["id"], output_index=0,
                            summary_index=0, part={"type": "summary_text", "text": ""})
                half = len(thought) // 2
                for piece in (thought[:half], thought[half:]):
                    yield event("response.reasoning_summary_text.delta", item_id=reasoning_item["id"],
                                output_index=0, summary_index=0, delta=piece)
                yield event("response.output_item.done", output_index=0, item=reasoning_item)
                index = 1
            yield event("response.output_item.added", output_index=index,
                        item={**message, "status": "in_progress", "content": []})
            for token in tokens:
                if self.token_delay:
                    await asyncio.sleep(self.token_delay)
                yield event("response.output_text.delta", item_id=message["id"], output_index=index,
                            content_index=0, delta=token)
            yield event("response.output_item.done", output_index=index, item=message)
            yield event("response.completed", response=response)

        return StreamingResponse(events(), media_type="text/event-stream")

    def _tool_call(self, body: dict[str, Any], completion_id: str, model: str, style: str, name: str) -> Response:
        """The first turn of a tool agent: call the calculator, streamed like OpenAI does (the name
        first, the arguments in pieces, finish_reason `tool_calls`), or in one message."""
        call_id = f"call_mock_{uuid.uuid4().hex[:16]}"
        arguments = json.dumps({"input": TOOL_EXPRESSION})
        finish = "tool_calls" if style == "tools" else "function_call"
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None}
            if style == "tools":
                message["tool_calls"] = [{"id": call_id, "type": "function",
                                          "function": {"name": name, "arguments": arguments}}]
            else:
                message["function_call"] = {"name": name, "arguments": arguments}
            return JSONResponse({
                "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            })
        pieces = [arguments[:7], arguments[7:15], arguments[15:]]
        if style == "tools":
            deltas = [{"role": "assistant", "content": None, "tool_calls": [
                {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}]}]
            deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]} for piece in pieces]
        else:
            deltas = [{"role": "assistant", "content": None, "function_call": {"name": name, "arguments": ""}}]
            deltas += [{"function_call": {"arguments": piece}} for piece in pieces]

        async def chunks() -> AsyncIterator[bytes]:
            created = int(time.time())
            for index, delta in enumerate([*deltas, {}]):
                payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                           "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                        "finish_reason": finish if index == len(deltas) else None}]}
                yield b"data: " + json.dumps(payload).encode() + b"\n\n"
            yield b"data: [DONE]\n\n"

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def _stream(
        self, completion_id: str, model: str, tokens: list[str], delay: float, usage: dict[str, int] | None
    ) -> AsyncIterator[bytes]:
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            payload = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}],
            }
            return b"data: " + json.dumps(payload).encode() + b"\n\n"

        # Same shape as OpenAI: a role chunk with empty content, one chunk per token, a finish chunk.
        yield chunk({"role": "assistant", "content": ""})
        for token in tokens:
            if delay:
                await asyncio.sleep(delay)
            yield chunk({"content": token})
        yield chunk({}, "stop")
        if usage is not None:
            payload = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                       "model": model, "choices": [], "usage": usage}
            yield b"data: " + json.dumps(payload).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8199)
    parser.add_argument("--token-delay-ms", type=int, default=20)
    args = parser.parse_args()
    mock = MockLLM(token_delay=args.token_delay_ms / 1000, host=args.host, port=args.port)
    uvicorn.run(mock.app, host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
