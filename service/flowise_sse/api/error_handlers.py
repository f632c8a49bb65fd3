"""Every failure before a stream starts, as a status and `{"error": {code, message, retryable}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from .. import metrics
from ..errors import GatewayError, Overloaded, TooManyReaders
from ..logging_setup import fields

logger = logging.getLogger("flowise_sse")

# Refusals whose message the gateway wrote from its own settings and the request's framing: safe
# to log as they are. Others may quote what the caller sent (a chat id, a validation error's
# input), so their line carries the code alone.
_OWN_WORDS = frozenset({
    "not_authenticated", "forbidden", "payload_too_large", "request_timeout", "too_many_streams",
    "too_many_readers", "overloaded", "shutting_down", "store_unavailable", "method_not_allowed",
    "host_not_allowed",
})


def log_refusal(method: str, path: str, status: int, code: str, message: str) -> None:
    """One line per refused request, with its reason where that is the gateway's own words: what
    a browser hides (a CORS 403, a Host 400) the operator reads here."""
    if status >= 500 and code not in _OWN_WORDS:
        return  # an upstream failure: logged where it happened, with its detail
    logger.info("request refused", extra=fields(
        method=method, path=path, status=status, code=code, reason=message if code in _OWN_WORDS else None))

# RFC 9110: a 401 names the scheme that would work.
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="flowise-sse"'}


def error_headers(exc: GatewayError) -> dict[str, str] | None:
    if exc.status == 401:
        return CHALLENGE
    headers: dict[str, str] = {}
    if retry_after := getattr(exc, "retry_after", None):
        headers["Retry-After"] = str(retry_after)
    if isinstance(exc, TooManyReaders | Overloaded):
        # Refused for want of room: the connection goes too, or a client that keeps it open
        # (and retries on it) would hold the very descriptor the cap is there to keep free.
        headers["Connection"] = "close"
    return headers or None


async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    metrics.request_refused(exc.status, exc.code)
    log_refusal(request.method, request.url.path, exc.status, exc.code, exc.message)
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status, headers=error_headers(exc))


def _allowed_methods(request: Request) -> str:
    """Every method some route takes on this path (the router's 405 names only the first route
    it tried: `POST` alone on the stream path, which takes GET too)."""
    methods = {"OPTIONS"}
    for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"):
        scope = {**request.scope, "method": method}
        # Not the mounts: the chat page's at "/" takes any path and says nothing of methods.
        if any(not isinstance(route, Mount) and route.matches(scope)[0] == Match.FULL
               for route in request.app.router.routes):
            methods.add(method)
    return ", ".join(sorted(methods))


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 405:
        allow = _allowed_methods(request)
        if request.method == "OPTIONS":  # not a CORS preflight (CORSMiddleware answers those)
            return Response(status_code=204, headers={"Allow": allow})
        exc.headers = {**(exc.headers or {}), "Allow": allow}
    code = {
        401: "not_authenticated", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
        413: "payload_too_large",
    }.get(exc.status_code, "bad_request")
    body = {"error": {"code": code, "message": str(exc.detail), "retryable": False}}
    metrics.request_refused(exc.status_code, code)
    log_refusal(request.method, request.url.path, exc.status_code, code, str(exc.detail))
    headers = dict(getattr(exc, "headers", None) or {})
    if exc.status_code == 401:
        headers.update(CHALLENGE)
    return JSONResponse(body, status_code=exc.status_code, headers=headers or None)


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in exc.errors()]
    message = "; ".join(f"{'.'.join(map(str, d['loc'][1:])) or 'body'}: {d['msg']}" for d in details)
    body = {"error": {"code": "invalid_request", "message": message, "retryable": False, "details": details}}
    return JSONResponse(body, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    # The decorator form of add_exception_handler: Starlette types a handler as taking any
    # Exception, which these (each for its own class) are not; the decorator takes any callable.
    app.exception_handler(GatewayError)(_gateway_error)
    app.exception_handler(StarletteHTTPException)(_http_error)
    app.exception_handler(RequestValidationError)(_invalid_request)
