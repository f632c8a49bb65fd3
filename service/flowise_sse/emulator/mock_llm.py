"""The fake LLM behind every chatflow: what it is handed, what it answers, and how it fails.

It answers `reply_prefix + question` word by word, like the OpenAI-compatible mock behind the
captures of real Flowise. A request steers it with triggers in the question or with
`overrideConfig.emulator` (see `MockLlm.plan`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from .quirks import Quirks

SYSTEM_PROMPT = "You are a mock assistant."
_WORDS = re.compile(r"\s*\S+(?:\s+$)?")  # "This", " is", ...; trailing blanks stay on the last word
_TRIGGER = re.compile(r"\[\[.*?\]\]")
_DELAY_TRIGGER = re.compile(r"\[\[delay=(\d+(?:\.\d+)?)\]\]")


class FlowError(Exception):
    """buildChatflow failed (bad chatflow key, LLM error). `status` is what 1.x answers with."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class Plan:
    """What the mock LLM does for one prediction."""

    tokens: list[str]
    delay: float
    cut: int | None  # tokens streamed before the LLM fails or stalls; None: it completes
    error: str | None  # the failure at `cut`; None there means a stall forever
    boundary: bool  # OpenAI-style empty role and finish chunks around the tokens
    events: list[dict[str, Any]]
    drop_tokens: bool = False  # the answer is stored but never streamed (Flowise #4926)
    thinking: list[str] = field(default_factory=list)  # a reasoning model's thoughts, before the answer
    # An Agentflow's: events before the tokens (node progress), and no `start` event at all.
    leading: list[dict[str, Any]] | None = None
    agentflow: bool = False

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    async def chunks(self) -> AsyncIterator[str]:
        tokens = self.tokens if self.cut is None else self.tokens[: self.cut]
        if tokens or self.cut is None:  # an LLM call that fails or stalls up front streams nothing
            if self.boundary:
                yield ""
            for token in tokens:
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield token
        if self.cut is None:
            if self.boundary:
                yield ""
        elif self.error is not None:
            raise FlowError(self.error)
        else:
            await forever()


@dataclass(frozen=True, slots=True)
class MockLlm:
    """The LLM as configured (EmulatorConfig's reply_prefix, token_delay, first_token_in_start)."""

    reply_prefix: str
    token_delay: float
    # Without the empty role/finish chunks, Flowise's `start` carries the first token.
    first_token_in_start: bool

    def plan(self, question: str, controls: dict[str, Any]) -> Plan:
        """The mock LLM for one request.

        The question can carry triggers, like the mock behind the captures: `[[delay=300]]` (ms per
        token) and `[[http400]]` (the LLM fails with "400 mock error 400"). `overrideConfig.emulator`
        overrides them: `tokens` (list[str]), `delay` (s), `events` ([{event, data}] sent after the
        tokens), `error` (str) with `errorAfter` (tokens first, default 0) and `hangAfter` (the LLM
        stalls after that many tokens; SSE headers are out by then), `dropTokens` (no `start` or
        `token` event, the answer only stored: Flowise's no-token bug), `thinking` (list[str]: a reasoning
        model's thoughts, streamed as `thinking` events before the answer where the version has them).
        `hang: true` is handled before the plan: the server never answers at all, not even headers.
        """
        delay_trigger = _DELAY_TRIGGER.search(question)
        delay = controls.get("delay", float(delay_trigger[1]) / 1000 if delay_trigger else self.token_delay)
        error = controls.get("error", "400 mock error 400" if "[[http400]]" in question else None)
        cut = controls.get("errorAfter", 0) if error is not None else controls.get("hangAfter")
        tokens = controls.get("tokens")
        if tokens is None:
            tokens = _WORDS.findall(self.reply_prefix + _TRIGGER.sub("", question).strip())
        return Plan(tokens=list(tokens), delay=float(delay), cut=None if cut is None else int(cut), error=error,
                    boundary=not self.first_token_in_start, events=list(controls.get("events", [])),
                    drop_tokens=bool(controls.get("dropTokens")), thinking=list(controls.get("thinking", [])))


def llm_messages(question: str, history: Any, quirks: Quirks, images: list[str] | None = None) -> list[dict[str, Any]]:
    """The messages the LLM is handed: the system prompt, the replayed history, the question, and
    the question's images (URLs or data URIs) as a user message of their own after it, as real
    3.1.4's conversation chain sends them (its addImagesToMessages: no `detail`)."""
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        *_replayed_history(history, quirks),
        {"role": "user", "content": question},
    ]
    if images:
        messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}
                                                     for url in images]})
    return messages


def _replayed_history(history: Any, quirks: Quirks) -> list[dict[str, Any]]:
    """The request-history messages this version's memory hands the LLM (see the table in quirks.py)."""
    items = [item for item in history if isinstance(item, dict)] if isinstance(history, list) else []
    replayed: list[dict[str, Any]] = []
    if quirks.history_type_message:  # BufferMemory.getChatMessages(prevHistory)
        for item in items:
            kind, message = item.get("type"), item.get("message")
            if kind in ("userMessage", "apiMessage") and isinstance(message, str):
                replayed.append({"role": "user" if kind == "userMessage" else "assistant", "content": message})
        return replayed
    if not quirks.history_role_content:  # the field is gone; memory comes from the database only
        return replayed
    for item in items:  # mapChatMessageToBaseMessage
        role, kind = item.get("role"), item.get("type")
        if role == "apiMessage" or (kind == "apiMessage" and quirks.history_type_as_empty_ai):
            speaker = "assistant"
        elif role == "userMessage" or (kind == "userMessage" and quirks.history_type_as_empty_user):
            speaker = "user"
        else:
            continue
        replayed.append({"role": speaker, "content": item.get("content") or ""})
    return replayed


async def handler_events(plan: Plan, quirks: Quirks) -> AsyncIterator[tuple[str, Any]]:
    """What Flowise's chain callback handler makes of the LLM stream, then the flow's extra events."""
    for event in plan.leading or ():
        yield event["event"], event.get("data")
    started = plan.agentflow  # an Agentflow sends no `start`
    async for chunk in plan.chunks():
        if plan.drop_tokens:
            continue
        if not started:
            started = True
            yield "start", chunk
        if chunk or quirks.forward_empty_tokens:
            yield "token", chunk
    for event in plan.events:
        yield event["event"], event.get("data")


async def forever() -> None:
    await asyncio.get_running_loop().create_future()
