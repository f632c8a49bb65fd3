"""Section 3, concurrency: N paced streams at once on one fresh gateway process, opened by
bench/loadgen.py workers; exactness, added delay, lateness, memory and CPU per level."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson

from common import BENCH_DIR, GATEWAY_PATH, PYTHON, cpu_seconds, lean_stream, \
    percentile, process_tree, prediction, rss_kb, run_async, spawn, stop, tokens_for
from harness import Config, Deployment, Servers, Spy
from machine import LoadMeter

AS_SHIPPED = "as shipped"
WORKERS_P99_MS = 50.0  # a level is carried when exact, all flowing, and added delay p99 within this


def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    cur = best = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


def reached(r: dict) -> bool:
    """Did (nearly) all N streams flow at once? A saturated gateway can instead queue the stream
    starts, so that fewer streams flow together and their gaps look fine."""
    return r["peak_flowing"] >= 0.95 * r["streams"]


def carried(r: dict) -> bool:
    return "failed" not in r and r["exact_share"] == 1.0 and reached(r) and r["added_p99_ms"] <= WORKERS_P99_MS


def target_level(levels: list[int]) -> int:
    """1,000 streams (the target), else the largest level run."""
    return 1000 if 1000 in levels else levels[-1]


def measure_level(cfg: Config, srv: Servers, transport: str, n: int, logdir: Path, profile_out: Path | None = None,
                  gateway_workers: int | None = None, store: Deployment | None = None) -> tuple[dict, Path | None]:
    """One level on a fresh gateway; with `profile_out`, py-spy records the gateway meanwhile.
    `gateway_workers`, `store`: `serve --workers N`, Redis on; the gateway's CPU and memory are those
    of all its processes, and above one worker nothing is pinned."""
    upstream = "lite" if transport == "sse" else "lite_sio"
    env = {"FLOWISE_SSE_MAX_STREAMS": str(max(10000, 4 * n)), **(store.env if store else {})}
    port = srv.start_gateway("gw_conc", upstream, env, workers=gateway_workers)
    gw_pids, up_pid = process_tree(srv.pid("gw_conc")), srv.pid(upstream)
    ramp = max(1.0, n / cfg.ramp_rate)
    tag = f"{transport}-{n}-workers{gateway_workers or 1}-{store.mode if store else ''}{'-spy' if profile_out else ''}"
    try:
        async def warm() -> None:
            body = orjson.dumps(prediction(tokens_for(3)))
            await asyncio.gather(*(lean_stream(f"http://127.0.0.1:{port}{GATEWAY_PATH}", body, False, timeout=20)
                                   for _ in range(3)))

        run_async(warm)
        # flowise-lite-sio reports how late its own timers sent the paced tokens (lateness the gateway's
        # figures include) since it was last asked: asked now, its figures are the level's.
        def upstream_late() -> dict:
            return httpx.delete(srv.url(upstream) + "/__lite/stats", timeout=10).json() if transport != "sse" else {}

        upstream_late()
        time.sleep(0.5)
        base_rss = rss_kb(gw_pids)
        n_clients = max(1, math.ceil(n / cfg.streams_per_worker))
        spy = Spy(srv, gw_pids[0], profile_out, cfg.conc_profile_rate) if profile_out else None
        start_at = time.monotonic() + 1.5
        outs = [logdir / f"conc-{tag}-{i}.json" for i in range(n_clients)]
        others = srv.other_cpus if (gateway_workers or 1) == 1 else srv.all_cpus  # the clients' and Redis's cores
        clients = [spawn([PYTHON, str(BENCH_DIR / "loadgen.py"), "--port", str(port), "--streams",
                          str(n // n_clients + (i < n % n_clients)), "--tokens", str(cfg.conc_tokens), "--delay",
                          str(cfg.conc_delay), "--ramp", str(ramp), "--start-at", repr(start_at), "--out", str(out)],
                         cpus=others, log=logdir / "loadgen.log") for i, out in enumerate(outs)]
        time.sleep(max(0.0, start_at - time.monotonic()))
        store_pids = store.pids() if store else []
        for pid in store_pids if others else []:
            os.sched_setaffinity(pid, others)
        meter = LoadMeter(gw_pids + [up_pid] + ([spy.proc.pid] if spy else []) + store_pids)
        g0, u0, s0 = sum(map(cpu_seconds, gw_pids)), cpu_seconds(up_pid), cpu_seconds(spy.proc.pid) if spy else 0.0
        r0 = sum(map(cpu_seconds, store_pids))
        peak = base_rss
        hard_stop = start_at + ramp + cfg.conc_tokens * cfg.conc_delay + 130
        while any(c.poll() is None for c in clients) and time.monotonic() < hard_stop:
            peak = max(peak, rss_kb(gw_pids))
            time.sleep(0.05)
        for c in clients:
            stop(c)
        window = time.monotonic() - start_at
        g1, u1, r1 = sum(map(cpu_seconds, gw_pids)), cpu_seconds(up_pid), sum(map(cpu_seconds, store_pids))
        spy_cpu = cpu_seconds(spy.proc.pid) - s0 if spy else None
        load = meter.stop()
        lite_late = upstream_late()
        profile = spy.finish() if spy else None
    finally:
        srv.stop("gw_conc")
    docs = [orjson.loads(out.read_bytes()) for out in outs if out.exists()]  # see bench/loadgen.py
    streams = [s for d in docs for s in d["streams"]]
    added = [(g - cfg.conc_delay) * 1000 for d in docs for g in d["gaps"]]
    lateness = [x * 1000 for d in docs for x in d["lateness"]]
    spans = [s["span"] for s in streams if s.get("span")]
    firsts = [(s["t_first"] - s["t_sent"]) * 1000 for s in streams if s["t_first"]]
    errors = Counter(f"status={s['status']} terminal={s['terminal']} tokens={s['tokens']} {s['error'] or ''}"[:160]
                     for s in streams if not s["ok"])
    exact = sum(s["ok"] for s in streams)
    gateway_cpu = g1 - g0
    return {
        "transport": transport, "variant": f"--workers {gateway_workers}, Redis" if gateway_workers else
        f"Redis {store.mode}" if store else AS_SHIPPED, "streams": n, "ramp_s": ramp, "tokens": cfg.conc_tokens,
        "finished": len(streams), "exact": exact, "exact_share": exact / n,
        "peak_concurrent": peak_overlap([(s["t_sent"], s["t_done"]) for s in streams if s["t_sent"] and s["t_done"]]),
        "peak_flowing": peak_overlap([(s["t_first"], s["t_done"]) for s in streams if s["t_first"] and s["t_done"]]),
        "added_p50_ms": percentile(added, 50), "added_p99_ms": percentile(added, 99),
        "added_max_ms": max(added, default=math.nan),
        "first_token_p50_ms": percentile(firsts, 50), "first_token_p99_ms": percentile(firsts, 99),
        "late_p50_ms": percentile(lateness, 50), "late_p99_ms": percentile(lateness, 99),
        "late_max_ms": max(lateness, default=math.nan), "span_nominal_s": (cfg.conc_tokens - 1) * cfg.conc_delay,
        "span_p50_s": percentile(spans, 50), "span_p99_s": percentile(spans, 99),
        "sampler_cpu": spy_cpu / window if spy_cpu is not None else None, "rss_base_mb": base_rss / 1024,
        "rss_peak_mb": peak / 1024, "kb_per_stream": (peak - base_rss) / n, "gateway_cpu": gateway_cpu / window,
        "upstream_cpu": (u1 - u0) / window, "client_cpu": sum(d["cpu"] for d in docs) / window,
        "workers": n_clients, "window_s": window,
        "gateway_us_per_token": gateway_cpu / max(1, n * cfg.conc_tokens) * 1e6, "load": load,
        "redis_us_per_token": (r1 - r0) / max(1, n * cfg.conc_tokens) * 1e6,
        "errors": dict(errors.most_common(5)), "upstream_late_p99_ms": lite_late.get("lateP99Ms"),
        "upstream_late_max_ms": lite_late.get("lateMaxMs"),
    }, profile


def level_notes(r: dict) -> str:
    """What a row's figures alone do not say: a saturated process, a queue of stream starts."""
    cores = int(r["variant"].split()[1].rstrip(",")) if r["variant"].startswith("--workers") else 1
    notes = []
    if not reached(r):
        notes.append(f"**stream starts queued**: at most {r['peak_flowing']:,} of {r['streams']:,} flowed at once")
    if r["gateway_cpu"] >= 0.9 * cores:
        notes.append(f"gateway CPU-bound ({cores} core{'s' if cores > 1 else ''})")
    if r["upstream_cpu"] >= 0.9:
        notes.append("upstream saturated: the row measures it as much as the gateway")
    if r.get("upstream_late_p99_ms") is not None:
        notes.append(f"the upstream's own timers late p99 {r['upstream_late_p99_ms']:.1f} / max "
                     f"{r['upstream_late_max_ms']:.1f} ms (in `late`)")
    if r["client_cpu"] / r["workers"] >= 0.9:
        notes.append("client saturated")
    if r["load"]["foreign_cores"] >= 0.3:
        notes.append(f"{r['load']['foreign_cores']:.2f} cores of other work on the machine")
    if r["variant"].startswith("--workers"):
        notes.append("carried" if carried(r) else "not carried")
    return "; ".join(notes)


LEVEL_HEAD = ["upstream", "gateway", "streams", "peak open / flowing", "exact", "added p50 / p99 / max ms",
              "late p50 / p99 / max ms", "answer p50 / p99 s", "first token p50 / p99 ms", "RSS idle -> peak MB",
              "KB/stream", "gateway CPU (µs/token)", "upstream CPU", "client CPU", "notes"]


def level_row(r: dict) -> list[Any]:
    if "failed" in r:
        return [r["transport"], r["variant"], f"{r['streams']:,}", f"failed: {r['failed']}"] + [""] * 11
    return [r["transport"], r["variant"], f"{r['streams']:,}", f"{r['peak_concurrent']:,} / {r['peak_flowing']:,}",
            f"{100 * r['exact_share']:.1f}%",
            f"{r['added_p50_ms']:.1f} / {r['added_p99_ms']:.1f} / {r['added_max_ms']:.0f}",
            f"{r['late_p50_ms']:.0f} / {r['late_p99_ms']:.0f} / {r['late_max_ms']:.0f}",
            f"{r['span_p50_s']:.2f} / {r['span_p99_s']:.2f}",
            f"{r['first_token_p50_ms']:.0f} / {r['first_token_p99_ms']:.0f}",
            f"{r['rss_base_mb']:.0f} -> {r['rss_peak_mb']:.0f}", f"{r['kb_per_stream']:.0f}",
            f"{r['gateway_cpu']:.0%} ({r['gateway_us_per_token']:.0f})", f"{r['upstream_cpu']:.0%}",
            f"{r['client_cpu']:.0%}", level_notes(r)]


def print_level(r: dict, tag: str = "") -> None:
    print(f"  {tag}" + "; ".join(f"{head} {value}" for head, value in zip(LEVEL_HEAD, level_row(r)) if value != "")
          + (f"; errors {r['errors']}" if r.get("errors") else ""))


def failed(transport: str, n: int, exc: Exception, variant: str = AS_SHIPPED) -> dict:
    print(f"  concurrency {transport} {n} ({variant}): failed: {exc!r}")
    return {"transport": transport, "streams": n, "failed": repr(exc), "variant": variant}


def run(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> list[dict]:
    levels = []
    for transport, n in [("sse", n) for n in cfg.sse_levels] + [("socketio", n) for n in cfg.sio_levels]:
        if time.monotonic() > deadline:
            print(f"  concurrency {transport} {n}: skipped (time budget)")
            continue
        try:
            r, _ = measure_level(cfg, srv, transport, n, logdir)
        except Exception as exc:  # reported, not fatal
            levels.append(failed(transport, n, exc))
            continue
        print_level(r)
        levels.append(r)
    return levels
