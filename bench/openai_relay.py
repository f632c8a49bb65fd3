"""The OpenAI route's relay cost beside the native SSE route's: one stream of N tokens from an
emulated Flowise, read whole by an httpx client, per route and Flowise transport (a quick check,
not part of run.py: `.venv/bin/python bench/openai_relay.py [--tokens 5000] [--reps 7]`)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flowise_sse.api import create_app  # noqa: E402
from flowise_sse.emulator import DEMO_CHATFLOW_ID, EmulatorConfig, create_emulator_app  # noqa: E402
from flowise_sse.settings import Settings  # noqa: E402
from tests.servers import ServerThread  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tokens", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    control = {"overrideConfig": {"emulator": {"tokens": [f" w{i}" for i in range(args.tokens)]}}}
    routes = {
        "native": (f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"question": "q", **control}),
        "openai": ("/v1/chat/completions", {"model": DEMO_CHATFLOW_ID, "stream": True,
                                            "messages": [{"role": "user", "content": "q"}], **control}),
    }
    for version in ("3.1.4", "1.6.2"):
        flowise_app = create_emulator_app(EmulatorConfig(version=version))
        with ServerThread(flowise_app, lifespan="off") as flowise, \
                ServerThread(create_app(Settings(flowise_url=flowise.url, api_keys=["bench"]))) as gateway, \
                httpx.Client(base_url=gateway.url, timeout=120, headers={"Authorization": "Bearer bench"}) as client:
            times: dict[str, list[float]] = {name: [] for name in routes}
            sizes: dict[str, int] = {}
            for _ in range(args.reps):  # interleaved, so a noisy neighbour hits both routes alike
                for name, (path, body) in routes.items():
                    started = time.perf_counter()
                    with client.stream("POST", path, json=body) as response:
                        sizes[name] = sum(len(chunk) for chunk in response.iter_bytes())
                    times[name].append(time.perf_counter() - started)
            for name, runs in times.items():
                median = statistics.median(runs[1:] or runs)  # the first run warms the pools
                print(f"flowise {version} {name:6}: {args.tokens} tokens, {sizes[name]} bytes in "
                      f"{median * 1000:.0f} ms (median of {len(runs[1:] or runs)}), {args.tokens / median:.0f} tokens/s")


if __name__ == "__main__":
    main()
