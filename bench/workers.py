"""Section 6, workers: the most streams `serve --workers 1` and `serve --workers 2` carry, each with
a redis-server on loopback (so both pay the same mirror cost per token), and the scaling between them.

Each worker count runs the concurrency section's levels (`concurrency.measure_level`: flowise-lite
upstream, `bench/loadgen.py` clients, a fresh gateway per level) in ascending order until one is not
carried: every stream exact, (nearly) all flowing at once, added inter-token delay p99 <= 50 ms
over the whole run. The streams carried are the last level that was; the step between levels is
the figure's resolution.

Placement: with one worker the gateway is pinned to the first core and flowise-lite, the clients
and redis-server to the others, as in section 3. With two workers nothing is pinned: the parent, the
two workers, flowise-lite, the clients and redis-server share every core, so on a 2-core machine no
core is left to the clients and the scaling measured is below what a host with cores to spare shows.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import redis

from common import free_port, spawn, stop, wait_port
from concurrency import measure_level, print_level
from harness import Config, Servers
from results import WORKERS_P99_MS, FailedLevel, WorkersResult, WorkersRun, carried

WORKER_COUNTS = (1, 2)


def placement(srv: Servers) -> str:
    if not srv.sut_cpus:
        return "nothing pinned (one core, or --no-pin): every process shares every core"
    return (f"--workers 1: the gateway pinned to core {min(srv.sut_cpus)}, flowise-lite, the clients and "
            f"redis-server to core(s) {', '.join(map(str, sorted(srv.other_cpus or ())))}; --workers 2: nothing "
            f"pinned, the parent, both workers, flowise-lite, the clients and redis-server share all "
            f"{len(srv.sut_cpus) + len(srv.other_cpus or ())} cores (none is left free for the clients)")


def start_redis(cpus: set[int] | None, logdir: Path) -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (tests/setup.sh installs it)")
    port = free_port()
    proc = spawn([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                 cpus=cpus, log=logdir / "redis.log")
    wait_port(port, proc)
    return proc, f"redis://127.0.0.1:{port}/0"


def result_text(run: WorkersRun) -> str:
    return f"{run.carried:,}" if run.limit_found else f">= {run.carried:,} (every level tried)"


def run(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> WorkersResult:
    runs = []
    lite = srv.pid("lite")
    pinned = os.sched_getaffinity(lite)
    for count in WORKER_COUNTS:
        proc, url = start_redis(srv.other_cpus if count == 1 else srv.all_cpus, logdir)
        # flowise-lite (one thread) stays where run.py put it for one worker, goes anywhere for more.
        os.sched_setaffinity(lite, pinned if count == 1 else srv.all_cpus)
        levels: list = []
        most = 0
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
                    print(f"  --workers {count}, {n} streams: failed: {exc!r}")
                    levels.append(FailedLevel(transport="sse", streams=n, failed=repr(exc),
                                              variant=f"--workers {count}, Redis"))
                    break
                print_level(r)
                levels.append(r)
                if not carried(r):
                    break
                most = n
        finally:
            stop(proc)
            os.sched_setaffinity(lite, pinned)
        runs.append(WorkersRun(workers=count, levels=levels, carried=most))
        print(f"  --workers {count}: {result_text(runs[-1])} streams carried at p99 <= {WORKERS_P99_MS:g} ms")
    result = WorkersResult(placement=placement(srv), runs=runs)
    print(f"  scaling, 2 workers / 1: {result.scaling:.2f}x"
          f"{'' if result.limits_found else ' (a limit was not reached: not the scaling)'}")
    return result
