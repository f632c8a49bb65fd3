"""Section 5, first token against a real Flowise 3.1.4 from the e2e suite's cache (started and set up
by tests/e2e/flowise_harness.py), its chat model the e2e mock LLM (a token every 20 ms), the gateway
as shipped in front. Against the zero-latency emulator (section 1) the gateway's own milliseconds are
most of a first token; here Flowise's own work and the LLM's first token come first, as in
production, and what the gateway adds should vanish into them.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import psutil

from common import BENCH_DIR, PYTHON, cpu_seconds, distribution
from harness import Config, Servers, event_loop_of
from latency import ask, pair
from machine import LoadMeter
from tests.e2e.flowise_harness import RELEASES, e2e_home, start_release  # the repository: on sys.path (harness)
from tests.e2e.mock_llm import reply_for, reply_tokens

VERSION = "3.1.4"
TOKEN_DELAY_MS = 20.0
TIMEOUT = 60.0  # per request: the first prediction on a fresh Flowise parses its tokenizer (about 1.5 s)
IDLE_WINDOW = 2.0  # seconds: the gateway's idle CPU (uvicorn's 0.1 s tick, ...), taken out of its per-request CPU


def question(i: int) -> str:
    """Distinct per request, so an answer delivered to the wrong request shows; the mock's reply to it
    is 16 words (tokens)."""
    return f"answer bench request number {i} in sixteen words"


def missing() -> str | None:
    """Why this machine cannot run the section (with how to fix it), or None. The e2e installer marks
    each install it finished (Flowise, and the Node 24 that 3.x needs) with an `.installed` file."""
    home = e2e_home()
    if all((home / folder / ".installed").exists() for folder in (RELEASES[VERSION].folder, "node24")):
        return None
    return (f"section 5 (real Flowise {VERSION}) skipped: the e2e suite's install is not in {home}; install it "
            f"with `bash tests/e2e/install_flowise.sh {VERSION}` (npm, about 3 GB), then `bench/run.py --only real`")


async def measure(cfg: Config, gateway_url: str, pids: dict[str, int], flowise_url: str, chatflow: str,
                  deadline: float) -> tuple[list[dict], list[dict], dict[str, float]]:
    """Warm-up pairs, then measured pairs; the CPU of the gateway, Flowise and the mock LLM over the
    measured window, and the gateway's when idle, just before."""
    gw, dr, cpu = [], [], {}
    limits = httpx.Limits(max_keepalive_connections=4)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as gw_client, \
            httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as dr_client:
        for i in range(cfg.real_warmup + cfg.real_requests):
            if time.monotonic() > deadline:
                print(f"  time budget reached after {len(gw)} of {cfg.real_requests} measured pairs")
                break
            if i == cfg.real_warmup:
                idle0 = cpu_seconds(pids["gateway"])
                await asyncio.sleep(IDLE_WINDOW)
                cpu["gateway_idle_per_s"] = (cpu_seconds(pids["gateway"]) - idle0) / IDLE_WINDOW
                start, t_start = {k: cpu_seconds(p) for k, p in pids.items()}, time.monotonic()
            q = question(i)
            via_gateway = ask(gw_client, f"{gateway_url}/v1/chatflows/{chatflow}/stream",
                              orjson.dumps({"question": q}), False, reply_for(q), pids["gateway"])
            direct = ask(dr_client, f"{flowise_url}/api/v1/prediction/{chatflow}",
                         orjson.dumps({"question": q, "streaming": True}), True, reply_for(q))
            # Pairs alternate which goes first: whatever Flowise still does after an answer (its
            # request log, sqlite) then delays both contenders alike.
            if i % 2 == 0:
                a, b = await via_gateway, await direct
            else:
                b, a = await direct, await via_gateway
            if i >= cfg.real_warmup:
                gw.append(a)
                dr.append(b)
            elif a["error"] or b["error"]:
                print(f"  warm-up pair {i}: gateway {a['error'] or 'ok'}, direct {b['error'] or 'ok'}")
        if gw:
            cpu |= {k: cpu_seconds(p) - start[k] for k, p in pids.items()}
            cpu["window_s"] = time.monotonic() - t_start
    return gw, dr, cpu


def run(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> dict:
    # The mock LLM and Flowise go with the clients, off the gateway's core. Flowise, started by the
    # e2e harness, inherits this process's cores; every thread it has by then is pinned again.
    srv.start("mock_llm", [PYTHON, str(BENCH_DIR / "servers.py"), "mock-llm", "--port", "{port}",
                           "--token-delay-ms", f"{TOKEN_DELAY_MS:g}"], sut=False)
    try:
        print(f"  starting Flowise {VERSION} from {e2e_home()} (about a minute)")
        flowise = start_release(logdir / f"flowise-{VERSION}", f"{srv.url('mock_llm')}/v1", RELEASES[VERSION])
        try:
            threads = psutil.Process(flowise.process.pid).threads()
            for thread in threads if srv.other_cpus else []:
                with contextlib.suppress(OSError):  # the thread just exited
                    os.sched_setaffinity(thread.id, srv.other_cpus)
            if flowise.version != VERSION:
                raise RuntimeError(f"the e2e install answered version {flowise.version}, not {VERSION}")
            srv.start_gateway("gw_real", flowise.url, env={"FLOWISE_API_KEY": flowise.api_key,
                                                            "FLOWISE_TRANSPORT": "auto"})
            pids = {"gateway": srv.pid("gw_real"), "flowise": flowise.process.pid, "llm": srv.pid("mock_llm")}
            loop = event_loop_of(pids["gateway"])
            where = (f"gateway on core {min(srv.sut_cpus)}; Flowise (node, {len(threads)} threads), the mock LLM "
                     f"and the client on core(s) {', '.join(map(str, sorted(srv.other_cpus)))}" if srv.sut_cpus
                     else "no pinning")
            print(f"  Flowise {flowise.version} answered HTTP after {flowise.start_seconds:.1f} s; {where}")
            meter = LoadMeter(list(pids.values()))
            gw, dr, cpu = asyncio.run(measure(cfg, srv.url("gw_real"), pids, flowise.url, flowise.chatflows.open,
                                              deadline))
            load = meter.stop()
        finally:
            srv.stop("gw_real")
            flowise.close()
    finally:
        srv.stop("mock_llm")
    n = len(gw)
    errors = Counter([f"gateway: {s['error']}" for s in gw if s["error"]] +
                     [f"direct: {s['error']}" for s in dr if s["error"]])
    idle = cpu.get("gateway_idle_per_s", math.nan)
    net = cpu.get("gateway", math.nan) - idle * cpu.get("window_s", math.nan)
    # Per request, idle CPU out of each part over its own time: up to the first token (the set-up, what
    # section 1 measures), and from there to `end` (the relay of the other tokens, each arriving alone).
    timed = [s for s in gw if not math.isnan(s["cpu_first"] + s["cpu_answer"])]
    setup = sum(s["cpu_first"] - idle * s["first"] for s in timed) / max(1, len(timed))
    relay = sum(s["cpu_answer"] - s["cpu_first"] - idle * (s["answer"] - s["first"]) for s in timed)
    relay /= max(1, len(timed))
    tokens = len(reply_tokens(question(0)))
    gw_fail, dr_fail = sum(1 for s in gw if s["error"]), sum(1 for s in dr if s["error"])
    first = pair([s["first"] for s in gw], [s["first"] for s in dr], gw_fail + dr_fail, net)
    answer = distribution([s["answer"] for s in gw]), distribution([s["answer"] for s in dr])
    r = {"flowise_version": flowise.version, "token_delay_ms": TOKEN_DELAY_MS, "answer_tokens": tokens,
         "warmup": cfg.real_warmup, "first_token": first, "answer_gateway": answer[0], "answer_direct": answer[1],
         "answer_ratio_p50": answer[0]["p50"] / answer[1]["p50"],
         "answer_ratio_p99": answer[0]["p99"] / answer[1]["p99"],
         "gateway_failures": gw_fail, "direct_failures": dr_fail, "errors": dict(errors.most_common(5)),
         "gateway_cpu_gross_ms_per_request": cpu.get("gateway", math.nan) / max(1, n) * 1e3,
         "gateway_cpu_first_token_ms": setup * 1e3 if timed else math.nan,
         "gateway_cpu_relay_us_per_token": relay / max(1, tokens - 1) * 1e6 if timed else math.nan,
         "gateway_idle_ms_per_s": idle * 1e3,
         "flowise_cpu_ms_per_request": cpu.get("flowise", math.nan) / max(1, 2 * n) * 1e3,
         "llm_cpu_ms_per_request": cpu.get("llm", math.nan) / max(1, 2 * n) * 1e3,
         "flowise_start_s": flowise.start_seconds, "placement": where, "gateway_loop": loop, "load": load}
    print(f"  first token [real Flowise {r['flowise_version']}] gateway / direct p50 {first['ratio_p50']:.3f}x, p99 "
          f"{first['ratio_p99']:.3f}x | gateway CPU to the first token {r['gateway_cpu_first_token_ms']:.2f} ms, then "
          f"{r['gateway_cpu_relay_us_per_token']:.0f} µs/token | n={n} failures {gw_fail} + {dr_fail} {dict(errors)}")
    return r
