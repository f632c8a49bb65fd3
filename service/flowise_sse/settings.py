"""Every setting of the gateway, with its default, in one place.

Upstream (Flowise) settings keep Flowise's own names (`FLOWISE_URL`, `FLOWISE_API_KEY`, ...);
the gateway's own knobs are prefixed `FLOWISE_SSE_`.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def _upstream(name: str) -> AliasChoices:
    # Unprefixed env name, plus the field name itself so `Settings(flowise_url=...)` works in code.
    return AliasChoices(name, name.lower())


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FLOWISE_SSE_", populate_by_name=True, extra="ignore"
    )

    # --- Upstream Flowise -------------------------------------------------------------------
    flowise_url: str = Field("http://localhost:3000", validation_alias=_upstream("FLOWISE_URL"))
    """Base URL of the Flowise server (a path prefix is fine: socket.io is looked for under it)."""
    flowise_api_key: SecretStr | None = Field(None, validation_alias=_upstream("FLOWISE_API_KEY"))
    """Bearer key sent to Flowise on predictions (a key-bound chatflow needs its key). On 2.x any
    Flowise API key also opens the management routes (listing, version check, abort, stored
    answer); on 3.x they need it (a workspace key with `chatflows:view`). Never leaves the
    server."""
    flowise_username: str | None = Field(None, validation_alias=_upstream("FLOWISE_USERNAME"))
    flowise_password: SecretStr | None = Field(None, validation_alias=_upstream("FLOWISE_PASSWORD"))
    """Flowise's basic auth, for its management routes (listing, version check, abort, the stored
    answer of a stream that sent no token): 1.x needs it; 2.x takes it too (sent with
    `x-request-from: internal`, without which 2.x ignores basic auth); 3.x has none."""
    flowise_transport: Literal["auto", "socketio", "sse"] = Field(
        "auto", validation_alias=_upstream("FLOWISE_TRANSPORT")
    )
    """`auto` asks `GET /api/v1/version`: <= 2.0.x streams over socket.io, >= 2.1.0 over SSE."""

    # --- Timeouts (seconds) -----------------------------------------------------------------
    connect_timeout: float = 10.0
    """Opening the upstream: TCP connect, socket.io handshake, response headers; then 504
    `upstream_timeout`."""
    first_event_timeout: float = 120.0
    """From the prediction request to the first upstream event (LLMs can think a while)."""
    idle_timeout: float = 120.0
    """Longest silence between two upstream events once the answer flows."""
    total_timeout: float = 1800.0
    """Longest a single prediction may run."""
    version_ttl: float = 300.0
    """How long the detected Flowise version (and so the transport) is remembered."""

    # --- Streams ----------------------------------------------------------------------------
    keepalive_interval: float = 15.0
    """Seconds between SSE keep-alive comments to the client."""
    send_timeout: float = 30.0
    """Longest one write to a reader may take, keep-alives included: a reader that stops reading
    (a frozen tab, a stuck proxy) is let go after it and its connection and buffers freed."""
    get_rejoin_window: float = 30.0
    """After a GET stream's last event, how long the same GET (same question, history, chatId,
    key) replays that stream from the start instead of asking Flowise again, unless a reader
    already received the whole stream. While the stream runs, the same GET always joins it. Per
    replica and per worker: a reconnect that lands on another asks Flowise again."""
    retry_ms: int = 2000
    """The `retry:` hint sent to EventSource clients with the first event."""
    on_client_disconnect: Literal["continue", "abort"] = "continue"
    """When the last reader of a stream leaves: keep the upstream running (so a reconnect with
    Last-Event-ID resumes it) or abort it at once."""
    stream_retention: float = 600.0
    """How long a finished stream's events stay available for resume."""
    max_stream_bytes: int = 8 * 1024 * 1024
    """Cap on one stream's stored events; a stream over it fails with `stream_too_large`."""
    max_total_bytes: int = 256 * 1024 * 1024
    """Cap on all streams' stored events in memory, never exceeded: finished streams are evicted
    first, oldest first, and each running stream keeps 1 KiB of it for its final event, which so
    always fits."""
    max_streams: int = 10000
    """Cap on streams held at once (running or retained); new ones get 503 `overloaded` beyond
    it."""
    redis_url: str | None = None
    """With Redis, events are mirrored to Redis Streams so any replica can resume a stream
    (`redis://[user:password@]host:port/db`, `rediss://` for TLS). With `redis_cluster`: any node
    of the cluster. With `redis_sentinels`: only its credentials, TLS and db are used (the host is
    the primary Sentinel names), and it may be left unset."""
    redis_cluster: bool = False
    """`redis_url` names a node of a Redis Cluster (Redis >= 7.0, or Valkey): the gateway finds
    the others, follows resharding and failovers, and aborts over sharded pub/sub. Name several,
    comma-separated (`redis://a:6379,redis://b:6379`; credentials, TLS and db from the first), or
    a name that resolves to several, so that a gateway started while one node is down still gets
    in."""
    redis_sentinels: Annotated[list[str], NoDecode] = []
    """Redis Sentinel: `host:port` of each sentinel (comma-separated); the gateway asks them for
    the primary of `redis_sentinel_master` and follows it through failovers."""
    redis_sentinel_master: str | None = None
    """The name the sentinels know the primary by (their `sentinel monitor <name> ...`)."""
    redis_sentinel_password: SecretStr | None = None
    """The sentinels' own password (their `requirepass`), if they have one; the primary's comes
    from `redis_url`."""
    redis_sentinel_tls: bool = False
    """Reach the sentinels over TLS (their `tls-port`), with the TLS options of `redis_url`
    (`rediss://...?ssl_ca_certs=...`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`); the
    primary is reached over TLS when `redis_url` is `rediss://`."""
    redis_max_connections: int = 256
    """Redis connections per replica for readers on other replicas (one each while it waits for
    events), chat locks and aborts. A blocking pool: past it a caller waits (up to
    `redis_timeout`) for a free connection instead of failing. Mirror writes and the replica's
    heartbeat use 2 connections of their own, outside this count."""
    redis_timeout: float = 10.0
    """How long Redis may stay unreachable: a running stream whose events could not be written
    for this long ends with `error` `store_unavailable` (written to Redis once it is back, never
    leaving a hole); a reader on another replica gets the same error; a pool wait gives up."""
    redis_buffer_bytes: int = 1024 * 1024
    """Per stream, the most frames waiting to be written to Redis; a stream that passes it
    (Redis too slow or away) ends with `error` `store_unavailable` rather than dropping any."""
    shutdown_grace: float = 30.0
    """On SIGTERM, how long running upstreams may go on before they are aborted."""

    # --- Limits: what one client, one connection or Flowise can make the gateway hold --------
    max_body_bytes: int = 1024 * 1024
    """Largest request body accepted; a bigger one gets 413 `payload_too_large` unread. A body
    that carries uploads, on a route that takes them, has `max_upload_bytes` instead."""
    max_upload_bytes: int = 25 * 1024 * 1024
    """Largest body that carries uploads: on the prediction routes (`uploads`: images, audio and
    files as base64), attachments and RAG upserts, and the OpenAI routes (`/v1/chat/completions`,
    `/v1/responses`: images and audio, whose decoded bytes may add up to this much); a bigger
    one gets 413 `payload_too_large`, refused as soon as it passes the limit, nothing of it sent
    to Flowise. A JSON body past `max_body_bytes` that carries none is refused too (413). Never
    less than `max_body_bytes` in effect. Flowise's chatflow has its own cap per file (its
    upload policy)."""
    max_header_bytes: int = 16 * 1024
    """Largest request line and headers together; over it the connection gets 431
    `headers_too_large` and is closed."""
    max_headers: int = 100
    """Most request header lines; over it, 431 and the connection is closed."""
    header_timeout: float = 10.0
    """Seconds a connection may take to send a request's headers, counted from its opening (a
    keep-alive connection's next request: from its first byte); then it is closed, with 408
    `request_timeout` if it sent anything (slow or half-open clients hold no socket longer)."""
    body_timeout: float = 30.0
    """Seconds a request body may take to arrive in full; then 408 `request_timeout`."""
    linger_timeout: float = 10.0
    """After an answer sent before the request was read whole (413, 408, 431), how long the
    client may go on sending: what it sends is read and dropped so that its connection is not
    reset under the answer it has yet to read, then the connection is closed."""
    max_linger_bytes: int = 64 * 1024 * 1024
    """The most a refused client may send after its answer (read and dropped) before the
    connection is closed regardless."""
    idle_connection_timeout: float = 5.0
    """Seconds an idle keep-alive connection is held between two requests."""
    max_pending_connections: int = 200
    """Connections still sending their headers, or lingering after a refusal, held at once; past
    it the oldest of them is closed, so half-open connections cannot use up the process's file
    descriptors."""
    max_streams_per_key: int = 100
    """Predictions (streams and `/prediction`) running at once per gateway API key; beyond it
    429 `too_many_streams` with `Retry-After`. An open gateway has no keys: `max_streams` only."""
    max_readers_per_stream: int = 100
    """Readers (SSE connections) of one stream at once; beyond it 429 `too_many_readers`."""
    max_readers_per_key: int = 200
    """Readers at once per gateway key (and per `eventsUrl` token), of all its streams; beyond it
    429 `too_many_readers`. An open gateway has no keys: the per-stream and total caps only."""
    max_readers: int | None = None
    """Readers at once in all, per process; beyond it 503 `overloaded`. Unset: half the process's
    file descriptor limit (RLIMIT_NOFILE), so readers can never take every descriptor."""
    max_upstream_frame_bytes: int = 4 * 1024 * 1024
    """Largest single event frame read from Flowise's event stream; a bigger one ends the
    stream with `upstream_too_large` (the frame is never buffered past this)."""
    max_upstream_answer_bytes: int = 16 * 1024 * 1024
    """Largest JSON answer read from Flowise (a prediction, a listing); bigger: 502 or `error`
    `upstream_too_large`."""
    upstream_max_connections: int = 1024
    """Upstream HTTP connections open at once; a request beyond it waits for one to free up
    (up to connect_timeout, then 504)."""

    # --- socket.io upstream ----------------------------------------------------------------
    socketio_pool_size: int = 4
    """Pre-connected sockets kept ready, one leased per socket.io prediction (Flowise <= 2.0.x)."""
    socketio_late_frames: float = 0.05
    """After the HTTP answer, how long to wait for socket frames still in flight."""
    chatflow_cache_ttl: float = 30.0
    """How long a chatflow's existence/streaming check is remembered."""

    # --- OpenAI-compatible API ---------------------------------------------------------------
    openai_pass_params: bool = False
    """On `/v1/chat/completions`: send OpenAI sampling parameters (temperature, top_p, max_tokens,
    presence/frequency_penalty, stop) and system messages to Flowise in `overrideConfig`, under
    the input names of its chat model and prompt nodes. Off: they are ignored (the chatflow owns
    its model and prompt) and listed in `X-Flowise-Ignored-Params`. Flowise 3.x applies an
    override only where the chatflow's "Override Configuration" allows it."""
    openai_reasoning: bool = True
    """On `/v1/chat/completions`: send Flowise's `thinking` (a reasoning model's thoughts, 3.1+)
    as `delta.reasoning_content` and `delta.reasoning` in the stream, and as
    `message.reasoning_content` in a whole completion. Off for a client that cannot take fields
    OpenAI's own API does not send; the Responses API always has them as reasoning items."""

    # --- Access -----------------------------------------------------------------------------
    override_config: str = "any"
    """What callers may put in `overrideConfig`, on every route: `any` (passed on as is), `off`
    (a body carrying it gets 400), or comma-separated key names, dots for nested keys
    (`sessionId,vars.customer`). With `any`, a Flowise before 2.1.4 (no per-chatflow allowlist of
    its own) lets a caller override any node input, a chat model's base URL included: the gateway
    warns at start-up."""
    api_keys: Annotated[list[SecretStr], NoDecode] = []
    """Gateway API keys (comma-separated), sent by clients as `Authorization: Bearer <key>`;
    each is a tenant of its own that may use every chatflow. With neither these nor `keys_file`
    the gateway is open (one shared space), and says so at start-up."""
    keys_file: Path | None = None
    """A TOML file of `[[key]]` tables, each a tenant: `key` (or `key_sha256`), `label` (for logs
    and metrics), `chatflows` (ids or names it may use; omitted: all), `flow_data` (may list
    chatflows with `?full=true`). See the tenancy docs."""
    cors_origins: Annotated[list[str], NoDecode] = []
    """Origins allowed by CORS (comma-separated). Empty: no cross-origin access. `*`: every
    origin, on an open gateway as on a keyed one (a key is a bearer header the page sets itself;
    no cookie ever authorises anything here)."""
    token_secret: SecretStr | None = None
    """Signs the capability tokens of `eventsUrl`. Unset: a random one, drawn per process (the
    workers of one `serve --workers N` share one drawn at start); set it, the same on every
    replica, when running several."""
    token_ttl: float | None = None
    """Lifetime of an `eventsUrl` capability token, at least (its expiry is rounded up to the
    second). Unset: as long as its stream can be read (`total_timeout + stream_retention`)."""
    allowed_hosts: Annotated[list[str], NoDecode] = ["localhost", "127.0.0.1", "::1"]
    """Host names the gateway answers to, on any port (comma-separated; `*`: any, and then the
    same-origin check trusts the client's `Host`). A request for another `Host` gets 400 (DNS
    rebinding: a page of evil.example resolved to this gateway), except /healthz and /readyz
    (probes use the pod's IP). Add your public host name when deploying."""

    metrics_token: SecretStr | None = None
    """Bearer token for `GET /metrics` (what Prometheus sends); it opens nothing else. Unset or
    empty: a gateway API key is needed there, as on every other route (none when the gateway is
    open)."""

    # --- Operations -------------------------------------------------------------------------
    workers: int = Field(1, ge=1)
    """Gateway processes `flowise-sse serve` runs on one listening socket (`--workers` overrides
    it); one per core uses every core. Above 1 they share streams through Redis, so `redis_url`
    is required. The stream and memory limits above hold per process: with N workers a host
    holds up to N times each of them."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text or as one JSON object per line (for a log pipeline)."""

    @field_validator("metrics_token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes an unset variable on as "" (`${FLOWISE_SSE_METRICS_TOKEN:-}`): that
        # is no token, not a token nobody can send.
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def uses_redis(self) -> bool:
        """Streams are mirrored to Redis (a URL, or sentinels)."""
        return bool(self.redis_url or self.redis_sentinels)

    @property
    def redis_urls(self) -> list[str]:
        """The servers `redis_url` names: one, or a cluster's several, comma-separated."""
        return [url.strip() for url in (self.redis_url or "").split(",") if url.strip()]

    @model_validator(mode="after")
    def _redis_modes(self) -> Settings:
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError("FLOWISE_SSE_REDIS_CLUSTER and FLOWISE_SSE_REDIS_SENTINELS exclude each other: "
                             "a cluster fails over by itself, without sentinels")
        if len(self.redis_urls) > 1 and not self.redis_cluster:
            raise ValueError("FLOWISE_SSE_REDIS_URL names several Redis servers, which only a cluster has: "
                             "set FLOWISE_SSE_REDIS_CLUSTER=true, or give one URL")
        if self.redis_cluster and not self.redis_url:
            raise ValueError("FLOWISE_SSE_REDIS_CLUSTER needs FLOWISE_SSE_REDIS_URL naming any node of the cluster")
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError("FLOWISE_SSE_REDIS_SENTINELS and FLOWISE_SSE_REDIS_SENTINEL_MASTER go together")
        if self.redis_sentinel_tls and not self.redis_sentinels:
            raise ValueError("FLOWISE_SSE_REDIS_SENTINEL_TLS is about sentinels: set FLOWISE_SSE_REDIS_SENTINELS too")
        return self

    @field_validator("api_keys", "cors_origins", "allowed_hosts", "redis_sentinels", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value


# Read from the environment by the CLI's client commands (`flowise-sse ask --gateway`), not by
# the gateway: known, so not reported as unknown.
_CLIENT_VARIABLES = frozenset({"FLOWISE_SSE_GATEWAY", "FLOWISE_SSE_API_KEY"})


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """The `FLOWISE_SSE_*` names in `environ` that no setting reads: pydantic-settings drops them
    (`extra="ignore"`), so a misspelt or unsupported one would otherwise change nothing silently
    (a Sentinel setting on a version without it: memory-only, without a word)."""
    prefix = Settings.model_config.get("env_prefix", "")
    # A field with an alias of its own (`FLOWISE_URL`) is not read under the prefix.
    known = {prefix + name.upper() for name, field in Settings.model_fields.items()
             if field.validation_alias is None} | _CLIENT_VARIABLES
    return sorted(name for name in environ if name.upper().startswith(prefix) and name.upper() not in known)
