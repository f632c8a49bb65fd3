"""Section 2, relay throughput: one stream of many small tokens with no delay, tokens per second at
the client and CPU per token, for the gateway against a bare sse-starlette ceiling and the upstreams
read directly."""

from __future__ import annotations

import asyncio
import os
import math
import time

import httpx
import orjson

from common import GATEWAY_PATH, PREDICTION_PATH, cpu_seconds, lean_stream, \
    percentile, prediction, run_async, tokens_for
from harness import Config, Servers
from latency import socketio_predict
from machine import LoadMeter

CEILING = "ceiling (bare sse-starlette)"


async def socketio_upstream_rate(base: str, n: int, pid: int) -> dict:
    """A socket.io upstream read directly by a python-socketio client: tokens per second from the
    POST to the last token (bounded by that client as much as by the server), and the server's CPU
    per token meanwhile."""
    async with httpx.AsyncClient(timeout=120) as client:
        c0 = cpu_seconds(pid)
        _, seconds, ok = await socketio_predict(client, base, tokens_for(n), n)
        c1 = cpu_seconds(pid)
    return {"tokens": n, "seconds": seconds, "rate": n / seconds, "exact": ok,
            "upstream_us_per_token": (c1 - c0) / n * 1e6}


async def one_run(srv: Servers, sut: str, upstream: str | None, url: str, body: bytes | None, flowise: bool,
                  n: int, expected: str) -> dict:
    pids = [srv.pid(sut)] + ([srv.pid(upstream)] if upstream else [])
    c0, k0 = [cpu_seconds(p) for p in pids], cpu_seconds(os.getpid())
    r = await lean_stream(url, body, flowise)
    k1, c1 = cpu_seconds(os.getpid()), [cpu_seconds(p) for p in pids]
    seconds = (r.t_done or time.monotonic()) - r.t_sent
    return {"ok": r.status == 200 and r.terminal == "end" and r.text == expected, "tokens": r.tokens,
            "seconds": seconds, "rate": (n if r.text == expected else r.tokens) / seconds,
            "sut_us_per_token": (c1[0] - c0[0]) / n * 1e6,
            "upstream_us_per_token": (c1[1] - c0[1]) / n * 1e6 if upstream else None,
            "client_us_per_token": (k1 - k0) / n * 1e6, "error": None if r.error is None else str(r.error)[:300]}


def summarize(runs: list[dict]) -> dict:
    def median(key: str) -> float:
        return percentile([r[key] for r in runs if r[key] is not None], 50)

    rates = [r["rate"] for r in runs]
    return {"runs": runs, "median": median("rate"), "best": max(rates, default=math.nan),
            "worst": min(rates, default=math.nan), "all_ok": bool(runs) and all(r["ok"] for r in runs),
            **{key: median(key) for key in ("sut_us_per_token", "upstream_us_per_token", "client_us_per_token")}}


def run(cfg: Config, srv: Servers, deadline: float) -> dict:
    n = cfg.throughput_tokens
    toks = tokens_for(n)
    expected = "".join(toks)

    def post(sut: str, flowise: bool = False) -> tuple[str, bytes]:
        body = orjson.dumps(prediction(toks, flowise=flowise))
        return srv.url(sut) + (PREDICTION_PATH if flowise else GATEWAY_PATH), body

    # name: (system under test, its upstream, URL, body, Flowise framing); the ceiling first
    contenders = {
        CEILING: ("ceiling", None, srv.url("ceiling") + f"/stream?n={n}", None, False),
        "gateway, SSE upstream (3.1.4)": ("gw_sse", "emu_sse", *post("gw_sse"), False),
        "gateway, socket.io upstream (1.6.2: flowise-lite-sio)": ("gw_sio_lite", "lite_sio", *post("gw_sio_lite"),
                                                                  False),
        "upstream alone: SSE emulator 3.1.4, read directly": ("emu_sse", None, *post("emu_sse", True), True),
    }
    runs: dict[str, list[dict]] = {name: [] for name in contenders}

    async def main() -> None:
        # One warm-up each, of the same size: the ceiling encodes (and caches) its frames on the first one.
        for _, _, url, body, flowise in contenders.values():
            await lean_stream(url, body, flowise)
        for _ in range(cfg.throughput_reps):
            for name, contender in contenders.items():
                if time.monotonic() > deadline:
                    return
                runs[name].append(await one_run(srv, *contender, n, expected))

    meter = LoadMeter(srv.pids())
    run_async(main)
    load = meter.stop()
    # The socket.io row's upstream read directly by python-socketio (the gateway's own socket.io client).
    try:
        direct = asyncio.run(socketio_upstream_rate(srv.url("lite_sio"), n, srv.pid("lite_sio")))
    except Exception as exc:  # reported, not fatal
        direct = {"error": repr(exc)}
    print(f"  throughput flowise-lite-sio read directly by python-socketio: {direct}")
    summary = {name: summarize(rs) for name, rs in runs.items()}
    ceiling = summary[CEILING]
    for name, s in summary.items():
        s["of_ceiling"] = s["median"] / ceiling["median"] if ceiling["median"] else math.nan
        s["best_of_ceiling_best"] = s["best"] / ceiling["best"] if ceiling["best"] else math.nan
        print(f"  throughput {name}: median {s['median']:,.0f} tok/s (best {s['best']:,.0f}) = "
              f"{100 * s['of_ceiling']:.0f}% of ceiling; server {s['sut_us_per_token']:.2f} µs/token; ok={s['all_ok']}")
    return {"tokens": n, "reps": cfg.throughput_reps, "contenders": summary, "socketio_lite_direct": direct,
            "load": load}
