"""The machine a run is on: what it is (cores, CPU, Python, library versions, commit) and how busy
it is, the benchmark's own CPU against everything else's ("foreign"), from psutil."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from importlib import metadata

import cpuinfo  # pytest-benchmark's dependency: the CPU model, which psutil does not give
import psutil

from common import REPO, cpu_seconds

IDLE_MAX = 0.25  # cores busy with other work below which the machine counts as quiet
LIBRARIES = ("flowise-sse", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sse-starlette", "httpx",
             "python-socketio", "python-engineio", "aiohttp", "orjson", "redis", "py-spy", "psutil")


def _busy() -> float:
    """CPU seconds the whole machine has been busy (guest time is counted in user time already)."""
    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + t.steal


def _cpu_of(pids: list[int]) -> float:
    """This process's CPU seconds, its reaped children's, and those of the live processes named."""
    total = 0.0
    for pid in [os.getpid(), *pids]:
        try:
            total += cpu_seconds(pid)
        except OSError:  # gone: its CPU is in our children's, if it was ours
            pass
    t = psutil.Process().cpu_times()
    return total + t.children_user + t.children_system


class LoadMeter:
    """CPU used on the whole machine during a window, in cores: ours (this process, its reaped
    children and the live processes named) and foreign (anything else, kernel work charged to no
    process included)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0, self.busy0, self.ours0 = time.monotonic(), _busy(), _cpu_of(pids)

    def stop(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self.t0)
        busy, ours = _busy() - self.busy0, _cpu_of(self.pids) - self.ours0
        return {"wall": wall, "busy_cores": busy / wall, "ours_cores": ours / wall,
                "foreign_cores": max(0.0, busy - ours) / wall}


def wait_idle(limit: float) -> dict[str, float]:
    """Wait up to `limit` seconds for the machine to be quiet; its load over the last 2 s."""
    waited = time.monotonic()
    while True:
        meter = LoadMeter([])
        time.sleep(2)
        load = meter.stop()
        if load["foreign_cores"] <= IDLE_MAX or time.monotonic() - waited >= limit:
            return load
        print(f"  the machine is busy ({load['foreign_cores']:.2f} cores used by other processes): waiting "
              f"(at most {limit:.0f} s, --wait-idle)")
        time.sleep(3)


def machine_info() -> dict:
    libs = {}
    for name in LIBRARIES:
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = "-"
    git = ["git", "-C", str(REPO)]
    try:
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        if subprocess.run([*git, "status", "--porcelain", "--", "service"], capture_output=True, text=True).stdout:
            commit += " (service/ has uncommitted changes)"
    except OSError:
        commit = "?"
    return {"nproc": psutil.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)),
            "cpu_model": cpuinfo.get_cpu_info().get("brand_raw", "?"),
            "mem_gb": round(psutil.virtual_memory().total / 2**30, 1), "kernel": platform.release(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "libs": libs, "commit": commit, "load_avg": psutil.getloadavg()}
