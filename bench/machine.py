"""The machine a run is on: what it is (cores, CPU, Python, library versions, commit) and how busy
it is, ours against foreign CPU, from /proc/stat."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import time
from importlib import metadata

from common import CLK_TCK, REPO, cpu_seconds, own_cpu
from results import Load, Machine

IDLE_MAX = 0.25  # cores busy with other work below which the machine counts as quiet
LIBRARIES = ("flowise-sse", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sse-starlette", "httpx",
             "httpcore", "httpx-sse", "python-socketio", "python-engineio", "aiohttp", "websockets", "orjson",
             "matplotlib", "py-spy")


def proc_stat() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = parts
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, steal


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """CPU used on the whole machine during a window, split into ours (this process, its reaped
    children and the live servers named) and foreign (anything else running on the machine)."""

    def __init__(self, pids: list[int]) -> None:
        self.t0 = time.monotonic()
        self.stat0 = proc_stat()
        self.own0, self.kids0 = own_cpu(), children_cpu()
        self.alive0 = {pid: cpu_seconds(pid) for pid in pids}

    def stop(self) -> Load:
        wall = max(1e-6, time.monotonic() - self.t0)
        busy1, _, steal1 = proc_stat()
        ours = own_cpu() - self.own0 + children_cpu() - self.kids0
        for pid, c0 in self.alive0.items():
            try:
                ours += cpu_seconds(pid) - c0
            except OSError:
                pass
        busy = (busy1 - self.stat0[0]) / CLK_TCK
        return Load(wall=wall, busy_cores=busy / wall, ours_cores=ours / wall,
                    foreign_cores=max(0.0, busy - ours) / wall, steal_cores=(steal1 - self.stat0[2]) / CLK_TCK / wall)


def background_load(seconds: float = 2.0) -> Load:
    meter = LoadMeter([])
    time.sleep(seconds)
    return meter.stop()


def wait_idle(limit: float) -> Load:
    """Wait up to `limit` seconds for the machine to be quiet; its load at the end."""
    bg = background_load()
    waited = time.monotonic()
    while bg.busy_cores > IDLE_MAX and time.monotonic() - waited < limit:
        print(f"  the machine is busy ({bg.busy_cores:.2f} cores used by other processes): waiting "
              f"(at most {limit:.0f} s, --wait-idle)")
        time.sleep(5)
        bg = background_load()
    return bg


def machine_info() -> Machine:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = "-"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        commit += " (service/ has uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return Machine(nproc=os.cpu_count(), affinity=sorted(os.sched_getaffinity(0)), cpu_model=model,
                   mem_gb=round(mem_kb / 1024 / 1024, 1), kernel=platform.release(),
                   python=platform.python_version(), implementation=platform.python_implementation(),
                   libs=libs, commit=commit, nofile=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
