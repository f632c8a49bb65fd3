"""Section 3, concurrency: N paced streams at once on one fresh gateway process, opened by
bench/loadgen.py workers; exactness, added delay, lateness, memory and CPU per level."""

from __future__ import annotations

import asyncio
import math
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import orjson

from common import (
    BENCH_DIR,
    PYTHON,
    cpu_seconds,
    gateway_body,
    http_request,
    install_uvloop,
    process_tree,
    lean_stream,
    percentile,
    rss_kb,
    spawn,
    stop,
    tokens_for,
)
from harness import GATEWAY_PATH, Config, Servers, Spy
from hotspots import Profile
from machine import LoadMeter
from results import AS_SHIPPED, ON_UVLOOP, ConcurrencyLevel, FailedLevel


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    cur = best = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


def ramp_for(cfg: Config, n: int) -> float:
    return max(0.5 if cfg.quick else 1.0, n / cfg.ramp_rate)


def target_level(levels: list[int]) -> int:
    """1,000 streams (the target), else the largest level run."""
    return 1000 if 1000 in levels else levels[-1]


def measure_level(cfg: Config, srv: Servers, transport: str, n: int, logdir: Path,
                  profile_out: Path | None = None, uvloop: bool = False, gateway_workers: int | None = None,
                  redis: tuple[str, int] | None = None) -> tuple[ConcurrencyLevel, Profile | None]:
    """One level on a fresh gateway; with `profile_out`, py-spy records the gateway meanwhile.
    `gateway_workers`, `redis` (its URL and pid): `serve --workers N` with Redis (bench/workers.py); its
    CPU and memory are those of all its processes, and above one worker nothing is pinned."""
    upstream = "lite" if transport == "sse" else "lite_sio"
    env = {"FLOWISE_SSE_MAX_STREAMS": str(max(10000, 4 * n))}
    if redis:
        env["FLOWISE_SSE_REDIS_URL"] = redis[0]
    port = srv.start_gateway("gw_conc", upstream, env, uvloop=uvloop, workers=gateway_workers)
    gw_pid, up_pid = srv.pid("gw_conc"), srv.pid(upstream)
    gw_pids = process_tree(gw_pid)
    clients_cpus = srv.other_cpus if (gateway_workers or 1) == 1 else srv.all_cpus
    ramp = ramp_for(cfg, n)
    tag = (f"{transport}-{n}{'-uvloop' if uvloop else ''}{'-profiled' if profile_out else ''}"
           f"{f'-workers{gateway_workers}' if gateway_workers else ''}")
    try:
        async def warm() -> None:
            for _ in range(3):
                await lean_stream(port, http_request("POST", GATEWAY_PATH, port, gateway_body(tokens_for(3), 0.0)),
                                  False, timeout=20)

        install_uvloop()
        asyncio.run(warm())
        upstream_late = upstream_lateness(srv, upstream)  # read and reset: the level's own figures follow
        time.sleep(0.5)
        base_rss = sum(map(rss_kb, gw_pids))
        workers_n = max(1, math.ceil(n / cfg.streams_per_worker))
        shares = [n // workers_n + (1 if i < n % workers_n else 0) for i in range(workers_n)]
        spy = Spy(srv, gw_pid, profile_out, cfg.conc_profile_rate) if profile_out else None
        start_at = time.monotonic() + 1.5
        outs = [logdir / f"conc-{tag}-{i}.json" for i in range(workers_n)]
        workers = [spawn([PYTHON, str(BENCH_DIR / "loadgen.py"), "--port", str(port), "--target", "gateway",
                          "--streams", str(k), "--tokens", str(cfg.conc_tokens), "--delay", str(cfg.conc_delay),
                          "--ramp", str(ramp), "--start-at", repr(start_at), "--out", str(out), "--timeout", "120",
                          "--counted"],
                         cpus=clients_cpus, log=logdir / "loadgen.log") for k, out in zip(shares, outs)]
        while time.monotonic() < start_at:
            time.sleep(0.01)
        meter = LoadMeter(gw_pids + [up_pid] + ([spy.proc.pid] if spy else []) + ([redis[1]] if redis else []))
        g0, u0 = sum(map(cpu_seconds, gw_pids)), cpu_seconds(up_pid)
        spy0 = cpu_seconds(spy.proc.pid) if spy else 0.0
        peak = base_rss
        hard_stop = start_at + ramp + cfg.conc_tokens * cfg.conc_delay + 130
        while any(w.poll() is None for w in workers) and time.monotonic() < hard_stop:
            peak = max(peak, sum(map(rss_kb, gw_pids)))
            time.sleep(0.05)
        for w in workers:
            stop(w)
        window = time.monotonic() - start_at
        g1, u1 = sum(map(cpu_seconds, gw_pids)), cpu_seconds(up_pid)
        spy_cpu = cpu_seconds(spy.proc.pid) - spy0 if spy else 0.0
        load = meter.stop()
        upstream_late = upstream_lateness(srv, upstream)
        profile = spy.finish() if spy else None
    finally:
        srv.stop("gw_conc")
    # The workers' documents (see bench/loadgen.py), merged.
    streams, gaps, arrivals, lateness, client_cpu = [], [], [], [], 0.0
    for out in outs:
        if out.exists():
            data = orjson.loads(out.read_bytes())
            streams += data["streams"]
            gaps += data["gaps"]
            arrivals += data["arrivals"]
            lateness += data["lateness"]
            client_cpu += data["cpu"]
    spans = [s["span"] for s in streams if s.get("span")]
    added = [(g - cfg.conc_delay) * 1000 for g in gaps]
    # Steady state: from the moment the last stream got its first token to the moment the first one ended,
    # every stream is open and none is being set up.
    firsts_t = [s["t_first"] for s in streams if s["t_first"]]
    dones_t = [s["t_done"] for s in streams if s["t_done"]]
    s0, s1 = (max(firsts_t), min(dones_t)) if firsts_t and dones_t else (0.0, 0.0)
    steady_added = [a for a, t in zip(added, arrivals) if s0 < t <= s1]
    firsts = [(s["t_first"] - s["t_sent"]) * 1000 for s in streams if s["t_first"]]
    intervals = [(s["t_sent"], s["t_done"]) for s in streams if s["t_sent"] and s["t_done"]]
    flowing = [(s["t_first"], s["t_done"]) for s in streams if s["t_first"] and s["t_done"]]
    errors: dict[str, int] = {}
    for s in streams:
        if not s["ok"]:
            key = f"status={s['status']} terminal={s['terminal']} tokens={s['tokens']} {s['error'] or ''}"[:160]
            errors[key] = errors.get(key, 0) + 1
    exact = sum(s["ok"] for s in streams)
    level = ConcurrencyLevel(
        transport=transport, variant=f"--workers {gateway_workers}, Redis" if gateway_workers else ON_UVLOOP if uvloop else AS_SHIPPED,
        streams=n, ramp_s=ramp, tokens=cfg.conc_tokens, finished=len(streams), exact=exact,
        exact_share=exact / n, peak_concurrent=peak_overlap(intervals), peak_flowing=peak_overlap(flowing),
        added_p50_ms=percentile(added, 50), added_p99_ms=percentile(added, 99),
        added_max_ms=max(added, default=math.nan),
        steady_s=max(0.0, s1 - s0), steady_gaps=len(steady_added),
        steady_p50_ms=percentile(steady_added, 50), steady_p99_ms=percentile(steady_added, 99),
        first_token_p50_ms=percentile(firsts, 50), first_token_p99_ms=percentile(firsts, 99),
        late_p50_ms=percentile(lateness, 50) * 1000, late_p99_ms=percentile(lateness, 99) * 1000,
        late_max_ms=max(lateness, default=math.nan) * 1000,
        span_nominal_s=(cfg.conc_tokens - 1) * cfg.conc_delay, span_p50_s=percentile(spans, 50),
        span_p99_s=percentile(spans, 99),
        sampler_cpu=spy_cpu / window if profile_out else None,
        rss_base_mb=base_rss / 1024, rss_peak_mb=peak / 1024, kb_per_stream=(peak - base_rss) / n,
        gateway_cpu=(g1 - g0) / window, upstream_cpu=(u1 - u0) / window,
        client_cpu=client_cpu / window, workers=workers_n, window_s=window,
        gateway_us_per_token=(g1 - g0) / max(1, n * cfg.conc_tokens) * 1e6,
        load=load, errors=dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        added_ms_sample=added[:: max(1, len(added) // 20000)],
        late_ms_sample=[x * 1000 for x in lateness[:: max(1, len(lateness) // 20000)]],
        upstream_late_p99_ms=upstream_late.get("lateP99Ms"), upstream_late_max_ms=upstream_late.get("lateMaxMs"),
    )
    return level, profile


def upstream_lateness(srv: Servers, upstream: str) -> dict:
    """flowise-lite-sio's own lateness since the last call (it resets): how late its timers sent the
    paced tokens, which the gateway's delay figures include. Empty for other upstreams."""
    if upstream != "lite_sio":
        return {}
    try:
        return httpx.delete(srv.url(upstream) + "/__lite/stats", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}


def upstream_late_text(r: ConcurrencyLevel) -> str:
    if r.upstream_late_p99_ms is None:
        return ""
    return f" (its timers late p99 {r.upstream_late_p99_ms:.1f} ms, max {r.upstream_late_max_ms:.1f} ms)"


def steady_text(r: ConcurrencyLevel) -> str:
    """The steady window's added delay, p50 / p99 (window)."""
    if not r.steady_gaps:
        return "- (never all open and flowing)"
    return f"{r.steady_p50_ms:.1f} / {r.steady_p99_ms:.1f} ({r.steady_s:.1f} s)"


def print_level(r: ConcurrencyLevel, tag: str = "") -> None:
    print(f"  {tag}concurrency {r.transport} {r.streams} ({r.variant}): exact {r.exact}/{r.streams} "
          f"(peak {r.peak_concurrent} open, {r.peak_flowing} flowing, first token p99 "
          f"{r.first_token_p99_ms / 1000:.1f} s), added delay p50 {r.added_p50_ms:.1f} ms p99 {r.added_p99_ms:.1f} ms "
          f"max {r.added_max_ms:.0f} ms, steady p50/p99 {steady_text(r)}, late p99 {r.late_p99_ms:.0f} ms, answer "
          f"{r.span_p50_s:.2f}/{r.span_p99_s:.2f} s (nominal {r.span_nominal_s:.2f}), "
          f"{r.kb_per_stream:.0f} KB/stream, CPU gateway {r.gateway_cpu:.0%} ({r.gateway_us_per_token:.0f} "
          f"µs/token) upstream {r.upstream_cpu:.0%}{upstream_late_text(r)} client {r.client_cpu:.0%} "
          f"(x{r.workers}), foreign {r.load.foreign_cores:.2f} cores{'; errors ' + str(r.errors) if r.errors else ''}")


def run(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> list[ConcurrencyLevel | FailedLevel]:
    levels: list[ConcurrencyLevel | FailedLevel] = []
    plan = [("sse", n, False) for n in cfg.sse_levels]
    if cfg.whatif:
        plan.append(("sse", target_level(cfg.sse_levels), True))
    plan += [("socketio", n, False) for n in cfg.sio_levels]
    for transport, n, uvloop in plan:
        if time.monotonic() > deadline:
            print(f"  concurrency {transport} {n}: skipped (time budget)")
            continue
        try:
            r, _ = measure_level(cfg, srv, transport, n, logdir, uvloop=uvloop)
        except Exception as exc:  # reported, not fatal
            print(f"  concurrency {transport} {n}: failed: {exc!r}")
            levels.append(FailedLevel(transport=transport, streams=n, failed=repr(exc),
                                      variant=ON_UVLOOP if uvloop else AS_SHIPPED))
            continue
        print_level(r)
        levels.append(r)
    return levels


def emulator_cost(cfg: Config, srv: Servers) -> str:
    """The package emulator's and flowise-lite's CPU per paced token, measured with 200 streams: why
    the SSE levels run on flowise-lite."""
    costs = {}
    tokens = 40
    for name in ("emu_sse", "lite"):
        pid = srv.pid(name)
        out = Path(tempfile.mkdtemp(prefix="flowise-sse-bench-")) / "cost.json"
        c0 = cpu_seconds(pid)
        worker = spawn([PYTHON, str(BENCH_DIR / "loadgen.py"), "--port", str(srv.ports[name]), "--target", "flowise",
                        "--streams", "200", "--tokens", str(tokens), "--delay", str(cfg.conc_delay), "--ramp", "0.2",
                        "--out", str(out), "--timeout", "30"], cpus=srv.other_cpus)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            stop(worker)
        costs[name] = (cpu_seconds(pid) - c0) / (200 * tokens) * 1e6
    srv.clear_emulator("emu_sse")
    return (f"{costs['emu_sse']:.0f} µs of CPU per paced token against flowise-lite's {costs['lite']:.0f} µs (200 "
            f"streams x {tokens} tokens at 20 tokens/s, set-up included): at 2,000 streams x 20 tokens/s that is "
            f"{costs['emu_sse'] * 40000 / 1e6:.1f} cores against {costs['lite'] * 40000 / 1e6:.1f}, on a machine "
            f"whose other core runs the clients too")
