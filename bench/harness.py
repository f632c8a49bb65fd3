"""The processes of a run: its configuration, the servers it starts (each pinned to its side of the
machine), and py-spy attached to one of them."""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from common import BENCH_DIR, DEMO_CHATFLOW_ID, PYTHON, cpu_sets, free_port, spawn, stop, wait_port
from hotspots import Profile

PYSPY = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
GATEWAY_PATH = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
PREDICTION_PATH = f"/api/v1/prediction/{DEMO_CHATFLOW_ID}"


@dataclass
class Config:
    quick: bool
    latency_requests: int
    latency_warmup: int
    throughput_tokens: int
    throughput_reps: int
    sse_levels: list[int]
    sio_levels: list[int]
    conc_tokens: int = 300  # 15 s answers: with the ramp below, all N streams are open together for >= 5 s
    conc_delay: float = 0.05
    ramp_rate: float = 200.0  # streams opened per second (at least 1 s of ramp): below the gateway's set-up rate
    streams_per_worker: int = 1000
    whatif: bool = True  # also measure the gateway on uvloop (a launcher in bench/servers.py)
    profile: bool = True
    profile_rate: int = 250
    conc_profile_rate: int = 50  # py-spy pauses every thread per sample: costly with the gateway's threadpool
    pin: bool = True
    wait_idle: float = 60.0
    budget: float = 900.0  # seconds for the whole run; phases past it are skipped
    # Section 5, against a real Flowise 3.1.4: measured pairs (one answer is ~0.4 s there) and warm-up pairs.
    real_requests: int = 150
    real_warmup: int = 5
    # Section 6 (bench/workers.py): the levels tried per worker count, ascending, and its own budget.
    workers_levels: list[int] = field(default_factory=lambda: [200, 400, 600, 800, 1000, 1200, 1400, 1600, 2000])
    workers_budget: float = 600.0

    @classmethod
    def make(cls, args: argparse.Namespace) -> Config:
        if args.quick:
            cfg = cls(True, 40, 3, 3000, 2, [50, 200], [50], conc_tokens=40, profile_rate=100, conc_profile_rate=50,
                      wait_idle=0.0, budget=240.0, real_requests=20, real_warmup=2, workers_levels=[50, 100],
                      workers_budget=120.0)
        else:
            # 300 is not a target level: it sits near where the gateway as shipped saturates its core.
            cfg = cls(False, 300, 10, 20000, 7, [100, 300, 1000, 2000], [100, 1000])
        cfg.profile = not args.no_profile and PYSPY is not None
        cfg.pin = not args.no_pin
        cfg.whatif = not args.no_whatif
        if args.wait_idle is not None:
            cfg.wait_idle = args.wait_idle
        return cfg


class Servers:
    def __init__(self, cfg: Config, logdir: Path) -> None:
        self.logdir = logdir
        self.sut_cpus, self.other_cpus = cpu_sets() if cfg.pin else (None, None)
        # Every core this run may use: a child inherits its parent's affinity, and `place_self`
        # narrows this process's, so "anywhere" has to be said explicitly.
        self.all_cpus = os.sched_getaffinity(0)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def place_self(self) -> str:
        """Put this process (the measuring client) with the emulators, off the system under test's
        core; the placement, described."""
        if not self.other_cpus:
            return "no pinning"
        os.sched_setaffinity(0, self.other_cpus)
        return (f"the system under test (gateway, ceiling) pinned to core {sorted(self.sut_cpus)[0]}; emulators, "
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

    def start_ceiling(self, name: str) -> int:
        return self.start(name, [PYTHON, str(BENCH_DIR / "servers.py"), "ceiling", "--port", "{port}"], sut=True)

    def start_gateway(self, name: str, upstream: str, env: dict[str, str] | None = None, uvloop: bool = False,
                      workers: int | None = None) -> int:
        """The gateway as shipped (`python -m flowise_sse serve`), or with uvloop installed first (what-if).
        `upstream`: a server of this run by name, or a URL (a Flowise started elsewhere). `workers`:
        `serve --workers N` (bench/workers.py); above 1 it is not pinned (it has N processes)."""
        url = upstream if upstream.startswith("http") else f"http://127.0.0.1:{self.ports[upstream]}"
        env = {"FLOWISE_URL": url, "PYTHONUNBUFFERED": "1", **(env or {})}
        if uvloop:
            args = [PYTHON, str(BENCH_DIR / "servers.py"), "gateway-uvloop", "--port", "{port}"]
        else:
            args = [PYTHON, "-m", "flowise_sse", "serve", "--host", "127.0.0.1", "--port", "{port}", "--log-level",
                    "warning"] + (["--workers", str(workers)] if workers else [])
        port = self.start(name, args, sut=True if (workers or 1) == 1 else None, env=env)
        # Ready once it has learnt the transport (warm-up) and answers; with workers, once /metrics
        # lists every one of them as well.
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
    """Which event loop a running gateway uses: the stdlib loop's Python frames show in a stack dump,
    uvloop's run loop is native."""
    if PYSPY:
        try:
            dump = subprocess.run([PYSPY, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                  timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            dump = ""
        if "base_events.py" in dump:
            return "asyncio (stdlib selector loop)"
        if dump:
            return "uvloop"
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return "uvloop (its library is loaded)" if "uvloop/loop" in fh.read() else "asyncio (stdlib), probably"
    except OSError:
        return "unknown"


class Spy:
    """py-spy attached to one pid. It pauses the process for each sample, so it runs on the gateway's
    own core: woken there it preempts the gateway at once and the pauses stay short (on the other,
    busy core it would wait its turn while the gateway stays paused). --nonblocking is not used: on
    this kind of machine it tore about half the stacks."""

    def __init__(self, servers: Servers, pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.proc = spawn([PYSPY, "record", "--pid", str(pid), "--rate", str(rate), "--full-filenames",
                           "--format", "raw", "--output", str(out)],
                          cpus=servers.sut_cpus, log=servers.logdir / f"{out.stem}.py-spy.log")
        time.sleep(0.5)  # attach

    def finish(self) -> Profile | None:
        """Stop sampling; the stacks are kept gzipped (`zcat x.txt.gz | flamegraph.pl`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.out.exists():
            return None
        prof = Profile.load(self.out)
        packed = self.out.with_name(self.out.name + ".gz")
        packed.write_bytes(gzip.compress(self.out.read_bytes(), 9))
        self.out.unlink()
        return prof
