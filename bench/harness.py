"""The processes of a run: its configuration, the servers it starts (each pinned to its side of the
machine), and py-spy attached to one of them."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from common import BENCH_DIR, PYTHON, REPO, spawn, stop, wait_port

sys.path.insert(0, str(REPO))  # the tests' servers: the package tests
from tests.helpers import free_port  # noqa: E402
from tests.redis_topologies import Deployment  # noqa: E402,F401  (sections 6 and 7, the soak)

PYSPY = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")


@dataclass
class Config:
    """The counts of a full run (`--smoke`: tiny ones) and its time budgets, in seconds."""

    latency_requests: int = 300
    latency_warmup: int = 10
    throughput_tokens: int = 20000
    throughput_reps: int = 7
    # 300 is not a target level: it sits near where one gateway process fills its core.
    sse_levels: list[int] = field(default_factory=lambda: [100, 300, 1000, 2000])
    sio_levels: list[int] = field(default_factory=lambda: [100, 1000])
    conc_tokens: int = 300  # 15 s answers: with the ramp below, all N streams are open together for >= 5 s
    conc_delay: float = 0.05
    ramp_rate: float = 200.0  # streams opened per second: below the gateway's set-up rate on one core
    streams_per_worker: int = 1000  # per bench/loadgen.py process
    profile_requests: int = 300
    profile_reps: int = 8
    profile_rate: int = 250
    conc_profile_rate: int = 50  # py-spy pauses every thread per sample: costly with the gateway's threadpool
    wait_idle: float = 60.0
    budget: float = 900.0  # for sections 1 to 4: one past it is skipped, and says so
    real_requests: int = 150  # section 5: measured pairs (an answer is ~0.4 s there), after warm-up pairs
    real_warmup: int = 5
    workers_levels: list[int] = field(default_factory=lambda: [200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000])
    workers_budget: float = 600.0
    redis_level: int = 300
    redis_rounds: int = 2  # section 7: each mode's levels, taken in turn

    @classmethod
    def make(cls, args: argparse.Namespace) -> Config:
        cfg = cls(40, 3, 3000, 2, [50], [50], conc_tokens=40, profile_requests=30, profile_reps=2, profile_rate=100,
                  budget=300.0, real_requests=4, real_warmup=1, workers_levels=[50, 100], workers_budget=120.0,
                  redis_level=50, redis_rounds=1) if args.smoke else cls()
        cfg.wait_idle = args.wait_idle if args.wait_idle is not None else 10.0 if args.quick or args.smoke else 60.0
        return cfg


class Servers:
    def __init__(self, logdir: Path, pin: bool = True) -> None:
        self.logdir = logdir
        # The first core for the system under test (the server measured), the others for everything
        # else, when there are at least two.
        cpus = sorted(os.sched_getaffinity(0))
        self.sut_cpus, self.other_cpus = ({cpus[0]}, set(cpus[1:])) if pin and len(cpus) > 1 else (None, None)
        # A child inherits its parent's affinity, and `place_self` narrows this process's, so
        # "anywhere" has to be said explicitly.
        self.all_cpus = os.sched_getaffinity(0)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def place_self(self) -> str:
        """Put this process (the measuring client) with the emulators, off the system under test's
        core; the placement, described."""
        if not self.other_cpus:
            return "no pinning"
        os.sched_setaffinity(0, self.other_cpus)
        return (f"the system under test (gateway, ceiling) pinned to core {min(self.sut_cpus)}; emulators, "
                f"clients and py-spy to core(s) {', '.join(map(str, sorted(self.other_cpus)))}")

    def start(self, name: str, args: list[str], sut: bool | None, env: dict[str, str] | None = None,
              timeout: float = 20.0) -> int:
        """`sut`: on the system under test's core (True), the others (False), or any core (None)."""
        port = free_port()
        args = [a.replace("{port}", str(port)) for a in args]
        proc = spawn(args, env=env, cpus=self.all_cpus if sut is None else self.sut_cpus if sut else self.other_cpus,
                     log=self.logdir / f"{name}.log")
        self.procs[name], self.ports[name] = proc, port
        wait_port(port, proc, timeout)
        return port

    def start_emulator(self, name: str, kind: str, version: str = "3.1.4") -> int:
        # lite-sio may first install its node_modules (`npm ci`): give it time
        return self.start(name, [PYTHON, str(BENCH_DIR / "servers.py"), kind, "--port", "{port}", "--version", version],
                          sut=False, timeout=300.0 if kind == "lite-sio" else 20.0)

    def start_gateway(self, name: str, upstream: str, env: dict[str, str] | None = None,
                      workers: int | None = None) -> int:
        """The gateway as shipped (`python -m flowise_sse serve`). `upstream`: a server of this run by
        name, or a URL. `workers`: `serve --workers N`; above 1 it is not pinned (N processes)."""
        url = upstream if upstream.startswith("http") else self.url(upstream)
        args = [PYTHON, "-m", "flowise_sse", "serve", "--host", "127.0.0.1", "--port", "{port}", "--log-level",
                "warning"] + (["--workers", str(workers)] if workers else [])
        port = self.start(name, args, sut=True if (workers or 1) == 1 else None,
                          env={"FLOWISE_URL": url, "PYTHONUNBUFFERED": "1", **(env or {})})
        # Ready once it has learnt the transport and answers; with workers, once /metrics lists each.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200 and (
                        (workers or 1) == 1 or httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.count(
                            "\nflowise_sse_worker_info{") == workers):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return port

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.procs.values()]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self, name: str) -> None:
        stop(self.procs.pop(name, None))
        self.ports.pop(name, None)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def clear_emulator(self, name: str) -> None:
        try:
            httpx.delete(self.url(name) + "/__emulator/state", timeout=10)
        except httpx.HTTPError:
            pass


def event_loop_of(pid: int) -> str:
    """Which event loop a running gateway uses: the CLI runs on uvloop whenever it can import it, so
    uvloop's library mapped in its memory says it does."""
    return "uvloop" if any("uvloop" in m.path for m in psutil.Process(pid).memory_maps()) else "asyncio (stdlib)"


class Spy:
    """`py-spy record --format raw` (collapsed stacks) on one pid. `--gil` keeps only the samples that
    hold the GIL: a thread waiting in epoll or on the threadpool's queue is not busy. py-spy pauses
    the process per sample, so it runs on the gateway's core: woken there it preempts the gateway at
    once (on the busy other core it would wait its turn, the gateway paused meanwhile)."""

    def __init__(self, servers: Servers, pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.proc = spawn([PYSPY, "record", "--pid", str(pid), "--rate", str(rate), "--gil", "--format", "raw",
                           "--output", str(out)], cpus=servers.sut_cpus, log=servers.logdir / f"{out.stem}.py-spy.log")
        time.sleep(0.5)  # attach

    def finish(self) -> Path | None:
        stop(self.proc, signal.SIGINT)  # py-spy writes its file on SIGINT
        return self.out if self.out.exists() else None
