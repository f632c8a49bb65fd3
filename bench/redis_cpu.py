"""Gateway CPU per relayed token: memory only, and mirrored to each kind of Redis, side by side.

    python bench/redis_cpu.py [--streams 100] [--tokens 100] [--delay 0.02] [--rounds 3]
                              [--profile cluster] [--modes memory,standalone,cluster,sentinel]

Starts the package's emulated Flowise 3.1.4, a standalone redis-server, a Redis Cluster (3
primaries + 3 replicas) and a Sentinel group (primary, replica, 3 sentinels) from
`tests/redis_topologies.py`, and one gateway process (`python -m flowise_sse serve`) per mode,
all at once. Then, round after round, the same load goes through each gateway in turn (`--streams`
concurrent streams of `--tokens` tokens, one every `--delay` s, each read by its requester): the
modes share the machine's load of the moment, and each round gives every mode one figure. Printed:
each mode's gateway CPU (user + system, from /proc) per relayed token, median of the rounds, and
its extra over memory mode. With `--profile MODE`, py-spy samples that mode's gateway during one
more run and the hottest functions are printed (where what remains goes).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "service"))

from tests.helpers import free_port, wait_until  # noqa: E402
from tests.redis_topologies import LocalCluster, SentinelGroup  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

DEMO_CHATFLOW_ID = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"  # flowise_sse.emulator.DEMO_CHATFLOW_ID
CLK_TCK = os.sysconf("SC_CLK_TCK")
EMULATOR = """
import sys, uvicorn
from flowise_sse.emulator import EmulatorConfig, create_emulator_app
uvicorn.run(create_emulator_app(EmulatorConfig(version="3.1.4")), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning")
"""


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def answers(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url, timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


SERVICE = ROOT / "service"  # the flowise_sse the gateways run (--service: another checkout's)


class Process:
    def __init__(self, argv: list[str], env: dict[str, str], url: str) -> None:
        self.proc = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(SERVICE), **env})
        self.url = url
        wait_until(lambda: answers(url) or self.proc.poll() is not None, timeout=30, what=url)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{argv} exited with {self.proc.returncode}")

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def gateway(env: dict[str, str]) -> Process:
    port = free_port()
    return Process([sys.executable, "-m", "flowise_sse", "serve", "--host", "127.0.0.1", "--port", str(port),
                    "--log-level", "warning"], env, f"http://127.0.0.1:{port}/healthz")


async def load(base: str, streams: int, tokens: int, delay: float) -> int:
    """`streams` streams at once, each read whole by its requester; the tokens relayed."""
    body = {"question": "cpu", "overrideConfig": {"emulator": {"tokens": [f"w{i} " for i in range(tokens)],
                                                                "delay": delay}}}
    connector = aiohttp.TCPConnector(limit=streams + 10)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
        async def one() -> int:
            async with session.post(f"{base}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body) as r:
                data = await r.read()
            if b"event: end" not in data:
                raise RuntimeError(f"a stream did not end: {data[-300:]!r}")
            return data.count(b"event: token")

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def measure(process: Process, args: argparse.Namespace) -> float:
    base = process.url.rsplit("/", 1)[0]
    before = cpu_seconds(process.proc.pid)
    relayed = asyncio.run(load(base, args.streams, args.tokens, args.delay))
    return (cpu_seconds(process.proc.pid) - before) / relayed * 1e6


def profile(process: Process, args: argparse.Namespace, mode: str) -> None:
    out = Path(tempfile.mkdtemp()) / f"{mode}.txt"
    duration = max(5, int(args.tokens * args.delay) + 3)
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(process.proc.pid),
                            "-d", str(duration), "-r", "1000",
                            "-f", "raw", "-o", str(out), "--nonblocking"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    time.sleep(1)
    measure(process, args)
    spy.wait(duration + 30)
    own, total = Counter(), 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        total += int(count)
        seen = set()
        for frame in frames:  # inclusive: each function once per sample
            name = frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
            if name not in seen:
                own[name] += int(count)
                seen.add(name)
    print(f"\npy-spy, {mode} mode, {total} samples; functions by share of samples (inclusive):")
    for name, count in own.most_common(40):
        print(f"  {100 * count / total:5.1f}%  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--delay", type=float, default=0.02)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default="memory,standalone,cluster,sentinel")
    parser.add_argument("--profile", default=None, help="a mode whose gateway py-spy samples")
    parser.add_argument("--service", default=None,
                        help="the service/ directory of another checkout, whose gateway to measure (before/after)")
    args = parser.parse_args()
    if args.service:
        global SERVICE
        SERVICE = Path(args.service).resolve()
    modes = args.modes.split(",")
    port = free_port()
    emulator = Process([sys.executable, "-c", EMULATOR, str(port)], {}, f"http://127.0.0.1:{port}/api/v1/ping")
    env = {"FLOWISE_URL": f"http://127.0.0.1:{port}"}
    stores: list = []
    gateways: dict[str, Process] = {}
    try:
        for mode in modes:
            if mode == "memory":
                gateways[mode] = gateway(env)
            elif mode == "standalone":
                store = RedisServer().__enter__()
                stores.append(store)
                gateways[mode] = gateway({**env, "FLOWISE_SSE_REDIS_URL": store.url})
            elif mode == "cluster":
                cluster = LocalCluster().__enter__()
                stores.append(cluster)
                gateways[mode] = gateway({**env, "FLOWISE_SSE_REDIS_URL": cluster.url,
                                          "FLOWISE_SSE_REDIS_CLUSTER": "true"})
            elif mode == "sentinel":
                group = SentinelGroup().__enter__()
                stores.append(group)
                gateways[mode] = gateway({**env, "FLOWISE_SSE_REDIS_SENTINELS": group.addresses,
                                          "FLOWISE_SSE_REDIS_SENTINEL_MASTER": group.master})
        for process in gateways.values():  # warm-up: imports, pools, scripts loaded
            asyncio.run(load(process.url.rsplit("/", 1)[0], 10, 10, 0))
        figures: dict[str, list[float]] = {mode: [] for mode in modes}
        load_avg = []
        for round_ in range(args.rounds):
            for mode in modes:
                figures[mode].append(measure(gateways[mode], args))
                load_avg.append(os.getloadavg()[0])
            print(f"round {round_ + 1}: " + ", ".join(f"{m} {figures[m][-1]:.1f} us" for m in modes), flush=True)
        print(f"\n{args.streams} concurrent streams x {args.tokens} tokens, {args.delay * 1000:g} ms/token, "
              f"{args.rounds} rounds; load average {min(load_avg):.1f}-{max(load_avg):.1f} on {os.cpu_count()} cores")
        base = statistics.median(figures["memory"]) if "memory" in figures else None
        print("| mode | gateway CPU per token (median) | rounds | extra over memory |")
        print("|---|---|---|---|")
        for mode in modes:
            median = statistics.median(figures[mode])
            extra = ("" if base is None or mode == "memory"
                     else f"{median - base:+.1f} us ({100 * (median - base) / base:+.0f}%)")
            print(f"| {mode} | {median:.1f} us | {', '.join(f'{x:.1f}' for x in figures[mode])} | {extra} |")
        if args.profile:
            profile(gateways[args.profile], args, args.profile)
    finally:
        for process in gateways.values():
            process.stop()
        for store in stores:
            store.__exit__(None, None, None)
        emulator.stop()


if __name__ == "__main__":
    main()
