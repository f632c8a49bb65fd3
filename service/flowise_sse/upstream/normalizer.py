"""Flowise's events, as each transport receives them, turned into the gateway's normalized events.

Both transports feed `(name, data)` pairs to one `Normalizer`, so 1.x and 3.x look the same from
outside: `start` first, `token`s, Flowise's other events under their own names (payloads Flowise
double-encodes decoded), and the same `metadata` and `end` built from Flowise's JSON answer where
the stream did not carry them (1.x, or a flow that cannot stream).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import orjson

from ..errors import UpstreamError
from ..events import END, METADATA, START, TOKEN, Event, token
from .prediction import Prediction

# Answer fields that are events of their own on a streaming Flowise; relayed from the JSON answer
# when the stream did not carry them (1.x sends some only there; non-streamable flows send none).
ANSWER_EVENTS = ("sourceDocuments", "usedTools", "agentReasoning", "fileAnnotations", "artifacts", "action")
# Names with a meaning of their own on the wire: the contract's (start, token, end, error) and
# EventSource's (`message` is what an unnamed event fires, `open`/`error` its connection events).
# A Flowise event under one of them goes out as `flowise.<name>`; one without a name as
# `flowise.message`. The README lists every name the gateway sends.
RESERVED_NAMES = frozenset({"start", "token", "end", "error", "message", "open"})
UPSTREAM_PREFIX = "flowise."
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.:\-]")
METADATA_FIELDS = (
    "chatId", "chatMessageId", "question", "sessionId", "memoryType", "followUpPrompts",
    "flowVariables",
)


TEXT_RUN = 64
ACTION = "action"
# In `end` when the run stopped for a human's reply (Flowise's `action`: a Human Input node, a
# tool approval, a sequential agent's interrupt): the chat is free, and a request on it with
# `humanInput` (3.x) or the `action` (2.x) continues the run.
WAITING = "waitingForInput"


class Normalizer:
    """One prediction's upstream events; remembers the text streamed and the names relayed."""

    def __init__(self, chatflow_id: str, prediction: Prediction, transport: str) -> None:
        self.chatflow_id = chatflow_id
        self.prediction = prediction
        self.transport = transport
        # The text streamed so far, for `end` and the reconciliations: tokens are joined in runs of
        # TEXT_RUN, since a str per token costs ~50 bytes of header per live stream and token.
        self._runs: list[str] = []
        self._tail: list[str] = []
        self.relayed_names: set[str] = set()
        self.metadata: dict[str, Any] | None = None
        self.action: Any = None  # the last `action`: the run stopped for a human's reply
        self._reasoning_in_start: Any = None

    @property
    def text(self) -> str:
        return "".join(self._runs) + "".join(self._tail)

    def start(self) -> Event:
        return Event(START, {
            "chatId": self.prediction.chat_id, "chatflowId": self.chatflow_id, "transport": self.transport,
        })

    def feed(self, name: str, data: Any) -> Event | None:
        """The normalized form of one Flowise event, or None when it carries nothing new.
        The transport handles what ends a prediction (`end`, `error`, the HTTP answer) itself:
        their meaning differs per protocol."""
        if name == TOKEN:
            if not data:
                return None
            text = data if isinstance(data, str) else _encoded(name, data).decode()
            self._tail.append(text)
            if len(self._tail) == TEXT_RUN:
                self._runs.append("".join(self._tail))
                self._tail.clear()
            return token(text)
        if name == START:
            # A string `start` repeats the first token (or is ""): never text. Agents put their
            # reasoning here.
            if not data or isinstance(data, str):
                return None
            name = "agentReasoning"
            self._reasoning_in_start = data
        elif name == "agentReasoning" and data == self._reasoning_in_start:
            # 2.x/3.x sequential agents send the same reasoning as `start` and then as
            # `agentReasoning` (seen on real 3.1.4): relayed once.
            self._reasoning_in_start = None
            return None
        event = relayed(name, data)
        self.relayed_names.add(name)
        if name == ACTION:
            self.action = event.data
        if name == METADATA and isinstance(event.data, dict):
            self.metadata = event.data
        return event


def _decoded(value: Any) -> Any:
    """Flowise double-encodes some payloads (`followUpPrompts`, 1.8's `agentReasoning`)."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def relayed_name(name: object) -> str:
    """The name a Flowise event goes out under: its own, unless it is empty, reserved (see
    RESERVED_NAMES) or not a plain token (a space, a line break: replaced by `_`)."""
    name = _NAME_UNSAFE.sub("_", name) if isinstance(name, str) else ""
    if not name:
        return UPSTREAM_PREFIX + "message"
    if name in RESERVED_NAMES:
        return UPSTREAM_PREFIX + name
    return name


def _encoded(name: str, data: Any) -> bytes:
    """`data` as JSON, or an `UpstreamError` when it cannot be (nested past orjson's 255 levels,
    which its parser's 1,024 let in): Flowise's fault, never the gateway's 500."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError as exc:
        raise UpstreamError(f"Flowise sent a {name[:100]} payload the gateway cannot pass on: {exc}") from None


def relayed(name: str, data: Any) -> Event:
    """A Flowise event passed on under its own name, its payload decoded where Flowise encoded it."""
    if name == METADATA and isinstance(data, dict) and "followUpPrompts" in data:
        data = {**data, "followUpPrompts": _decoded(data["followUpPrompts"])}
    elif name == "agentReasoning":
        data = _decoded(data)
    if not isinstance(data, str):
        _encoded(name, data)  # checked now, so that storing it cannot fail later
    return Event(relayed_name(name), data)


def answer_text(answer: Mapping[str, Any]) -> str:
    text = answer.get("text")
    if isinstance(text, str):
        return text
    if "json" in answer:
        return _encoded(END, answer["json"]).decode()
    return ""


def metadata_from(answer: Mapping[str, Any]) -> dict[str, Any]:
    return {key: answer[key] for key in METADATA_FIELDS if key in answer}


def closing_events(
    answer: Mapping[str, Any], already_relayed: set[str], metadata: Mapping[str, Any] | None,
    action: Any = None,
) -> list[Event]:
    """What follows the tokens when Flowise's JSON answer is the last word (1.x, or a flow
    that cannot stream): the answer's own events not yet relayed, `metadata`, `end`."""
    events = [relayed(name, answer[name]) for name in ANSWER_EVENTS
              if name in answer and name not in already_relayed]
    if metadata is None:
        metadata = metadata_from(answer)
        events.append(relayed(METADATA, metadata))
    if action is None and answer.get(ACTION):
        action = answer[ACTION]
    events.append(end_event(answer_text(answer), metadata, answer, action))
    return events


def end_event(text: str, metadata: Mapping[str, Any] | None, answer: Mapping[str, Any] | None = None,
              action: Any = None) -> Event:
    """`end`: the whole answer, what `metadata` said, and for a run that stopped for a human's
    reply its `action` and `waitingForInput: true` (3.1.2+ put `action` in `metadata`; earlier
    releases, and 2.x sequential agents, only sent it as an event of its own)."""
    data: dict[str, Any] = {"text": text}
    _encoded(END, metadata)
    if metadata:
        data.update((k, v) for k, v in metadata.items() if k not in ("text",))
        if "followUpPrompts" in data:
            data["followUpPrompts"] = _decoded(data["followUpPrompts"])
    if answer and "json" in answer:
        data["json"] = answer["json"]
        _encoded(END, answer["json"])
    action = data.get(ACTION) or action
    if action:
        data[ACTION] = action
        data[WAITING] = True
    return Event(END, data)
