"""What every request passes before a route sees it: the Host it names, the size and pace of its
body, cross-site requests a browser sends without asking, and the headers every answer carries.

A pure ASGI middleware (no per-request objects beyond a closure): it sits in front of every
token of every stream.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import BadRequest, Forbidden, GatewayError, PayloadTooLarge
from ..settings import Settings
from .error_handlers import log_refusal

# Sent with every answer: nothing here is meant to be framed, sniffed or to leak its URL onward.
COMMON_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
]
# Pages (the chat page, /docs): their own scripts and styles only, no inline script, no framing.
PAGE_CSP = (
    b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; object-src 'none'"
)
# Everything else is data: it runs nothing.
DATA_CSP = b"default-src 'none'; frame-ancestors 'none'"

# Probes come with whatever Host the orchestrator uses (a pod's IP): not held to allowed_hosts.
PROBES = ("/healthz", "/readyz")
# GETs that start a prediction: a cross-site <img> or no-cors fetch must not reach them.
STARTS_ON_GET = "/stream"
# POSTs whose body may carry files (a prediction's `uploads`, attachments, RAG upserts, an OpenAI
# request's images and audio): they get `max_upload_bytes`, every other body `max_body_bytes`.
# Decided on the path, before any byte of the body is read, so the cap applies while it arrives;
# a JSON body over `max_body_bytes` that carries no upload is refused once read (`bodies.py`).
UPLOAD_ROUTES = re.compile(
    r"^/v1/(streams|chat/completions|responses|chatflows/[^/]+/(stream|prediction|attachments|upsert))$")


def body_cap(settings: Settings, method: str, path: str) -> tuple[int, str]:
    """The body limit of a request, and the setting that sets it (for the 413's message). A
    route that takes uploads never has less than the ordinary limit."""
    if method == "POST" and UPLOAD_ROUTES.match(path) and settings.max_upload_bytes > settings.max_body_bytes:
        return settings.max_upload_bytes, "FLOWISE_SSE_MAX_UPLOAD_BYTES"
    return settings.max_body_bytes, "FLOWISE_SSE_MAX_BODY_BYTES"


class Guard:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.body_timeout = settings.body_timeout
        hosts = {h.strip().lower().strip("[]") for h in settings.allowed_hosts}
        self.any_host = "*" in hosts
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # the last of a repeated header: only single ones are read here
        # Two Hosts: the check here would read one and the URLs the app builds (eventsUrl) or its
        # same-origin check the other. RFC 9112 makes such a request a 400.
        duplicate_host = len(headers) < len(scope["headers"]) and sum(
            1 for name, _ in scope["headers"] if name == b"host") > 1
        path: str = scope["path"]
        is_page = not path.startswith("/v1/") and path not in PROBES and path != "/openapi.json"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    *message.get("headers", ()), *COMMON_HEADERS,
                    (b"content-security-policy", PAGE_CSP if is_page else DATA_CSP),
                ]
            await send(message)

        cap, setting = body_cap(self.settings, scope["method"], path)
        try:
            if duplicate_host:
                raise BadRequest("the request has more than one Host header")
            self._check_host(headers, path)
            self._check_cross_site(scope, headers, path)
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > cap:
                raise PayloadTooLarge(
                    f"the request body is {int(declared)} bytes, over the limit of {cap} ({setting})"
                )
        except GatewayError as exc:
            code = "host_not_allowed" if isinstance(exc, BadRequest) else exc.code
            log_refusal(scope["method"], path, exc.status, code, exc.message)
            await _answer(send_with_headers, exc, close=exc.status == 413)
            return
        if (scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") and not declared
                and b"transfer-encoding" not in headers):
            await self.app(scope, receive, send_with_headers)
            return
        await self._with_bounded_body(scope, receive, send_with_headers, cap, setting)

    def _check_host(self, headers: dict[bytes, bytes], path: str) -> None:
        if self.any_host or path in PROBES:
            return
        host = _hostname(headers.get(b"host", b"").decode("latin-1"))
        if host not in self.hosts:
            raise BadRequest(
                f"Host {host[:100]!r} is not one this gateway answers to (FLOWISE_SSE_ALLOWED_HOSTS)"
            )

    @staticmethod
    def _check_cross_site(scope: Scope, headers: dict[bytes, bytes], path: str) -> None:
        """A cross-site GET without an Origin is a no-cors request (an `<img>`, a `<script>`, a
        no-cors fetch): the browser would hide the answer, but the prediction would run and cost.
        Requests that carry an Origin are checked against the CORS list by the routes."""
        if scope["method"] != "GET" or not path.endswith(STARTS_ON_GET) or b"origin" in headers:
            return
        if headers.get(b"sec-fetch-site", b"") in (b"cross-site", b"same-site"):
            raise Forbidden("a cross-site request without CORS cannot start a prediction")

    async def _with_bounded_body(self, scope: Scope, receive: Receive, send: Send, cap: int, setting: str) -> None:
        """The body counted as it arrives (a chunked body has no Content-Length to trust) and
        given `body_timeout` in all. The refusal is an HTTPException: FastAPI's body reading
        passes those on as they are (anything else it turns into a 400)."""
        received = 0
        complete = False
        deadline = asyncio.get_running_loop().time() + self.body_timeout

        async def bounded_receive() -> Message:
            nonlocal received, complete
            if complete:
                return await receive()  # after the body: only a disconnect comes, whenever it does
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(408, f"the request body did not arrive within {self.body_timeout:g} s "
                                    "(FLOWISE_SSE_BODY_TIMEOUT)", headers=_CLOSE) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise HTTPException(413, f"the request body is over the limit of {cap} bytes ({setting})",
                                        headers=_CLOSE)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, bounded_receive, send)


# The rest of the body is not read: the connection cannot carry another request.
_CLOSE = {"Connection": "close"}


def _hostname(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


async def _answer(send: Send, error: GatewayError, close: bool) -> None:
    body = orjson.dumps({"error": error.to_dict()})
    headers: list[Any] = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:  # the rest of the body is not read: the connection cannot be reused
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
