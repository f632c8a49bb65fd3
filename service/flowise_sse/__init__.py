"""flowise-sse: a Server-Sent Events gateway for Flowise chatflows, the library beneath it, and a
client for the gateway."""

__version__ = "0.1.0"

from .client import AsyncGatewayClient, CreatedStream, GatewayClient, GatewayUnreachable
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
from .library import astream_prediction, stream_prediction
from .settings import Settings
from .upstream import Upstream

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
