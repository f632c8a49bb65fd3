"""What the gateway's log lines must not carry: query strings (eventsUrl tokens, GET questions and
histories) in uvicorn's access log, and URLs in httpx's per-request INFO lines (the gateway
client's, in the CLI: an eventsUrl carries its token)."""

from __future__ import annotations

import logging


class QueryRedacted(logging.Filter):
    """uvicorn.access logs `(client, method, path?query, http_version, status)`: the query goes."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "?" in args[2]:
            record.args = (*args[:2], args[2].partition("?")[0] + "?[redacted]", *args[3:])
        return True


def install_log_redaction() -> None:
    """Idempotent; filters on a logger survive uvicorn's logging set-up (dictConfig keeps them)."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, QueryRedacted) for f in access.filters):
        access.addFilter(QueryRedacted())
    for name in ("httpx", "httpcore"):
        upstream = logging.getLogger(name)
        if upstream.getEffectiveLevel() < logging.WARNING:
            upstream.setLevel(logging.WARNING)
