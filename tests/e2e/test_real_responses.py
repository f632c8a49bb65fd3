"""OpenAI's Responses API, images and reasoning in front of real Flowise 3.1.4, with the real clients
as callers: the `openai` Python SDK, the OpenAI Agents SDK, the Vercel AI SDK and Codex CLI. What
Flowise's memory and the LLM received is read from the mock LLM's records."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import Runner

from ..test_responses_clients import agent, agent_messages, ai_sdk, codex, words
from .flowise_harness import FlowiseDeployment, GatewayFactory
from .mock_llm import MockLLM, RecordedRequest, reply_for, reply_tokens, thought_for

pytestmark = [pytest.mark.e2e, pytest.mark.releases("3.1.4")]

# A real 1x1 PNG: Flowise stores a `file` upload under the chat, and hands its base64 on unchanged.
PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
       "RU5ErkJggg==")


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def sdk(gateway: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="any", max_retries=0, timeout=60)


def without_system(call: RecordedRequest) -> list[tuple[str, Any]]:
    return [(m["role"], m["content"]) for m in call.messages if m["role"] != "system"]


def call_asking(mock_llm: MockLLM, text: str) -> RecordedRequest:
    """The one LLM call with `text` in a user message (an image message may come after it)."""
    calls = [call for call in mock_llm.requests if any(
        m.get("role") == "user" and isinstance(m.get("content"), str) and text in m["content"] for m in call.messages)]
    assert len(calls) == 1, [c.messages for c in calls]
    return calls[0]


def test_openai_sdk_streams_and_returns_flowises_answer_exactly(real_flowise: FlowiseDeployment,
                                                                gateways: GatewayFactory) -> None:
    api = sdk(gateways(real_flowise))
    question = f"Hello Responses {marker()}"
    events = list(api.responses.create(model=real_flowise.chatflows.open, input=question, stream=True))
    assert [e.delta for e in events if e.type == "response.output_text.delta"] == reply_tokens(question)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed" and events[-1].response.output_text == reply_for(question)
    assert events[-1].response.usage is None  # a conversation chain reports none: none is invented
    whole_question = f"Whole response {marker()}"
    whole = api.responses.create(model=real_flowise.chatflows.open, input=whole_question)
    assert whole.output_text == reply_for(whole_question)
    assert api.responses.retrieve(whole.id).model_dump() == whole.model_dump()

    async def with_async_client() -> tuple[list[str], str]:
        async with openai.AsyncOpenAI(base_url=api.base_url, api_key="any", max_retries=0, timeout=60) as client:
            stream = await client.responses.create(model=real_flowise.chatflows.open, input=async_question, stream=True)
            deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
            return deltas, (await client.responses.create(model=real_flowise.chatflows.open,
                                                          input=async_question)).output_text

    async_question = f"Hello async Responses {marker()}"
    deltas, text = asyncio.run(with_async_client())
    assert deltas == reply_tokens(async_question) and text == reply_for(async_question)


def test_previous_response_id_continues_flowises_memory(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                                        mock_llm: MockLLM) -> None:
    api = sdk(gateways(real_flowise))
    first = f"My name is Ada {marker()}"
    second = f"What is my name? {marker()}"
    answered = api.responses.create(model=real_flowise.chatflows.open, input=first)
    api.responses.create(model=real_flowise.chatflows.open, input=second, previous_response_id=answered.id)
    # Only the new question was sent: the earlier turn came from Flowise's memory of the chat.
    assert without_system(call_asking(mock_llm, second)) == [
        ("user", first), ("assistant", reply_for(first)), ("user", second)]


def test_background_response_is_reread_exactly_and_cancel_stops_it(real_flowise: FlowiseDeployment,
                                                                   gateways: GatewayFactory) -> None:
    api = sdk(gateways(real_flowise))
    question = f"[[delay=50]] background {marker()} " + " ".join(["word"] * 10)
    started = api.responses.create(model=real_flowise.chatflows.open, input=question, background=True)
    assert started.status == "in_progress"
    whole = [e.model_dump() for e in api.responses.retrieve(started.id, stream=True)]
    assert whole[-1]["type"] == "response.completed"
    assert [e["delta"] for e in whole if e["type"] == "response.output_text.delta"] == reply_tokens(question)
    for after in (0, 3, len(whole) // 2, len(whole) - 2):
        again = [e.model_dump() for e in api.responses.retrieve(started.id, stream=True, starting_after=after)]
        assert again == whole[after + 1:]
    long_question = f"[[delay=300]] cancel me {marker()} " + " ".join(["word"] * 30)
    slow = api.responses.create(model=real_flowise.chatflows.open, background=True, input=long_question)
    deadline = time.monotonic() + 20
    while not api.responses.retrieve(slow.id).output:  # the first token is out: Flowise is streaming
        assert time.monotonic() < deadline, "no token within 20 s"
        time.sleep(0.1)
    assert api.responses.cancel(slow.id).status == "cancelled"
    events = list(api.responses.retrieve(slow.id, stream=True))
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"
    assert reply_for(long_question).startswith(events[-1].response.output_text)
    assert len(events[-1].response.output_text) < len(reply_for(long_question))  # stopped part way


@pytest.mark.parametrize("api_kind", ["responses", "chat"])
def test_images_reach_the_llm_from_both_apis(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                             mock_llm: MockLLM, api_kind: str) -> None:
    assert real_flowise.chatflows.vision
    api = sdk(gateways(real_flowise))
    question = f"What is in this picture? {marker()}"
    url = "https://images.example/cat.png"
    if api_kind == "responses":
        api.responses.create(model=real_flowise.chatflows.vision, input=[{"role": "user", "content": [
            {"type": "input_text", "text": question}, {"type": "input_image", "image_url": PNG},
            {"type": "input_image", "image_url": url}]}])
    else:
        api.chat.completions.create(model=real_flowise.chatflows.vision, messages=[{"role": "user", "content": [
            {"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": PNG}},
            {"type": "image_url", "image_url": {"url": url}}]}])
    call = call_asking(mock_llm, question)
    images = [part["image_url"]["url"] for m in call.messages if isinstance(m.get("content"), list)
              for part in m["content"] if part.get("type") == "image_url"]
    # The data URI's base64 unchanged (Flowise stored the file and read it back), the URL as given.
    assert [image.split(",")[-1] for image in images] == [PNG.split(",")[-1], url]
    with pytest.raises(openai.BadRequestError) as refused:  # a chatflow without image uploads says so
        api.chat.completions.create(model=real_flowise.chatflows.open, messages=[{"role": "user", "content": [
            {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert "isImageUploadAllowed" in refused.value.message


def test_flowise_thinking_is_reasoning_on_both_apis(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                                     mock_llm: MockLLM) -> None:
    # An Agentflow's LLM node on a reasoning model: Flowise 3.1 streams its summary as `thinking`.
    assert real_flowise.chatflows.reasoning
    api = sdk(gateways(real_flowise))
    question = f"Think first {marker()}"
    events = list(api.responses.create(model=real_flowise.chatflows.reasoning, input=question, stream=True))
    assert mock_llm.requests_for(question)[0].body.get("reasoning")  # the Responses API, asked to sum up
    done = events[-1].response
    assert [item.type for item in done.output] == ["reasoning", "message"]
    assert done.output[0].summary[0].text == thought_for(question) and done.output_text == reply_for(question)
    deltas = [e.delta for e in events if e.type == "response.reasoning_summary_text.delta"]
    assert "".join(deltas) == thought_for(question)
    chat_question = f"Think again {marker()}"
    chunks = list(api.chat.completions.create(model=real_flowise.chatflows.reasoning, stream=True,
                                              messages=[{"role": "user", "content": chat_question}]))
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == thought_for(chat_question)
    assert "".join(d.get("content") or "" for d in deltas) == reply_for(chat_question)


def test_agents_sdk_run_streamed(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    gateway = gateways(real_flowise)
    question = f"Hello agents {marker()}"

    async def run() -> tuple[list[str], Any]:
        result = Runner.run_streamed(agent(gateway, real_flowise.chatflows.open), input=question)
        deltas = [event.data.delta async for event in result.stream_events()
                  if event.type == "raw_response_event" and event.data.type == "response.output_text.delta"]
        return deltas, result.final_output

    deltas, final = asyncio.run(run())
    assert deltas == reply_tokens(question) and final == reply_for(question)


def test_ai_sdk_stream_text(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    question = f"Hello AI SDK {marker()}"
    result = asyncio.run(ai_sdk(gateways(real_flowise), question, model=real_flowise.chatflows.open))
    assert result.get("error") is None, result
    assert result["deltas"] == words(reply_for(question)) == reply_tokens(question)
    assert result["finishReason"] == "stop"


def test_codex_exec(real_flowise: FlowiseDeployment, gateways: GatewayFactory, mock_llm: MockLLM,
                    tmp_path: Path) -> None:
    prompt = f"Say hi {marker()}"
    events = asyncio.run(codex(gateways(real_flowise), tmp_path / "codex", prompt, model=real_flowise.chatflows.open))
    assert agent_messages(events) == [reply_for(prompt)]
    assert len(mock_llm.requests_for(prompt)) == 1

