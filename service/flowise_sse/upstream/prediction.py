"""A prediction as the gateway sends it to Flowise: the same request body for every version
(history in the one form they all read), a fresh chatId unless the caller names one, and the
rest of Flowise's fields under Flowise's names (`prediction_inputs.py` validates them,
`fields.py` says which release reads which)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import BadRequest, GatewayError, NotWaiting
from .fields import check_fields, human_input_refused
from .flowise_client import FlowiseVersion, json_body
from .prediction_inputs import Action, HumanInput, Upload, dumped

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


_UPLOADS = TypeAdapter(list[Upload])


def _validated(value: Any, model: type[BaseModel] | TypeAdapter[Any], where: str) -> Any:
    """A library caller's dict through the same model as the HTTP API's, or a 400 saying why."""
    if isinstance(value, BaseModel):
        return value
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(value)
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(f"{where}{'.' + path if path else ''}: {first.get('msg')}") from None


@dataclass(slots=True)
class Prediction:
    question: str | None
    history: list[dict[str, str]] = field(default_factory=list)
    chat_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    override_config: dict[str, Any] | None = None
    # The caller's own names for this chat and memory session, when Flowise gets others (a keyed
    # caller's chats are namespaced: api/tenants.py); None: the same as Flowise's.
    client_chat_id: str | None = None
    client_session_id: str | None = None
    # Flowise's other fields, as sent (`prediction_inputs.py`); None: not sent. `uploads` is let go
    # once encoded (`encoded_body`): a run must not hold a 25 MiB image for its whole stream.
    uploads: list[dict[str, Any]] | None = None
    form: dict[str, Any] | None = None
    human_input: dict[str, Any] | None = None
    action: dict[str, Any] | None = None
    lead_email: str | None = None
    stop_node_id: str | None = None
    upload_types: frozenset[str] = frozenset()

    @classmethod
    def build(
        cls,
        question: str | None,
        history: Iterable[Mapping[str, Any]] | None = None,
        chat_id: str | None = None,
        override_config: Mapping[str, Any] | None = None,
        *,
        session_id: str | None = None,
        uploads: Iterable[Upload | Mapping[str, Any]] | None = None,
        form: Mapping[str, Any] | None = None,
        human_input: HumanInput | Mapping[str, Any] | None = None,
        action: Action | Mapping[str, Any] | None = None,
        lead_email: str | None = None,
        stop_node_id: str | None = None,
    ) -> Prediction:
        """Validate the caller's input; a fresh chatId unless one is given, because Flowise
        prepends `history` to what it already stored under that chatId.

        `question` may be left out when `form`, `humanInput` or an audio upload (speech-to-text
        makes it the question) stands in for it, and may be empty when uploads come with it.
        `session_id` goes where every release reads it, `overrideConfig.sessionId` (3.1.4 ignores
        a top-level `sessionId`): Flowise keys the memory, and a stopped Agentflow's resume, by
        it, and by the chatId without it."""
        if override_config is not None and not isinstance(override_config, Mapping):
            raise BadRequest("overrideConfig must be an object")
        if form is not None and not isinstance(form, Mapping):
            raise BadRequest("form must be an object of the start node's form inputs")
        items = _validated(list(uploads), _UPLOADS, "uploads") if uploads is not None else None
        for index, item in enumerate(items or ()):
            if (problem := item.problem()) is not None:
                raise BadRequest(f"uploads[{index}]: {problem}")
        reply = _validated(human_input, HumanInput, "humanInput") if human_input is not None else None
        approval = _validated(action, Action, "action") if action is not None else None
        has_audio = any(item.type == "audio" for item in items or ())
        if question is None:
            if form is None and reply is None and not has_audio:
                raise BadRequest("question is required, unless form, humanInput or an audio upload is given")
        elif not isinstance(question, str) or not (question.strip() or items):
            # With uploads the question may be empty: speech-to-text makes one of audio, and an
            # image can be the whole of a question.
            raise BadRequest("question must be a non-empty string")
        if question is not None and form is not None:
            raise BadRequest("question and form cannot be sent together (Flowise refuses it): a form starts "
                             "the run by itself")
        override = dict(override_config) if override_config is not None else None
        if session_id is not None:
            given = (override or {}).get("sessionId")
            if given is not None and given != session_id:
                raise BadRequest("sessionId and overrideConfig.sessionId differ: give one of them")
            override = {**(override or {}), "sessionId": session_id}
        return cls(
            question=question,
            history=portable_history(history),
            chat_id=chat_id or str(uuid.uuid4()),
            override_config=override,
            uploads=[dumped(item) for item in items] if items else None,  # none: no `uploads` sent
            form=dict(form) if form is not None else None,
            human_input=dumped(reply) if reply is not None else None,
            action=dumped(approval) if approval is not None else None,
            lead_email=lead_email,
            stop_node_id=stop_node_id,
            upload_types=frozenset(item.type for item in items or ()),
        )

    def check_supported(self, version: FlowiseVersion) -> None:
        """Raise `NotSupportedByFlowise` (400) when `version` does not read a field this sends."""
        sent = {"leadEmail": self.lead_email, "action": self.action, "form": self.form,
                "humanInput": self.human_input}
        check_fields(version, [name for name, value in sent.items() if value is not None], self.upload_types)

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

    def client_text(self, text: str) -> str:
        """A message from Flowise (an error naming the session) in the caller's names."""
        if self.client_chat_id is None:
            return text
        upstream_session = (self.override_config or {}).get("sessionId")
        if self.client_session_id is not None and isinstance(upstream_session, str):
            text = text.replace(upstream_session, self.client_session_id)
        return text.replace(self.chat_id, self.client_chat_id)

    def client_error(self, error: GatewayError) -> GatewayError:
        """A failure Flowise reported, in the caller's names; a `humanInput` reply that found no
        stopped run is `NotWaiting` (409), Flowise's words quoted."""
        message = self.client_text(error.message)
        if self.human_input is not None and human_input_refused(message):
            return NotWaiting(f"no run of this chat is stopped waiting for input; Flowise: {message}")
        error.message = message
        return error

    def body(self, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"chatId": self.chat_id}
        if self.question is not None:
            body["question"] = self.question
        if self.history:
            body["history"] = self.history
        if self.override_config is not None:
            body["overrideConfig"] = self.override_config
        for name, value in (("uploads", self.uploads), ("form", self.form), ("humanInput", self.human_input),
                            ("action", self.action), ("leadEmail", self.lead_email),
                            ("stopNodeId", self.stop_node_id)):
            if value is not None:
                body[name] = value
        body.update(extra)
        return body

    def encoded_body(self, **extra: Any) -> bytes:
        """The body as Flowise's JSON, once; the uploads are let go here, so from now on the one
        copy of them the gateway holds is these bytes, until Flowise has read them."""
        encoded = json_body(self.body(**extra))
        self.uploads = None
        return encoded
