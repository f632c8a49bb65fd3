"""Calling Redis: the clients, every call reported the same way, and the one error that is an answer.

Every call site wraps its Redis call in `redis_call(operation)`, so none is missing from the
metrics: a failure counts in `flowise_sse_redis_errors_total`, and the call's duration goes to
`flowise_sse_redis_call_seconds`, both by operation. `store_call` is the same for a call a
client's request waits on, whose failure is that request's `store_unavailable`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis.asyncio as redis

from ... import metrics
from ...errors import StoreUnavailable
from ...settings import Settings


def connect(settings: Settings, max_connections: int) -> redis.Redis:
    """A client on a pool of at most `max_connections`: a blocking pool, so a burst waits (up to
    `redis_timeout`) for a connection instead of failing with "Too many connections" (redis-py's
    default pool). A `?max_connections=` in the URL overrides it."""
    assert settings.redis_url is not None  # the mirror, the one caller, exists only when it is set
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=settings.redis_timeout,
        socket_timeout=settings.redis_timeout, socket_connect_timeout=min(5.0, settings.redis_timeout))
    return redis.Redis(connection_pool=pool)


@contextmanager
def redis_call(operation: str, *, timed: bool = True) -> Iterator[None]:
    """Report the Redis call made inside to the metrics. `timed=False` for a blocking call (XREAD
    BLOCK, a subscription), whose duration is mostly waiting for something to happen."""
    started = time.perf_counter()
    try:
        yield
    except (redis.RedisError, OSError):
        metrics.redis_error(operation)
        if timed:
            metrics.redis_call_seconds(operation, time.perf_counter() - started)
        raise
    if timed:
        metrics.redis_call_seconds(operation, time.perf_counter() - started)


@contextmanager
def store_call(operation: str) -> Iterator[None]:
    """`redis_call` for a call a client's request waits on: a failure is the request's 503."""
    try:
        with redis_call(operation):
            yield
    except redis.RedisError as exc:
        raise StoreUnavailable(f"Redis did not answer: {exc}") from None


# Redis answers an XADD whose explicit id is not above the stream's top entry with
# `-ERR The ID specified in XADD is equal or smaller than the target stream top item`
# (t_stream.c, xaddCommand; the same code and text from streams' first release, 5.0, to 7.x, and
# the reply Redis' streams introduction shows). redis-py takes the code off the text and keeps it
# as `status_code` (versions without that attribute drop it: the text alone then only matches an
# ERR reply, as any other code stays in front of it).
_TAKEN_ID_CODE = "ERR"
_TAKEN_ID_TEXT = "The ID specified in XADD is equal or smaller than the target stream top item"


def is_taken_id(answer: object) -> bool:
    """Whether an XADD's answer says its entry id is taken. The mirror's ids are the frames' own
    seqs, so the entry is already there: a retry whose first answer was lost, or a stream whose
    last entry a reader elsewhere wrote."""
    return (isinstance(answer, redis.ResponseError)
            and getattr(answer, "status_code", _TAKEN_ID_CODE) == _TAKEN_ID_CODE
            and str(answer) == _TAKEN_ID_TEXT)
