"""`/v1/responses` with the clients that speak it first as callers: the OpenAI Agents SDK for
Python (`Runner.run_streamed` on an `OpenAIResponsesModel`), the Vercel AI SDK (`ai` +
`@ai-sdk/openai`'s `.responses(...)`, run by Node from tests/ai_sdk) and Codex CLI (`codex exec`
with a model provider whose `wire_api` is "responses", from tests/codex_cli); tests/setup.sh
installs the Node ones from their lock files. Against emulated Flowise 3.1.4 (and 1.6.2 where the
transport matters)."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import httpx
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, set_tracing_disabled
from openai import AsyncOpenAI

from flowise_sse.emulator import DEMO_CHATFLOW_ID, UPLOADS_CHATFLOW_ID

from .helpers import REPLY
from .servers import ServerThread

TESTS = Path(__file__).parent
AI_SDK = TESTS / "ai_sdk"
CODEX = TESTS / "codex_cli" / "node_modules" / ".bin" / "codex"
KEY = "clients-key"

set_tracing_disabled(True)  # the Agents SDK would otherwise export traces to OpenAI


@pytest.fixture(params=["3.1.4"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def gateway(gateways, flowise) -> ServerThread:
    return gateways(flowise.url, api_keys=[KEY])


def flowise_answer(flowise: ServerThread, question: str) -> str:
    answer = httpx.post(f"{flowise.url}/api/v1/prediction/{DEMO_CHATFLOW_ID}", json={"question": question}, timeout=20)
    return str(answer.json()["text"])


def words(text: str) -> list[str]:
    first, *rest = text.split(" ")
    return [first] + [" " + word for word in rest]


# --- the OpenAI Agents SDK -------------------------------------------------------------------------
def agent(gateway: Any, model: str = DEMO_CHATFLOW_ID) -> Agent[Any]:
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20)
    return Agent(name="chatflow", instructions="You answer questions.",
                 model=OpenAIResponsesModel(model=model, openai_client=client), model_settings=ModelSettings())


@pytest.mark.parametrize("version", ["1.6.2", "3.1.4"])
async def test_agentsSdk_whenRunStreamed_thenFlowisesTokensExactly_andTheFinalOutput(gateway, flowise):
    result = Runner.run_streamed(agent(gateway), input="Hello agents")
    deltas = [event.data.delta async for event in result.stream_events()
              if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"]
    answer = flowise_answer(flowise, "Hello agents")
    assert deltas == words(answer) and result.final_output == answer
    assert result.last_response_id.startswith("resp_")
    sent = [r for r in flowise.app.requests if r["body"]["question"] == "Hello agents"][0]["body"]
    assert "overrideConfig" not in sent  # the agent's instructions are ignored by default (the chatflow's prompt)


async def test_agentsSdk_whenPreviousResponseId_thenTheSameFlowiseChat(gateway, flowise):
    the_agent = agent(gateway)
    first = await Runner.run(the_agent, input="I am Ada")
    second = Runner.run_streamed(the_agent, input="What is my name?", previous_response_id=first.last_response_id)
    async for _ in second.stream_events():
        pass
    asked, continued = (r["body"] for r in list(flowise.app.requests)[-2:])
    assert asked["chatId"] == continued["chatId"] and "history" not in continued
    assert second.final_output == REPLY + "What is my name?"


# --- the Vercel AI SDK -----------------------------------------------------------------------------
async def ai_sdk(gateway: Any, prompt: str, mode: str = "stream", **case: Any) -> dict[str, Any]:
    assert (AI_SDK / "node_modules" / "ai").is_dir(), "the AI SDK is missing: run bash tests/setup.sh"
    case = {"baseURL": gateway.url + "/v1", "apiKey": KEY, "model": DEMO_CHATFLOW_ID, "prompt": prompt,
            "mode": mode, **case}
    proc = await asyncio.create_subprocess_exec(
        "node", str(AI_SDK / "client.mjs"), json.dumps(case),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return dict(json.loads(out))


@pytest.mark.parametrize("version", ["1.6.2", "3.1.4"])
async def test_aiSdk_whenStreamText_thenFlowisesTokensExactly(gateway, flowise):
    result = await ai_sdk(gateway, "Hello AI SDK")
    answer = flowise_answer(flowise, "Hello AI SDK")
    assert result.get("error") is None, result
    assert result["deltas"] == words(answer) and result["text"] == answer
    assert result["finishReason"] == "stop" and result["responseId"].startswith("resp_")
    assert result["parts"][-1] == "finish" and "error" not in result["parts"]


async def test_aiSdk_whenPreviousResponseId_thenTheSameFlowiseChat(gateway, flowise):
    first = await ai_sdk(gateway, "I am Ada", mode="generate")
    second = await ai_sdk(gateway, "What is my name?", mode="generate", previousResponseId=first["responseId"])
    asked, continued = (r["body"] for r in list(flowise.app.requests)[-2:])
    assert asked["chatId"] == continued["chatId"] and second["text"] == REPLY + "What is my name?"


async def test_aiSdk_whenFlowiseThinksAndCites_thenReasoningAndSources(gateway):
    controls = {"thinking": ["Let me ", "think."], "tokens": ["Hi"], "events": [
        {"event": "sourceDocuments", "data": [{"pageContent": "a", "metadata": {"source": "https://example.com/a"}}]}]}
    result = await ai_sdk(gateway, "q", body={"overrideConfig": {"emulator": controls}})
    assert result.get("error") is None, result
    assert result["text"] == "Hi" and result["reasoning"] == "Let me think."
    assert result["sources"] == ["https://example.com/a"]


async def test_aiSdk_whenAnImageUrl_thenAFlowiseUploadOnAVisionChatflow(gateway, flowise):
    url = "https://images.example/cat.png"
    result = await ai_sdk(gateway, "What is it?", model=UPLOADS_CHATFLOW_ID, image=url)
    assert result.get("error") is None, result
    assert flowise.app.requests[-1]["body"]["uploads"] == [
        {"data": url, "type": "url", "name": "cat.png", "mime": "image/png"}]


async def test_aiSdk_whenTheLLMFails_thenAnErrorPartWithFlowisesMessage(gateway):
    result = await ai_sdk(gateway, "fail", body={"overrideConfig": {"emulator": {"error": "429 mock quota",
                                                                                  "errorAfter": 2}}})
    assert "429 mock quota" in result["error"]


# --- Codex CLI -------------------------------------------------------------------------------------
async def codex(gateway: Any, home: Path, *args: str, model: str = DEMO_CHATFLOW_ID) -> list[dict[str, Any]]:
    """`codex exec --json` with the gateway as its model provider (docs/openai-responses.md's
    config); its JSONL events."""
    assert CODEX.exists(), "Codex CLI is missing: run bash tests/setup.sh"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(
        f'model = "{model}"\nmodel_provider = "flowise"\n\n[model_providers.flowise]\n'
        f'name = "Flowise gateway"\nbase_url = "{gateway.url}/v1"\nwire_api = "responses"\n'
        'env_key = "FLOWISE_GATEWAY_KEY"\n')
    work = home.parent / "work"
    work.mkdir(exist_ok=True)
    env = {"PATH": os.environ["PATH"], "HOME": str(home.parent), "CODEX_HOME": str(home), "FLOWISE_GATEWAY_KEY": KEY}
    proc = await asyncio.create_subprocess_exec(
        str(CODEX), "exec", "--json", "--skip-git-repo-check", *args, cwd=work, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-3000:]
    return [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]


def agent_messages(events: list[dict[str, Any]]) -> list[str]:
    return [e["item"]["text"] for e in events if e["type"] == "item.completed" and e["item"]["type"] == "agent_message"]


async def test_codex_whenExec_thenFlowisesAnswer_andItsToolsAndPromptsIgnored(gateway, flowise, tmp_path):
    events = await codex(gateway, tmp_path / "codex", "Say hi")
    assert agent_messages(events) == [REPLY + "Say hi"]
    assert events[-1]["type"] == "turn.completed"
    sent = flowise.app.requests[-1]["body"]
    # Codex sends its prompts as developer messages, an environment block and nine tools: the
    # chatflow gets the user's prompt as the question (and Codex's context as an earlier turn).
    assert sent["question"] == "Say hi" and "overrideConfig" not in sent


async def test_codex_whenASessionGoesOn_thenTheConversationReachesFlowise(gateway, flowise, tmp_path):
    home = tmp_path / "codex"
    await codex(gateway, home, "I am Ada")
    events = await codex(gateway, home, "resume", "--last", "What is my name?")
    assert agent_messages(events) == [REPLY + "What is my name?"]
    # store: false, so Codex sends the whole conversation again: the earlier turn is the history.
    history = [(h["role"], h["content"]) for h in flowise.app.requests[-1]["body"]["history"]]
    assert ("userMessage", "I am Ada") in history and ("apiMessage", REPLY + "I am Ada") in history
