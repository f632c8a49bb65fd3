"""Soak: many streams for a long time, every answer checked, and what the gateways hold over time.

    python bench/soak.py --mode memory --minutes 30   # one gateway; its store fills and stays full
    python bench/soak.py --mode redis --minutes 30    # two replicas on Redis, resumes across, a SIGTERM

An answer is exact when its events carry seqs 1..N without a gap or duplicate across resumes and the
joined tokens equal both the `end` text and the emulator's reply. bench/README.md says what it prints;
`tests/test_soak.py` runs the same load (`run_load`) for about a minute and a half.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httpx
import orjson
import psutil
from httpx_sse import EventSource

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import GATEWAY_PATH, start_redis, stop  # noqa: E402
from harness import Servers  # noqa: E402

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


async def _read(response: httpx.Response, events: list[tuple[str, int, Any]], limit: int | None,
                started: float, tally: Tally) -> None:
    async for sse in EventSource(response).aiter_sse():
        if sse.event == "token" and not any(e[0] == "token" for e in events):
            tally.first_token.append(time.monotonic() - started)
        events.append((sse.event, int(sse.id.rsplit(":", 1)[1]), orjson.loads(sse.data)))
        if sse.event in ("end", "error") or (limit and len(events) >= limit):
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
            async with client.stream("POST", f"{where}{GATEWAY_PATH}", json=body) as r:
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


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


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
    srv = Servers(Path(tempfile.mkdtemp(prefix="flowise-sse-soak-")), pin=False)
    redis_proc, redis_url = start_redis() if args.mode == "redis" else (None, None)
    env = {"FLOWISE_SSE_TOKEN_SECRET": "soak", **({"FLOWISE_SSE_REDIS_URL": redis_url} if redis_url else {})}
    gateways = ["gw0", "gw1"] if redis_url else ["gw0"]
    tally, seconds, last_tick, restarted = Tally(), args.minutes * 60, [0.0], [False]

    def urls() -> list[str]:
        live = [srv.url(g) for g in gateways if g in srv.procs and srv.procs[g].poll() is None]
        return live or [srv.url(gateways[-1])]

    async def on_tick(t: float) -> None:
        done, ft = tally.window()
        window, last_tick[0] = t - last_tick[0], t
        line = (f"t={t:6.0f}s completed={tally.completed} exact={tally.exact} resumed={tally.resumed} "
                f"failed={dict(tally.failures)} rate={done / window:.1f}/s first_token_p50={ft * 1000:.0f}ms")
        for g in gateways:
            if g in srv.procs and srv.procs[g].poll() is None:
                line += f" | {g} rss={rss_mb(srv.pid(g)):.0f}MB fds={psutil.Process(srv.pid(g)).num_fds()}"
        if redis_url:
            keys, no_ttl, _, used = await asyncio.to_thread(keys_without_expiry, redis_url)
            line += f" | redis {used:.0f}MB keys={keys} no_ttl={no_ttl}"
        print(line, flush=True)
        if redis_url and t >= seconds / 2 and not restarted[0]:  # its readers resume on gw1
            restarted[0] = True
            print("SIGTERM to gw0", flush=True)
            srv.procs["gw0"].send_signal(signal.SIGTERM)
            await asyncio.to_thread(srv.procs["gw0"].wait, 60)
            await asyncio.to_thread(srv.start_gateway, "gw0", "emulator", env)
            print("gw0 started again", flush=True)

    try:
        srv.start_emulator("emulator", "emulator", "3.1.4")
        for g in gateways:
            srv.start_gateway(g, "emulator", env)
        asyncio.run(run_load(urls, seconds, args.concurrency, args.cut, args.delay, tally, on_tick, args.every))
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
        srv.stop_all()
        stop(redis_proc)


if __name__ == "__main__":
    main()
