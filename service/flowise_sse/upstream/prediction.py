"""A prediction as the gateway sends it to Flowise: the same request body for every version
(history in the one form they all read), a fresh chatId unless the caller names one."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

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
        role = _ROLES.get(item.get("role", item.get("type")))
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
    # The caller's own names for this chat and memory session, when Flowise gets others (a keyed
    # caller's chats are namespaced: api/tenants.py); None: the same as Flowise's.
    client_chat_id: str | None = None
    client_session_id: str | None = None
    # Flowise's `uploads` (`{data, type, name, mime}` items: images, audio), checked by the caller.
    uploads: list[dict[str, str]] | None = None

    @classmethod
    def build(
        cls,
        question: str,
        history: Iterable[Mapping[str, Any]] | None = None,
        chat_id: str | None = None,
        override_config: Mapping[str, Any] | None = None,
        uploads: list[dict[str, str]] | None = None,
    ) -> Prediction:
        """Validate the caller's input; a fresh chatId unless one is given, because Flowise
        prepends `history` to what it already stored under that chatId."""
        if not isinstance(question, str) or not (question.strip() or uploads):
            # With uploads the question may be empty: speech-to-text makes one of audio, and an
            # image can be the whole of a question.
            raise BadRequest("question must be a non-empty string")
        if override_config is not None and not isinstance(override_config, Mapping):
            raise BadRequest("overrideConfig must be an object")
        return cls(
            question=question,
            history=portable_history(history),
            chat_id=chat_id or str(uuid.uuid4()),
            override_config=dict(override_config) if override_config is not None else None,
            uploads=uploads or None,
        )

    @property
    def visible_chat_id(self) -> str:
        """The chat id the caller named (or was given)."""
        return self.client_chat_id if self.client_chat_id is not None else self.chat_id

    def namespaced(self, scope: Callable[[str], str]) -> Prediction:
        """This prediction with its chat id and memory session (`overrideConfig.sessionId`) in a
        tenant's space: `scope` maps a caller's name to Flowise's."""
        override = self.override_config
        session = override.get("sessionId") if override else None
        if override is not None and isinstance(session, str):  # (a session implies an override)
            override = {**override, "sessionId": scope(session)}
        return replace(self, chat_id=scope(self.chat_id), override_config=override,
                       client_chat_id=self.chat_id, client_session_id=session if isinstance(session, str) else None)

    def client_view(self, data: Any) -> Any:
        """An event's data with Flowise's chat and session ids back in the caller's names."""
        if self.client_chat_id is None or not isinstance(data, dict):
            return data
        chat, session = data.get("chatId"), data.get("sessionId")
        if chat is None and session is None:
            return data
        data = dict(data)
        if chat == self.chat_id:
            data["chatId"] = self.client_chat_id
        if session is not None:
            if session == self.chat_id:
                data["sessionId"] = self.client_chat_id
            elif self.client_session_id is not None and session == (self.override_config or {}).get("sessionId"):
                data["sessionId"] = self.client_session_id
        return data

    def client_answer(self, answer: bytes) -> bytes:
        """Flowise's JSON answer (bytes, passed on as they are) with its chat and session ids
        back in the caller's names: the ids are quoted JSON strings of their own."""
        if self.client_chat_id is None:
            return answer
        pairs = [(self.chat_id, self.client_chat_id)]
        upstream_session = (self.override_config or {}).get("sessionId")
        if self.client_session_id is not None and isinstance(upstream_session, str):
            pairs.append((upstream_session, self.client_session_id))
        for upstream, client in pairs:
            answer = answer.replace(orjson.dumps(upstream), orjson.dumps(client))
        return answer

    def body(self, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"question": self.question, "chatId": self.chat_id}
        if self.history:
            body["history"] = self.history
        if self.override_config is not None:
            body["overrideConfig"] = self.override_config
        if self.uploads:
            body["uploads"] = self.uploads
        body.update(extra)
        return body
