"""The gateway's failures as types, each with its HTTP status and its SSE `error` code.

One table: a failure before a stream starts becomes `status` + a JSON body; after, an SSE
`error` event with `{code, message, retryable}`.
"""

from __future__ import annotations

from typing import Any, ClassVar


class GatewayError(Exception):
    code: ClassVar[str] = "internal_error"
    status: ClassVar[int] = 500
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "retryable": self.retryable}


class BadRequest(GatewayError):
    code, status = "bad_request", 400


class NotSupportedByFlowise(GatewayError):
    """The request needs a field or endpoint the Flowise behind the gateway does not have (its
    release line is older): the message names both, and the release that brought it."""

    code, status = "not_supported_by_flowise", 400


class NotAuthenticated(GatewayError):
    """The gateway's own API key is missing or wrong."""

    code, status = "not_authenticated", 401


class PayloadTooLarge(GatewayError):
    """The request body is over `max_body_bytes` (`max_upload_bytes` where uploads are taken)."""

    code, status = "payload_too_large", 413


class TooManyStreams(GatewayError):
    """One gateway key has `max_streams_per_key` predictions running; `retry_after` goes out as
    the `Retry-After` header."""

    code, status, retryable = "too_many_streams", 429, True
    retry_after = 1


class TooManyReaders(GatewayError):
    """A stream, or one key, has as many readers as it may (`max_readers_per_stream`,
    `max_readers_per_key`)."""

    code, status, retryable = "too_many_readers", 429, True
    retry_after = 1


class Forbidden(GatewayError):
    code, status = "forbidden", 403


class ChatflowNotFound(GatewayError):
    code, status = "not_found", 404


class StreamNotFound(GatewayError):
    code, status = "stream_not_found", 404


class ChatNotFound(GatewayError):
    """A chat, message or feedback this key has none of (another key's is not this key's). Its
    own code: a client tells it apart from an unknown chatflow."""

    code, status = "chat_not_found", 404


class FileNotFound(GatewayError):
    """A file asked for by chat and name that Flowise does not hold (or holds for another key)."""

    code, status = "file_not_found", 404


class UploadNotAllowed(GatewayError):
    """The chatflow's own settings refuse the upload (file uploads off, a type not allowed)."""

    code, status = "upload_not_allowed", 403


class NotWaiting(GatewayError):
    """A `humanInput` reply for a chat whose run is not stopped waiting for one."""

    code, status = "not_waiting", 409


class ChatBusy(GatewayError):
    """Flowise mixes up two concurrent predictions on one chatId, so the second is refused."""

    code, status = "chat_busy", 409


class Overloaded(GatewayError):
    code, status, retryable = "overloaded", 503, True


class ShuttingDown(GatewayError):
    code, status, retryable = "shutting_down", 503, True


class StoreUnavailable(GatewayError):
    """Redis (FLOWISE_SSE_REDIS_URL) did not answer."""

    code, status, retryable = "store_unavailable", 503, True


class StoreMisconfigured(GatewayError):
    """Redis answered, in a way that says the gateway is set up for another kind of Redis (a
    cluster node given as a standalone URL): a setting to fix, not an outage to wait out."""

    code, status = "store_misconfigured", 500


class UpstreamUnavailable(GatewayError):
    code, status, retryable = "upstream_unavailable", 502, True


class UpstreamTimeout(GatewayError):
    code, status, retryable = "upstream_timeout", 504, True


class UpstreamError(GatewayError):
    """Flowise answered, with a failure (an LLM error, a 5xx, an `error` event)."""

    code, status = "upstream_error", 502


class UpstreamTooLarge(GatewayError):
    """Flowise sent a frame over `max_upstream_frame_bytes` or an answer over
    `max_upstream_answer_bytes`: read no further, hold no more."""

    code, status = "upstream_too_large", 502


class UpstreamUnauthorized(GatewayError):
    """Flowise refused the gateway's upstream credentials (or their absence)."""

    code, status = "unauthorized", 502


class ClientLeft(GatewayError):
    """The client closed its connection before the answer (nginx's 499: nobody reads it)."""

    code, status = "client_closed_request", 499


class StreamAborted(GatewayError):
    code, status = "aborted", 499


class StreamTooLarge(GatewayError):
    code, status = "stream_too_large", 507


def error_from_event(data: Any) -> GatewayError:
    """An SSE `error` event's `{code, message, retryable}` back as its error type."""
    data = data if isinstance(data, dict) else {}
    code, message = data.get("code"), str(data.get("message") or "the stream failed")
    pending = list(GatewayError.__subclasses__())
    while pending:
        cls = pending.pop()
        if cls.code == code:
            return cls(message)
        pending.extend(cls.__subclasses__())
    return UpstreamError(message)
