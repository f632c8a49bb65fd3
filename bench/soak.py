"""Soak: many streams for a long time, every answer checked, and what the gateways and Redis hold over time.

    python bench/soak.py --mode memory --minutes 30                        # one gateway; its store fills
    python bench/soak.py --mode standalone|cluster|sentinel --minutes 30   # two replicas on that Redis

With Redis, cut streams resume on the other replica, the primary fails at a third of the run
(`Deployment.fail_over`, tests/redis_topologies.py) and a rolling restart follows at two thirds. A
stream ends exact (seqs 1..N across resumes, the joined tokens equal to the `end` text and the
emulator's reply), as an exact prefix then `error` `store_unavailable` (what the failover promise
allows), with another error, refused, or inexact. bench/README.md says what it prints;
`tests/test_soak.py` runs `run_load` for about a minute and a half.
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from common import GATEWAY_PATH, rss_kb  # noqa: E402
from harness import Deployment, Servers  # noqa: E402

REPLY = "This is a deterministic mock reply. You said: "
WORDS = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november".split()
PREFIX = "prefix+store_unavailable"  # an exact prefix, then `error` `store_unavailable`


@dataclass
class Tally:
    completed: int = 0
    exact: int = 0
    resumed: int = 0
    failures: Counter = field(default_factory=Counter)  # by kind: "error <code>", "refused <status> <code>", ...
    first_token: list[float] = field(default_factory=list)  # seconds, since the last window
    window_done: int = 0
    inexact: list[str] = field(default_factory=list)
    examples: dict[str, str] = field(default_factory=dict)  # one message per failure kind
    last_stream: dict[str, str] = field(default_factory=dict)  # replica URL -> a stream it started

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
                    tally.fail(f"refused {r.status_code} {error.get('code')}", error.get("message", ""))
                    return
                await _read(r, events, 3 if cut else None, started, tally)
            break
        except httpx.TransportError:
            if events:
                break
            await asyncio.sleep(0.05)
    if not events:
        tally.fail("refused: no replica took the stream")
        return
    stream_id = tally.last_stream[where] = events[0][2]["streamId"]
    for _ in range(10):  # resume until the terminal event, on the other replica when there is one
        if events[-1][0] in ("end", "error"):
            break
        tally.resumed += 1
        live = urls()
        where = random.choice([u for u in live if u != where] or live)
        try:
            async with client.stream("GET", f"{where}/v1/streams/{stream_id}/events",
                                     headers={"Last-Event-ID": f"{stream_id}:{events[-1][1]}"}) as r:
                if r.status_code in (502, 503):  # a replica restarting, or Redis failing over: again
                    await r.aread()
                    await asyncio.sleep(0.2)
                    continue
                if r.status_code != 200:  # a live stream is never a 404
                    tally.inexact.append(stream_id)
                    return tally.fail(f"resume answered {r.status_code}", f"{stream_id} at {events[-1][1]}")
                await _read(r, events, None, started, tally)
        except httpx.TransportError:
            await asyncio.sleep(0.1)
    tally.completed += 1
    tally.window_done += 1
    last, text = events[-1], "".join(e[2]["text"] for e in events if e[0] == "token")
    contiguous = [e[1] for e in events] == list(range(1, len(events) + 1))
    if contiguous and last[0] == "end" and text == last[2]["text"] == REPLY + question:
        tally.exact += 1
    elif not contiguous or last[0] == "end":
        tally.inexact.append(stream_id)
    else:
        code = last[2].get("code") if last[0] == "error" else None
        tally.fail(PREFIX if code == "store_unavailable" else f"error {code or 'no terminal event'}",
                   str(last[2].get("message", "")) if last[0] == "error" else "")


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


def census(store: Deployment) -> str:
    keys = store.all_keys()
    return (f"{store.used_memory_mb():.1f} / {len(keys)} / {sum(ttl == -1 for ttl in keys.values())} / "
            f"{sum(key.startswith(b'fss:chat:') for key in keys)}")


# --- the command --------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["memory", *Deployment.MODES], default="memory")
    parser.add_argument("--minutes", type=float, default=30)
    parser.add_argument("--concurrency", type=int, default=150)
    parser.add_argument("--delay", type=float, default=0.05, help="seconds between tokens")
    parser.add_argument("--cut", type=float, default=0.1, help="share of streams cut and resumed")
    parser.add_argument("--every", type=float, default=30, help="seconds between rows")
    args = parser.parse_args()
    srv = Servers(Path(tempfile.mkdtemp(prefix="flowise-sse-soak-")), pin=False)
    store = Deployment(args.mode).__enter__() if args.mode != "memory" else None
    env = {"FLOWISE_SSE_TOKEN_SECRET": "soak", **(store.env if store else {})}
    gateways = ["gw0", "gw1"] if store else ["gw0"]
    tally, seconds, last_tick = Tally(), args.minutes * 60, [0.0]
    events = {seconds / 3: "failover", 2 * seconds / 3: "rolling restart"} if store else {}

    def urls() -> list[str]:
        live = [srv.url(g) for g in gateways if g in srv.procs and srv.procs[g].poll() is None]
        return live or [srv.url(gateways[-1])]

    def restart(g: str) -> str:
        begun = time.monotonic()
        srv.procs[g].send_signal(signal.SIGTERM)  # its readers resume on the other replica
        srv.procs[g].wait(60)
        srv.start_gateway(g, "emulator", env)
        return f"{g} {time.monotonic() - begun:.1f} s"

    async def on_tick(t: float) -> None:
        done, ft = tally.window()
        window, last_tick[0] = t - last_tick[0], t
        row = [f"{t:.0f}", tally.completed, tally.exact, tally.failures[PREFIX], len(tally.inexact),
               sum(v for k, v in tally.failures.items() if k.startswith("error")),
               sum(v for k, v in tally.failures.items() if k.startswith("refused")), tally.resumed,
               f"{done / window:.1f}", f"{ft * 1000:.0f} ms"]
        row += [f"{rss_kb([srv.pid(g)]) / 1024:.0f} MB / {psutil.Process(srv.pid(g)).num_fds()}"
                if srv.procs[g].poll() is None else "down" for g in gateways]
        if store:
            row.append(await asyncio.to_thread(census, store))
        print(f"| {' | '.join(map(str, row))} | {os.getloadavg()[0]:.1f} |", flush=True)
        if events and t >= min(events):
            what = events.pop(min(events))
            if what == "failover":  # on a cluster, the primary of gw0's streams' slot; standalone: restarted empty
                took = await asyncio.to_thread(store.fail_over, tally.last_stream.get(srv.url("gw0"), ""))
                what += f": the primary failed, a primary served again {took:.1f} s later"
            else:
                what += ": " + ", ".join([await asyncio.to_thread(restart, g) for g in gateways])
            print(f"| {t:.0f} | **{what}** |", flush=True)

    try:
        srv.start_emulator("emulator", "emulator", "3.1.4")
        for g in gateways:
            srv.start_gateway(g, "emulator", env)
        print(f"{args.mode}: {args.minutes:g} min, {args.concurrency} clients, {args.delay * 1000:g} ms tokens, "
              f"{100 * args.cut:g}% cut and resumed; {os.cpu_count()} cores\n")
        head = ["t (s)", "completed", "exact", PREFIX, "inexact", "other errors", "refused before start", "resumed",
                "streams/s", "first token p50", *(f"{g} RSS / fds" for g in gateways),
                *(["Redis MB / keys / without expiry / chat locks"] if store else []), "load"]
        print(f"| {' | '.join(head)} |\n|{'---|' * len(head)}", flush=True)
        asyncio.run(run_load(urls, seconds, args.concurrency, args.cut, args.delay, tally, on_tick, args.every))
        exact = 100 * tally.exact / max(1, tally.completed)
        print(f"\n{args.mode} totals: completed={tally.completed} exact={tally.exact} ({exact:.2f}%) "
              f"resumed={tally.resumed} failed={dict(tally.failures)} inexact={tally.inexact[:5]}")
        for kind, message in tally.examples.items():
            print(f"  {kind}: e.g. {message}")
        if store:
            time.sleep(2)  # every stream has ended: its chat lock goes within moments
            print(f"after the run: Redis MB / keys / without expiry / chat locks: {census(store)}")
    finally:
        srv.stop_all()
        if store:
            store.__exit__()


if __name__ == "__main__":
    main()
