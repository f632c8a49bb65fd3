"""Section 4, where the gateway's CPU goes: py-spy on the gateway as shipped during separate runs of
the first-token path, relay throughput and concurrency (the stacks are read by bench/hotspots.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import orjson

import hotspots
from common import cpu_seconds, gateway_body, http_request, install_uvloop, lean_stream, tokens_for
from concurrency import measure_level, print_level, target_level
from harness import GATEWAY_PATH, Config, Servers, Spy
from hotspots import Profile
from latency import LATENCY_TOKENS, sse_first_token
from results import ConcurrencyLevel, ProfileRun


def with_markdown(run: ProfileRun, prof: Profile | None) -> ProfileRun:
    """The run with its stacks rendered (see hotspots.report)."""
    run.markdown = hotspots.report(prof, run.title, run.us_per_unit, run.unit) if prof else \
        f"#### {run.title}\n\nno profile"
    return run


def run(cfg: Config, srv: Servers, profdir: Path, logdir: Path, deadline: float) -> list[ProfileRun]:
    runs: list[ProfileRun] = []

    def add(title: str, out: Path, prof: Profile | None, us_per_unit: float, unit: str,
            level: ConcurrencyLevel | None = None) -> None:
        runs.append(with_markdown(ProfileRun(title=title, file=out.name, samples=prof.samples if prof else 0,
                                             us_per_unit=us_per_unit, unit=unit, level=level), prof))
        print(f"  profile {title}: {runs[-1].samples} samples, {us_per_unit:.1f} µs/{unit}")

    # The first-token path: sequential short streams, as in section 1.
    for transport, gw in (("sse", "gw_sse"), ("socketio", "gw_sio")):
        if time.monotonic() > deadline:
            break
        out = profdir / f"first-token-{transport}.txt"
        requests_n = 300 if not cfg.quick else 60
        body = orjson.dumps(gateway_body(LATENCY_TOKENS, 0.0, "latency"))
        pid = srv.pid(gw)
        spy = Spy(srv, pid, out, cfg.profile_rate)
        c0 = cpu_seconds(pid)

        async def sequential(url: str = srv.url(gw) + GATEWAY_PATH) -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(requests_n):
                    await sse_first_token(client, url, body, flowise=False)

        asyncio.run(sequential())
        cpu = cpu_seconds(pid) - c0
        add(f"First-token path, {transport} upstream: {requests_n} sequential requests of {len(LATENCY_TOKENS)} "
            "tokens", out, spy.finish(), cpu / requests_n * 1e6, "request")

    n = cfg.throughput_tokens
    reps = 8 if not cfg.quick else 2
    for transport, gw in (("sse", "gw_sse"), ("socketio", "gw_sio_lite")):  # the upstreams of section 2
        if time.monotonic() > deadline:
            break
        out = profdir / f"throughput-{transport}.txt"
        port = srv.ports[gw]
        request = http_request("POST", GATEWAY_PATH, port, gateway_body(tokens_for(n), 0.0))
        spy = Spy(srv, srv.pid(gw), out, cfg.profile_rate)
        c0 = cpu_seconds(srv.pid(gw))

        async def load() -> list:
            return [await lean_stream(port, request, False, timeout=120) for _ in range(reps)]

        install_uvloop()
        rs = asyncio.run(load())
        cpu = cpu_seconds(srv.pid(gw)) - c0
        tokens = sum(r.tokens for r in rs)
        add(f"Relay throughput, {transport} upstream: {reps} x {n:,} tokens, no delay", out, spy.finish(),
            cpu / max(1, tokens) * 1e6, "token")

    for transport, level in (("sse", target_level(cfg.sse_levels)), ("socketio", target_level(cfg.sio_levels))):
        if time.monotonic() > deadline:
            break
        out = profdir / f"concurrency-{transport}-{level}.txt"
        r, prof = measure_level(cfg, srv, transport, level, logdir, profile_out=out)
        r.added_ms_sample = r.late_ms_sample = None  # not plotted: the measured levels are
        print_level(r, "(profiled) ")
        add(f"Concurrency, {transport} upstream: {level:,} streams x {cfg.conc_tokens} tokens at "
            f"{1 / cfg.conc_delay:.0f} tokens/s", out, prof, r.gateway_us_per_token, "token", r)
    return runs
