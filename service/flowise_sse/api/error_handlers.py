"""Every failure before a stream starts, as a status and `{"error": {code, message, retryable}}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import metrics
from ..errors import GatewayError


async def _gateway_error(request: Request, exc: GatewayError) -> JSONResponse:
    metrics.request_refused(exc.status, exc.code)
    return JSONResponse({"error": exc.to_dict()}, status_code=exc.status)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
    body = {"error": {"code": code, "message": str(exc.detail), "retryable": False}}
    metrics.request_refused(exc.status_code, code)
    return JSONResponse(body, status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    details = [{"loc": list(err.get("loc", ())), "msg": err.get("msg", "")} for err in exc.errors()]
    message = "; ".join(f"{'.'.join(map(str, d['loc'][1:])) or 'body'}: {d['msg']}" for d in details)
    body = {"error": {"code": "invalid_request", "message": message, "retryable": False, "details": details}}
    return JSONResponse(body, status_code=422)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
