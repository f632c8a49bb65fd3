"""Normalized events -> OpenAI's Responses API: the streamed events and the `response` object.

One `ResponseEncoder` per reading of a response. It is a pure function of the response's record
and its stream's events, so the same stream always encodes to the same events with the same
`sequence_number`s: a reader that resumes `starting_after=N` replays the stream's log from its
start through a fresh encoder and skips what it already had (no gap, no duplicate, on any
replica, with nothing stored but the log).

    created, in_progress                                      (opening: sequence 0 and 1)
    thinking  -> reasoning item: output_item.added, reasoning_summary_part.added,
                 reasoning_summary_text.delta ...             (closed by the first token)
    token     -> message item: output_item.added, content_part.added, output_text.delta ...
    sourceDocuments -> output_text.annotation.added on the last message, at its end
    usedTools -> an `mcp_call` item each (server_label `flowise`), after the message: a tool the
                 server already ran, which no SDK runs again (never a `function_call`)
    usageMetadata / agentFlowExecutedData -> `usage` (only what Flowise reported; else null)
    end       -> the rest of Flowise's answer, the open item done, completed
    error     -> the open item done as incomplete, failed (status `cancelled` for a cancel)
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

import orjson

from ..events import END, ERROR, TOKEN, Event
from ..streams.sse_encoder import json_bytes
from .openai_chunks import UsageReport

RESPONSE_PREFIX = "resp_"
SERVER_LABEL = "flowise"  # the `server_label` of the `mcp_call` items of the tools a chatflow ran


class ResponseHead:
    """What a response is besides its events (its record): fixed for every reading of it."""

    __slots__ = ("id", "stream_id", "created_at", "model", "instructions", "previous_response_id",
                 "conversation", "background", "store", "metadata")

    def __init__(self, stream_id: str, created_at: int, model: str, *, instructions: str | None = None,
                 previous_response_id: str | None = None, conversation: str | None = None,
                 background: bool = False, store: bool = True, metadata: Mapping[str, str] | None = None) -> None:
        self.id = RESPONSE_PREFIX + stream_id
        self.stream_id = stream_id
        self.created_at = created_at
        self.model = model
        self.instructions = instructions
        self.previous_response_id = previous_response_id
        self.conversation = conversation
        self.background = background
        self.store = store
        self.metadata = dict(metadata or {})


class _Item:
    """One output item while it is built: a message (text parts), a reasoning item (summary
    parts), or a finished tool call."""

    __slots__ = ("kind", "id", "index", "parts", "done", "annotations", "tool")

    def __init__(self, kind: str, item_id: str, index: int) -> None:
        self.kind = kind
        self.id = item_id
        self.index = index
        self.parts: list[str] = []
        self.done: str | None = None  # "completed" | "incomplete" once closed
        self.annotations: list[dict[str, Any]] = []
        self.tool: dict[str, Any] | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def view(self) -> dict[str, Any]:
        status = self.done or "in_progress"
        if self.kind == "message":
            return {"id": self.id, "type": "message", "role": "assistant", "status": status,
                    "content": [_text_part(self.text, self.annotations)]}
        if self.kind == "reasoning":
            return {"id": self.id, "type": "reasoning", "status": status,
                    "summary": [{"type": "summary_text", "text": self.text}]}
        return {"id": self.id, "type": "mcp_call", "status": status, **(self.tool or {})}


class ResponseEncoder:
    """Feed a response's normalized events in order; each call returns the Responses events to
    send, each a dict with its `type` and `sequence_number` (`sse` writes them)."""

    def __init__(self, head: ResponseHead) -> None:
        self.head = head
        self.sequence = 0
        self.status = "in_progress"
        self.error: dict[str, Any] | None = None
        self.failure: dict[str, Any] = {}  # the gateway's `error` event data, when it failed
        self.usage = UsageReport()
        self.items: list[_Item] = []
        self._open: _Item | None = None
        self._streamed: list[str] = []  # every message's text, in order: Flowise's answer is checked against it
        self._sources: list[Any] = []
        self._tools: list[Any] = []

    @property
    def finished(self) -> bool:
        return self.status != "in_progress"

    # --- events -------------------------------------------------------------------------------
    def opening(self) -> list[dict[str, Any]]:
        snapshot = self.response()
        return [self._event("response.created", response=snapshot),
                self._event("response.in_progress", response=snapshot)]

    def feed(self, event: Event, cancelled: bool = False) -> list[dict[str, Any]]:
        """`cancelled`: the response was cancelled (its record says so): a failure ends it as
        `cancelled` rather than `failed`."""
        name, data = event.event, event.data
        out: list[dict[str, Any]] = []
        if name == TOKEN:
            text = event.text
            if text:
                self._message(out).parts.append(text)
                self._streamed.append(text)
                out.append(self._delta(text))
        elif name == "thinking":
            if isinstance(data, str) and data:
                item = self._reasoning(out)
                item.parts.append(data)
                out.append(self._event("response.reasoning_summary_text.delta", item_id=item.id,
                                       output_index=item.index, summary_index=0, delta=data))
            elif self._open is not None and self._open.kind == "reasoning":  # Flowise's closing `thinking`
                self._close(out, "completed")
        elif name == "sourceDocuments":
            self._sources.extend(data if isinstance(data, list) else [data])
        elif name == "usedTools":
            self._tools.extend(data if isinstance(data, list) else [data])
        elif name == END:
            self._end(out, event.text)
        elif name == ERROR:
            self._fail(out, data if isinstance(data, Mapping) else {}, cancelled)
        else:
            self.usage.feed(event)
        return out

    def _end(self, out: list[dict[str, Any]], answer: str) -> None:
        streamed = "".join(self._streamed)
        # Flowise's final answer is the last word: what the stream did not carry of it goes out.
        if len(answer) > len(streamed) and answer.startswith(streamed):
            rest = answer[len(streamed):]
            self._message(out).parts.append(rest)
            self._streamed.append(rest)
            out.append(self._delta(rest))
        message = self._last_message()
        if message is None or message.done:
            message = self._message(out)  # a message item always ends a completed response
        for source in self._sources:
            annotation = _annotation(source, len(message.text))
            if annotation is not None:
                message.annotations.append(annotation)
                out.append(self._event("response.output_text.annotation.added", item_id=message.id,
                                       output_index=message.index, content_index=0,
                                       annotation_index=len(message.annotations) - 1, annotation=annotation))
        self._close(out, "completed")
        for tool in self._tools:
            item = self._add("mcp_call", out, tool=_tool_call(tool))
            item.done = "completed"
            out.append(self._event("response.output_item.done", output_index=item.index, item=item.view()))
        self.status = "completed"
        out.append(self._event("response.completed", response=self.response()))

    def _fail(self, out: list[dict[str, Any]], data: Mapping[str, Any], cancelled: bool) -> None:
        self._close(out, "incomplete")
        self.failure = dict(data)
        self.status = "cancelled" if cancelled else "failed"
        code = "cancelled" if cancelled else str(data.get("code") or "upstream_error")
        message = "the response was cancelled" if cancelled else str(data.get("message") or "the response failed")
        self.error = {"code": code, "message": message}
        out.append(self._event("response.failed", response=self.response()))

    # --- items --------------------------------------------------------------------------------
    def _message(self, out: list[dict[str, Any]]) -> _Item:
        if self._open is not None and self._open.kind == "message":
            return self._open
        self._close(out, "completed")
        item = self._add("message", out)
        out.append(self._event("response.content_part.added", item_id=item.id, output_index=item.index,
                               content_index=0, part=_text_part("", [])))
        return item

    def _reasoning(self, out: list[dict[str, Any]]) -> _Item:
        if self._open is not None and self._open.kind == "reasoning":
            return self._open
        self._close(out, "completed")
        item = self._add("reasoning", out)
        out.append(self._event("response.reasoning_summary_part.added", item_id=item.id, output_index=item.index,
                               summary_index=0, part={"type": "summary_text", "text": ""}))
        return item

    def _add(self, kind: str, out: list[dict[str, Any]], tool: dict[str, Any] | None = None) -> _Item:
        index = len(self.items)
        prefix = {"message": "msg", "reasoning": "rs", "mcp_call": "mcp"}[kind]
        item = _Item(kind, f"{prefix}_{self.head.stream_id}_{index}", index)
        item.tool = tool
        self.items.append(item)
        if kind != "mcp_call":
            self._open = item
        out.append(self._event("response.output_item.added", output_index=index, item=item.view()))
        return item

    def _close(self, out: list[dict[str, Any]], status: str) -> None:
        item, self._open = self._open, None
        if item is None:
            return
        item.done = status
        where = {"item_id": item.id, "output_index": item.index}
        if item.kind == "message":
            out.append(self._event("response.output_text.done", **where, content_index=0, text=item.text,
                                   logprobs=[]))
            out.append(self._event("response.content_part.done", **where, content_index=0,
                                   part=_text_part(item.text, item.annotations)))
        else:
            out.append(self._event("response.reasoning_summary_text.done", **where, summary_index=0, text=item.text))
            out.append(self._event("response.reasoning_summary_part.done", **where, summary_index=0,
                                   part={"type": "summary_text", "text": item.text}))
        out.append(self._event("response.output_item.done", output_index=item.index, item=item.view()))

    def _last_message(self) -> _Item | None:
        return next((item for item in reversed(self.items) if item.kind == "message"), None)

    def _delta(self, text: str) -> dict[str, Any]:
        item = self._open
        assert item is not None
        return self._event("response.output_text.delta", item_id=item.id, output_index=item.index, content_index=0,
                           delta=text, logprobs=[])

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    # --- the response object ------------------------------------------------------------------
    def response(self, status: str | None = None) -> dict[str, Any]:
        """The `response` object as it stands (`status`: another to show, e.g. `cancelled` while
        a cancel is on its way to the replica running it)."""
        head = self.head
        totals = self.usage.totals()
        return {
            "id": head.id, "object": "response", "created_at": head.created_at,
            "status": status or self.status, "background": head.background,
            "error": self.error, "incomplete_details": None,
            "instructions": head.instructions, "max_output_tokens": None, "metadata": head.metadata,
            "model": head.model, "output": [item.view() for item in self.items], "parallel_tool_calls": False,
            "previous_response_id": head.previous_response_id,
            "conversation": {"id": head.conversation} if head.conversation else None,
            "reasoning": None, "store": head.store, "temperature": None, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": None, "truncation": "disabled",
            "usage": None if totals is None else {
                "input_tokens": totals["prompt_tokens"], "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": totals["completion_tokens"], "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": totals["total_tokens"],
            },
            "user": None,
        }


def sse(events: list[dict[str, Any]]) -> bytes:
    """Events as SSE, each `event: <type>` and one `data:` line, as OpenAI sends them (no `id:`:
    the position is `sequence_number`)."""
    return b"".join(b"event: %s\ndata: %s\n\n" % (event["type"].encode(), json_bytes(event)) for event in events)


def _text_part(text: str, annotations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": list(annotations), "logprobs": []}


def _annotation(source: Any, at: int) -> dict[str, Any] | None:
    """A Flowise source document as a citation: a `url_citation` for a web source, a
    `file_citation` for anything else with a name (the whole answer cites it)."""
    metadata = source.get("metadata") if isinstance(source, Mapping) else None
    name = metadata.get("source") if isinstance(metadata, Mapping) else None
    if not isinstance(name, str) or not name:
        return None
    if name.startswith(("http://", "https://")):
        title = metadata.get("title") if isinstance(metadata.get("title"), str) else name  # type: ignore[union-attr]
        return {"type": "url_citation", "url": name, "title": title, "start_index": 0, "end_index": at}
    return {"type": "file_citation", "file_id": name, "filename": posixpath.basename(name.rstrip("/")) or name,
            "index": at}


def _tool_call(tool: Any) -> dict[str, Any]:
    """One of Flowise's `usedTools` (`{tool, toolInput, toolOutput}`) as an `mcp_call` item's fields."""
    tool = tool if isinstance(tool, Mapping) else {}
    arguments = tool.get("toolInput")
    output = tool.get("toolOutput")
    return {
        "server_label": SERVER_LABEL, "name": str(tool.get("tool") or "tool"),
        "arguments": arguments if isinstance(arguments, str) else orjson.dumps(arguments).decode(),
        "output": output if isinstance(output, str) else orjson.dumps(output).decode(),
        "error": None,
    }
