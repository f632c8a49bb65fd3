"""A load-generating client process of the concurrency runs (concurrency.py starts one per 1,000 streams).

Opens `--streams` gateway streams spread evenly over `--ramp` seconds from `--start-at` (a
CLOCK_MONOTONIC value, shared by every process on the machine, so several clients start together),
each asking the upstream for `--tokens` tokens `--delay` seconds apart, reads them with the lean
client, and writes to `--out`: each stream's outcome and timings, the inter-token gaps, each token's
lateness against the upstream's schedule, and this process's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402

from common import (  # noqa: E402
    GATEWAY_PATH, cpu_seconds, lean_stream, raise_nofile, prediction, run_async, tokens_for)


async def run(args: argparse.Namespace) -> dict:
    expected = "".join(tokens_for(args.tokens))
    url = f"http://127.0.0.1:{args.port}{GATEWAY_PATH}"
    body = orjson.dumps(prediction(count=args.tokens, delay=args.delay))
    await asyncio.sleep(max(0.0, args.start_at - time.monotonic()))
    cpu0, wall0 = cpu_seconds(os.getpid()), time.monotonic()
    step = args.ramp / args.streams if args.streams else 0.0
    tasks = []
    for i in range(args.streams):
        await asyncio.sleep(max(0.0, wall0 + i * step - time.monotonic()))
        tasks.append(asyncio.create_task(lean_stream(url, body, False, keep_times=True, timeout=args.timeout)))
    results = await asyncio.gather(*tasks)
    cpu1, wall1 = cpu_seconds(os.getpid()), time.monotonic()

    streams, gaps, lateness = [], [], []
    for r in results:
        times = r.times
        gaps.extend(b - a for a, b in zip(times, times[1:]))
        # How late each token is against the upstream's schedule (token k at start + k * delay), the start
        # being the one that makes the stream's most punctual token exactly on time: never negative.
        if times:
            shifted = [t - k * args.delay for k, t in enumerate(times)]
            anchor = min(shifted)
            lateness.extend(x - anchor for x in shifted)
        streams.append({
            "ok": r.status == 200 and r.terminal == "end" and r.text == expected,
            "status": r.status, "terminal": r.terminal, "tokens": r.tokens,
            "error": None if r.error is None else str(r.error)[:300],
            "t_sent": r.t_sent, "t_first": r.t_first, "t_done": r.t_done,
            "span": (times[-1] - times[0]) if len(times) > 1 else None,
        })
    return {"streams": streams, "gaps": gaps, "lateness": lateness, "cpu": cpu1 - cpu0,
            "wall": wall1 - wall0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    raise_nofile()
    Path(args.out).write_bytes(orjson.dumps(run_async(lambda: run(args))))


if __name__ == "__main__":
    main()
