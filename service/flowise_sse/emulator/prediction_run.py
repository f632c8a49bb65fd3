"""One prediction: the request as buildChatflow sees it, its JSON answer, and the ASGI response that runs it.

Unlike real Flowise, a prediction stops once its HTTP client goes away (real Flowise runs the flow to
the end). Tests can then see that a gateway closed its upstream request (`client_disconnects`).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Receive, Scope, Send

from .emulated_chatflows import Chatflow
from .flowise_errors import build_failure, json_response, silenced
from .mock_llm import FlowError, Plan, forever
from .quirks import Quirks
from .records import Records

Work = Callable[[Scope, Receive, Send], Awaitable[None]]
_ANSWER_FIELDS = ("sourceDocuments", "usedTools", "fileAnnotations", "agentReasoning", "artifacts")


@dataclass(slots=True)
class Turn:
    """One prediction request, as Flowise's buildChatflow sees it."""

    flow: Chatflow
    body: dict[str, Any]
    question: str
    chat_id: str
    session_id: str
    authorized: bool
    streaming_requested: bool
    plan: Plan
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    metadata: dict[str, Any] = field(default_factory=dict)  # more `metadata` (a stopped run's action)


async def answer_json(turn: Turn, quirks: Quirks, run_llm: Callable[[Plan], Awaitable[None]],
                      scope: Scope, receive: Receive, send: Send) -> None:
    """The prediction's JSON answer, once `run_llm` has run the LLM (and streamed to a socket, ≤2.0.x)."""
    try:
        if not turn.authorized:
            raise FlowError("Unauthorized", 401)
        await run_llm(turn.plan)
    except FlowError as exc:
        if silenced(quirks, turn.body):
            await forever()
        response = build_failure(quirks, exc)
    else:
        answer: dict[str, Any] = {"text": turn.plan.text}
        answer |= {e["event"]: e.get("data") for e in turn.plan.events if e["event"] in _ANSWER_FIELDS}
        if quirks.action_field:  # a stopped run's action is in the JSON answer too
            answer |= {e["event"]: e.get("data") for e in turn.plan.events if e["event"] == "action"}
        answer |= {"question": turn.question, "chatId": turn.chat_id, "chatMessageId": turn.message_id}
        if quirks.stream_valid_field:
            answer["isStreamValid"] = turn.flow.streaming and (
                turn.streaming_requested or not quirks.stream_valid_needs_flag)
        answer |= {"sessionId": turn.session_id, "memoryType": "Buffer Memory"}
        response = json_response(answer)
    await response(scope, receive, send)


async def run_silently(plan: Plan) -> None:
    """The LLM runs with nobody listening to its stream (no socket, or a flow that cannot stream)."""
    async for _ in plan.chunks():
        pass


class PredictionResponse:
    """The ASGI response of one prediction: runs it and stops it when the HTTP client goes away."""

    def __init__(self, records: Records, work: Work) -> None:
        self._records = records
        self._work = work

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        records = self._records
        records.active_predictions += 1
        work = asyncio.ensure_future(self._work(scope, receive, send))
        gone = asyncio.ensure_future(_disconnected(receive))
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            interrupted = work.cancel()  # True only if the work was still running
            gone.cancel()
            records.active_predictions -= 1
        if interrupted:
            records.client_disconnects += 1
        else:
            work.result()  # surface the emulator's own failures


async def hang(scope: Scope, receive: Receive, send: Send) -> None:
    """A prediction that never answers, not even headers."""
    await forever()


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
