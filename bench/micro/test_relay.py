"""The OpenAI route's relay beside the native SSE route's: one stream of 5,000 tokens from the
package's emulated Flowise, through an in-process gateway, read whole by an httpx client, per route
and Flowise transport."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

from flowise_sse.api import create_app
from flowise_sse.emulator import DEMO_CHATFLOW_ID, EmulatorConfig, create_emulator_app
from flowise_sse.settings import Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.servers import ServerThread  # noqa: E402

TOKENS = {"overrideConfig": {"emulator": {"tokens": [f" w{i}" for i in range(5000)]}}}
ROUTES = {
    "native": (f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {"question": "q", **TOKENS}),
    "openai": ("/v1/chat/completions", {"model": DEMO_CHATFLOW_ID, "stream": True,
                                        "messages": [{"role": "user", "content": "q"}], **TOKENS}),
}


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("version", ["3.1.4", "1.6.2"])
def test_relay_fiveThousandTokens(benchmark, version, route):
    path, body = ROUTES[route]
    with ServerThread(create_emulator_app(EmulatorConfig(version=version)), lifespan="off") as flowise, \
            ServerThread(create_app(Settings(flowise_url=flowise.url, api_keys=["bench"]))) as gateway, \
            httpx.Client(base_url=gateway.url, timeout=120, headers={"Authorization": "Bearer bench"}) as client:
        def one() -> int:
            with client.stream("POST", path, json=body) as response:
                return sum(len(chunk) for chunk in response.iter_bytes())

        one()  # warms the pools
        benchmark.extra_info["bytes"] = benchmark.pedantic(one, rounds=5)
