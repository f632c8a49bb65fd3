"""flowise-sse: a Server-Sent Events gateway for Flowise chatflows, the library beneath it, and a
client for the gateway."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import (
    GatewayError,
    StreamAborted,
    StreamNotFound,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from .events import Event
from .settings import Settings
from .upstream import Upstream

__version__ = "0.1.0"

# The gateway's client (httpx) and the library, imported on first use: `serve` needs neither,
# and importing them is a seventh of its start-up CPU.
_LAZY = {
    "AsyncGatewayClient": ".client",
    "CreatedStream": ".client",
    "GatewayClient": ".client",
    "GatewayUnreachable": ".client",
    "astream_prediction": ".library",
    "stream_prediction": ".library",
}

if TYPE_CHECKING:
    from .client import AsyncGatewayClient, CreatedStream, GatewayClient, GatewayUnreachable
    from .library import astream_prediction, stream_prediction


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value  # once: later lookups find it without this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "AsyncGatewayClient",
    "CreatedStream",
    "Event",
    "GatewayClient",
    "GatewayError",
    "GatewayUnreachable",
    "Settings",
    "StreamAborted",
    "StreamNotFound",
    "Upstream",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnauthorized",
    "UpstreamUnavailable",
    "astream_prediction",
    "stream_prediction",
]
