"""The Flowise server as seen from the gateway: its HTTP routes, its auth rules, its version.

Every call to Flowise goes through one `FlowiseClient`: both streaming transports and the API's
proxy routes. It owns the one shared keep-alive connection pool (aiohttp's, which python-socketio's
client uses too), builds each Flowise URL, and is the one place where an aiohttp failure
(`TRANSPORT_ERRORS`) or a Flowise error answer (`error_from_response`) becomes a `GatewayError`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import logging
import re
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote, urlsplit

import aiohttp
import orjson
from aiohttp.http_exceptions import ContentEncodingError

from .. import metrics
from ..errors import (
    ChatflowNotFound,
    GatewayError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamTooLarge,
    UpstreamUnauthorized,
    UpstreamUnavailable,
)
from ..settings import Settings

logger = logging.getLogger(__name__)

Transport = Literal["socketio", "sse"]

# The first release that streams natively over SSE (Flowise PR #3125); older ones use socket.io.
SSE_SINCE = (2, 1, 0)
# `PUT /api/v1/chatmessage/abort/...` exists from 1.8.0 on; from the same release, a request's
# `history` is prepended to the memory Flowise stores under the chatId (PR #2410).
ABORT_SINCE = (1, 8, 0)
# Management auth per release line (checked against real 1.6.2, 1.8.4, 2.0.7, 2.2.8 and 3.1.4).
# From 2.0.6 a management call needs a Bearer API key, unless it carries the UI's marker
# `x-request-from: internal`: then Flowise's basic auth applies (or nothing, when Flowise has no
# FLOWISE_USERNAME). From 3.0.1 that marker means a login cookie instead, and only a key works.
KEY_GATE_SINCE = (2, 0, 6)
COOKIE_GATE_SINCE = (3, 0, 1)
INTERNAL = {"x-request-from": "internal"}
STORED_MEMORY_SINCE = (1, 8, 0)


@functools.lru_cache(maxsize=64)  # a few versions per process, each read on every call to Flowise
def parse_version(text: str) -> tuple[int, int, int]:
    major, minor, patch = ([int(n) for n in re.findall(r"\d+", text)[:3]] + [0, 0, 0])[:3]
    return major, minor, patch


@dataclass(frozen=True, slots=True)
class FlowiseVersion:
    version: str | None  # None when the server did not say (old 1.x without the route)
    transport: Transport

    @property
    def has_abort(self) -> bool:
        return self.version is None or parse_version(self.version) >= ABORT_SINCE

    @property
    def prepends_history(self) -> bool:
        """Whether a request's `history` comes on top of what Flowise stored for its chatId
        (>= 1.8.0). Older releases use the request's history as the memory, or ignore it. An
        unknown version on socket.io (1.x before the version route, or a forced transport) is
        taken as old; forced SSE means >= 2.1."""
        if self.version is None:
            return self.transport == "sse"
        return parse_version(self.version) >= STORED_MEMORY_SINCE


JSON_CONTENT = {"Content-Type": "application/json"}


def json_body(body: Any) -> bytes:
    """A request body as JSON: orjson's, or for a lone surrogate (a caller's `\\udXXX` escape,
    not UTF-8, which orjson refuses) the stdlib's, which escapes it; Node's JSON.parse reads the
    escape back as the same UTF-16 string."""
    try:
        return orjson.dumps(body)
    except TypeError:
        return json.dumps(body, separators=(",", ":")).encode()


# Flowise prefixes its errors with the internal function that raised them
# ("predictionsServices.buildChatflow - Error: ..."): noise to a client, and not its business.
_SERVICE_NAME = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*\s+-\s+)+")


def _without_service_names(message: str) -> str:
    return _SERVICE_NAME.sub("", message)


def error_from_response(status: int, body: bytes, what: str) -> GatewayError:
    """Map a Flowise error answer to a gateway error.

    Flowise's error bodies vary by version: plain text (1.6), `{statusCode, message}` JSON (1.8+),
    `{"error": "Unauthorized Access"}` (2.0.6+ API-key middleware). A wrong chatflow key comes as
    401 on 1.6 but as a 500 whose message ends in "Unauthorized" from 1.8 on.
    """
    message = body.decode("utf-8", "replace").strip()
    try:
        parsed = orjson.loads(body)
        if isinstance(parsed, dict):
            message = str(parsed.get("message") or parsed.get("error") or message)
    except orjson.JSONDecodeError:
        pass
    message = _without_service_names(message[:2000])
    if status in (401, 403) or message.endswith("Unauthorized") or "Unauthorized Access" in message:
        return UpstreamUnauthorized(
            f"Flowise refused the gateway's credentials for {what} (HTTP {status}"
            f"{': ' + message if message else ''}); check FLOWISE_API_KEY / FLOWISE_USERNAME"
        )
    lowered = message.lower()
    if status == 404 or ("chatflow" in lowered and "not found" in lowered):
        return ChatflowNotFound(f"{what}: not found on Flowise")  # in the gateway's words, not Flowise's
    if status == 429:
        return UpstreamUnavailable(f"Flowise rate-limited {what} (HTTP 429)")
    return UpstreamError(f"Flowise failed {what} (HTTP {status}): {message or 'no message'}")


# An error answer's body is only ever quoted (2,000 characters at most): read no more of it.
ERROR_BODY_BYTES = 64 * 1024

# What a client reads when the HTTP exchange with Flowise fails: what failed, in plain words. The
# exception itself names Flowise's internal address (and its repr the request's headers), so it
# goes to the log only (`FlowiseClient._transport_failure`).
_UNREACHABLE = "Flowise is unreachable ({reason})"
_LATE = "Flowise did not answer {what} in time ({reason})"
_BROKE_OFF = "{answer} broke off ({reason})"
_UNREADABLE = "{answer} could not be read ({reason})"

# aiohttp's exceptions -> the gateway's, read top to bottom: the first row whose class is the
# exception's, or that of the OS error aiohttp wraps in it (its `__cause__`), decides; so the most
# specific class comes first (a class below one of its bases would never be reached).
TRANSPORT_ERRORS: tuple[tuple[type[BaseException], type[GatewayError], str, str], ...] = (
    # No connection was made: nothing reached Flowise.
    (aiohttp.ClientConnectorDNSError, UpstreamUnavailable, _UNREACHABLE, "name not resolved"),
    (aiohttp.ClientConnectorCertificateError, UpstreamUnavailable, _UNREACHABLE, "TLS certificate rejected"),
    (aiohttp.ClientSSLError, UpstreamUnavailable, _UNREACHABLE, "TLS handshake failed"),
    (ConnectionRefusedError, UpstreamUnavailable, _UNREACHABLE, "connection refused"),
    (aiohttp.ClientConnectorError, UpstreamUnavailable, _UNREACHABLE, "cannot connect"),
    # The wait for a free connection of the pool and the connect, together within connect_timeout.
    (aiohttp.ConnectionTimeoutError, UpstreamTimeout, _UNREACHABLE, "no connection in time"),
    # FLOWISE_URL itself (settings do not parse it): aiohttp could not even try.
    (aiohttp.NonHttpUrlClientError, UpstreamUnavailable, _UNREACHABLE, "FLOWISE_URL is not an http(s) URL"),
    (aiohttp.InvalidURL, UpstreamUnavailable, _UNREACHABLE, "FLOWISE_URL is not a valid URL"),
    # Connected: the answer did not come, stopped, or is not HTTP.
    (aiohttp.SocketTimeoutError, UpstreamTimeout, _LATE, "read timeout"),
    (ConnectionResetError, UpstreamUnavailable, _BROKE_OFF, "connection reset"),
    (aiohttp.ServerDisconnectedError, UpstreamUnavailable, _BROKE_OFF, "server disconnected"),
    (ContentEncodingError, UpstreamError, _UNREADABLE, "bad content encoding"),
    (aiohttp.ClientPayloadError, UpstreamUnavailable, _BROKE_OFF, "answer cut short"),
    (aiohttp.ClientResponseError, UpstreamError, _UNREADABLE, "not valid HTTP"),
    (aiohttp.ClientOSError, UpstreamUnavailable, _BROKE_OFF, "network error"),
    (aiohttp.ClientError, UpstreamUnavailable, _BROKE_OFF, "connection lost"),
)


def transport_error(exc: BaseException, what: str, answer: str | None = None) -> GatewayError:
    """`exc`, raised by aiohttp during `what` ("the version check"), as the gateway's error.
    `answer` names what broke off (default: Flowise's answer to `what`). Not a transport failure:
    `exc` itself is raised."""
    for cls, error, template, reason in TRANSPORT_ERRORS:
        if isinstance(exc, cls) or isinstance(exc.__cause__, cls):
            return error(template.format(what=what, answer=answer or f"Flowise's answer to {what}", reason=reason))
    raise exc


def _detail(exc: BaseException) -> str:
    """The exception and what it wraps, for the log: `str`, never `repr` (a `ClientResponseError`'s
    repr carries the request's headers, the credentials among them)."""
    parts = [f"{type(exc).__name__}: {exc}"]
    if exc.__cause__ is not None:
        parts.append(f"{type(exc.__cause__).__name__}: {exc.__cause__}")
    return " <- ".join(parts)


def redacted_url(url: str) -> str:
    """`url` without the password of its userinfo: safe for a log line or an error message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


async def read_limited(chunks: AsyncIterable[bytes], headers: Mapping[str, str], limit: int, what: str) -> bytes:
    """A response body (aiohttp's chunks, decoded), refused past `limit` bytes (a small gzip of a
    huge answer counts as huge) without holding more than the limit."""
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit and "content-encoding" not in headers:
        raise UpstreamTooLarge(f"Flowise's answer to {what} is {declared} bytes, over the limit of {limit}")
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise UpstreamTooLarge(
                f"Flowise's answer to {what} is over the limit of {limit} bytes (FLOWISE_SSE_MAX_UPSTREAM_ANSWER_BYTES)"
            )
        parts.append(chunk)
    return b"".join(parts)


class FlowiseClient:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base_url = settings.flowise_url.rstrip("/")
        self.public_url = redacted_url(self.base_url)  # for messages: never the URL's password
        parts = urlsplit(self.base_url)
        self._password = parts.password
        # Credentials in FLOWISE_URL (a proxy's basic auth in front of Flowise) go on every request
        # as its Authorization, over any other; requests go to the URL without them (aiohttp
        # refuses both at once, and would otherwise print them in its errors).
        self._url_auth: str | None = None
        self._request_url = self.base_url
        if parts.username is not None or parts.password is not None:
            raw = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}".encode()
            self._url_auth = "Basic " + base64.b64encode(raw).decode()
            netloc = parts.hostname or ""
            if ":" in netloc:  # an IPv6 address
                netloc = f"[{netloc}]"
            self._request_url = parts._replace(netloc=netloc + (f":{parts.port}" if parts.port else "")).geturl()
        self._pool: aiohttp.ClientSession | None = None
        # Every call's limits: the wait for a free connection and the connect are bounded (then
        # 504). The streaming prediction has no read limit: the stream's own apply
        # (`upstream/timeouts.py`); a JSON call's is its `timeout`, between two reads.
        self._stream_timeout = aiohttp.ClientTimeout(connect=settings.connect_timeout,
                                                     sock_connect=settings.connect_timeout)
        self._version: FlowiseVersion | None = None
        self._version_expires = 0.0
        self._version_lock = asyncio.Lock()
        self._chatflows_seen: dict[str, tuple[bool, float]] = {}
        self._upload_policies: dict[str, tuple[dict[str, Any], float]] = {}
        self._listing: tuple[list[dict[str, Any]], float] | None = None

    def _session(self) -> aiohttp.ClientSession:
        """The one connection pool, every call's, made on first use (inside the event loop, as aiohttp wants).

        A full pool makes the next request wait (up to connect_timeout, then 504), so the gateway
        never opens more upstream connections than this. Idle connections are dropped after 2 s,
        before Flowise's side (Node's and uvicorn's 5 s keep-alive timeout) closes them: a
        connection reused just as the server closes it fails with "Server disconnected" -> 502.
        No cookie jar: one user's cookie must never ride on another's request."""
        if self._pool is None:
            self._pool = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.upstream_max_connections, limit_per_host=0,
                                               keepalive_timeout=2.0),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._pool

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    # --- auth ---------------------------------------------------------------------------
    @property
    def prediction_headers(self) -> dict[str, str]:
        """Prediction routes are outside basic auth in every version; a chatflow key goes here."""
        key = self.settings.flowise_api_key
        return {"Authorization": f"Bearer {key.get_secret_value()}"} if key else {}

    @property
    def management_headers(self) -> dict[str, str]:
        """Listing, version check, abort, stored messages: the credentials this release line takes.

        1.x: basic auth. 2.x: basic auth with `x-request-from: internal`, else the Bearer key, else
        the marker alone (what the UI sends to a Flowise without credentials). 3.x: the Bearer key.
        Before the version is known (the version check itself: open from 2.1.2 on, guarded on
        2.0.x), or when FLOWISE_TRANSPORT skips the check, the transport says which side of 3.0 it
        may be: `sse` prefers the key (it works on 2.1+ and 3.x), otherwise basic auth is tried.
        """
        s = self.settings
        key = self.prediction_headers
        basic: dict[str, str] = {}
        if s.flowise_username and s.flowise_password:
            raw = f"{s.flowise_username}:{s.flowise_password.get_secret_value()}".encode()
            basic = {"Authorization": "Basic " + base64.b64encode(raw).decode(), **INTERNAL}
        known = self._version.version if self._version else None
        if known is None:
            if key and (s.flowise_transport == "sse" or not basic):
                return key
            return basic or INTERNAL
        line = parse_version(known)
        if line >= COOKIE_GATE_SINCE:
            return key
        if basic:
            return basic  # the marker is harmless on 1.x, whose basic auth ignores it
        if key:
            return key
        return INTERNAL if line >= KEY_GATE_SINCE else {}

    def _with_url_auth(self, headers: dict[str, str]) -> dict[str, str]:
        if self._url_auth:
            headers["Authorization"] = self._url_auth
        return headers

    @property
    def socketio_url_and_path(self) -> tuple[str, str]:
        """socket.io lives at `<FLOWISE_URL path>/socket.io/` on the same host and port."""
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}", f"{parts.path.rstrip('/')}/socket.io"

    # --- requests -----------------------------------------------------------------------
    @staticmethod
    def prediction_path(chatflow_id: str) -> str:
        return f"/api/v1/prediction/{chatflow_id}"

    def _transport_failure(self, exc: BaseException, operation: str, what: str,
                           answer: str | None = None) -> GatewayError:
        """The gateway's error for a failed exchange (`transport_error`); the whole of it, with
        where (the password masked), goes to the log for the operator."""
        error = transport_error(exc, what, answer)
        logger.warning("Flowise call %r at %s failed (%s): %s", operation, self.public_url, error.code,
                       self.redact(_detail(exc)))
        return error

    def redact(self, text: str) -> str:
        """`text` with FLOWISE_URL's password masked, wherever an error quoted it."""
        if self._password:
            text = text.replace(self.base_url, self.public_url).replace(self._password, "***")
        return text

    async def request(
        self,
        method: str,
        path: str,
        what: str,
        *,
        operation: str,
        management: bool = True,
        timeout: float | None = 30.0,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> Any:
        """One JSON request to Flowise; every failure comes back as a `GatewayError`.
        `timeout` bounds each wait for the answer's next bytes (None: no bound, the caller's own
        applies); `operation` names the call in the metrics and the log."""
        content = await self.request_bytes(method, path, what, operation=operation, management=management,
                                           timeout=timeout, params=params, body=body)
        try:
            return orjson.loads(content)
        except orjson.JSONDecodeError:  # not JSON, or nested past orjson's 1,024 levels
            raise UpstreamError(f"Flowise answered {what} with something that is not JSON") from None

    async def request_bytes(
        self,
        method: str,
        path: str,
        what: str,
        *,
        operation: str,
        management: bool = True,
        timeout: float | None = 30.0,
        params: Mapping[str, str] | None = None,
        body: bytes | None = None,
        form: aiohttp.FormData | None = None,
    ) -> bytes:
        """One request's successful answer as bytes, read up to `max_upstream_answer_bytes`.
        `body` is JSON (`json_body`); `form`, multipart (its files are streamed from where they are)."""
        headers = {**(self.management_headers if management else self.prediction_headers)}
        if body is not None:
            headers.update(JSON_CONTENT)
        connect = self.settings.connect_timeout
        started = time.monotonic()
        try:
            try:
                response = await self._session().request(
                    method, self._request_url + path, params=params, data=body if form is None else form,
                    headers=self._with_url_auth(headers),
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(connect=connect, sock_connect=connect, sock_read=timeout),
                )
                try:
                    if response.status >= 400:
                        error_body = await _error_body(response.content.iter_any())
                        raise error_from_response(response.status, error_body, what)
                    answer = await read_limited(response.content.iter_any(), response.headers,
                                                self.settings.max_upstream_answer_bytes, what)
                finally:
                    # Read to its end, the connection goes back to the pool; otherwise it is closed.
                    response.release()
            except aiohttp.ClientError as exc:
                raise self._transport_failure(exc, operation, what) from None
        except GatewayError as exc:
            metrics.upstream_call(operation, time.monotonic() - started, exc.code)
            raise
        metrics.upstream_call(operation, time.monotonic() - started)
        return answer

    @asynccontextmanager
    async def prediction_stream(
        self, chatflow_id: str, body: Callable[[], bytes]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """The streaming prediction POST (>= 2.1.0), its response open for reading; closed on exit
        (its connection goes back to the pool only when the response was read to its end). A
        failure while the caller reads it is named as the Flowise stream's. `body` makes the JSON
        (`Prediction.encoded_body`): called here and let go once sent, because a context manager
        keeps its arguments, and a body with uploads must not live as long as the stream.

        Flowise flushes the headers before it runs the flow, so their arrival is bounded by the
        stream's connect limit (`upstream/timeouts.py`, until `start`); a failure status is raised
        here, before any event. No timer of its own here: a second cancellation landing while
        the cancelled connection is closed interrupts that close and orphans the socket."""
        what, operation = f"the prediction on {chatflow_id}", "prediction_stream"
        started = time.monotonic()
        content: bytes | None = body()
        try:
            response = await self._session().post(
                self._request_url + self.prediction_path(chatflow_id), data=content,
                headers=self._with_url_auth(
                    {**self.prediction_headers, **JSON_CONTENT, "Accept": "text/event-stream"}),
                allow_redirects=False, timeout=self._stream_timeout,
            )
        except aiohttp.ClientError as exc:
            failure = self._transport_failure(exc, operation, what)
            metrics.upstream_call(operation, time.monotonic() - started, failure.code)
            raise failure from None
        finally:
            content = None
        async with self._checked(response, operation, what, started, "the Flowise stream") as checked:
            yield checked

    @asynccontextmanager
    async def _checked(
        self, response: aiohttp.ClientResponse, operation: str, what: str, started: float, reading: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """A response the caller streams: a failure status raised as Flowise's error (its body
        read, bounded), the call counted, a transport failure while the caller reads named as
        `reading`'s; released on exit."""
        try:
            if response.status != 200:
                try:
                    content = await _error_body(response.content.iter_any())
                except aiohttp.ClientError as exc:
                    failure = self._transport_failure(exc, operation, what)
                else:
                    failure = error_from_response(response.status, content, what)
                metrics.upstream_call(operation, time.monotonic() - started, failure.code)
                raise failure
            metrics.upstream_call(operation, time.monotonic() - started)
            try:
                yield response
            except aiohttp.ClientError as exc:
                raise self._transport_failure(exc, operation, what, reading) from None
        finally:
            response.release()

    # --- the conversation's side routes (whitelisted on every release, but the stored messages and,
    # from 2.0.6, RAG upserts): what a chat front-end calls besides the prediction -------------
    async def chatbot_config(self, chatflow_id: str) -> dict[str, Any]:
        """`public-chatbotConfig` (public on every line from 1.6): the chatbot config and its
        upload policy (`{}` when it has none: Flowise answers the text `OK` then)."""
        what = f"the chatbot config of {chatflow_id}"
        content = await self.request_bytes("GET", f"/api/v1/public-chatbotConfig/{quote(chatflow_id, safe='')}",
                                           what, operation="chatbot_config", management=False)
        if content.strip() in (b"OK", b'"OK"'):
            return {}
        try:
            config = orjson.loads(content)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Flowise answered {what} with something that is not JSON") from None
        if not isinstance(config, dict):
            raise UpstreamError(f"Flowise's answer to {what} is not an object")
        return config

    async def upload_policy(self, chatflow_id: str) -> dict[str, Any]:
        """The `uploads` part of the chatbot config: `isImageUploadAllowed`, `imgUploadSizeAndTypes`,
        `isSpeechToTextEnabled`, `isRAGFileUploadAllowed`, ...; {} when Flowise says nothing.
        Remembered for `chatflow_cache_ttl`, as the streaming check is: it is asked on every
        request that carries an OpenAI image or a RAG upsert, and only this part is kept."""
        seen = self._upload_policies.get(chatflow_id)
        if seen and time.monotonic() < seen[1]:
            return seen[0]
        uploads = (await self.chatbot_config(chatflow_id)).get("uploads")
        policy = uploads if isinstance(uploads, dict) else {}
        if len(self._upload_policies) > 10000:
            self._upload_policies.clear()
        self._upload_policies[chatflow_id] = (policy, time.monotonic() + self.settings.chatflow_cache_ttl)
        return policy

    async def create_feedback(self, chatflow_id: str, body: dict[str, Any]) -> Any:
        return await self.request("POST", f"/api/v1/feedback/{chatflow_id}", "the feedback",
                                  operation="feedback", management=False, body=json_body(body))

    async def list_feedback(self, chatflow_id: str, chat_id: str) -> list[Any]:
        answer = await self.request("GET", f"/api/v1/feedback/{chatflow_id}", "the feedback listing",
                                    operation="feedback", management=False, params={"chatId": chat_id})
        return answer if isinstance(answer, list) else []

    async def update_feedback(self, feedback_id: str, body: dict[str, Any]) -> Any:
        return await self.request("PUT", f"/api/v1/feedback/{quote(feedback_id, safe='')}", "the feedback update",
                                  operation="feedback", management=False, body=json_body(body))

    async def chat_messages(self, chatflow_id: str, chat_id: str) -> list[Any]:
        """The stored messages of one chat, oldest first (a management route)."""
        answer = await self.request("GET", f"/api/v1/chatmessage/{chatflow_id}", "the stored messages",
                                    operation="chat_messages", params={"chatId": chat_id, "order": "ASC"})
        answer = answer.get("data") if isinstance(answer, dict) else answer
        return answer if isinstance(answer, list) else []

    async def attachments(self, chatflow_id: str, chat_id: str, form: aiohttp.FormData) -> Any:
        """`attachments` (2.1.3+): files in, their extracted text out, for `file:full` uploads."""
        return _json_answer(await self.request_bytes(
            "POST", f"/api/v1/attachments/{chatflow_id}/{quote(chat_id, safe='')}", "the attachments",
            operation="attachments", management=False, form=form), "the attachments")

    async def upsert(self, chatflow_id: str, form: aiohttp.FormData) -> Any:
        """`vector/upsert`: RAG files into the chatflow's vector store (a key's route from 2.0.6)."""
        return _json_answer(await self.request_bytes(
            "POST", f"/api/v1/vector/upsert/{chatflow_id}", "the upsert", operation="upsert", form=form),
            "the upsert")

    @asynccontextmanager
    async def upload_file(
        self, chatflow_id: str, chat_id: str, file_name: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """`get-upload-file`: a file stored under a chat, its response open for streaming."""
        what, operation = f"the file {file_name[:100]!r}", "upload_file"
        started = time.monotonic()
        connect = self.settings.connect_timeout
        try:
            response = await self._session().get(
                self._request_url + "/api/v1/get-upload-file",
                params={"chatflowId": chatflow_id, "chatId": chat_id, "fileName": file_name},
                headers=self._with_url_auth({**self.prediction_headers}), allow_redirects=False,
                timeout=aiohttp.ClientTimeout(connect=connect, sock_connect=connect, sock_read=30.0),
            )
        except aiohttp.ClientError as exc:
            failure = self._transport_failure(exc, operation, what)
            metrics.upstream_call(operation, time.monotonic() - started, failure.code)
            raise failure from None
        async with self._checked(response, operation, what, started, "the file") as checked:
            yield checked

    async def version(self) -> FlowiseVersion:
        """The server's version and so its transport; remembered for `version_ttl` seconds."""
        if self.settings.flowise_transport != "auto":
            return FlowiseVersion(None, self.settings.flowise_transport)
        if self._version and time.monotonic() < self._version_expires:
            return self._version
        async with self._version_lock:
            if self._version and time.monotonic() < self._version_expires:
                return self._version
            try:
                answer = await self.request("GET", "/api/v1/version", "the version check", operation="version")
                text = str(answer.get("version", "")) if isinstance(answer, dict) else ""
            except ChatflowNotFound:
                text = ""  # releases before the route existed are all socket.io ones
            except UpstreamUnauthorized as exc:
                raise UpstreamUnauthorized(
                    exc.message + "; or set FLOWISE_TRANSPORT=socketio|sse to skip the version check"
                ) from None
            transport: Transport = "sse" if text and parse_version(text) >= SSE_SINCE else "socketio"
            self._version = FlowiseVersion(text or None, transport)
            self._version_expires = time.monotonic() + self.settings.version_ttl
            return self._version

    async def is_streaming(self, chatflow_id: str) -> bool:
        """`GET /api/v1/chatflows-streaming/{id}`: whitelisted everywhere, 404s unknown chatflows."""
        answer = await self.request(
            "GET", f"/api/v1/chatflows-streaming/{chatflow_id}", f"chatflow {chatflow_id}",
            operation="chatflow_check", management=False,
        )
        return bool(answer.get("isStreaming")) if isinstance(answer, dict) else False

    async def check_chatflow(self, chatflow_id: str) -> bool:
        """Whether the chatflow streams; raises `ChatflowNotFound` before any stream starts.

        Remembered briefly: it costs a round trip, and on >= 2.1 an unknown chatflow makes the
        streaming POST hang rather than fail, so it must be known before that POST.
        """
        seen = self._chatflows_seen.get(chatflow_id)
        if seen and time.monotonic() < seen[1]:
            return seen[0]
        streaming = await self.is_streaming(chatflow_id)
        if len(self._chatflows_seen) > 10000:
            self._chatflows_seen.clear()
        self._chatflows_seen[chatflow_id] = (
            streaming, time.monotonic() + self.settings.chatflow_cache_ttl
        )
        return streaming

    async def list_chatflows(self, *, cached: bool = False) -> list[dict[str, Any]]:
        """Flowise's chatflows. `cached`: a listing up to `chatflow_cache_ttl` old will do (name
        lookups on every OpenAI request must not cost a listing each)."""
        if cached and self._listing and time.monotonic() < self._listing[1]:
            return self._listing[0]
        answer = await self.request("GET", "/api/v1/chatflows", "the chatflow listing", operation="chatflows")
        if isinstance(answer, dict) and isinstance(answer.get("data"), list):
            answer = answer["data"]  # 3.x paginated form
        if not isinstance(answer, list):
            raise UpstreamError("Flowise's chatflow listing is not a list")
        flows = [flow for flow in answer if isinstance(flow, dict)]
        self._listing = (flows, time.monotonic() + self.settings.chatflow_cache_ttl)
        return flows

    async def predict(self, chatflow_id: str, body: bytes, *, timeout: float | None) -> dict[str, Any]:
        """The prediction POST without `streaming`: Flowise's JSON answer (a socket.io prediction
        streams beside it, bounded by the stream's own timeouts: `timeout=None`)."""
        return prediction_answer(await self.predict_bytes(chatflow_id, body, timeout=timeout))

    async def predict_bytes(self, chatflow_id: str, body: bytes, *, timeout: float | None) -> bytes:
        """The same answer as Flowise's bytes, checked to be a JSON object (`/prediction` passes
        them on as they are: no second encoding, whatever their depth)."""
        content = await self.request_bytes(
            "POST", self.prediction_path(chatflow_id), f"the prediction on {chatflow_id}",
            operation="prediction", management=False, timeout=timeout, body=body,
        )
        prediction_answer(content)
        return content

    async def ping(self) -> None:
        """`GET /api/v1/ping` answers `pong` (text, not JSON): any success means reachable."""
        await self.request_bytes("GET", "/api/v1/ping", "the ping", operation="ping", management=False, timeout=10.0)

    async def stored_answer(self, chatflow_id: str, chat_id: str, message_id: str) -> str:
        """The text Flowise stored for one answer (`GET /api/v1/chatmessage/{chatflowid}`, a
        management route): read when a stream brought no token (Flowise #4926, #5253, #5193,
        #5592). Unbounded here: the stream's idle timeout applies."""
        answer = await self.request(
            "GET", f"/api/v1/chatmessage/{chatflow_id}", "the stored answer", operation="stored_answer",
            params={"chatId": chat_id, "messageId": message_id}, timeout=None,
        )
        messages = answer.get("data") if isinstance(answer, dict) else answer
        for message in messages if isinstance(messages, list) else ():
            if (isinstance(message, dict) and message.get("id") == message_id
                    and message.get("role") == "apiMessage" and isinstance(message.get("content"), str)):
                return str(message["content"])
        return ""

    async def abort(self, chatflow_id: str, chat_id: str) -> None:
        """Best effort: Flowise's own stop (agentflows honour it; classic chains run on)."""
        version = self._version
        if version and not version.has_abort:
            return
        with suppress(GatewayError):
            await self.request(
                "PUT", f"/api/v1/chatmessage/abort/{quote(chatflow_id, safe='')}/{quote(chat_id, safe='')}",
                "the abort", operation="abort",
                timeout=5.0,
            )


def _json_answer(content: bytes, what: str) -> Any:
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        raise UpstreamError(f"Flowise answered {what} with something that is not JSON") from None


def prediction_answer(content: bytes) -> dict[str, Any]:
    try:
        answer = orjson.loads(content)
    except orjson.JSONDecodeError:
        raise UpstreamError("Flowise answered the prediction with something that is not JSON") from None
    if not isinstance(answer, dict):
        raise UpstreamError("Flowise's prediction answer is not a JSON object")
    return answer


async def _error_body(chunks: AsyncIterable[bytes]) -> bytes:
    """The start of an error answer: enough to quote, never the whole of a huge one."""
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        parts.append(chunk)
        size += len(chunk)
        if size >= ERROR_BODY_BYTES:
            break
    return b"".join(parts)[:ERROR_BODY_BYTES]
