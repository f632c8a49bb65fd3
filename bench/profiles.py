"""Section 4, where the gateway's CPU goes: `py-spy record` on the gateway as shipped during separate
runs of the first-token path, relay throughput and concurrency. py-spy writes its raw format
(collapsed stacks: `frame;frame;...;leaf count`, a frame being `function (file:line)`); the summary
here is the top frames of those samples, by package and by function, with no rules of its own."""

from __future__ import annotations

import functools
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson

from common import GATEWAY_PATH, cpu_seconds, lean_stream, prediction, run_async, tokens_for
from concurrency import measure_level, print_level, target_level
from harness import Config, Servers, Spy
from latency import LATENCY_TOKENS, ask

TOP = 12
NATIVE = "(no Python frame: native code)"


def _function(frame: str) -> str:
    """`func (file:line)` -> `func (file)`: a function's samples together, whatever its line."""
    func, _, where = frame.rpartition(" (")
    return f"{func} ({where.rpartition(':')[0] or where.rstrip(')')})" if func else frame


def _package(frame: str) -> str:
    """The top folder of py-spy's short file name (`flowise_sse/...`, `asyncio/...`), or the module."""
    return frame.rpartition(" (")[2].split("/")[0].split(":")[0].rstrip(")")


def summarize(path: Path) -> dict:
    """Samples by the package and the function of their innermost frame (self), and by the gateway's
    own functions anywhere on their stacks (inclusive: with what they call; nested frames overlap).
    py-spy ran with `--gil`, so every sample is a thread running Python or the native code it called."""
    own: Counter = Counter()
    packages: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [f for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
        total += n
        leaf = frames[-1] if frames else NATIVE
        own[_function(leaf)] += n
        packages[_package(leaf) if frames else NATIVE] += n
        for function in {_function(f) for f in frames if f.rpartition(" (")[2].startswith("flowise_sse/")}:
            inclusive[function] += n
    # Frames on (nearly) every stack say only that the server runs: `cli.main`, `server.serve`.
    shown = [(k, v) for k, v in inclusive.most_common() if v < 0.95 * total][:TOP + 6]
    return {"samples": total, "by_package": packages.most_common(TOP), "self": own.most_common(TOP),
            "inclusive": shown}


def profile_entry(title: str, out: Path | None, us_per_unit: float, unit: str, level: dict | None = None) -> dict:
    summary = summarize(out) if out else {"samples": 0}
    print(f"  profile {title}: {summary['samples']} samples, {us_per_unit:.1f} µs/{unit}; "
          f"top self: {summary.get('self', [])[:3]}")
    return {"title": title, "file": out.name if out else None, "us_per_unit": us_per_unit, "unit": unit,
            "level": level, **summary}


def run(cfg: Config, srv: Servers, profdir: Path, logdir: Path, deadline: float) -> list[dict]:
    runs = []
    n, expected = cfg.throughput_tokens, "".join(LATENCY_TOKENS)
    first_token, fast = orjson.dumps(prediction(LATENCY_TOKENS)), orjson.dumps(prediction(tokens_for(n)))

    async def sequential(url: str) -> int:  # the first-token path, as in section 1: one request at a time
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(cfg.profile_requests):
                await ask(client, url, first_token, False, expected)
        return cfg.profile_requests

    async def relay(url: str) -> int:  # one fast stream at a time, as in section 2: its tokens
        return sum([(await lean_stream(url, fast, False)).tokens for _ in range(cfg.profile_reps)])

    for name, title, unit, load, gateways in (
            ("first-token", f"First-token path, {{}} upstream: {cfg.profile_requests} sequential requests of "
             f"{len(LATENCY_TOKENS)} tokens", "request", sequential, (("sse", "gw_sse"), ("socketio", "gw_sio"))),
            ("throughput", f"Relay throughput, {{}} upstream: {cfg.profile_reps} x {n:,} tokens, no delay", "token",
             relay, (("sse", "gw_sse"), ("socketio", "gw_sio_lite")))):
        for transport, gw in gateways:
            if time.monotonic() > deadline:
                break
            out, pid = profdir / f"{name}-{transport}.txt", srv.pid(gw)
            spy, c0 = Spy(srv, pid, out, cfg.profile_rate), cpu_seconds(pid)
            units = run_async(functools.partial(load, srv.url(gw) + GATEWAY_PATH))
            runs.append(profile_entry(title.format(transport), spy.finish(), (cpu_seconds(pid) - c0) / max(1, units)
                                      * 1e6, unit))
    for transport, level in (("sse", target_level(cfg.sse_levels)), ("socketio", target_level(cfg.sio_levels))):
        if time.monotonic() > deadline:
            break
        r, out = measure_level(cfg, srv, transport, level, logdir, profdir / f"concurrency-{transport}-{level}.txt")
        print_level(r, "(profiled) ")
        runs.append(profile_entry(f"Concurrency, {transport} upstream: {level:,} streams x {cfg.conc_tokens} tokens "
                                  f"at {1 / cfg.conc_delay:.0f} tokens/s", out, r["gateway_us_per_token"], "token", r))
    return runs
