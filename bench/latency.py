"""Section 1, first-token latency: sequential short answers, the gateway and a direct client of the
same upstream interleaved (A, B, A, B, ...), time from sending the request to the first non-empty
`token` event; and the gateway's CPU per request."""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from typing import Any

import httpx
import orjson

from common import GATEWAY_PATH, PREDICTION_PATH, cpu_seconds, distribution, prediction, response_events
from harness import Config, Servers
from machine import LoadMeter

LATENCY_TOKENS = ["Hello", " from", " the", " bench", "mark", "."]
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


async def ask(client: httpx.AsyncClient, url: str, body: bytes, flowise: bool, expected: str,
              cpu_pid: int | None = None) -> dict:
    """One streamed answer read to its end (so a keep-alive connection goes back to the pool), timed
    from sending to its first non-empty token and to `end`, and checked: the joined tokens equal
    `expected`, and the stream ended with `end` (the gateway's carrying the same text). With
    `cpu_pid`, that process's CPU clock is read at the same moments (a syscall, about a µs)."""
    parts, error, end_text = [], None, None
    s = {"first": math.nan, "answer": math.nan, "cpu_first": math.nan, "cpu_answer": math.nan}
    cpu0 = cpu_seconds(cpu_pid) if cpu_pid else math.nan
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url, content=body, headers=JSON_HEADERS) as response:
            if response.status_code != 200:
                await response.aread()
                return {**s, "error": f"HTTP {response.status_code}"}
            async for name, data in response_events(response, flowise):
                text = (data if flowise else data["text"]) if name == "token" else None
                if text:
                    if math.isnan(s["first"]):
                        s["first"] = time.perf_counter() - t0
                        s["cpu_first"] = cpu_seconds(cpu_pid) - cpu0 if cpu_pid else math.nan
                    parts.append(text)
                elif name == "end":
                    s["answer"] = time.perf_counter() - t0
                    s["cpu_answer"] = cpu_seconds(cpu_pid) - cpu0 if cpu_pid else math.nan
                    end_text = None if flowise else data.get("text")
                elif name == "error":
                    error = error or f"error event {str(data)[:80]}"
    except (httpx.HTTPError, ValueError) as exc:
        return {**s, "error": type(exc).__name__}
    if error is None:
        error = ("no end event" if math.isnan(s["answer"]) else "inexact tokens" if "".join(parts) != expected
                 else "inexact end text" if not flowise and end_text != expected else None)
    return {**s, "error": error}


async def socketio_predict(client: httpx.AsyncClient, base: str, tokens: list[str],
                           wait_for: int) -> tuple[float, float, bool]:
    """The usual direct way on Flowise <= 2.0: connect a python-socketio client (websocket transport),
    POST the prediction with its socketIOClientId. Seconds from connecting, and from the POST, to the
    `wait_for`-th non-empty token; and whether the answer was exact."""
    import socketio

    t0 = time.perf_counter()
    sio = socketio.AsyncClient(reconnection=False)
    seen, reached = [0], asyncio.get_running_loop().create_future()

    def on_token(data: Any = None) -> None:
        seen[0] += bool(data)
        if seen[0] == wait_for and not reached.done():
            reached.set_result(time.perf_counter())

    sio.on("token", on_token)
    await sio.connect(base, transports=["websocket"], socketio_path="/socket.io", wait_timeout=10)
    try:
        body = {**prediction(tokens), "chatId": str(uuid.uuid4()), "socketIOClientId": sio.get_sid("/")}
        t1 = time.perf_counter()
        post = asyncio.ensure_future(client.post(base + PREDICTION_PATH, json=body))
        async with asyncio.timeout(120):
            t2 = await reached
            answer = await post
    finally:
        await sio.disconnect()
    return t2 - t0, t2 - t1, answer.status_code == 200 and answer.json().get("text") == "".join(tokens)


def pair(gateway: list[float], direct: list[float], failures: int, gateway_cpu: float) -> dict:
    """The gateway against a direct client of the same upstream: seconds, and CPU ms per request."""
    g, d = distribution(gateway), distribution(direct)
    return {"gateway": g, "direct": d, "failures": failures, "ratio_p50": g["p50"] / d["p50"],
            "ratio_p99": g["p99"] / d["p99"], "gateway_cpu_ms_per_request": gateway_cpu / max(1, g["n"]) * 1e3}


async def measure_pair(cfg: Config, gateway_url: str, gateway_pid: int, direct: str, direct_url: str,
                       deadline: float) -> dict:
    """Interleaved A, B, A, B ...: the gateway, then the direct client, n times (after a warm-up)."""
    gw_body, up_body = (orjson.dumps(prediction(LATENCY_TOKENS, flowise=flowise)) for flowise in (False, True))
    gw, dr, failures, gw_cpu, expected = [], [], 0, 0.0, "".join(LATENCY_TOKENS)
    limits = httpx.Limits(max_keepalive_connections=8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as gw_client, \
            httpx.AsyncClient(timeout=30, limits=limits) as up_client:
        for i in range(cfg.latency_warmup + cfg.latency_requests):
            if time.monotonic() > deadline:
                break
            c0 = cpu_seconds(gateway_pid)
            a = await ask(gw_client, gateway_url + GATEWAY_PATH, gw_body, False, expected)
            c1 = cpu_seconds(gateway_pid)
            if direct == "socketio":
                b, _, ok_b = await socketio_predict(up_client, direct_url, LATENCY_TOKENS, 1)
            else:
                r = await ask(up_client, direct_url + PREDICTION_PATH, up_body, True, expected)
                b, ok_b = r["first"], not r["error"]
            failures += bool(a["error"]) + (not ok_b)
            if i >= cfg.latency_warmup:
                gw.append(a["first"])
                dr.append(b)
                gw_cpu += c1 - c0
    return pair(gw, dr, failures, gw_cpu)


def run(cfg: Config, srv: Servers, deadline: float) -> dict:
    plan = [("socketio", "gw_sio", "emu_sio"), ("sse", "gw_sse", "emu_sse")]  # (upstream, gateway, emulator)
    result: dict[str, Any] = {}
    meter = LoadMeter(srv.pids())
    for i, (name, gw, up) in enumerate(plan):
        per = max(10.0, (deadline - time.monotonic()) / (len(plan) - i))
        r = result[name] = asyncio.run(measure_pair(cfg, srv.url(gw), srv.pid(gw), name, srv.url(up),
                                                    min(deadline, time.monotonic() + per)))
        print(f"  first token [{name}] gateway p50 {r['gateway']['p50'] * 1e3:.2f} ms, gateway / direct p50 "
              f"{r['ratio_p50']:.2f}x p99 {r['ratio_p99']:.2f}x, gateway CPU {r['gateway_cpu_ms_per_request']:.3f} "
              f"ms/request, n={r['gateway']['n']}, failures {r['failures']}")
    result["load"] = meter.stop()
    return result
