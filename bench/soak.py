"""Soak: many streams for a long time, checking every answer, and what the gateways hold over time.

    python bench/soak.py --mode memory --minutes 30 [--concurrency 150]
        one gateway (`python -m flowise_sse serve`, default settings: its store fills to its
        10,000 finished streams and stays full) in front of the package's emulated Flowise 3.1.4
    python bench/soak.py --mode redis --minutes 30
        two replicas sharing a redis-server; a share of the streams is cut after a few events and
        resumed on the other replica with Last-Event-ID; halfway, one replica gets SIGTERM (its
        readers resume on the other) and is started again

Every `--every` seconds it prints: streams completed, exact, failed (by code), streams/s and first
token p50 over the window, each gateway's RSS and open fds, and in Redis mode the Redis memory,
its key count and the keys without an expiry. At the end: the totals and the leftover chat locks.
An answer is exact when its events carry seqs 1..N without a gap or duplicate across resumes and
the joined tokens equal both the `end` text and the emulator's deterministic reply.

`tests/test_soak.py` runs the same load for about a minute in CI (`run_load`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import orjson

DEMO_CHATFLOW_ID = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"  # flowise_sse.emulator.DEMO_CHATFLOW_ID
REPLY = "This is a deterministic mock reply. You said: "
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()


@dataclass
class Tally:
    completed: int = 0
    exact: int = 0
    resumed: int = 0
    failures: Counter = field(default_factory=Counter)
    first_token: list[float] = field(default_factory=list)  # seconds, since the last window
    window_done: int = 0
    inexact: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # one message per failure kind

    def fail(self, kind: str, message: str = "") -> None:
        self.failures[kind] += 1
        self.examples.setdefault(kind, message[:300])

    def window(self) -> tuple[int, float]:
        done, ft = self.window_done, sorted(self.first_token)
        self.window_done, self.first_token = 0, []
        return done, ft[len(ft) // 2] if ft else float("nan")


class Cut(Exception):
    pass


async def _read(response: httpx.Response, events: list[tuple[str, int, Any]], limit: int | None,
                started: float, tally: Tally) -> None:
    buffer = b""
    async for chunk in response.aiter_bytes():
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            name, seq, data = "message", 0, None
            for line in frame.split(b"\n"):
                if line.startswith(b"event: "):
                    name = line[7:].decode()
                elif line.startswith(b"id: "):
                    seq = int(line.rsplit(b":", 1)[1])
                elif line.startswith(b"data: "):
                    data = orjson.loads(line[6:])
            if data is None:
                continue  # a keep-alive comment
            if name == "token" and not any(e[0] == "token" for e in events):
                tally.first_token.append(time.monotonic() - started)
            events.append((name, seq, data))
            if name in ("end", "error") or (limit and len(events) >= limit):
                return


async def one_stream(client: httpx.AsyncClient, urls: Callable[[], list[str]], n: int, cut: bool,
                     delay: float, tally: Tally) -> None:
    question = " ".join(random.choice(WORDS) for _ in range(12)) + f" {n}"
    body = {"question": question, "overrideConfig": {"emulator": {"delay": delay}}}
    events: list[tuple[str, int, Any]] = []
    started = time.monotonic()
    stream_id, where = None, None
    for attempt in range(6):  # a replica shutting down or gone: start on another
        live = urls()
        where = live[(n + attempt) % len(live)]
        try:
            async with client.stream("POST", f"{where}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", json=body) as r:
                if r.status_code != 200:
                    await r.aread()
                    error = orjson.loads(r.content)["error"] if r.content.startswith(b"{") else {}
                    if error.get("code") == "shutting_down":
                        continue
                    tally.fail(f"{r.status_code} {error.get('code')}", error.get("message", ""))
                    return
                await _read(r, events, 3 if cut else None, started, tally)
            break
        except httpx.TransportError:
            if events:
                break
            await asyncio.sleep(0.05)
    if not events:
        tally.fail("no replica took the stream")
        return
    stream_id = events[0][2]["streamId"]
    for _ in range(10):  # resume until the terminal event, on the other replica when there is one
        if events[-1][0] in ("end", "error"):
            break
        tally.resumed += 1
        live = urls()
        others = [u for u in live if u != where] or live
        where = random.choice(others)
        try:
            async with client.stream("GET", f"{where}/v1/streams/{stream_id}/events",
                                     headers={"Last-Event-ID": f"{stream_id}:{events[-1][1]}"}) as r:
                if r.status_code != 200:
                    await r.aread()
                    await asyncio.sleep(0.2)
                    continue
                await _read(r, events, None, started, tally)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    tally.completed += 1
    tally.window_done += 1
    last = events[-1]
    if last[0] != "end":
        tally.fail(f"error {last[2].get('code') if last[0] == 'error' else 'no terminal event'}",
                   str(last[2].get("message", "")) if last[0] == "error" else "")
        return
    text = "".join(e[2]["text"] for e in events if e[0] == "token")
    seqs = [e[1] for e in events]
    if seqs == list(range(1, len(events) + 1)) and text == last[2]["text"] == REPLY + question:
        tally.exact += 1
    else:
        tally.inexact.append(stream_id)


async def run_load(urls: Callable[[], list[str]], seconds: float, concurrency: int, cut_ratio: float,
                   delay: float, tally: Tally, on_tick: Callable[[float], Any] | None = None,
                   every: float = 10.0) -> None:
    """`concurrency` workers, each starting a stream as soon as its last one ended, for `seconds`."""
    deadline = time.monotonic() + seconds
    counter = iter(range(10**9))
    limits = httpx.Limits(max_connections=concurrency * 2 + 10, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=httpx.Timeout(60, connect=10), limits=limits) as client:
        async def worker() -> None:
            while time.monotonic() < deadline:
                n = next(counter)
                await one_stream(client, urls, n, random.random() < cut_ratio, delay, tally)

        async def ticker() -> None:
            begin = time.monotonic()
            while True:
                await asyncio.sleep(every)
                if on_tick:
                    await on_tick(time.monotonic() - begin)

        tick = asyncio.get_running_loop().create_task(ticker())
        try:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        finally:
            tick.cancel()


# --- processes and /proc ----------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Gateway:
    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen | None = None

    def start(self) -> Gateway:
        self.proc = subprocess.Popen([sys.executable, "-m", "flowise_sse", "serve", "--host", "127.0.0.1",
                                      "--port", str(self.port), "--log-level", "warning"], env=self.env)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.05)
        raise RuntimeError("the gateway did not start")

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive:
            self.proc.kill()  # type: ignore[union-attr]
            self.proc.wait(10)  # type: ignore[union-attr]


def start_redis() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    import redis

    for _ in range(500):
        try:
            redis.Redis(port=port).ping()
            return proc, f"redis://127.0.0.1:{port}/0"
        except redis.RedisError:
            time.sleep(0.02)
    raise RuntimeError("redis-server did not start")


def keys_without_expiry(url: str) -> tuple[int, int, list[bytes], float]:
    """(keys, keys without expiry, leftover chat locks, used memory MB)."""
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(count=1000))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
    ttls = pipe.execute()
    locks = [k for k in keys if k.startswith(b"fss:chat:")]
    used = client.info("memory")["used_memory"] / 2**20
    client.close()
    return len(keys), sum(1 for t in ttls if t == -1), locks, used


# --- the command --------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["memory", "redis"], default="memory")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=150)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between tokens")
    parser.add_argument("--cut", type=float, default=0.1, help="share of streams cut and resumed")
    parser.add_argument("--every", type=float, default=30, help="seconds between reports")
    args = parser.parse_args()

    emulator_port = free_port()
    emulator = subprocess.Popen([sys.executable, os.path.join(os.path.dirname(__file__), "servers.py"),
                                 "emulator", "--version", "3.1.4", "--port", str(emulator_port)])
    redis_proc, redis_url = (None, None)
    env = {"FLOWISE_URL": f"http://127.0.0.1:{emulator_port}", "FLOWISE_SSE_TOKEN_SECRET": "soak"}
    if args.mode == "redis":
        redis_proc, redis_url = start_redis()
        env["FLOWISE_SSE_REDIS_URL"] = redis_url
    time.sleep(1)
    gateways = [Gateway(env).start() for _ in range(2 if args.mode == "redis" else 1)]
    tally = Tally()
    seconds = args.minutes * 60
    last_tick = [0.0]
    restarted = [False]

    def urls() -> list[str]:
        return [g.url for g in gateways if g.alive] or [gateways[-1].url]

    async def on_tick(t: float) -> None:
        done, ft = tally.window()
        window = t - last_tick[0]
        last_tick[0] = t
        line = (f"t={t:6.0f}s completed={tally.completed} exact={tally.exact} resumed={tally.resumed} "
                f"failed={dict(tally.failures)} rate={done / window:.1f}/s first_token_p50={ft * 1000:.0f}ms")
        for i, g in enumerate(gateways):
            if g.alive:
                line += f" | gw{i} rss={rss_mb(g.proc.pid):.0f}MB fds={fds(g.proc.pid)}"  # type: ignore[union-attr]
        if redis_url:
            keys, no_ttl, _, used = await asyncio.to_thread(keys_without_expiry, redis_url)
            line += f" | redis {used:.0f}MB keys={keys} no_ttl={no_ttl}"
        print(line, flush=True)
        if args.mode == "redis" and t >= seconds / 2 and not restarted[0]:
            restarted[0] = True
            print("SIGTERM to gw0", flush=True)
            gateways[0].proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            await asyncio.to_thread(gateways[0].proc.wait, 60)  # type: ignore[union-attr]
            gateways[0] = Gateway(env)
            await asyncio.to_thread(gateways[0].start)
            print("gw0 started again", flush=True)

    try:
        asyncio.run(run_load(urls, seconds, args.concurrency, args.cut if args.mode == "redis" else args.cut,
                             args.delay, tally, on_tick, args.every))
        exact = 100 * tally.exact / max(1, tally.completed)
        print(f"DONE completed={tally.completed} exact={tally.exact} ({exact:.2f}%) resumed={tally.resumed} "
              f"failed={dict(tally.failures)} inexact={tally.inexact[:5]}")
        for kind, message in tally.examples.items():
            print(f"  {kind}: e.g. {message}")
        if redis_url:
            time.sleep(2)
            keys, no_ttl, locks, used = keys_without_expiry(redis_url)
            print(f"redis: keys={keys} without expiry={no_ttl} leftover chat locks={len(locks)} used={used:.0f}MB")
    finally:
        for g in gateways:
            g.stop()
        emulator.kill()
        if redis_proc:
            redis_proc.kill()


if __name__ == "__main__":
    main()
