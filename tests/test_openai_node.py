"""The `openai` npm SDK (run by node, installed in tests/openai_node by tests/setup.sh) as the caller
of the OpenAI-compatible API, against emulated Flowise 1.6.2 (socket.io) and 3.1.4 (SSE)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID

NODE_DIR = Path(__file__).parent / "openai_node"
KEY = "node-key"


@pytest.fixture(params=["1.6.2", "3.1.4"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def gateway(gateways, flowise):
    return gateways(flowise.url, api_keys=[KEY])


async def node(gateway, mode: str, question: str = "Hello node", **case: Any) -> dict[str, Any]:
    assert (NODE_DIR / "node_modules" / "openai").is_dir(), "the openai npm SDK is missing: run bash tests/setup.sh"
    case = {"baseURL": gateway.url + "/v1", "apiKey": KEY, "model": DEMO_CHATFLOW_ID, "question": question,
            "mode": mode, **case}
    proc = await asyncio.create_subprocess_exec(
        "node", str(NODE_DIR / "client.mjs"), json.dumps(case),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def flowise_answer(flowise, question: str) -> str:
    return httpx.post(f"{flowise.url}/api/v1/prediction/{DEMO_CHATFLOW_ID}", json={"question": question},
                      timeout=20).json()["text"]


async def test_nodeSdk_whenModelsListed_thenChatflowsWithNames(gateway):
    result = await node(gateway, "models")
    names = {m["id"]: m["name"] for m in result["models"]}
    assert names[DEMO_CHATFLOW_ID] == "Demo chat (emulated Flowise)"


async def test_nodeSdk_whenStreamingWithUsage_thenFlowisesTextInWellFormedChunks(gateway, flowise):
    result = await node(gateway, "stream", "Hello node stream", body={"stream_options": {"include_usage": True}})
    chunks = result["chunks"]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] is None  # none reported, none invented
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
    assert text == flowise_answer(flowise, "Hello node stream")


async def test_nodeSdk_whenNotStreaming_thenFlowisesAnswer(gateway, flowise):
    result = await node(gateway, "create", "Hello node whole")
    assert result["completion"]["choices"][0]["message"]["content"] == flowise_answer(flowise, "Hello node whole")
    assert result["completion"]["id"] == f"chatcmpl-{result['streamId']}"


async def test_nodeSdk_whenLLMFailsMidStream_thenAPIErrorThrown(gateway):
    result = await node(gateway, "stream",
                        body={"overrideConfig": {"emulator": {"error": "mock boom", "errorAfter": 2}}})
    assert result["error"]["isAPIError"] and "mock boom" in result["error"]["message"]


async def test_nodeSdk_whenUnknownModel_thenNotFoundError(gateway):
    result = await node(gateway, "create", model="missing flow")
    assert result["error"]["name"] == "NotFoundError" and result["error"]["status"] == 404


async def test_nodeSdk_whenAborted_thenUpstreamClosed(gateway, flowise):
    app = flowise.app
    before = app.client_disconnects
    result = await node(gateway, "abort", body={"overrideConfig": {"emulator": {"tokens": ["y"] * 400, "delay": 0.02}}})
    assert len(result["chunks"]) == 3
    deadline = time.monotonic() + 5
    while not (app.client_disconnects == before + 1 and app.active_predictions == 0):
        assert time.monotonic() < deadline, "the upstream prediction was not closed"
        await asyncio.sleep(0.01)
