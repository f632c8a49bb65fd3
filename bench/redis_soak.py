"""Soak on each kind of Redis: two gateway replicas, steady paced load, a failover and a rolling restart.

    python bench/redis_soak.py --mode standalone|cluster|sentinel [--minutes 30] [--concurrency 30]
                               [--every 60]

Starts the package's emulated Flowise 3.1.4, the Redis of `--mode` (a redis-server; a Redis Cluster
of 3 primaries + 3 replicas; a Sentinel group of a primary, a replica and 3 sentinels, from
`tests/redis_topologies.py`) and two gateway processes (`python -m flowise_sse serve`, default
settings). `--concurrency` clients each ask for one stream after another (40 tokens, 50 ms apart,
on either replica at random) and read it; one stream in ten is cut after a few events and resumed
on the other replica with `Last-Event-ID`; a reader whose connection closes before the stream's
end resumes on the other replica the same way. At a third of the run the primary fails (standalone:
restarted empty; cluster: the primary holding replica A's streams killed, its replica promoted;
sentinel: the primary killed, the sentinels promote the replica); at two thirds, a rolling restart
(A gets SIGTERM and is started again once it has exited, then B).

Each stream ends as one of: `exact` (seqs 1..N across resumes, the joined tokens equal to the `end`
text and the emulator's reply), `prefix+store_unavailable` (seqs 1..N, then `error`
`store_unavailable`: what the failover promise allows), an `error` of another code, refused before
its start (by HTTP status and code), or a violation (a gap, a duplicate, a 404 on resume, a stream
that ended without its terminal event). Every `--every` seconds a row: streams by outcome, streams
per second, each replica's RSS and open fds, Redis memory, keys and keys without an expiry. At the
end: totals, violations, and (once every stream has ended) chat locks and keys without an expiry.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "service"))

from flowise_sse.streams.redis import keys  # noqa: E402

from tests.helpers import free_port, wait_until  # noqa: E402
from tests.redis_topologies import LocalCluster, SentinelGroup  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

DEMO_CHATFLOW_ID = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"  # flowise_sse.emulator.DEMO_CHATFLOW_ID
TOKENS, DELAY = 40, 0.05
EXPECTED = "".join(f"t{i} " for i in range(TOKENS))
EMULATOR = """
import sys, uvicorn
from flowise_sse.emulator import EmulatorConfig, create_emulator_app
uvicorn.run(create_emulator_app(EmulatorConfig(version="3.1.4")), host="127.0.0.1", port=int(sys.argv[1]),
            log_level="warning")
"""


class Replica:
    """One gateway process, restartable on its port."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name, self.env, self.port, self.log = name, env, free_port(), log
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: Any = None

    def start(self) -> Replica:
        with open(self.log, "ab") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "flowise_sse", "serve", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "warning"],
                env={**os.environ, "PYTHONPATH": str(ROOT / "service"), **self.env}, stderr=log)
        wait_until(lambda: _up(self.url) or self.proc.poll() is not None, timeout=30, what=f"{self.name} up")
        return self

    def rss_fds(self) -> str:
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))
            return f"{rss // 1024} MB / {len(os.listdir(f'/proc/{self.proc.pid}/fd'))}"
        except (OSError, StopIteration):
            return "down"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _up(url: str) -> bool:
    import httpx

    try:
        return httpx.get(url + "/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Store:
    """The Redis of one mode: how the gateway reaches it, its primaries, its failover."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.handle: Any = {"standalone": RedisServer, "cluster": LocalCluster, "sentinel": SentinelGroup}[mode]()

    def __enter__(self) -> Store:
        self.handle.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.handle.__exit__(*exc)

    def env(self) -> dict[str, str]:
        if self.mode == "cluster":
            return {"FLOWISE_SSE_REDIS_URL": self.handle.url, "FLOWISE_SSE_REDIS_CLUSTER": "true"}
        if self.mode == "sentinel":
            return {"FLOWISE_SSE_REDIS_SENTINELS": self.handle.addresses,
                    "FLOWISE_SSE_REDIS_SENTINEL_MASTER": self.handle.master}
        return {"FLOWISE_SSE_REDIS_URL": self.handle.url}

    def primaries(self) -> list[Any]:
        import redis

        if self.mode == "cluster":
            return [redis.Redis(port=port, socket_timeout=5) for port in
                    {primary for _, _, primary, _ in self.handle._view()}]
        if self.mode == "sentinel":
            return [self.handle.client()]
        return [redis.Redis.from_url(self.handle.url, socket_timeout=5)]

    def census(self) -> tuple[float, int, int, int]:
        """Redis memory (MB, all primaries), keys, keys without an expiry, chat locks."""
        memory, count, forever, locks = 0.0, 0, 0, 0
        for client in self.primaries():
            with client:
                memory += client.info("memory")["used_memory"] / 1e6
                for key in client.scan_iter(match="fss:*", count=1000):
                    count += 1
                    forever += client.ttl(key) == -1
                    locks += key.startswith(b"fss:chat:")
        return memory, count, forever, locks

    def fail(self, stream_id: str) -> str:
        if self.mode == "standalone":
            self.handle.stop()
            self.handle.__enter__()  # the same port, empty: a restart without persistence
            return "primary restarted empty"
        if self.mode == "cluster":
            took = self.handle.fail_over(keys.events(stream_id))
            return f"primary of replica A's slot killed, replica promoted in {took:.1f} s"
        took = self.handle.fail_over()
        return f"primary killed, replica promoted in {took:.1f} s"


class Tally:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()
        self.violations: list[str] = []
        self.resumed = 0
        self.window = 0
        self.last_a_stream = ""


async def frames(response: aiohttp.ClientResponse) -> Any:
    buffer = b""
    async for chunk in response.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            name, ident, data = "message", "", None
            for line in frame.split(b"\n"):
                if line.startswith(b"event: "):
                    name = line[7:].decode()
                elif line.startswith(b"id: "):
                    ident = line[4:].decode()
                elif line.startswith(b"data: "):
                    data = json.loads(line[6:])
            if data is not None:
                yield name, ident, data


async def one_stream(session: aiohttp.ClientSession, replicas: list[Replica], tally: Tally) -> None:
    first = random.randrange(2)
    body = {"question": "soak", "chatId": os.urandom(8).hex(),
            "overrideConfig": {"emulator": {"tokens": [f"t{i} " for i in range(TOKENS)], "delay": DELAY}}}
    cut = random.random() < 0.1
    events: list[tuple[str, int, Any]] = []
    stream_id, resumes = "", 0
    url = f"{replicas[first].url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
    try:
        async with session.post(url, json=body) as r:
            if r.status != 200:
                code = (await r.json(content_type=None) or {}).get("error", {}).get("code", "?")
                tally.refused[f"{r.status} {code}"] += 1
                return
            async for name, ident, data in frames(r):
                stream_id = stream_id or ident.rsplit(":", 1)[0]
                events.append((name, int(ident.rsplit(":", 1)[1]), data))
                if cut and len(events) == 3:
                    break
    except (TimeoutError, aiohttp.ClientError):
        if not events:
            tally.refused["connection"] += 1
            return
    if first == 0 and stream_id:
        tally.last_a_stream = stream_id
    target = 1 - first
    while events[-1][0] not in ("end", "error"):
        resumes += 1
        if resumes > 20:
            tally.violations.append(f"{stream_id}: no end after 20 resumes")
            return
        resume_url = f"{replicas[target].url}/v1/streams/{stream_id}/events"
        try:
            async with session.get(resume_url, headers={"Last-Event-ID": f"{stream_id}:{events[-1][1]}"}) as r:
                if r.status in (503, 502):  # the other replica is restarting, or Redis failing over
                    await asyncio.sleep(0.5)
                    target = 1 - target
                    continue
                if r.status != 200:
                    tally.violations.append(f"{stream_id}: resume answered {r.status} at {events[-1][1]}")
                    return
                async for name, ident, data in frames(r):
                    events.append((name, int(ident.rsplit(":", 1)[1]), data))
        except (TimeoutError, aiohttp.ClientError):
            await asyncio.sleep(0.2)
        target = 1 - target
    tally.resumed += resumes > 0
    seqs = [seq for _, seq, _ in events]
    if seqs != list(range(1, len(events) + 1)):
        tally.violations.append(f"{stream_id}: seqs {seqs[:3]}..{seqs[-3:]} (a gap or a duplicate)")
        return
    name, _, data = events[-1]
    text = "".join(d["text"] for n, _, d in events if n == "token")
    if name == "end":
        if text == data["text"] == EXPECTED:
            tally.outcomes["exact"] += 1
        else:
            tally.violations.append(f"{stream_id}: text differs")
    elif data.get("code") == "store_unavailable":
        tally.outcomes["prefix+store_unavailable"] += 1
    else:
        tally.outcomes[f"error {data.get('code')}"] += 1
    tally.window += 1


async def client_loop(session: aiohttp.ClientSession, replicas: list[Replica], tally: Tally, until: float) -> None:
    while time.monotonic() < until:
        await one_stream(session, replicas, tally)


async def soak(args: argparse.Namespace) -> None:
    log_dir = Path(args.logs)
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    emulator = subprocess.Popen([sys.executable, "-c", EMULATOR, str(port)],
                                env={**os.environ, "PYTHONPATH": str(ROOT / "service")})
    wait_until(lambda: _up_emulator(port), timeout=30, what="the emulator up")
    with Store(args.mode) as store:
        env = {"FLOWISE_URL": f"http://127.0.0.1:{port}", "FLOWISE_SSE_TOKEN_SECRET": "soak", **store.env()}
        replicas = [Replica("A", env, log_dir / f"{args.mode}-A.log").start(),
                    Replica("B", env, log_dir / f"{args.mode}-B.log").start()]
        tally = Tally()
        started = time.monotonic()
        until = started + args.minutes * 60
        print(f"{args.mode}: {args.minutes} min, {args.concurrency} clients, {TOKENS} tokens x {DELAY * 1000:g} ms; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)
        print("| t (s) | exact | prefix+store_unavailable | other errors | refused before start | violations "
              "| streams/s | A RSS / fds | B RSS / fds | Redis MB / keys / without expiry | load |")
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        connector = aiohttp.TCPConnector(limit=0)
        timeout = aiohttp.ClientTimeout(total=120, sock_read=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            clients = [asyncio.ensure_future(client_loop(session, replicas, tally, until))
                       for _ in range(args.concurrency)]
            events = {started + args.minutes * 20: "failover", started + args.minutes * 40: "restart"}
            next_row = started + args.every
            while not all(c.done() for c in clients):
                await asyncio.sleep(0.5)
                now = time.monotonic()
                for at, what in list(events.items()):
                    if now >= at:
                        del events[at]
                        if what == "failover":
                            said = await asyncio.to_thread(store.fail, tally.last_a_stream)
                        else:
                            said = await asyncio.to_thread(rolling_restart, replicas)
                        print(f"| {now - started:.0f} | **{what}**: {said} | | | | | | | | | |", flush=True)
                if now >= next_row:
                    next_row += args.every
                    memory, count, forever, _ = await asyncio.to_thread(store.census)
                    other = sum(v for k, v in tally.outcomes.items() if k.startswith("error"))
                    print(f"| {now - started:.0f} | {tally.outcomes['exact']} | "
                          f"{tally.outcomes['prefix+store_unavailable']} | {other} | {sum(tally.refused.values())} | "
                          f"{len(tally.violations)} | {tally.window / args.every:.1f} | {replicas[0].rss_fds()} | "
                          f"{replicas[1].rss_fds()} | {memory:.1f} / {count} / {forever} | "
                          f"{os.getloadavg()[0]:.1f} |", flush=True)
                    tally.window = 0
            await asyncio.gather(*clients)
        # Every stream has ended: its chat lock goes within moments, its keys expire with retention.
        await asyncio.sleep(2)
        memory, count, forever, locks = store.census()
        total = sum(tally.outcomes.values())
        print(f"\n{args.mode} totals: {total} streams ended, {tally.outcomes['exact']} exact, "
              f"{tally.outcomes['prefix+store_unavailable']} prefix+store_unavailable, "
              f"other errors {dict((k, v) for k, v in tally.outcomes.items() if k.startswith('error'))}, "
              f"refused before start {dict(tally.refused)}, {tally.resumed} resumed across replicas, "
              f"violations {len(tally.violations)}")
        for violation in tally.violations[:20]:
            print("  violation:", violation)
        print(f"after the run: Redis {memory:.1f} MB, {count} keys, {forever} without an expiry, "
              f"{locks} chat locks left")
        for replica in replicas:
            replica.stop()
    emulator.kill()


def _up_emulator(port: int) -> bool:
    import httpx

    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/v1/chatflows", timeout=1).status_code < 500
    except httpx.HTTPError:
        return False


def rolling_restart(replicas: list[Replica]) -> str:
    took = []
    for replica in replicas:
        begun = time.monotonic()
        replica.proc.send_signal(signal.SIGTERM)
        replica.proc.wait(60)
        replica.start()
        took.append(f"{replica.name} {time.monotonic() - begun:.1f} s")
    return "SIGTERM, exit, start again: " + ", ".join(took)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["standalone", "cluster", "sentinel"], required=True)
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=30)
    parser.add_argument("--every", type=float, default=60)
    parser.add_argument("--logs", default="/tmp/redis-soak", help="where the gateways' logs go")
    asyncio.run(soak(parser.parse_args()))


if __name__ == "__main__":
    main()
