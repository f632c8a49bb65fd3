"""The gateway's logs: text or JSON lines (`FLOWISE_SSE_LOG_FORMAT`), each with its request id.

Every record passes `_ContextFilter`, which stamps it with the request id of the request it was
logged for (a contextvar the request middleware sets; tasks a request starts inherit it, so a
stream's `stream started`/`stream ended` lines carry the id of the request that asked for it).
Structured fields go in `extra=fields(...)`: JSON lines get them as keys, text lines as
`key=value`. What never goes into a log line: secrets, tokens, the question or the answer.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import re
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("flowise_sse_request_id", default=None)
# Set while the demo's emulated Flowise runs: records below WARNING from its tasks are dropped, so
# `serve --demo` prints the gateway's lines only (uvicorn's loggers are shared by both servers).
_quiet: contextvars.ContextVar[bool] = contextvars.ContextVar("flowise_sse_quiet", default=False)

# A client's id is taken as is only when it looks like an id: no spaces, quotes or control bytes
# that could forge a log line, and short.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


def accept_request_id(given: str | None) -> str:
    """The client's `X-Request-ID` when it is sane, else a new one."""
    if given and _SANE_REQUEST_ID.fullmatch(given):
        return given
    return uuid.uuid4().hex


def fields(**values: Any) -> dict[str, Any]:
    """`logger.info("stream ended", extra=fields(stream_id=..., tokens=...))`."""
    return {"fields": values}


@contextmanager
def quiet() -> Iterator[None]:
    """Below WARNING, nothing logged from code (and tasks) started inside this block shows."""
    token = _quiet.set(True)
    try:
        yield
    finally:
        _quiet.reset(token)


class _ContextFilter(logging.Filter):
    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        if _quiet.get() and record.levelno < logging.WARNING:
            return False
        record.request_id = request_id.get()
        record.worker = self.worker
        return True


def _path_only(record: logging.LogRecord) -> None:
    """uvicorn's access line carries the path with its query string, where `?question=` and
    `?token=` live: keep the path only."""
    if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
        args = list(record.args)
        args[2] = str(args[2]).split("?", 1)[0]
        record.args = tuple(args)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        _path_only(record)
        line = super().format(record)
        extra = getattr(record, "fields", None)
        if extra:
            line += " " + " ".join(f"{key}={_text(value)}" for key, value in extra.items() if value is not None)
        rid = getattr(record, "request_id", None)
        if rid:
            line += f" request_id={rid}"
        worker = getattr(record, "worker", None)
        return f"{line} worker={worker} pid={record.process}" if worker else line


def _text(value: Any) -> str:
    text = str(value)
    return text if text and " " not in text and '"' not in text else orjson.dumps(text).decode()


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `ts`, `level`, `logger`, `msg`, `request_id`, then the record's
    fields (an access line: `method`, `path`, `status`, `client`)."""

    def format(self, record: logging.LogRecord) -> str:
        _path_only(record)
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        worker = getattr(record, "worker", None)
        if worker:
            entry.update(worker=worker, pid=record.process)
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args
            entry.update(msg="request", method=method, path=path, status=status, client=client)
        extra = getattr(record, "fields", None)
        if extra:
            entry.update(extra)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(log_format: str = "text", level: str | int = "info", worker: int | None = None) -> None:
    """Send every log record (the gateway's, uvicorn's) to stderr in `log_format`. uvicorn is then
    started with `log_config=None`, so it keeps this setup. `worker`: this process's number under
    `serve --workers`; its lines then carry it and the process id."""
    level_no = level if isinstance(level, int) else logging.getLevelName(level.upper())
    logging.config.dictConfig({
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": _ContextFilter, "worker": worker}},
        "formatters": {"main": {"()": JsonFormatter if log_format == "json" else TextFormatter}},
        "handlers": {"stderr": {
            "class": "logging.StreamHandler", "stream": "ext://sys.stderr",
            "formatter": "main", "filters": ["context"],
        }},
        "root": {"handlers": ["stderr"], "level": level_no},
        "loggers": {
            # uvicorn's own handlers would print every line twice: they go, its loggers propagate.
            "uvicorn": {"handlers": [], "propagate": True},
            "uvicorn.error": {"handlers": [], "propagate": True},
            "uvicorn.access": {"handlers": [], "propagate": True},
            # One line per request to Flowise, with its URL, is noise at INFO.
            "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"},
            "socketio": {"level": "WARNING"},
            "engineio": {"level": "WARNING"},
        },
    })
