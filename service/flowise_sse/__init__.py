"""flowise-sse: a Server-Sent Events gateway for Flowise chatflows, and the library beneath it."""

__version__ = "0.1.0"

from .errors import (
    GatewayError,
    StreamAborted,
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
    "Event",
    "GatewayError",
    "Settings",
    "StreamAborted",
    "Upstream",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnauthorized",
    "UpstreamUnavailable",
    "astream_prediction",
    "stream_prediction",
]
