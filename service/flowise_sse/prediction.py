"""A prediction as the gateway sends it to Flowise, and Flowise's answer as the gateway reports it.

Shared by both transports so that 1.x and 3.x look the same from outside: the same request
body (history in the one form every version reads), the same `metadata` and `end` events.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import orjson

from .errors import BadRequest
from .events import END, METADATA, Event

_ROLES = {
    "user": "userMessage",
    "userMessage": "userMessage",
    "assistant": "apiMessage",
    "apiMessage": "apiMessage",
}

# Answer fields that are events of their own on a streaming Flowise; relayed from the JSON answer
# when the stream did not carry them (1.x sends some only there; non-streamable flows send none).
ANSWER_EVENTS = ("sourceDocuments", "usedTools", "agentReasoning", "fileAnnotations", "artifacts", "action")
METADATA_FIELDS = (
    "chatId", "chatMessageId", "question", "sessionId", "memoryType", "followUpPrompts",
    "flowVariables",
)


def portable_history(history: Iterable[Mapping[str, Any]] | None) -> list[dict[str, str]]:
    """History items in the four-key form that Flowise 1.6 through 3.x all replay.

    1.6 reads `type`/`message`, 1.8+ reads `role`/`content`, and only `userMessage`/`apiMessage`
    are understood as roles (verified against real servers).
    """
    items: list[dict[str, str]] = []
    for index, item in enumerate(history or ()):
        if not isinstance(item, Mapping):
            raise BadRequest(f"history[{index}] must be an object with role and content")
        role = _ROLES.get(item.get("role", item.get("type")))  # type: ignore[arg-type]
        content = item.get("content", item.get("message"))
        if role is None:
            raise BadRequest(
                f"history[{index}].role must be one of user, assistant, userMessage, apiMessage"
            )
        if not isinstance(content, str):
            raise BadRequest(f"history[{index}].content must be a string")
        items.append({"role": role, "content": content, "type": role, "message": content})
    return items


@dataclass(slots=True)
class Prediction:
    question: str
    history: list[dict[str, str]] = field(default_factory=list)
    chat_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    override_config: dict[str, Any] | None = None

    @classmethod
    def build(
        cls,
        question: str,
        history: Iterable[Mapping[str, Any]] | None = None,
        chat_id: str | None = None,
        override_config: Mapping[str, Any] | None = None,
    ) -> Prediction:
        """Validate the caller's input; a fresh chatId unless one is given, because Flowise
        prepends `history` to what it already stored under that chatId."""
        if not isinstance(question, str) or not question.strip():
            raise BadRequest("question must be a non-empty string")
        if override_config is not None and not isinstance(override_config, Mapping):
            raise BadRequest("overrideConfig must be an object")
        return cls(
            question=question,
            history=portable_history(history),
            chat_id=chat_id or str(uuid.uuid4()),
            override_config=dict(override_config) if override_config is not None else None,
        )

    def body(self, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"question": self.question, "chatId": self.chat_id}
        if self.history:
            body["history"] = self.history
        if self.override_config is not None:
            body["overrideConfig"] = self.override_config
        body.update(extra)
        return body


def _decoded(value: Any) -> Any:
    """Flowise double-encodes some payloads (`followUpPrompts`, 1.8's `agentReasoning`)."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
    return value


def relayed(name: str, data: Any) -> Event:
    """A Flowise event passed on under its own name, its payload decoded where Flowise encoded it."""
    if name == METADATA and isinstance(data, dict) and "followUpPrompts" in data:
        data = {**data, "followUpPrompts": _decoded(data["followUpPrompts"])}
    elif name == "agentReasoning":
        data = _decoded(data)
    return Event(name, data)


def answer_text(answer: Mapping[str, Any]) -> str:
    text = answer.get("text")
    if isinstance(text, str):
        return text
    if "json" in answer:
        return orjson.dumps(answer["json"]).decode()
    return ""


def metadata_from(answer: Mapping[str, Any]) -> dict[str, Any]:
    return {key: answer[key] for key in METADATA_FIELDS if key in answer}


def closing_events(
    answer: Mapping[str, Any], already_relayed: set[str], metadata: Mapping[str, Any] | None
) -> list[Event]:
    """What follows the tokens when Flowise's JSON answer is the last word (1.x, or a flow
    that cannot stream): the answer's own events not yet relayed, `metadata`, `end`."""
    events = [relayed(name, answer[name]) for name in ANSWER_EVENTS
              if name in answer and name not in already_relayed]
    if metadata is None:
        metadata = metadata_from(answer)
        events.append(relayed(METADATA, metadata))
    events.append(end_event(answer_text(answer), metadata, answer))
    return events


def end_event(text: str, metadata: Mapping[str, Any] | None, answer: Mapping[str, Any] | None = None) -> Event:
    data: dict[str, Any] = {"text": text}
    if metadata:
        data.update((k, v) for k, v in metadata.items() if k not in ("text",))
        if "followUpPrompts" in data:
            data["followUpPrompts"] = _decoded(data["followUpPrompts"])
    if answer and "json" in answer:
        data["json"] = answer["json"]
    return Event(END, data)
