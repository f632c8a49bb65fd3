"""A load-generating client process for the concurrency runs (run.py starts one or more).

    python bench/loadgen.py --port N --target gateway|flowise --streams 1000 --tokens 40 \
        --delay 0.05 --ramp 1.0 --start-at <time.monotonic() value> --out result.json

Opens `--streams` streams spread evenly over `--ramp` seconds from `--start-at` (CLOCK_MONOTONIC is
shared by every process on the machine, so several workers start together), reads them with the
lean client of common.py, and writes one JSON document: per stream its outcome and timings, the
inter-token gaps (with the arrival time of the token ending each), each token's lateness against the
upstream's schedule, and this process's own CPU time.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402

from common import (  # noqa: E402
    DEMO_CHATFLOW_ID,
    flowise_body,
    gateway_body,
    http_request,
    lean_stream,
    own_cpu,
    raise_nofile,
    run_async,
    tokens_for,
)


async def run(args: argparse.Namespace) -> dict:
    tokens = tokens_for(args.tokens)
    expected = "".join(tokens)
    if args.target == "gateway":
        path = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
        body = gateway_body(tokens, args.delay)
    else:
        path = f"/api/v1/prediction/{DEMO_CHATFLOW_ID}"
        body = flowise_body(tokens, args.delay)
    if args.counted:  # the same tokens ("t0 ", "t1 ", ...), made by the upstream
        body["overrideConfig"]["emulator"] = {"count": args.tokens, "delay": args.delay}
    request = http_request("POST", path, args.port, body)
    flowise = args.target == "flowise"

    now = time.monotonic()
    if args.start_at > now:
        await asyncio.sleep(args.start_at - now)
    cpu0, wall0 = own_cpu(), time.monotonic()
    step = args.ramp / args.streams if args.streams else 0.0
    tasks = []
    for i in range(args.streams):
        due = wall0 + i * step
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(
            lean_stream(args.port, request, flowise, keep_times=True, timeout=args.timeout)))
    results = await asyncio.gather(*tasks)
    cpu1, wall1 = own_cpu(), time.monotonic()

    streams, gaps, arrivals, lateness = [], [], [], []
    for r in results:
        times = r.times
        gaps.extend(b - a for a, b in zip(times, times[1:]))
        arrivals.extend(times[1:])
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
    return {"streams": streams, "gaps": gaps, "arrivals": arrivals, "lateness": lateness, "cpu": cpu1 - cpu0,
            "wall": wall1 - wall0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--target", choices=["gateway", "flowise"], default="gateway")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--tokens", type=int, default=40)
    parser.add_argument("--delay", type=float, default=0.05)
    parser.add_argument("--ramp", type=float, default=1.0)
    parser.add_argument("--start-at", type=float, default=0.0)
    parser.add_argument("--timeout", type=float, default=120.0)
    parser.add_argument("--counted", action="store_true",
                        help="ask for the tokens by count (flowise-lite, flowise-lite-sio), not as a list: a list "
                             "rides in the request and stays with the run, which a real client's does not")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    raise_nofile()
    result = run_async(lambda: run(args))
    Path(args.out).write_bytes(orjson.dumps(result))


if __name__ == "__main__":
    main()
