"""Every Prometheus metric of the gateway, and the small functions the data path calls.

The data path never touches a metric object: it calls these functions, at most once per stream
for what it counts per token (a run counts its tokens in a plain int and adds them at its end),
so the per-token cost is an integer increment (measured in `bench/micro/test_observability.py`).

Metrics live in prometheus-client's default registry, beside its process and Python collectors;
`/metrics` serves them (`api/routes/prometheus.py`). Under `serve --workers N` the parent sets
`PROMETHEUS_MULTIPROC_DIR` before it starts the workers, so each worker's values live in files
there (prometheus-client's multiprocess mode) and a scrape, whichever worker answers it, sums them:
counters and histograms over every worker that ever ran, the live gauges over the live ones. The
store's size, read from the live store at scrape time in one process, is then published by each
worker every half second instead (`publish_store`).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE_LATEST", "exposition"]

# A `_created` series beside every counter doubles the scrape for a timestamp nobody graphs.
disable_created_metrics()

# First tokens from an LLM: tens of milliseconds (a cache) to a minute (a slow model, an agent).
_FIRST_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
_DURATION_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 120)
# Redis on the same network answers in well under a millisecond; `redis_timeout` (10 s) caps a call.
_REDIS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

# Read once, as prometheus-client itself does at import: values go to files from then on.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

BUILD_INFO = Gauge("flowise_sse_build_info", "The gateway's version (value 1).", ["version"], multiprocess_mode="max")

STREAMS_STARTED = Counter(
    "flowise_sse_streams_started_total", "Streams that sent `start` (Flowise accepted the prediction).",
    ["transport"],
)
STREAMS_REJECTED = Counter(
    "flowise_sse_streams_rejected_total",
    "Predictions that failed before `start`: a JSON error with an HTTP status instead of a stream.",
    ["code"],
)
STREAMS_LIVE = Gauge("flowise_sse_streams_live", "Streams running now (started, not ended).", ["transport"],
                     multiprocess_mode="livesum")
STREAMS_ENDED = Counter(
    "flowise_sse_streams_ended_total",
    "Streams ended, by outcome (completed: `end`; aborted: `error` aborted; failed: any other `error`) "
    "and error code (`none` when completed).",
    ["transport", "outcome", "code"],
)
TOKENS = Counter("flowise_sse_tokens_total", "`token` events relayed (added when each stream ends).", ["transport"])
EVENT_BYTES = Counter(
    "flowise_sse_event_bytes_total", "SSE bytes of the streams' events, as stored (added when each stream ends).",
    ["transport"],
)
SENT_BYTES = Counter(
    "flowise_sse_sent_bytes_total", "SSE bytes written to readers (added when each reader leaves).", ["source"],
)
FIRST_TOKEN = Histogram(
    "flowise_sse_first_token_seconds", "From the stream request to its first `token`.", ["transport"],
    buckets=_FIRST_TOKEN_BUCKETS,
)
DURATION = Histogram(
    "flowise_sse_stream_duration_seconds", "From the stream request to its terminal event.", ["transport"],
    buckets=_DURATION_BUCKETS,
)
UPSTREAM_SECONDS = Histogram(
    "flowise_sse_upstream_request_seconds",
    "Calls to Flowise until their answer (for a streaming prediction: until its response headers).",
    ["operation"], buckets=_UPSTREAM_BUCKETS,
)
UPSTREAM_ERRORS = Counter(
    "flowise_sse_upstream_errors_total", "Calls to Flowise that failed, by operation and error code.",
    ["operation", "code"],
)
READERS = Gauge("flowise_sse_readers", "Connections reading a stream now (memory: this replica's own "
                "streams; redis: another replica's).", ["source"], multiprocess_mode="livesum")
RESUMES = Counter("flowise_sse_resumes_total", "Readers that resumed after a Last-Event-ID.", ["source"])
REDIS_ERRORS = Counter("flowise_sse_redis_errors_total", "Redis calls that failed.", ["operation"])
REDIS_SECONDS = Histogram(
    "flowise_sse_redis_call_seconds",
    "Redis calls until their answer or failure (not the blocking ones: `read`, `abort_channel`).",
    ["operation"], buckets=_REDIS_BUCKETS,
)
LIMITS_HIT = Counter(
    "flowise_sse_limits_hit_total", "Requests refused by a limit (413 too large, 429 too many, 503 full or "
    "shutting down or store unavailable), by status and code.", ["status", "code"],
)
HTTP_REQUESTS = Counter(
    "flowise_sse_http_requests_total", "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
)


# --- streams ----------------------------------------------------------------------------------
# `labels()` costs a few microseconds (a lock, a tuple, a dict): the children a stream needs are
# resolved once per label set and kept here (the sets are few: transports, outcomes, codes).
# started, live, tokens, event bytes, first token, duration
_Children = tuple[Counter, Gauge, Counter, Counter, Histogram, Histogram]
_per_transport: dict[str, _Children] = {}
_ended: dict[tuple[str, str, str], Counter] = {}


def _children(transport: str) -> _Children:
    children = _per_transport.get(transport)
    if children is None:
        children = _per_transport[transport] = (
            STREAMS_STARTED.labels(transport), STREAMS_LIVE.labels(transport), TOKENS.labels(transport),
            EVENT_BYTES.labels(transport), FIRST_TOKEN.labels(transport), DURATION.labels(transport),
        )
    return children


def stream_started(transport: str) -> None:
    started, live, *_ = _children(transport)
    started.inc()
    live.inc()


def outcome(code: str | None) -> str:
    """A stream's outcome label from its error code (None: it completed)."""
    return "completed" if code is None else "aborted" if code == "aborted" else "failed"


def stream_rejected(code: str) -> None:
    STREAMS_REJECTED.labels(code).inc()


def stream_ended(transport: str, code: str | None, tokens: int, event_bytes: int,
                 first_token: float | None, duration: float) -> None:
    """Once per started stream, at its terminal event: `code` None when it completed."""
    _, live, tokens_total, bytes_total, first_token_seconds, duration_seconds = _children(transport)
    key = (transport, outcome(code), code or "none")
    ended = _ended.get(key)
    if ended is None:
        ended = _ended[key] = STREAMS_ENDED.labels(*key)
    live.dec()
    ended.inc()
    tokens_total.inc(tokens)
    bytes_total.inc(event_bytes)
    if first_token is not None:
        first_token_seconds.observe(first_token)
    duration_seconds.observe(duration)


# --- readers ----------------------------------------------------------------------------------
def reader_joined(source: str, resumed: bool) -> None:
    READERS.labels(source).inc()
    if resumed:
        RESUMES.labels(source).inc()


def reader_left(source: str, sent_bytes: int) -> None:
    READERS.labels(source).dec()
    SENT_BYTES.labels(source).inc(sent_bytes)


# --- upstream, Redis, limits, HTTP --------------------------------------------------------------
def upstream_call(operation: str, seconds: float, code: str | None = None) -> None:
    UPSTREAM_SECONDS.labels(operation).observe(seconds)
    if code is not None:
        UPSTREAM_ERRORS.labels(operation, code).inc()


def redis_error(operation: str) -> None:
    REDIS_ERRORS.labels(operation).inc()


_redis_seconds: dict[str, Any] = {}


def redis_call_seconds(operation: str, seconds: float) -> None:
    """Once per mirror write (every few ms under load), hence the child kept per operation."""
    child = _redis_seconds.get(operation)
    if child is None:
        child = _redis_seconds[operation] = REDIS_SECONDS.labels(operation)
    child.observe(seconds)


LIMIT_STATUSES = frozenset({413, 429, 503})


def request_refused(status: int, code: str) -> None:
    """Every JSON error answer passes here; the limits (413, 429, 503) are counted."""
    if status in LIMIT_STATUSES:
        LIMITS_HIT.labels(str(status), code).inc()


_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_http: dict[tuple[str, str, int], Any] = {}


def http_request(method: str, route: str, status: int) -> None:
    """`route` is a route template or "other" and `method` one of the HTTP methods or "other": a
    client cannot grow the label sets."""
    key = (method if method in _METHODS else "other", route, status)
    child = _http.get(key)
    if child is None:
        child = _http[key] = HTTP_REQUESTS.labels(key[0], route, str(status))
    child.inc()


# --- memory: read from the live stores at scrape time --------------------------------------------
class _Store(Protocol):
    total_bytes: int
    logs: dict[str, Any]


_stores: weakref.WeakSet[_Store] = weakref.WeakSet()


def watch_store(store: _Store) -> None:
    """Report this store's size at each scrape (for as long as it lives)."""
    _stores.add(store)


_STORE_BYTES = ("flowise_sse_store_bytes",
                "Bytes of stream events held in memory (FLOWISE_SSE_MAX_TOTAL_BYTES caps it, per worker).")
_STORE_STREAMS = ("flowise_sse_store_streams", "Streams held in memory, running or retained for resume "
                                               "(FLOWISE_SSE_MAX_STREAMS caps it, per worker).")


class _StoreCollector(Collector):
    def collect(self) -> Iterable[GaugeMetricFamily]:
        stores = list(_stores)
        yield GaugeMetricFamily(*_STORE_BYTES, value=sum(store.total_bytes for store in stores))
        yield GaugeMetricFamily(*_STORE_STREAMS, value=sum(len(store.logs) for store in stores))


if MULTIPROCESS:
    # Not in REGISTRY (the scrape reads the files): set by `publish_store`, summed over live workers.
    _store_gauges = (Gauge(*_STORE_BYTES, registry=None, multiprocess_mode="livesum"),
                     Gauge(*_STORE_STREAMS, registry=None, multiprocess_mode="livesum"))
else:
    REGISTRY.register(_StoreCollector())


def publish_store() -> None:
    """In multiprocess mode, this process's store size as of now (a worker calls it periodically)."""
    if MULTIPROCESS:
        stores = list(_stores)
        _store_gauges[0].set(sum(store.total_bytes for store in stores))
        _store_gauges[1].set(sum(len(store.logs) for store in stores))


def set_build_info(version: str) -> None:
    BUILD_INFO.labels(version).set(1)


WORKER_INFO = Gauge("flowise_sse_worker_info", "Under `serve --workers N`: one series per live worker (value 1), "
                    "with its number and pid.", ["worker"], multiprocess_mode="liveall")


def set_worker(number: int) -> None:
    WORKER_INFO.labels(str(number)).set(1)


def exposition() -> bytes:
    """The text a scrape gets: this process's registry, or in multiprocess mode every worker's files."""
    if MULTIPROCESS:
        from prometheus_client.multiprocess import MultiProcessCollector

        publish_store()  # this process's own, current (the others' are at most half a second old)
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
