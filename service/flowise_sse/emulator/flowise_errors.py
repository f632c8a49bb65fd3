"""Flowise's error answers, in each version's shape (and the JSON response they are built on)."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import HTMLResponse, Response

from .emulated_chatflows import UUID4
from .mock_llm import FlowError
from .quirks import Quirks


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status, media_type="application/json; charset=utf-8")


def error(quirks: Quirks, status: int, message: str) -> Response:
    if not quirks.json_errors:  # 1.x: res.status(..).send(message)
        return HTMLResponse(message, status)
    return json_response({"statusCode": status, "success": False, "message": message, "stack": {}}, status)


def unknown_chatflow(quirks: Quirks, flow_id: str) -> Response:
    if not quirks.json_errors:
        return error(quirks, 404, f"Chatflow {flow_id} not found")
    if not quirks.strict_lookup:
        message = f"Error: chatflowsService.getChatflowById - Chatflow {flow_id} not found in the database!"
        return error(quirks, 500, message)
    if not UUID4.match(flow_id):
        return error(quirks, 400, "Invalid Chatflow ID")
    return error(quirks, 404, f"Chatflow {flow_id} not found in the database!")


def unknown_streaming_chatflow(quirks: Quirks, flow_id: str) -> Response:
    """`GET /api/v1/chatflows-streaming/{id}` for a chatflow that does not exist."""
    if not quirks.json_errors:
        return error(quirks, 404, f"Chatflow {flow_id} not found")
    message = f"Error: chatflowsService.checkIfChatflowIsValidForStreaming - Chatflow {flow_id} not found"
    return error(quirks, 500, message)


def build_failure(quirks: Quirks, exc: FlowError) -> Response:
    """A prediction answered as JSON whose buildChatflow failed."""
    if not quirks.json_errors:
        return error(quirks, exc.status, str(exc))
    return error(quirks, 500, build_failure_message(exc))


def build_failure_message(exc: FlowError) -> str:
    """How 1.8+ words a buildChatflow failure, in a JSON error and in an SSE `error` event alike."""
    return f"Error: predictionsServices.buildChatflow - {exc}"


def silenced(quirks: Quirks, body: dict[str, Any]) -> bool:
    """From 2.1.0 the error middleware writes nothing while `streaming` is truthy: the request hangs."""
    return quirks.silent_streaming_errors and body.get("streaming") not in (None, False, 0, "", "false")
