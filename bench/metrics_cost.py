"""What the metrics and the logs cost the data path: a micro-benchmark, a few seconds on one core.

    .venv/bin/python bench/metrics_cost.py

Per token, the stream run counts in plain attributes (`StreamRun.tokens`, `first_token_at`) and the
metrics are added once per stream; this measures that against the alternatives (a prometheus-client
counter per token, resolved once or by labels each time), then the per-stream and per-request costs:
`metrics.stream_ended` and the two stream log lines, and the request middleware (request id,
per-request counter). Figures are nanoseconds of CPU per operation, best of five runs.
"""

from __future__ import annotations

import asyncio
import io
import logging
import sys
import time
import timeit

from flowise_sse import metrics
from flowise_sse.api.request_context import RequestContext
from flowise_sse.logging_setup import JsonFormatter, TextFormatter, _ContextFilter, fields


class Run:
    """The attributes `StreamManager._drive` touches per token, as on `StreamRun`."""

    def __init__(self) -> None:
        self.tokens = 0
        self.first_token_at: float | None = None


def per_op(stmt, number: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=5)) / number * 1e9


def token_costs(n: int = 1_000_000) -> dict[str, float]:
    run = Run()
    monotonic = time.monotonic

    def counted() -> None:  # what _drive does per token
        run.tokens += 1
        if run.first_token_at is None:
            run.first_token_at = monotonic()

    child = metrics.TOKENS.labels("bench")

    def loop_baseline() -> None:
        pass

    return {
        "call overhead (empty function), subtracted below": per_op(loop_baseline, n),
        "per token, as shipped: an int += 1 and a None check": per_op(counted, n) - per_op(loop_baseline, n),
        "per token, alternative: prometheus child.inc() (resolved once)": per_op(child.inc, n),
        "per token, alternative: TOKENS.labels(t).inc()": per_op(lambda: metrics.TOKENS.labels("bench").inc(), n // 4),
    }


def stream_costs(n: int = 20_000) -> dict[str, float]:
    def ended() -> None:
        metrics.stream_ended("bench", None, 100, 20_000, 0.05, 1.0)
        metrics.stream_started("bench")  # keeps the live gauge level

    out: dict[str, float] = {"per stream: metrics.stream_started + stream_ended": per_op(ended, n)}
    logger = logging.getLogger("bench.streams")
    logger.propagate = False
    for name, formatter in (("text", TextFormatter()), ("json", JsonFormatter())):
        handler = logging.StreamHandler(io.StringIO())
        handler.setFormatter(formatter)
        handler.addFilter(_ContextFilter())
        logger.handlers = [handler]
        logger.setLevel(logging.INFO)

        def line() -> None:
            logger.info("stream ended", extra=fields(
                stream_id="0f3c" * 8, chat_id="7d1e" * 9, chatflow_id="3c9866f3-f7de-4cf0-bcca-26807ac532c4",
                transport="sse", outcome="completed", code=None, tokens=100, bytes=20_000,
                first_token_ms=50.1, duration_ms=1000.2))

        out[f"per stream: one stream log line ({name}, INFO on)"] = per_op(line, n)
    logger.setLevel(logging.WARNING)
    out["per stream: one stream log line (below the level)"] = per_op(
        lambda: logger.info("stream ended", extra=fields(stream_id="x")), n * 10)
    return out


def request_costs(n: int = 20_000) -> dict[str, float]:
    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = RequestContext(app)
    scope = {"type": "http", "method": "GET", "path": "/healthz",
             "headers": [(b"host", b"x"), (b"x-request-id", b"edge-1")]}

    async def send(message) -> None:
        pass

    async def receive():
        return {"type": "http.request"}

    async def many(target) -> float:
        started = time.perf_counter()
        for _ in range(n):
            await target(scope, receive, send)
        return (time.perf_counter() - started) / n * 1e9

    loop = asyncio.new_event_loop()
    try:
        bare = min(loop.run_until_complete(many(app)) for _ in range(5))
        with_context = min(loop.run_until_complete(many(wrapped)) for _ in range(5))
    finally:
        loop.close()
    return {"per request: RequestContext (request id, header, counter)": with_context - bare}


def main() -> None:
    print(f"Python {sys.version.split()[0]}; nanoseconds per operation, best of 5\n")
    print(f"| {'what':<72} | ns |\n|---|---:|")
    for section in (token_costs(), stream_costs(), request_costs()):
        for what, ns in section.items():
            print(f"| {what:<72} | {ns:,.0f} |")


if __name__ == "__main__":
    main()
