"""Per request: its id (taken from `X-Request-ID` when sane, else made; echoed back) set for every
log line of the request, and its count in the metrics once it is answered.

A plain ASGI middleware: a streaming response passes through it untouched (no body buffering).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from ..logging_setup import accept_request_id, request_id


class RequestContext:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value.decode("latin-1")
                break
        rid = accept_request_id(given)
        token = request_id.set(rid)
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            # The route's template keeps the label set small; what matched no route is "other".
            metrics.http_request(scope["method"], getattr(route, "path", None) or "other", status)
            request_id.reset(token)
