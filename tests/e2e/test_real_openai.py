"""The OpenAI-compatible API in front of each real Flowise release (1.6.2, 1.8.4, 2.0.7 over
socket.io; 2.2.8, 3.1.4 over SSE), with the `openai` Python SDK and LangChain's `ChatOpenAI` as the
callers."""

from __future__ import annotations

import itertools
import time
import uuid

import openai
import pytest
from langchain_openai import ChatOpenAI

from .flowise_harness import FlowiseDeployment, GatewayFactory
from .mock_llm import MockLLM, reply_for, reply_tokens

pytestmark = pytest.mark.e2e


def marker() -> str:
    return f"m{uuid.uuid4().hex[:10]}"


def sdk(gateway) -> openai.OpenAI:
    # The gateway runs without keys here: any api_key is accepted.
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="any", max_retries=0, timeout=60)


def test_openai_sdk_streams_flowise_answer_exactly(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                                   mock_llm: MockLLM) -> None:
    question = f"Hello OpenAI clients {marker()}"
    direct = real_flowise.predict(real_flowise.chatflows.open, question)
    assert direct.status_code == 200, direct.text
    calls_before = len(mock_llm.requests_for(question))

    stream = sdk(gateways(real_flowise)).chat.completions.create(
        model=real_flowise.chatflows.open, messages=[{"role": "user", "content": question}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)

    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    contents = [c.choices[0].delta.content for c in chunks[1:-2]]
    # Token for token what the LLM streamed through Flowise, and as a whole Flowise's own answer.
    assert contents == reply_tokens(question)
    assert "".join(contents) == direct.json()["text"] == reply_for(question)
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is None  # a chatflow reports no usage
    assert len(mock_llm.requests_for(question)) == calls_before + 1  # one prediction upstream


def test_openai_sdk_whole_answer_by_chatflow_name(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    api = sdk(gateways(real_flowise))
    names = {m.id: m.name for m in api.models.list()}
    name = names[real_flowise.chatflows.open]
    assert list(names.values()).count(name) == 1
    question = f"Whole answer please {marker()}"

    result = api.chat.completions.create(model=name, messages=[{"role": "user", "content": question}])

    assert result.choices[0].message.content == reply_for(question)


def test_openai_history_reaches_the_llm_once(real_flowise: FlowiseDeployment, gateways: GatewayFactory,
                                             mock_llm: MockLLM) -> None:
    # Stateless (a fresh chat per request): the history comes from the messages. Named chat: from
    # Flowise's memory on 3.x (so it must not also be sent), from the messages on 1.6.2.
    api = sdk(gateways(real_flowise))
    chat = f"chat-{marker()}"
    first = f"My name is Ada {marker()}"
    api.chat.completions.create(model=real_flowise.chatflows.open, messages=[{"role": "user", "content": first}],
                                extra_headers={"X-Flowise-Chat-Id": chat})
    for named in (False, True):
        question = f"What is my name? {marker()}"
        messages = [{"role": "user", "content": first}, {"role": "assistant", "content": reply_for(first)},
                    {"role": "user", "content": question}]
        headers = {"X-Flowise-Chat-Id": chat} if named else {}
        api.chat.completions.create(model=real_flowise.chatflows.open, messages=messages, extra_headers=headers)
        [call] = mock_llm.requests_for(question)
        received = [(m["role"], m["content"]) for m in call.messages if m["role"] != "system"]
        assert received == [("user", first), ("assistant", reply_for(first)), ("user", question)], (named, received)


def test_openai_llm_error_raises_api_error(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    stream_or_error = sdk(gateways(real_flowise)).chat.completions.create
    with pytest.raises(openai.APIError) as raised:
        # 1.6.2 fails before the stream (a 502), 3.1.4 inside it (an error chunk): both raise.
        for _ in stream_or_error(model=real_flowise.chatflows.open, stream=True,
                                 messages=[{"role": "user", "content": f"Please fail [[http400]] {marker()}"}]):
            pass
    assert raised.value.message


def test_langchain_astream_and_invoke(real_flowise: FlowiseDeployment, gateways: GatewayFactory) -> None:
    import asyncio

    llm = ChatOpenAI(base_url=gateways(real_flowise).url + "/v1", api_key="any", model=real_flowise.chatflows.open,
                     max_retries=0, timeout=60)
    question = f"LangChain here {marker()}"

    async def collect() -> list[str]:
        return [chunk.content async for chunk in llm.astream(question)]

    pieces = asyncio.run(collect())
    assert [p for p in pieces if p] == reply_tokens(question)
    again = f"LangChain invoke {marker()}"
    assert llm.invoke(again).content == reply_for(again)


def test_openai_client_leaving_closes_the_upstream(real_flowise: FlowiseDeployment,
                                                   gateways: GatewayFactory) -> None:
    # The gateway's default (continue) would keep a native stream running: an OpenAI one is aborted.
    gateway = gateways(real_flowise)
    port = real_flowise.port
    api = sdk(gateway)
    question = f"[[delay=300]] slow answer for the OpenAI disconnect check {marker()} " + " ".join(["word"] * 20)
    stream = api.chat.completions.create(model=real_flowise.chatflows.open, stream=True,
                                         messages=[{"role": "user", "content": question}])
    got = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            got += 1
            if got == 2:
                break
    stream.close()
    # Flowise goes on producing a token every 300 ms for seconds (a classic chain ignores aborts):
    # once the upstream is closed, no connection to it keeps receiving data.
    deadline = time.monotonic() + 3.0
    while True:
        samples = []
        for _ in range(3):
            samples.append(gateway.upstream_connections(port))
            time.sleep(0.6)
        receiving = set.intersection(*(set(sample) for sample in samples))
        for earlier, later in itertools.pairwise(samples):
            receiving = {inode for inode in receiving if later[inode] - earlier[inode] >= 15}
        if not receiving:
            break
        assert time.monotonic() < deadline, f"still receiving from Flowise: {receiving}\n{gateway.log_tail()}"
    follow_up = f"after the OpenAI disconnect {marker()}"
    assert api.chat.completions.create(model=real_flowise.chatflows.open,
                                       messages=[{"role": "user", "content": follow_up}]).choices[0].message.content \
        == reply_for(follow_up)


def test_openai_npm_sdk_streams_flowise_answer_exactly(real_flowise: FlowiseDeployment,
                                                       gateways: GatewayFactory) -> None:
    import asyncio

    from ..test_openai_node import node

    question = f"Hello from node {marker()}"
    result = asyncio.run(node(gateways(real_flowise), "stream", question, model=real_flowise.chatflows.open))
    chunks = result["chunks"]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]] == reply_tokens(question)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
