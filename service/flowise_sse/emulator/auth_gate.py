"""Flowise's auth middleware in front of /api/v1, per version (the per-chatflow key is checked later)."""

from __future__ import annotations

import base64

from starlette.datastructures import Headers
from starlette.responses import HTMLResponse, Response
from starlette.types import Scope

from .flowise_errors import json_response
from .quirks import Quirks


def denial(scope: Scope, quirks: Quirks, credentials: tuple[str | None, str | None], api_key: str | None
           ) -> Response | None:
    """The 401 for a request the middleware refuses, None to let it through.

    `credentials`: FLOWISE_USERNAME / FLOWISE_PASSWORD (basic auth; either None leaves it open).
    `api_key`: the Bearer key the key gate wants (None leaves it open).
    """
    path: str = scope["path"]
    if not path.startswith("/api/v1/") or path.startswith(quirks.auth_whitelist):
        return None
    headers = Headers(scope=scope)
    internal = headers.get("x-request-from") == "internal"
    if not quirks.key_gate or (not quirks.token_gate and internal):
        if None in credentials or basic_credentials(headers) == credentials:
            return None
        return HTMLResponse("", 401)  # express-basic-auth: empty body, no challenge
    if api_key is None or bearer(headers) == api_key:
        return None
    return json_response({"error": "Unauthorized Access"}, 401)


def bearer(headers: Headers) -> str:
    # Flowise reads the key as `authorization.split('Bearer ').pop()`.
    return headers.get("authorization", "").split("Bearer ")[-1]


def basic_credentials(headers: Headers) -> tuple[str, str] | None:
    scheme, _, encoded = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, colon, password = base64.b64decode(encoded, validate=True).decode().partition(":")
    except ValueError:
        return None
    return (user, password) if colon else None
