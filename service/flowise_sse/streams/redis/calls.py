"""Calling Redis: the clients, every call reported the same way, and the answers that mean something.

Every call site wraps its Redis call in `redis_call(operation)`, so none is missing from the
metrics: a failure counts in `flowise_sse_redis_errors_total`, and the call's duration goes to
`flowise_sse_redis_call_seconds`, both by operation. `store_call` is the same for a call a
client's request waits on, whose failure is that request's `store_unavailable`, or, when Redis'
answer says the gateway is set up for the wrong kind of Redis, its `store_misconfigured`.

One client per use, in one of three modes: standalone (`redis_url`), Redis Cluster
(`redis_cluster`: redis-py's cluster client, which routes each key to its slot's primary and
follows MOVED answers and failovers), Sentinel (`redis_sentinels`: a pool that asks the sentinels
for the primary on every new connection, and drops its connections when the primary changes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool, SSLConnection, parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import AskError, ClusterCrossSlotError, RedisClusterException

from ... import metrics
from ...errors import StoreMisconfigured, StoreUnavailable
from ...settings import Settings

logger = logging.getLogger("flowise_sse")

Client = redis.Redis | RedisCluster
# What a failing Redis call raises: redis-py's errors, a socket's, and the cluster client's own
# (which is no RedisError: "Cluster mode is not enabled on this node", a slot no node serves).
REDIS_ERRORS = (redis.RedisError, OSError, RedisClusterException)


_CLUSTER_HEADROOM = 16


class _BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (the primary's address asked of the sentinels for each new connection),
    blocking as the standalone one: a burst waits for a connection instead of failing. The
    sentinels are asked one connection at a time: in a failover every connection reconnects at
    once, and each concurrent question opened a connection to each sentinel, kept idle after
    (60 more descriptors per replica in the soak); one at a time, they reuse one."""

    _asking: asyncio.Lock | None = None

    async def get_master_address(self) -> Any:
        if self._asking is None:
            self._asking = asyncio.Lock()
        async with self._asking:
            return await super().get_master_address()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


def connect(settings: Settings, max_connections: int) -> Client:
    """A client of at most `max_connections` connections (per node, on a cluster). Standalone and
    Sentinel pools block: a burst waits (up to `redis_timeout`) for a connection instead of failing
    with "Too many connections"; a `?max_connections=` in the URL overrides it. A cluster's pools
    cannot block, so its blocking readers are bounded by `MirrorReader`'s own count, and each
    node's pool has some headroom over it."""
    timeouts: dict[str, Any] = {"socket_timeout": settings.redis_timeout,
                                "socket_connect_timeout": min(5.0, settings.redis_timeout)}
    if settings.redis_sentinels:
        # The settings' validator makes the master's name go with the sentinels.
        assert settings.redis_sentinel_master is not None
        sentinel_password = settings.redis_sentinel_password
        sentinel_options: dict[str, Any] = {
            **timeouts, "password": sentinel_password.get_secret_value() if sentinel_password else None}
        primary_options = _primary_options(settings.redis_url)
        if settings.redis_sentinel_tls:
            sentinel_options |= {"ssl": True} | {
                name: value for name, value in primary_options.items() if name.startswith("ssl_")}
        sentinels = Sentinel([_host_port(address) for address in settings.redis_sentinels],
                             sentinel_kwargs=sentinel_options, **timeouts, **primary_options)
        client: redis.Redis = sentinels.master_for(
            settings.redis_sentinel_master, connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections, timeout=settings.redis_timeout)
        return client
    # Without sentinels the mirror exists only when the URL is set (`Settings.uses_redis`).
    assert settings.redis_url is not None
    if settings.redis_cluster:
        # Past its size a cluster node's pool refuses ("Too many connections") instead of
        # waiting: the blocking readers are held to `max_connections` by `MirrorReader`, and this
        # headroom is for the short calls (claims, look-ups, the writer's, a topology refresh).
        urls = settings.redis_urls
        options: dict[str, Any] = dict(parse_url(urls[0]))  # credentials, TLS and db: the first URL's
        if options.pop("connection_class", None) is SSLConnection:
            options["ssl"] = True
        options.pop("host", None)
        options.pop("port", None)
        # Every node named is a way in: a gateway (re)started while one of them is down still
        # finds the cluster through another, then learns all of its nodes from it.
        nodes = [ClusterNode(*_host_port_of(url)) for url in urls]
        return RedisCluster(startup_nodes=nodes, max_connections=max_connections + _CLUSTER_HEADROOM,
                            **timeouts, **options)
    pool = BlockingConnectionPool.from_url(
        settings.redis_url, max_connections=max_connections, timeout=settings.redis_timeout, **timeouts)
    return redis.Redis(connection_pool=pool)


def _host_port_of(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "localhost", parts.port or 6379


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), int(port)


def _primary_options(url: str | None) -> dict[str, Any]:
    """What a Sentinel primary takes from `redis_url`: credentials, TLS (`rediss://`) and db;
    its host and port come from the sentinels."""
    if not url:
        return {}
    options: dict[str, Any] = dict(parse_url(url))
    for name in ("host", "port", "connection_class"):
        options.pop(name, None)
    if urlsplit(url).scheme == "rediss":
        options["ssl"] = True
    return options


def misconfiguration(exc: BaseException) -> str | None:
    """What is wrong in the settings when Redis' answer says so, else None: a cluster node
    reached without `redis_cluster` answers a key of another node's slot with MOVED (or ASK),
    and a command spanning slots with CROSSSLOT; a standalone server reached with it refuses
    cluster mode."""
    if isinstance(exc, (AskError, ClusterCrossSlotError)):
        return ("FLOWISE_SSE_REDIS_URL names a node of a Redis Cluster, which answered "
                f"{str(exc).split(' ', 1)[0] or type(exc).__name__}: set FLOWISE_SSE_REDIS_CLUSTER=true")
    if isinstance(exc, RedisClusterException) and "cluster mode is not enabled" in str(exc).lower():
        return ("FLOWISE_SSE_REDIS_CLUSTER is set but the Redis at FLOWISE_SSE_REDIS_URL is not in cluster mode: "
                "unset FLOWISE_SSE_REDIS_CLUSTER")
    return None


@contextmanager
def redis_call(operation: str, *, timed: bool = True) -> Iterator[None]:
    """Report the Redis call made inside to the metrics. `timed=False` for a blocking call (XREAD
    BLOCK, a subscription), whose duration is mostly waiting for something to happen."""
    started = time.perf_counter()
    try:
        yield
    except REDIS_ERRORS:
        metrics.redis_error(operation)
        if timed:
            metrics.redis_call_seconds(operation, time.perf_counter() - started)
        raise
    if timed:
        metrics.redis_call_seconds(operation, time.perf_counter() - started)


@contextmanager
def store_call(operation: str) -> Iterator[None]:
    """`redis_call` for a call a client's request waits on: a failure is the request's 503, or
    its 500 `store_misconfigured` when the answer says the settings are wrong."""
    try:
        with redis_call(operation):
            yield
    except REDIS_ERRORS as exc:
        if (wrong := misconfiguration(exc)) is not None:
            raise StoreMisconfigured(wrong) from None
        # redis-py's words name Redis' addresses and pools: the log's, not the client's.
        logger.warning("flowise-sse: Redis did not answer (%s): %s", operation, exc)
        raise StoreUnavailable(f"Redis did not answer ({type(exc).__name__}); retry later") from None


async def xread(client: Client, key: str, after: str, block_ms: int, count: int) -> Any:
    """XREAD of one key from `after`, blocking up to `block_ms`. On a cluster it is sent to the
    key's node by name: redis-py's cluster client learns the keys of a command with movable keys
    (XREAD) by asking its default node (`COMMAND GETKEYS`), outside the path that handles a dead
    node, so once that node died every XREAD failed there and the topology was never refreshed
    (a replica that only read kept failing after the cluster had healed). Sent to the slot's
    node, a dead one's error asks for the refresh, which `initialize` then runs once it is due."""
    if isinstance(client, RedisCluster):
        await client.initialize()
        node = client.get_node_from_key(key)
        return await client.execute_command("XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", key, after,
                                            target_nodes=node)
    return await client.xread({key: after}, block=block_ms, count=count)


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
