"""Section 1, first-token latency: sequential short answers, the gateway and a direct client of the
same upstream interleaved (A, B, A, B, ...), time from sending the request to the first non-empty
`token` event."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import httpx
import orjson

from common import cpu_seconds, flowise_body, gateway_body, percentile, response_events
from harness import GATEWAY_PATH, PREDICTION_PATH, Config, Servers
from machine import LoadMeter
from results import Distribution, LatencyPair, LatencyResult

LATENCY_TOKENS = ["Hello", " from", " the", " bench", "mark", "."]
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


async def sse_first_token(client: httpx.AsyncClient, url: str, body: bytes, flowise: bool) -> tuple[float, bool]:
    """Seconds from sending the request to the first non-empty `token`; the stream is read to its end
    (so the keep-alive connection goes back to the pool) and checked."""
    parts: list[str] = []
    terminal, first = None, None
    t0 = time.perf_counter()
    async with client.stream("POST", url, content=body, headers=JSON_HEADERS) as response:
        async for name, data in response_events(response, flowise):
            if name == "token":
                text = data if flowise else data["text"]
                if text:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(text)
            elif name in ("end", "error"):
                terminal = name
        ok = response.status_code == 200 and terminal == "end" and "".join(parts) == "".join(LATENCY_TOKENS)
    return (first - t0) if first else math.nan, ok


async def socketio_first_token(client: httpx.AsyncClient, base: str) -> tuple[float, bool]:
    """The usual direct way on Flowise <= 2.0: connect a socket.io client (websocket transport), POST
    the prediction with its socketIOClientId, wait for the first non-empty `token`."""
    import socketio

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    sio = socketio.AsyncClient(reconnection=False)
    first: asyncio.Future[float] = loop.create_future()
    parts: list[str] = []

    def on_token(data: Any = None) -> None:
        if data:
            parts.append(data)
            if not first.done():
                first.set_result(time.perf_counter())

    sio.on("token", on_token)
    await sio.connect(base, transports=["websocket"], socketio_path="/socket.io", wait_timeout=10)
    try:
        body = {"question": "latency", "chatId": str(uuid.uuid4()), "socketIOClientId": sio.get_sid("/"),
                "overrideConfig": {"emulator": {"tokens": LATENCY_TOKENS, "delay": 0.0}}}
        post = asyncio.ensure_future(client.post(base + PREDICTION_PATH, content=orjson.dumps(body),
                                                 headers={"Content-Type": "application/json"}))
        async with asyncio.timeout(30):
            t1 = await first
            answer = await post
        ok = answer.status_code == 200 and answer.json().get("text") == "".join(LATENCY_TOKENS)
    finally:
        await sio.disconnect()
    return t1 - t0, ok


def summarize(values: list[float]) -> Distribution:
    vals = [v for v in values if not math.isnan(v)]
    return Distribution(n=len(vals), p50=percentile(vals, 50), p90=percentile(vals, 90), p99=percentile(vals, 99),
                        mean=sum(vals) / len(vals) if vals else math.nan, min=min(vals, default=math.nan),
                        max=max(vals, default=math.nan))


async def measure_pair(cfg: Config, gateway_url: str, gateway_pid: int, direct: str, direct_url: str,
                       deadline: float) -> LatencyPair:
    """Interleaved A, B, A, B ...: the gateway, then the direct client, n times (after a warm-up)."""
    gw_body = orjson.dumps(gateway_body(LATENCY_TOKENS, 0.0, "latency"))
    up_body = orjson.dumps(flowise_body(LATENCY_TOKENS, 0.0, "latency"))
    gw, dr, failures, gw_cpu = [], [], 0, 0.0
    limits = httpx.Limits(max_keepalive_connections=8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as gw_client, \
            httpx.AsyncClient(timeout=30, limits=limits) as up_client:
        for i in range(cfg.latency_warmup + cfg.latency_requests):
            if time.monotonic() > deadline:
                break
            c0 = cpu_seconds(gateway_pid)
            a, ok_a = await sse_first_token(gw_client, gateway_url + GATEWAY_PATH, gw_body, flowise=False)
            c1 = cpu_seconds(gateway_pid)
            if direct == "socketio":
                b, ok_b = await socketio_first_token(up_client, direct_url)
            else:
                b, ok_b = await sse_first_token(up_client, direct_url + PREDICTION_PATH, up_body, flowise=True)
            failures += (not ok_a) + (not ok_b)
            if i >= cfg.latency_warmup:
                gw.append(a)
                dr.append(b)
                gw_cpu += c1 - c0
    g, d = summarize(gw), summarize(dr)
    return LatencyPair(gateway=g, direct=d, gateway_ms=[x * 1000 for x in gw], direct_ms=[x * 1000 for x in dr],
                       failures=failures, ratio_p50=g.p50 / d.p50, ratio_p99=g.p99 / d.p99,
                       gateway_cpu_ms_per_request=gw_cpu / max(1, len(gw)) * 1e3)


def run(cfg: Config, srv: Servers, deadline: float) -> LatencyResult:
    # (name, gateway, direct client, upstream)
    plan = [("socketio", "gw_sio", "socketio", "emu_sio"), ("sse", "gw_sse", "sse", "emu_sse")]
    if "gw_sse_uv" in srv.procs:
        plan.append(("sse_uvloop", "gw_sse_uv", "sse", "emu_sse"))
    pairs: dict[str, LatencyPair] = {}
    meter = LoadMeter(srv.pids())
    for i, (name, gw, direct, up) in enumerate(plan):
        per = max(10.0, (deadline - time.monotonic()) / (len(plan) - i))
        r = pairs[name] = asyncio.run(measure_pair(cfg, srv.url(gw), srv.pid(gw), direct, srv.url(up),
                                                   min(deadline, time.monotonic() + per)))
        print(f"  first token [{name}] gateway p50 {r.gateway.p50 * 1e3:.2f} ms p99 {r.gateway.p99 * 1e3:.2f}"
              f" ms | direct p50 {r.direct.p50 * 1e3:.2f} ms p99 {r.direct.p99 * 1e3:.2f} ms | ratio "
              f"{r.ratio_p50:.2f} / {r.ratio_p99:.2f} | gateway CPU {r.gateway_cpu_ms_per_request:.2f} "
              f"ms/request | n={r.gateway.n} failures={r.failures}")
    return LatencyResult(socketio=pairs["socketio"], sse=pairs["sse"], sse_uvloop=pairs.get("sse_uvloop"),
                         load=meter.stop())
