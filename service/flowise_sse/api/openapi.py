"""The OpenAPI document: FastAPI's, plus the SSE event models and the OpenAI completion bodies,
which no route declares as its response model (they are streamed, or chosen by `stream`), and
the request bodies the routes read themselves (`bodies.read_model`)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import TypeAdapter

from .openai_response_schemas import CreateResponse
from .openai_schemas import ChatCompletion, ChatCompletionChunk
from .schemas import CreateStream, StreamEvent, StreamRequest


class GatewayApp(FastAPI):
    """FastAPI, whose `openapi()` (and so /openapi.json) is `openapi_document`'s."""

    def openapi(self) -> dict[str, Any]:
        return openapi_document(self)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    events = TypeAdapter(StreamEvent).json_schema(ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(events.pop("$defs", {}))
    components["StreamEvent"] = events
    # The bodies of routes that read their own (`bodies.read_model`), and what no route declares.
    for model in (ChatCompletion, ChatCompletionChunk, StreamRequest, CreateStream, CreateResponse):
        found = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in found.pop("$defs", {}).items():
            if components.setdefault(name, definition) != definition:  # FastAPI names clashes apart; here, a bug
                raise RuntimeError(f"two schemas named {name} in the OpenAPI document")
        components[model.__name__] = found
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            if "openai" in operation.get("tags", ()):
                operation["responses"].pop("422", None)  # malformed input is a 400 there, as on OpenAI
    app.openapi_schema = schema
    return schema
