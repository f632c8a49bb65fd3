"""Gateway CPU per token, memory only vs mirrored to Redis (and redis-server's own CPU).

    python bench/redis_cost.py [--streams 300] [--tokens 100] [--concurrency 50] [--delay 0.02]

Starts the package's emulated Flowise 3.1.4, then one gateway without Redis and one with
(`FLOWISE_SSE_REDIS_URL`, a redis-server of its own), each a `python -m flowise_sse serve` process,
runs the same streams through each, and prints the gateway's CPU (from /proc, user + system) per
token, the Redis-mode extra and its share of the memory-only cost.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import httpx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from soak import DEMO_CHATFLOW_ID, Gateway, free_port, start_redis  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def load(url: str, streams: int, tokens: int, concurrency: int, delay: float) -> int:
    body = {"question": "cost", "overrideConfig": {"emulator": {"tokens": [f"w{i} " for i in range(tokens)],
                                                                "delay": delay}}}
    counter = iter(range(streams))
    seen = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=concurrency + 5)) as client:
        async def worker() -> None:
            nonlocal seen
            for _ in counter:
                async with client.stream("POST", f"{url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body) as r:
                    data = b"".join([chunk async for chunk in r.aiter_bytes()])
                assert data.rstrip().endswith(b"}") and b"event: end" in data, data[-300:]
                seen += data.count(b"event: token")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


def measure(env: dict[str, str], args: argparse.Namespace, redis_pid: int | None) -> tuple[float, float]:
    gateway = Gateway(env).start()
    try:
        asyncio.run(load(gateway.url, 20, args.tokens, 10, 0))  # warm-up
        before, redis_before = cpu(gateway.proc.pid), cpu(redis_pid) if redis_pid else 0.0  # type: ignore[union-attr]
        tokens = asyncio.run(load(gateway.url, args.streams, args.tokens, args.concurrency, args.delay))
        spent = cpu(gateway.proc.pid) - before  # type: ignore[union-attr]
        redis_spent = (cpu(redis_pid) - redis_before) if redis_pid else 0.0
        return spent / tokens * 1e6, redis_spent / tokens * 1e6
    finally:
        gateway.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--streams", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--delay", type=float, default=0.02)
    args = parser.parse_args()
    port = free_port()
    emulator = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "servers.py"),
                                 "emulator", "--version", "3.1.4", "--port", str(port)])
    redis_proc, redis_url = start_redis()
    try:
        time.sleep(1.5)
        env = {"FLOWISE_URL": f"http://127.0.0.1:{port}"}
        memory, _ = measure(env, args, None)
        mirrored, in_redis = measure({**env, "FLOWISE_SSE_REDIS_URL": redis_url}, args, redis_proc.pid)
        print(f"{args.streams} streams x {args.tokens} tokens, {args.concurrency} concurrent, {args.delay * 1000:.0f} ms/token")
        print(f"gateway CPU per token: memory {memory:.1f} us, Redis {mirrored:.1f} us "
              f"(+{mirrored - memory:.1f} us, +{100 * (mirrored - memory) / memory:.0f}%); redis-server {in_redis:.1f} us")
    finally:
        emulator.kill()
        redis_proc.kill()


if __name__ == "__main__":
    main()
