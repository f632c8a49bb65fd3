"""Sections 6 and 7, on the concurrency section's levels (`concurrency.measure_level`).

6. Workers: the most streams `serve --workers 1` and `--workers 2` carry, each with a redis-server on
   loopback (so both pay the same mirror cost per token), levels in ascending order until one is not
   carried; the step between levels is the figure's resolution.
7. Redis's cost per token: one level, memory only and mirrored to each kind of Redis (a redis-server,
   a Cluster, a Sentinel group), a fresh gateway per level, the modes taken in turn, round after round,
   so that each round's figures share the machine's load; then one profiled level per Redis mode.
"""

from __future__ import annotations

import os
import statistics
import time
from contextlib import ExitStack
from pathlib import Path

from concurrency import WORKERS_P99_MS, carried, failed, measure_level, print_level
from harness import Config, Deployment, Servers
from profiles import profile_entry


def carried_text(run: dict) -> str:
    return f"{run['carried']:,}" if run["limit_found"] else f">= {run['carried']:,} (every level tried)"


def run(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> dict:
    runs = []
    lite = srv.pid("lite")
    pinned = os.sched_getaffinity(lite)
    for count in (1, 2):
        store = Deployment("standalone").__enter__()
        # flowise-lite (one thread) stays where run.py put it for one worker, goes anywhere for more.
        os.sched_setaffinity(lite, pinned if count == 1 else srv.all_cpus)
        levels, most = [], 0
        try:
            for n in cfg.workers_levels:
                if time.monotonic() > deadline:
                    print(f"  --workers {count}, {n} streams: skipped (time budget)")
                    break
                with store.primaries()[0] as client:
                    client.flushall()  # the last level's streams: nothing to carry over
                try:
                    r, _ = measure_level(cfg, srv, "sse", n, logdir, gateway_workers=count, store=store)
                except Exception as exc:  # reported, not fatal
                    levels.append(failed("sse", n, exc, f"--workers {count}, Redis"))
                    break
                print_level(r)
                levels.append(r)
                if not carried(r):
                    break
                most = n
        finally:
            store.__exit__()
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


def run_redis(cfg: Config, srv: Servers, logdir: Path, profdir: Path | None) -> dict:
    """Each mode's levels, its median gateway and Redis CPU per token; profiles unless `profdir` is None."""
    n, modes = cfg.redis_level, ["memory", *Deployment.MODES]
    levels: dict[str, list[dict]] = {mode: [] for mode in modes}
    profiles = []
    with ExitStack() as started:
        stores = {mode: started.enter_context(Deployment(mode)) for mode in Deployment.MODES}
        for round_ in range(cfg.redis_rounds):
            for mode in modes:
                r, _ = measure_level(cfg, srv, "sse", n, logdir, store=stores.get(mode))
                print_level(r, f"round {round_ + 1}, {mode}: ")
                levels[mode].append(r)
        for mode in Deployment.MODES if profdir else []:
            r, out = measure_level(cfg, srv, "sse", n, logdir, profdir / f"redis-{mode}-{n}.txt", store=stores[mode])
            profiles.append(profile_entry(f"Redis {mode}: {n:,} streams x {cfg.conc_tokens} tokens, "
                                          f"{1 / cfg.conc_delay:.0f}/s", out, r["gateway_us_per_token"], "token", r))
    median = {mode: {key: statistics.median(r[key] for r in levels[mode])
                     for key in ("gateway_us_per_token", "redis_us_per_token")} for mode in modes}
    for mode, m in median.items():
        m["extra"] = m["gateway_us_per_token"] / median["memory"]["gateway_us_per_token"] - 1
        print(f"  {mode}: {m['gateway_us_per_token']:.1f} µs/token ({100 * m['extra']:+.0f}% over memory only)")
    return {"streams": n, "rounds": cfg.redis_rounds, "levels": levels, "median": median, "profiles": profiles}
