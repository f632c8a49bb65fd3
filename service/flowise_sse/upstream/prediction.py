"""A prediction as the gateway sends it to Flowise: the same request body for every version
(history in the one form they all read), a fresh chatId unless the caller names one."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

from ..errors import BadRequest

_ROLES = {
    "user": "userMessage",
    "userMessage": "userMessage",
    "assistant": "apiMessage",
    "apiMessage": "apiMessage",
}

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
