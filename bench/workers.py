"""Sections 6 and 7, on the concurrency section's levels (`concurrency.measure_level`).

6. Workers: the most streams `serve --workers 1` and `--workers 2` carry, each with a redis-server on
   loopback (so both pay the same mirror cost per token), levels in ascending order until one is not
   carried; the step between levels is the figure's resolution.
7. Redis off and on: one level, memory only then mirrored to a redis-server: the gateway's CPU per
   token, its added delay, and redis-server's own CPU.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import redis

from common import cpu_seconds, start_redis, stop
from concurrency import WORKERS_P99_MS, carried, failed, measure_level, print_level
from harness import Config, Servers


def carried_text(run: dict) -> str:
    return f"{run['carried']:,}" if run["limit_found"] else f">= {run['carried']:,} (every level tried)"


def run(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> dict:
    runs = []
    lite = srv.pid("lite")
    pinned = os.sched_getaffinity(lite)
    for count in (1, 2):
        proc, url = start_redis(srv.other_cpus if count == 1 else srv.all_cpus, logdir / "redis.log")
        # flowise-lite (one thread) stays where run.py put it for one worker, goes anywhere for more.
        os.sched_setaffinity(lite, pinned if count == 1 else srv.all_cpus)
        levels, most = [], 0
        try:
            for n in cfg.workers_levels:
                if time.monotonic() > deadline:
                    print(f"  --workers {count}, {n} streams: skipped (time budget)")
                    break
                with redis.Redis.from_url(url) as store:
                    store.flushall()  # the last level's streams: nothing to carry over
                try:
                    r, _ = measure_level(cfg, srv, "sse", n, logdir, gateway_workers=count, redis=(url, proc.pid))
                except Exception as exc:  # reported, not fatal
                    levels.append(failed("sse", n, exc, f"--workers {count}, Redis"))
                    break
                print_level(r)
                levels.append(r)
                if not carried(r):
                    break
                most = n
        finally:
            stop(proc)
            os.sched_setaffinity(lite, pinned)
        runs.append({"workers": count, "levels": levels, "carried": most,
                     "limit_found": bool(levels) and not carried(levels[-1])})
        print(f"  --workers {count}: {carried_text(runs[-1])} streams carried at p99 <= {WORKERS_P99_MS:g} ms")
    placement = ("nothing pinned (one core, or --no-pin): every process shares every core" if not srv.sut_cpus else
                 f"--workers 1: the gateway pinned to core {min(srv.sut_cpus)}, flowise-lite, the clients and "
                 f"redis-server to core(s) {', '.join(map(str, sorted(srv.other_cpus)))}; --workers 2: nothing "
                 f"pinned, the parent, both workers, flowise-lite, the clients and redis-server share all "
                 f"{len(srv.all_cpus)} cores (none is left free for the clients)")
    one, two = runs[0]["carried"], runs[1]["carried"]
    result = {"placement": placement, "runs": runs, "scaling": two / one if one else float("nan")}
    print(f"  scaling, 2 workers / 1: {result['scaling']:.2f}x")
    return result


def run_redis(cfg: Config, srv: Servers, logdir: Path) -> dict:
    """One level, memory only then with Redis, each on a fresh gateway (pinned as in section 3)."""
    n = cfg.redis_level
    off = measure_level(cfg, srv, "sse", n, logdir)[0]
    print_level(off)
    proc, url = start_redis(srv.other_cpus, logdir / "redis.log")
    try:
        r0 = cpu_seconds(proc.pid)
        on = measure_level(cfg, srv, "sse", n, logdir, redis=(url, proc.pid))[0]
        redis_us = (cpu_seconds(proc.pid) - r0) / max(1, n * cfg.conc_tokens) * 1e6
    finally:
        stop(proc)
    print_level(on)
    extra = on["gateway_us_per_token"] - off["gateway_us_per_token"]
    print(f"  Redis on vs off, {n} streams: gateway {off['gateway_us_per_token']:.1f} -> "
          f"{on['gateway_us_per_token']:.1f} µs/token ({extra:+.1f}), redis-server {redis_us:.1f} µs/token")
    return {"off": off, "on": on, "redis_server_us_per_token": redis_us}
