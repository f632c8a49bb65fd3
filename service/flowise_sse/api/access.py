"""Who may call the gateway: the caller's key (its tenant), capability tokens for `eventsUrl`,
the Origin check, and which chatflows a key may reach.

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
import uuid
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from ..errors import ChatflowNotFound, Forbidden, NotAuthenticated
from ..settings import Settings
from ..upstream.flowise_client import FlowiseClient
from .tenants import Tenant, Tenants


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking. `tenant` None: an open gateway, where every caller shares one space."""

    tenant: Tenant | None = None
    by_token: bool = False  # reading one stream with its eventsUrl token, no key

    @property
    def tenant_id(self) -> str | None:
        return self.tenant.id if self.tenant else None

    @property
    def label(self) -> str | None:
        return self.tenant.label if self.tenant else None

    def upstream_chat_id(self, chat_id: str) -> str:
        return self.tenant.upstream_chat_id(chat_id) if self.tenant else chat_id

    def client_chat_id(self, upstream_chat_id: str) -> str:
        return self.tenant.client_chat_id(upstream_chat_id) if self.tenant else upstream_chat_id


OPEN = Caller()


class Access:
    def __init__(self, settings: Settings) -> None:
        self.tenants = Tenants((key.get_secret_value().strip() for key in settings.api_keys), settings.keys_file)
        secret = settings.token_secret.get_secret_value() if settings.token_secret else None
        self._secret = secret.encode() if secret else secrets.token_bytes(32)
        # A token must outlive its stream: the run may take total_timeout, and its events are
        # readable for stream_retention after it ends.
        self._ttl = settings.token_ttl if settings.token_ttl is not None else (
            settings.total_timeout + settings.stream_retention)
        self._origins = set(settings.cors_origins)
        self._any_origin = "*" in self._origins

    @property
    def open(self) -> bool:
        return not self.tenants

    def _tenant(self, request: Request) -> Tenant | None:
        # The raw header bytes: a key is compared as bytes, whatever a client put there.
        raw = next((value for name, value in request.scope["headers"] if name == b"authorization"), b"")
        scheme, _, given = raw.partition(b" ")
        if scheme.lower() != b"bearer" or not given.strip():
            return None
        return self.tenants.find(given.strip())

    def has_key(self, request: Request) -> bool:
        return self.open or self._tenant(request) is not None

    def caller(self, request: Request) -> Caller:
        """The caller, from its key; raises 401 when keys are set and none of them was given."""
        if self.open:
            return OPEN
        tenant = self._tenant(request)
        if tenant is None:
            raise NotAuthenticated("a valid gateway API key is required: Authorization: Bearer <key>")
        return Caller(tenant)

    def token_for(self, stream_id: str) -> str:
        # Rounded up: the token lives at least its TTL (rounded down, a 1 s TTL could be ~0 s).
        expires = math.ceil(time.time() + self._ttl)
        return f"{expires}.{self._sign(stream_id, expires)}"

    def caller_or_token(self, request: Request, stream_id: str) -> Caller:
        """A caller with a key, or a reader of `stream_id` holding its eventsUrl token."""
        if self.open:
            return OPEN
        tenant = self._tenant(request)
        if tenant is not None:
            return Caller(tenant)
        given, _, signature = request.query_params.get("token", "").partition(".")
        # ASCII digits, and few: `isdigit` also takes "²", which `int` refuses, as it does 4300+ digits.
        expires = int(given) if given.isascii() and given.isdigit() and len(given) <= 18 else 0
        expected = self._sign(stream_id, expires).encode()
        if expires >= time.time() and hmac.compare_digest(signature.encode("utf-8", "surrogateescape"), expected):
            return Caller(by_token=True)
        raise NotAuthenticated("a gateway API key or this stream's unexpired eventsUrl token is required")

    def _sign(self, stream_id: str, expires: int) -> str:
        digest = hmac.new(self._secret, f"{stream_id}.{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:24]).decode()

    def check_origin(self, request: Request) -> None:
        """A browser page from another origin gets nothing unless that origin is allowed (`*`:
        every origin; the key still decides who gets what)."""
        origin = request.headers.get("origin")
        if not origin or self._any_origin or origin in self._origins:
            return
        # Same origin: only the host is compared, as a TLS proxy may hide the scheme.
        if origin.partition("://")[2] != request.headers.get("host", ""):
            raise Forbidden(f"origin {origin} is not allowed (FLOWISE_SSE_CORS_ORIGINS)")


async def allowed_chatflow(caller: Caller, flowise: FlowiseClient, chatflow_id: str) -> None:
    """Raises 404 when the caller's key may not use this chatflow: to that key it does not exist."""
    allowed = caller.tenant.chatflows if caller.tenant else None
    if allowed is None or chatflow_id in allowed:
        return
    if any(flow.get("id") == chatflow_id for flow in await _named(flowise, allowed)):
        return
    raise ChatflowNotFound(f"chatflow {chatflow_id} not found")


def visible_chatflows(caller: Caller, flows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The listing as the caller's key may see it."""
    allowed = caller.tenant.chatflows if caller.tenant else None
    if allowed is None:
        return flows
    return [flow for flow in flows if flow.get("id") in allowed or flow.get("name") in allowed]


async def _named(flowise: FlowiseClient, allowed: frozenset[str]) -> list[dict[str, Any]]:
    """The chatflows a key names by name (ids need no listing)."""
    names = {entry for entry in allowed if not _is_uuid(entry)}
    if not names:
        return []
    return [flow for flow in await flowise.list_chatflows(cached=True) if flow.get("name") in names]


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True
