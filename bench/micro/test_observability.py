"""What the metrics and logs cost the data path, against the alternatives they avoid. Per token the
gateway counts in plain attributes (`StreamRun.tokens`, `first_token_at`) and adds the counts to the
metrics once per stream; a prometheus-client counter per token would take its lock every time."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest

from flowise_sse import metrics
from flowise_sse.api.request_context import RequestContext
from flowise_sse.logging_setup import JsonFormatter, TextFormatter, _ContextFilter, fields


class Run:
    """The attributes `StreamManager._drive` touches per token, as on `StreamRun`."""

    def __init__(self) -> None:
        self.tokens = 0
        self.first_token_at: float | None = None


def counted(run: Run) -> None:  # what _drive does per token
    run.tokens += 1
    if run.first_token_at is None:
        run.first_token_at = time.monotonic()


def test_perToken_asShipped_anIncrementAndANoneCheck(benchmark):
    benchmark(counted, Run())


def test_perToken_alternative_prometheusChildInc(benchmark):
    benchmark(metrics.TOKENS.labels("bench").inc)


def test_perToken_alternative_prometheusLabelsThenInc(benchmark):
    benchmark(lambda: metrics.TOKENS.labels("bench").inc())


def test_perStream_metricsStartedAndEnded(benchmark):
    def both() -> None:
        metrics.stream_started("bench")
        metrics.stream_ended("bench", None, 100, 20_000, 0.05, 1.0)

    benchmark(both)


@pytest.mark.parametrize("formatter, level", [(TextFormatter, logging.INFO), (JsonFormatter, logging.INFO),
                                              (TextFormatter, logging.WARNING)], ids=["text", "json", "belowLevel"])
def test_perStream_oneStreamLogLine(benchmark, formatter, level):
    handler = logging.StreamHandler(io.StringIO())
    handler.setFormatter(formatter())
    handler.addFilter(_ContextFilter())
    logger = logging.getLogger(f"bench.streams.{formatter.__name__}.{level}")
    logger.propagate, logger.handlers = False, [handler]
    logger.setLevel(level)
    benchmark(lambda: logger.info("stream ended", extra=fields(
        stream_id="0f3c" * 8, chat_id="7d1e" * 9, chatflow_id="3c9866f3-f7de-4cf0-bcca-26807ac532c4",
        transport="sse", outcome="completed", code=None, tokens=100, bytes=20_000, first_token_ms=50.1,
        duration_ms=1000.2)))


@pytest.mark.parametrize("wrapped", [False, True], ids=["bareApp", "withRequestContext"])
def test_perRequest_requestContext_aHundredRequests(benchmark, wrapped):
    """Request id, its response header and the per-request counter: the difference of the two rows."""
    async def noop(*_: object) -> None:
        pass

    async def app(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    target = RequestContext(app) if wrapped else app
    scope = {"type": "http", "method": "GET", "path": "/healthz", "headers": [(b"x-request-id", b"edge-1")]}

    async def hundred() -> None:  # a hundred per loop turn: one turn per request would be most of the figure
        for _ in range(100):
            await target(scope, noop, noop)

    loop = asyncio.new_event_loop()
    benchmark(lambda: loop.run_until_complete(hundred()))
    loop.close()
