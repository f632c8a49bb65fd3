"""Who may call the gateway: API keys, capability tokens for `eventsUrl`, and the Origin check.

`EventSource` cannot send headers, so a stream created with a key is read through a URL that
carries a token: an HMAC of (stream id, expiry), good for that one stream's events only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
import time

from fastapi import Request

from ..errors import Forbidden, NotAuthenticated
from ..settings import Settings


class Access:
    def __init__(self, settings: Settings) -> None:
        self.keys = [key.get_secret_value().encode() for key in settings.api_keys]
        secret = settings.token_secret.get_secret_value() if settings.token_secret else None
        self._secret = secret.encode() if secret else secrets.token_bytes(32)
        # A token must outlive its stream: the run may take total_timeout, and its events are
        # readable for stream_retention after it ends.
        self._ttl = settings.token_ttl if settings.token_ttl is not None else (
            settings.total_timeout + settings.stream_retention)
        self._origins = set(settings.cors_origins)

    @property
    def open(self) -> bool:
        return not self.keys

    def has_key(self, request: Request) -> bool:
        if not self.keys:
            return True
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given:
            return False
        # Compare against every key, always, so timing says nothing about which one matched.
        matched = False
        for key in self.keys:
            matched |= hmac.compare_digest(key, given.strip().encode())
        return matched

    def client_key(self, request: Request) -> str | None:
        """Whose predictions these are, for `max_streams_per_key`: the gateway key given (hashed:
        never kept as is). None on an open gateway: a client address would be the proxy's for
        every client behind one, and `max_streams` bounds the whole anyway."""
        if not self.keys:
            return None
        given = request.headers.get("authorization", "").partition(" ")[2].strip()
        return "key:" + hashlib.sha256(given.encode()).hexdigest()[:32]

    def require_key(self, request: Request) -> None:
        if not self.has_key(request):
            raise NotAuthenticated("a valid gateway API key is required: Authorization: Bearer <key>")

    def token_for(self, stream_id: str) -> str:
        # Rounded up: the token lives at least its TTL (rounded down, a 1 s TTL could be ~0 s).
        expires = math.ceil(time.time() + self._ttl)
        return f"{expires}.{self._sign(stream_id, expires)}"

    def require_key_or_token(self, request: Request, stream_id: str) -> None:
        if self.has_key(request):
            return
        given, _, signature = request.query_params.get("token", "").partition(".")
        # ASCII digits, and few: `isdigit` also takes "²", which `int` refuses, as it does 4300+ digits.
        expires = int(given) if given.isascii() and given.isdigit() and len(given) <= 18 else 0
        if expires >= time.time() and hmac.compare_digest(signature, self._sign(stream_id, expires)):
            return
        raise NotAuthenticated("a gateway API key or this stream's unexpired eventsUrl token is required")

    def _sign(self, stream_id: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{stream_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def check_origin(self, request: Request) -> None:
        """A browser page from another origin gets nothing unless that origin is allowed."""
        origin = request.headers.get("origin")
        if not origin or origin in self._origins:
            return
        # Same origin: only the host is compared, as a TLS proxy may hide the scheme.
        if origin.partition("://")[2] != request.headers.get("host", ""):
            raise Forbidden(f"origin {origin} is not allowed (FLOWISE_SSE_CORS_ORIGINS)")
