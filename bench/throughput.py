"""Section 2, relay throughput: one stream of many small tokens with no delay, tokens per second at
the client, for the gateway against a bare sse-starlette ceiling and the upstreams read directly."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import httpx

from common import (
    cpu_seconds,
    flowise_body,
    gateway_body,
    http_request,
    install_uvloop,
    lean_stream,
    own_cpu,
    percentile,
    tokens_for,
)
from harness import GATEWAY_PATH, PREDICTION_PATH, Config, Servers
from machine import LoadMeter
from results import Contender, DirectRate, ThroughputResult, ThroughputRun


async def socketio_upstream_rate(base: str, n: int, pid: int) -> DirectRate:
    """A socket.io upstream read directly by a python-socketio client: tokens per second from the
    POST to the last token (bounded by that client as much as by the server), and the server's CPU
    per token meanwhile."""
    import socketio

    loop = asyncio.get_running_loop()
    sio = socketio.AsyncClient(reconnection=False)
    count = [0]
    done: asyncio.Future[float] = loop.create_future()

    def on_token(data: Any = None) -> None:
        if data:
            count[0] += 1
            if count[0] == n and not done.done():
                done.set_result(time.perf_counter())

    sio.on("token", on_token)
    await sio.connect(base, transports=["websocket"], socketio_path="/socket.io", wait_timeout=10)
    try:
        body = {"question": "throughput", "chatId": str(uuid.uuid4()), "socketIOClientId": sio.get_sid("/"),
                "overrideConfig": {"emulator": {"tokens": tokens_for(n), "delay": 0.0}}}
        async with httpx.AsyncClient(timeout=120) as client:
            c0 = cpu_seconds(pid)
            t0 = time.perf_counter()
            post = asyncio.ensure_future(client.post(base + PREDICTION_PATH, json=body))
            async with asyncio.timeout(120):
                t1 = await done
                await post
            c1 = cpu_seconds(pid)
    finally:
        await sio.disconnect()
    return DirectRate(tokens=count[0], seconds=t1 - t0, rate=count[0] / (t1 - t0),
                      upstream_us_per_token=(c1 - c0) / max(1, count[0]) * 1e6)


async def one_run(srv: Servers, name: str, sut: str, upstream: str | None, request: bytes, port: int,
                  flowise: bool, n: int, expected: str) -> ThroughputRun:
    c0 = cpu_seconds(srv.pid(sut))
    u0 = cpu_seconds(srv.pid(upstream)) if upstream else 0.0
    k0 = own_cpu()
    r = await lean_stream(port, request, flowise, timeout=120)
    k1 = own_cpu()
    c1 = cpu_seconds(srv.pid(sut))
    u1 = cpu_seconds(srv.pid(upstream)) if upstream else 0.0
    seconds = (r.t_done or time.monotonic()) - r.t_sent
    text = r.text
    return ThroughputRun(
        name=name, ok=r.status == 200 and r.terminal == "end" and text == expected, tokens=r.tokens,
        chars=len(text), seconds=seconds, rate=n / seconds if text == expected else r.tokens / seconds,
        first_token_ms=((r.t_first or r.t_sent) - r.t_sent) * 1e3, sut_us_per_token=(c1 - c0) / n * 1e6,
        upstream_us_per_token=(u1 - u0) / n * 1e6 if upstream else None, client_us_per_token=(k1 - k0) / n * 1e6,
        error=None if r.error is None else str(r.error)[:300])


def summarize(runs: list[ThroughputRun]) -> Contender:
    rates = [r.rate for r in runs]
    return Contender(
        runs=runs, median=percentile(rates, 50), best=max(rates, default=math.nan),
        worst=min(rates, default=math.nan), all_ok=all(r.ok for r in runs) and bool(runs),
        sut_us_per_token=percentile([r.sut_us_per_token for r in runs], 50),
        upstream_us_per_token=percentile([r.upstream_us_per_token for r in runs
                                          if r.upstream_us_per_token is not None], 50),
        client_us_per_token=percentile([r.client_us_per_token for r in runs], 50),
        min_tokens=min((r.tokens for r in runs), default=0))


def run(cfg: Config, srv: Servers, deadline: float) -> ThroughputResult:
    n = cfg.throughput_tokens
    toks = tokens_for(n)
    expected = "".join(toks)
    # (name, system under test, its upstream, request, port, Flowise framing); the ceiling first
    contenders = [
        ("ceiling (bare sse-starlette)", "ceiling", None, http_request("GET", f"/stream?n={n}", srv.ports["ceiling"]),
         srv.ports["ceiling"], False),
        ("gateway, SSE upstream (3.1.4)", "gw_sse", "emu_sse",
         http_request("POST", GATEWAY_PATH, srv.ports["gw_sse"], gateway_body(toks, 0.0)), srv.ports["gw_sse"], False),
        ("gateway, socket.io upstream (1.6.2: flowise-lite-sio)", "gw_sio_lite", "lite_sio",
         http_request("POST", GATEWAY_PATH, srv.ports["gw_sio_lite"], gateway_body(toks, 0.0)),
         srv.ports["gw_sio_lite"], False),
        ("upstream alone: SSE emulator 3.1.4, read directly", "emu_sse", None,
         http_request("POST", PREDICTION_PATH, srv.ports["emu_sse"], flowise_body(toks, 0.0)), srv.ports["emu_sse"], True),
    ]
    if "gw_sse_uv" in srv.procs:
        contenders.append(("what-if: gateway on uvloop, SSE upstream (3.1.4)", "gw_sse_uv", "emu_sse",
                           http_request("POST", GATEWAY_PATH, srv.ports["gw_sse_uv"], gateway_body(toks, 0.0)),
                           srv.ports["gw_sse_uv"], False))
    runs: dict[str, list[ThroughputRun]] = {c[0]: [] for c in contenders}

    async def main() -> None:
        warm_n = n  # the same size: the ceiling encodes (and caches) its frames on the first request of a size
        for name, sut, up, _, port, flowise in contenders:  # warm-up, not counted
            path = f"/stream?n={warm_n}" if sut == "ceiling" else (PREDICTION_PATH if flowise else GATEWAY_PATH)
            body = None if sut == "ceiling" else (flowise_body if flowise else gateway_body)(tokens_for(warm_n), 0.0)
            await lean_stream(port, http_request("GET" if sut == "ceiling" else "POST", path, port, body), flowise)
        for rep in range(cfg.throughput_reps):
            for name, sut, up, request, port, flowise in contenders:
                if time.monotonic() > deadline:
                    return
                runs[name].append(await one_run(srv, name, sut, up, request, port, flowise, n, expected))

    meter = LoadMeter(srv.pids())
    install_uvloop()
    asyncio.run(main())
    load = meter.stop()
    # The socket.io upstreams read directly: flowise-lite-sio (the socket.io row's upstream) and, for
    # context, the package emulator it replaces there.
    direct: dict[str, DirectRate | None] = {"lite_sio": None, "emu_sio": None}
    for name in direct:
        if time.monotonic() < deadline:
            try:
                direct[name] = asyncio.run(socketio_upstream_rate(srv.url(name), n, srv.pid(name)))
            except Exception as exc:  # reported, not fatal
                direct[name] = DirectRate(error=repr(exc))
    summary = {name: summarize(rs) for name, rs in runs.items()}
    ceiling = summary[contenders[0][0]]
    for name, s in summary.items():
        s.of_ceiling = s.median / ceiling.median if ceiling.median else math.nan
        s.best_of_ceiling_best = s.best / ceiling.best if ceiling.best else math.nan
        print(f"  throughput {name}: median {s.median:,.0f} tok/s (best {s.best:,.0f}) = "
              f"{100 * s.of_ceiling:.0f}% of ceiling; server {s.sut_us_per_token:.1f} µs/token; ok={s.all_ok}")
    for name, what in (("lite_sio", "flowise-lite-sio"), ("emu_sio", "the socket.io emulator")):
        if direct[name]:
            print(f"  throughput {what} read directly by python-socketio: {direct[name]}")
    return ThroughputResult(tokens=n, reps=cfg.throughput_reps, contenders=summary, socketio_direct=direct["emu_sio"],
                            load=load, socketio_lite_direct=direct["lite_sio"])
