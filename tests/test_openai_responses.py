"""OpenAI's Responses API (`/v1/responses`) with the `openai` Python SDK (sync and async) as the
caller, and raw HTTP for what a client like Codex CLI sends; images, audio and reasoning on both
OpenAI APIs. Against emulated Flowise 1.6.2 (socket.io) and 3.1.4 (SSE); 3.x-only features
(thinking, usage) on 3.1.4 alone."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import httpx
import openai
import pytest

from flowise_sse.emulator import DEMO_CHATFLOW_ID, UPLOADS_CHATFLOW_ID

from .helpers import REPLY, until, wait_until
from .servers import RedisServer, ServerThread

DEMO_NAME = "Demo chat (emulated Flowise)"
KEY, OTHER_KEY = "gateway-key-1", "gateway-key-2"
PREFIX = hashlib.sha256(KEY.encode()).hexdigest()[:16]  # the key's chat space (api/tenants.py)
PNG = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n-pixels-").decode()


@pytest.fixture(params=["1.6.2", "3.1.4"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def keyed_gateway(gateways, flowise) -> ServerThread:
    return gateways(flowise.url, api_keys=[KEY, OTHER_KEY])


def client(gateway: ServerThread, key: str = KEY, **options: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=20, **options)


def aclient(gateway: ServerThread, **options: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=KEY, max_retries=0, timeout=20, **options)


def emulator(**controls: Any) -> dict[str, Any]:
    return {"overrideConfig": {"emulator": controls}}


def flowise_answer(flowise: ServerThread, question: str, flow: str = DEMO_CHATFLOW_ID) -> str:
    answer = httpx.post(f"{flowise.url}/api/v1/prediction/{flow}", json={"question": question}, timeout=20)
    assert answer.status_code == 200, answer.text
    return str(answer.json()["text"])


def dumped(events: list[Any]) -> list[dict[str, Any]]:
    return [event.model_dump() for event in events]


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


# --- the openai SDK --------------------------------------------------------------------------------
def test_sdkSync_whenNotStreaming_thenFlowisesAnswerAsACompletedResponse(keyed_gateway, flowise):
    raw = client(keyed_gateway).responses.with_raw_response.create(model=DEMO_NAME, input="Hello responses")
    response = raw.parse()
    assert response.output_text == flowise_answer(flowise, "Hello responses")
    assert response.status == "completed" and response.object == "response" and response.model == DEMO_NAME
    assert response.id == "resp_" + raw.headers["x-flowise-stream-id"]
    assert response.usage is None  # this chatflow reports no usage: none is invented
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert flowise.app.requests[-1]["body"]["question"] == "Hello responses"


def test_sdkSync_whenStreaming_thenTheEventSequenceWithContiguousSequenceNumbers(keyed_gateway, flowise):
    events = list(client(keyed_gateway).responses.create(model=DEMO_CHATFLOW_ID, input="Hello stream", stream=True))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert set(types[4:-4]) == {"response.output_text.delta"} and len(types) > 10  # token by token
    assert [e.sequence_number for e in events] == list(range(len(events)))
    item_id = events[2].item.id
    assert {e.item_id for e in events if e.type == "response.output_text.delta"} == {item_id}
    answer = flowise_answer(flowise, "Hello stream")
    assert text_of(events) == events[-4].text == answer
    created, completed = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.id == completed.id and created.created_at == completed.created_at
    assert completed.status == "completed" and completed.output_text == answer and completed.output[0].id == item_id


async def test_sdkAsync_whenStreamingAndNot_thenTheSameAnswer(keyed_gateway, flowise):
    async with aclient(keyed_gateway) as api:
        stream = await api.responses.create(model=DEMO_CHATFLOW_ID, input="Hello async", stream=True)
        events = [event async for event in stream]
        whole = await api.responses.create(model=DEMO_CHATFLOW_ID, input="Hello async")
        again = await api.responses.retrieve(whole.id)
    assert text_of(events) == whole.output_text == flowise_answer(flowise, "Hello async")
    assert again.model_dump() == whole.model_dump()


def test_retrieve_whenStreamedEarlier_thenTheSameResponseAsItsLastEvent(keyed_gateway):
    api = client(keyed_gateway)
    events = list(api.responses.create(model=DEMO_CHATFLOW_ID, input="keep me", stream=True))
    assert api.responses.retrieve(events[-1].response.id).model_dump() == events[-1].response.model_dump()


# --- conversation state ----------------------------------------------------------------------------
def test_previousResponseId_whenSecondTurn_thenTheSameFlowiseChat_andHistoryOnlyWhereFlowiseNeedsIt(
        keyed_gateway, flowise, version):
    api = client(keyed_gateway)
    first = api.responses.with_raw_response.create(model=DEMO_CHATFLOW_ID, input="I am Ada")
    second = api.responses.with_raw_response.create(
        model=DEMO_CHATFLOW_ID, previous_response_id=first.parse().id,
        input=[{"role": "user", "content": "I am Ada"}, {"role": "assistant", "content": "Hi"},
               {"role": "user", "content": "What is my name?"}])
    asked, continued = (request["body"] for request in list(flowise.app.requests)[-2:])
    chat = first.headers["x-flowise-chat-id"]
    assert second.headers["x-flowise-chat-id"] == chat and asked["chatId"] == continued["chatId"] == f"{PREFIX}.{chat}"
    assert continued["question"] == "What is my name?"
    # >= 1.8 keeps the chat's turns itself (sent again, they would count twice); 1.6.2 reads them from the request.
    assert len(continued.get("history", [])) == (2 if version == "1.6.2" else 0)
    assert second.parse().previous_response_id == first.parse().id


def test_conversation_whenNamed_thenItIsTheFlowiseChat_andCarriedByPreviousResponseId(keyed_gateway, flowise):
    api = client(keyed_gateway)
    first = api.responses.create(model=DEMO_CHATFLOW_ID, input="one", conversation="conv-7")
    second = api.responses.create(model=DEMO_CHATFLOW_ID, input="two", previous_response_id=first.id)
    assert [r["body"]["chatId"] for r in list(flowise.app.requests)[-2:]] == [f"{PREFIX}.conv-7"] * 2
    assert first.conversation.id == second.conversation.id == "conv-7"
    with pytest.raises(openai.BadRequestError) as both:
        api.responses.create(model=DEMO_CHATFLOW_ID, input="x", conversation="c", previous_response_id=first.id)
    assert both.value.body["param"] == "conversation"


def test_storeFalse_whenLookedUp_thenNotFound_andBackgroundNeedsStore(keyed_gateway):
    api = client(keyed_gateway)
    unstored = api.responses.create(model=DEMO_CHATFLOW_ID, input="forget me", store=False)
    assert unstored.output_text and unstored.store is False
    with pytest.raises(openai.NotFoundError) as missing:
        api.responses.retrieve(unstored.id)
    assert missing.value.body["code"] == "response_not_found"
    with pytest.raises(openai.NotFoundError):
        api.responses.create(model=DEMO_CHATFLOW_ID, input="x", previous_response_id=unstored.id)
    with pytest.raises(openai.BadRequestError) as refused:
        api.responses.create(model=DEMO_CHATFLOW_ID, input="x", store=False, background=True)
    assert refused.value.body["param"] == "store"


# --- background, resume, cancel, delete ------------------------------------------------------------
def test_background_whenReadFromAnyPoint_thenExactlyTheEventsAfterIt(keyed_gateway, flowise):
    api = client(keyed_gateway)
    started = api.responses.create(model=DEMO_CHATFLOW_ID, input="slow background answer", background=True,
                                   extra_body=emulator(delay=0.02))
    assert started.status == "in_progress" and started.background is True
    whole = dumped(list(api.responses.retrieve(started.id, stream=True)))  # from the first event, live to the end
    assert whole[-1]["type"] == "response.completed"
    assert [e["sequence_number"] for e in whole] == list(range(len(whole)))
    for after in (0, 1, 4, len(whole) // 2, len(whole) - 2, len(whole) - 1):
        assert dumped(list(api.responses.retrieve(started.id, stream=True, starting_after=after))) == whole[after + 1:]
    assert whole[-1]["response"]["output"][0]["content"][0]["text"] == flowise_answer(flowise, "slow background answer")


async def test_background_whenTheStreamingClientLeaves_thenTheRunGoesOn_andResumesWithoutGapOrDuplicate(
        keyed_gateway, flowise):
    # The emulator is shared: earlier tests' predictions must be over before its counter is read.
    await until(lambda: flowise.app.active_predictions == 0, what="earlier predictions end")
    disconnects = flowise.app.client_disconnects
    async with aclient(keyed_gateway) as api:
        stream = await api.responses.create(model=DEMO_CHATFLOW_ID, input="resume me " + "word " * 20,
                                            background=True, stream=True, extra_body=emulator(delay=0.03))
        head = []
        async for event in stream:
            head.append(event)
            if len(head) == 6:
                break
        await stream.close()
        rest = [event async for event in await api.responses.retrieve(
            head[0].response.id, stream=True, starting_after=head[-1].sequence_number)]
    events = head + rest
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[-1].type == "response.completed"
    assert text_of(events) == flowise_answer(flowise, "resume me " + "word " * 20)
    assert flowise.app.client_disconnects == disconnects  # the upstream was never closed


async def test_cancel_whenBackgroundRunning_thenCancelledEverywhere_andTheUpstreamStops(keyed_gateway, flowise,
                                                                                        version):
    async with aclient(keyed_gateway) as api:
        started = await api.responses.create(model=DEMO_CHATFLOW_ID, input="long " * 50, background=True,
                                             extra_body=emulator(delay=0.05))
        await until(lambda: flowise.app.active_predictions == 1, what="the prediction runs")
        cancelled = await api.responses.cancel(started.id)
        assert cancelled.status == "cancelled"
        await until(lambda: flowise.app.active_predictions == 0, what="Flowise's prediction is stopped")
        assert (await api.responses.retrieve(started.id)).status == "cancelled"
        events = [event async for event in await api.responses.retrieve(started.id, stream=True)]
        finished = await api.responses.create(model=DEMO_CHATFLOW_ID, input="done already")
        assert (await api.responses.cancel(finished.id)).status == "completed"  # over: returned as it is
    assert events[-1].type == "response.failed" and events[-1].response.status == "cancelled"
    assert events[-1].response.error.code == "cancelled"


def test_delete_whenDeleted_thenItsIdFindsNothing(keyed_gateway):
    api = client(keyed_gateway)
    response = api.responses.create(model=DEMO_CHATFLOW_ID, input="delete me")
    assert api.responses.delete(response.id) is None
    for call in (api.responses.retrieve, api.responses.delete, api.responses.cancel):
        with pytest.raises(openai.NotFoundError):
            call(response.id)


def test_tenancy_whenAnotherKey_thenEveryRouteAnswers404(keyed_gateway):
    mine, theirs = client(keyed_gateway), client(keyed_gateway, OTHER_KEY)
    response = mine.responses.create(model=DEMO_CHATFLOW_ID, input="mine", extra_body=emulator(delay=0.01))
    for call in (theirs.responses.retrieve, theirs.responses.cancel, theirs.responses.delete,
                 theirs.responses.input_items.list):
        with pytest.raises(openai.NotFoundError):
            call(response.id)
    with pytest.raises(openai.NotFoundError) as continued:
        theirs.responses.create(model=DEMO_CHATFLOW_ID, input="x", previous_response_id=response.id)
    assert continued.value.body["param"] == "previous_response_id"
    assert mine.responses.retrieve(response.id).output_text  # still there for its owner


# --- failures --------------------------------------------------------------------------------------
def test_failure_whenLLMFailsMidStream_thenResponseFailedWithFlowisesMessage(keyed_gateway, version):
    events = list(client(keyed_gateway).responses.create(
        model=DEMO_CHATFLOW_ID, input="fail later", stream=True, extra_body=emulator(error="429 mock quota",
                                                                                     errorAfter=3)))
    last = events[-1]
    assert last.type == "response.failed" and last.response.status == "failed"
    assert "429 mock quota" in last.response.error.message and last.response.error.code == "upstream_error"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert not any(e.type == "response.completed" for e in events)


def test_failure_whenNotStreaming_thenAPIStatusError502_andUnknownModel404(keyed_gateway):
    api = client(keyed_gateway)
    with pytest.raises(openai.InternalServerError) as failed:
        api.responses.create(model=DEMO_CHATFLOW_ID, input="fail", extra_body=emulator(error="400 mock error"))
    assert failed.value.status_code == 502 and "400 mock error" in failed.value.message
    with pytest.raises(openai.NotFoundError) as unknown:
        api.responses.create(model="no such flow", input="hi")
    assert unknown.value.body["code"] == "model_not_found" and unknown.value.body["param"] == "model"


@pytest.mark.parametrize("version", ["3.1.4"])
@pytest.mark.parametrize(("given", "why"), [
    ([{"type": "function_call_output", "call_id": "c", "output": "42"}, {"role": "user", "content": "x"}], "tool"),
    ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], "last message"),
    ([{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}], "input_file"),
    ([{"role": "user", "content": "   "}], "no text"),
    ([], "no message"),
])
def test_input_whenNothingAChatflowCanTake_then400NamingIt(keyed_gateway, flowise, given, why):
    with pytest.raises(openai.BadRequestError) as refused:
        client(keyed_gateway).responses.create(model=DEMO_CHATFLOW_ID, input=given)
    assert why in refused.value.message and refused.value.body["param"] == "input"
    assert len(flowise.app.requests) == 0


# --- what a chatflow does with the rest ------------------------------------------------------------
@pytest.mark.parametrize("version", ["3.1.4"])
def test_codexRequest_whenDeveloperMessagesToolsAndReasoning_thenTheLastUserMessageIsAsked(keyed_gateway, flowise):
    # What Codex CLI sends with wire_api "responses" (../shared/openai-compat.md): all accepted or ignored.
    body = {
        "model": DEMO_CHATFLOW_ID, "instructions": "You are Codex.", "store": False, "stream": True,
        "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "sandbox rules"}]},
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "skills"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "<environment_context/>"}]},
            {"type": "reasoning", "summary": [], "encrypted_content": "opaque"},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Say hi"}]},
        ],
        "tools": [{"type": "function", "name": "shell", "parameters": {}}, {"type": "web_search"}],
        "tool_choice": "auto", "parallel_tool_calls": False, "reasoning": {"summary": "auto"},
        "include": ["reasoning.encrypted_content"], "prompt_cache_key": "abc", "client_metadata": {"x": "y"},
    }
    with httpx.stream("POST", keyed_gateway.url + "/v1/responses", json=body, timeout=20,
                      headers={"Authorization": f"Bearer {KEY}", "accept-encoding": "zstd,gzip"}) as r:
        assert r.status_code == 200, r.read()
        ignored = r.headers["x-flowise-ignored-params"].split(",")
        lines = [line for line in r.iter_lines() if line.startswith("event: ")]
    sent = flowise.app.requests[-1]["body"]
    assert sent["question"] == "Say hi" and sent["history"][0]["content"] == "<environment_context/>"
    assert lines[-1] == "event: response.completed"
    assert {"tools", "tool_choice", "reasoning", "include", "instructions", "input[role=system]"} <= set(ignored)


@pytest.mark.parametrize("version", ["3.1.4"])
def test_instructions_whenPassParams_thenTheChatflowsSystemPrompt(gateways, flowise):
    gateway = gateways(flowise.url, openai_pass_params=True)
    client(gateway).responses.create(
        model=DEMO_CHATFLOW_ID, instructions="Be terse.", temperature=0.2, max_output_tokens=50,
        input=[{"role": "developer", "content": "No emojis."}, {"role": "user", "content": "x"}])
    override = flowise.app.requests[-1]["body"]["overrideConfig"]
    assert override["systemMessagePrompt"] == override["systemMessage"] == "Be terse.\n\nNo emojis."
    assert (override["temperature"], override["maxTokens"]) == (0.2, 50)


@pytest.mark.parametrize("version", ["3.1.4"])
def test_inputItems_whenListed_thenWhatWasAsked_withoutInlineImageData(keyed_gateway):
    api = client(keyed_gateway)
    response = api.responses.create(model=UPLOADS_CHATFLOW_ID, input=[
        {"role": "user", "content": "earlier"}, {"role": "assistant", "content": "reply"},
        {"role": "user", "content": [{"type": "input_text", "text": "what is this?"},
                                     {"type": "input_image", "image_url": PNG}]}])
    items = api.responses.input_items.list(response.id, order="asc").data
    assert [(i.role, i.content[0].text) for i in items] == [("user", "earlier"), ("assistant", "reply"),
                                                            ("user", "what is this?")]
    assert items[2].content[1].type == "input_image" and items[2].content[1].image_url is None


@pytest.mark.parametrize("version", ["3.1.4"])
def test_thinking_whenFlowiseThinks_thenAReasoningItemBeforeTheMessage(keyed_gateway, flowise):
    controls = emulator(thinking=["Let me ", "think."], tokens=["Hi", " there"])
    events = list(client(keyed_gateway).responses.create(model=DEMO_CHATFLOW_ID, input="q", stream=True,
                                                         extra_body=controls))
    types = [e.type for e in events]
    assert types[2:10] == [
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added"]
    reasoning, message = events[-1].response.output
    assert reasoning.type == "reasoning" and reasoning.summary[0].text == "Let me think."
    assert message.type == "message" and events[-1].response.output_text == "Hi there"


@pytest.mark.parametrize("version", ["3.1.4"])
def test_sourcesAndTools_whenFlowiseUsedThem_thenAnnotationsAndMcpCallItems_neverFunctionCalls(keyed_gateway):
    controls = emulator(tokens=["42"], events=[
        {"event": "usedTools", "data": [{"tool": "calculator", "toolInput": {"input": "6 * 7"}, "toolOutput": "42"}]},
        {"event": "sourceDocuments", "data": [{"pageContent": "a", "metadata": {"source": "docs/manual.pdf"}},
                                              {"pageContent": "b", "metadata": {"source": "https://example.com/x"}}]},
    ])
    events = list(client(keyed_gateway).responses.create(model=DEMO_CHATFLOW_ID, input="6 * 7?", stream=True,
                                                         extra_body=controls))
    output = events[-1].response.output
    assert [item.type for item in output] == ["message", "mcp_call"]
    annotations = output[0].content[0].annotations
    assert [(a.type, getattr(a, "filename", None) or a.url) for a in annotations] == [
        ("file_citation", "manual.pdf"), ("url_citation", "https://example.com/x")]
    assert (output[1].server_label, output[1].name, output[1].output) == ("flowise", "calculator", "42")
    assert output[1].arguments == '{"input":"6 * 7"}'
    assert "response.output_text.annotation.added" in [e.type for e in events]
    assert not any("function_call" in e.type or getattr(getattr(e, "item", None), "type", "") == "function_call"
                   for e in events)


@pytest.mark.parametrize("version", ["3.1.4"])
def test_usage_whenFlowiseReportsIt_thenResponsesUsage(keyed_gateway):
    reports = [{"event": "usageMetadata", "data": {"input_tokens": 11, "output_tokens": 7, "total_tokens": 18}}]
    response = client(keyed_gateway).responses.create(model=DEMO_CHATFLOW_ID, input="count me",
                                                      extra_body=emulator(events=reports))
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (11, 7, 18)
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0


# --- images and audio, on both APIs ----------------------------------------------------------------
@pytest.mark.parametrize("version", ["3.1.4"])
@pytest.mark.parametrize("api", ["responses", "chat"])
def test_images_whenVisionChatflow_thenFlowiseUploadsReachTheLlm(keyed_gateway, flowise, api):
    url = "https://images.example/cat.jpg"
    if api == "responses":
        client(keyed_gateway).responses.create(model=UPLOADS_CHATFLOW_ID, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "What are these?"}, {"type": "input_image", "image_url": PNG},
            {"type": "input_image", "image_url": url}]}])
    else:
        client(keyed_gateway).chat.completions.create(model=UPLOADS_CHATFLOW_ID, messages=[{"role": "user", "content": [
            {"type": "text", "text": "What are these?"}, {"type": "image_url", "image_url": {"url": PNG}},
            {"type": "image_url", "image_url": {"url": url, "detail": "low"}}]}])
    request = flowise.app.requests[-1]
    assert request["body"]["question"] == "What are these?"
    assert request["body"]["uploads"] == [
        {"data": PNG, "type": "file", "name": "image-1.png", "mime": "image/png"},
        {"data": url, "type": "url", "name": "cat.jpg", "mime": "image/jpeg"}]
    assert request["llm_messages"][-1]["content"] == [{"type": "image_url", "image_url": {"url": PNG}},
                                                      {"type": "image_url", "image_url": {"url": url}}]


@pytest.mark.parametrize("version", ["1.6.2", "3.1.4"])
@pytest.mark.parametrize("api", ["responses", "chat"])
def test_images_whenTheChatflowTakesNone_then400NamingItsUploadPolicy(keyed_gateway, flowise, api):
    api_client = client(keyed_gateway)
    with pytest.raises(openai.BadRequestError) as refused:
        if api == "responses":
            api_client.responses.create(model=DEMO_CHATFLOW_ID, input=[{"role": "user", "content": [
                {"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": PNG}]}])
        else:
            api_client.chat.completions.create(model=DEMO_CHATFLOW_ID, messages=[{"role": "user", "content": [
                {"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": PNG}}]}])
    assert "isImageUploadAllowed" in refused.value.message and "upload policy" in refused.value.message
    assert refused.value.body["param"] == ("input" if api == "responses" else "messages")
    assert len(flowise.app.requests) == 0  # no silent drop: nothing was asked


@pytest.mark.parametrize("version", ["3.1.4"])
@pytest.mark.parametrize("api", ["responses", "chat"])
def test_audio_whenSpeechToTextChatflow_thenTheAudioIsTheQuestion(keyed_gateway, flowise, api):
    spoken = base64.b64encode(b"what time is it").decode()
    audio = {"data": spoken, "format": "webm"}
    if api == "responses":
        answer = client(keyed_gateway).responses.create(model=UPLOADS_CHATFLOW_ID, input=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}]).output_text
    else:
        answer = client(keyed_gateway).chat.completions.create(model=UPLOADS_CHATFLOW_ID, messages=[
            {"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}]).choices[0].message.content
    assert flowise.app.requests[-1]["body"]["uploads"] == [
        {"data": "data:audio/webm;base64," + spoken, "type": "audio", "name": "audio-1.webm", "mime": "audio/webm"}]
    assert answer == REPLY + "what time is it"


@pytest.mark.parametrize("version", ["3.1.4"])
@pytest.mark.parametrize("api", ["responses", "chat"])
def test_audio_whenAFormatFlowiseDoesNotTranscribe_then400NamingTheFormats(keyed_gateway, flowise, api):
    # Flowise's speech to text reads webm, mp4 and ogg only: wav would reach the LLM as an empty question.
    audio = {"data": base64.b64encode(b"what time is it").decode(), "format": "wav"}
    with pytest.raises(openai.BadRequestError) as refused:
        if api == "responses":
            client(keyed_gateway).responses.create(model=UPLOADS_CHATFLOW_ID, input=[
                {"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}])
        else:
            client(keyed_gateway).chat.completions.create(model=UPLOADS_CHATFLOW_ID, messages=[
                {"role": "user", "content": [{"type": "input_audio", "input_audio": audio}]}])
    assert "webm, ogg, mp4, m4a" in refused.value.message
    assert refused.value.body["param"] == ("input" if api == "responses" else "messages[0].content")
    assert len(flowise.app.requests) == 0


@pytest.mark.parametrize("version", ["3.1.4"])
def test_images_whenOverTheCaps_then413Or400_andEarlierTurnsImagesLeftOutAndSaid(gateways, flowise):
    gateway = gateways(flowise.url, max_upload_bytes=64 * 1024, max_body_bytes=16 * 1024)
    api = client(gateway)
    big = "data:image/png;base64," + base64.b64encode(b"x" * 60 * 1024).decode()
    with pytest.raises(openai.APIStatusError) as over:
        api.responses.create(model=UPLOADS_CHATFLOW_ID, input=[{"role": "user", "content": [
            {"type": "input_text", "text": "big"}, {"type": "input_image", "image_url": big}]}])
    assert over.value.status_code == 413 and "FLOWISE_SSE_MAX_UPLOAD" in over.value.message
    with pytest.raises(openai.APIStatusError) as text_only:
        api.responses.create(model=DEMO_CHATFLOW_ID, input="y" * 20 * 1024)
    assert text_only.value.status_code == 413 and "FLOWISE_SSE_MAX_BODY_BYTES" in text_only.value.message
    raw = api.chat.completions.with_raw_response.create(model=UPLOADS_CHATFLOW_ID, messages=[
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": PNG}}]},
        {"role": "assistant", "content": "an image"}, {"role": "user", "content": "and now?"}])
    assert raw.headers["x-flowise-ignored-params"] == "messages[0][image_url]"
    assert "uploads" not in flowise.app.requests[-1]["body"]


# --- reasoning on Chat Completions -----------------------------------------------------------------
@pytest.mark.parametrize("version", ["3.1.4"])
def test_chatReasoning_whenFlowiseThinks_thenReasoningContent_andNoneWhenTurnedOff(gateways, flowise):
    controls = emulator(thinking=["Hmm, ", "ok."], tokens=["Hi"])
    on, off = gateways(flowise.url), gateways(flowise.url, openai_reasoning=False)
    question = [{"role": "user", "content": "q"}]
    chunks = list(client(on).chat.completions.create(model=DEMO_CHATFLOW_ID, messages=question, stream=True,
                                                     extra_body=controls))
    deltas = [c.choices[0].delta.model_dump() for c in chunks if c.choices]
    assert [d["reasoning_content"] for d in deltas if d.get("reasoning_content")] == ["Hmm, ", "ok."]
    assert [d["reasoning"] for d in deltas if d.get("reasoning")] == ["Hmm, ", "ok."]
    assert "".join(d["content"] or "" for d in deltas) == "Hi"
    whole = client(on).chat.completions.create(model=DEMO_CHATFLOW_ID, messages=[{"role": "user", "content": "q"}],
                                               extra_body=controls)
    assert whole.choices[0].message.model_dump()["reasoning_content"] == "Hmm, ok."
    quiet = list(client(off).chat.completions.create(model=DEMO_CHATFLOW_ID, stream=True, extra_body=controls,
                                                     messages=[{"role": "user", "content": "q"}]))
    assert not any("reasoning" in (c.choices[0].delta.model_dump(exclude_none=True) if c.choices else {})
                   for c in quiet)


# --- across replicas -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redis_url():
    with RedisServer() as server:
        yield server.url


@pytest.mark.redis
@pytest.mark.parametrize("version", ["3.1.4"])
def test_redis_whenTwoReplicas_thenAResponseIsReadResumedContinuedAndCancelledOnEither(gateways, flowise, redis_url):
    one, two = (gateways(flowise.url, api_keys=[KEY], redis_url=redis_url) for _ in range(2))
    first, second = client(one), client(two)
    done = first.responses.create(model=DEMO_CHATFLOW_ID, input="on replica one")
    assert second.responses.retrieve(done.id).model_dump() == done.model_dump()
    events = dumped(list(second.responses.retrieve(done.id, stream=True)))
    assert dumped(list(second.responses.retrieve(done.id, stream=True, starting_after=3))) == events[4:]
    second.responses.create(model=DEMO_CHATFLOW_ID, input="continued on two", previous_response_id=done.id)
    assert len({r["body"]["chatId"] for r in list(flowise.app.requests)[-2:]}) == 1
    running = first.responses.create(model=DEMO_CHATFLOW_ID, input="long " * 50, background=True,
                                     extra_body=emulator(delay=0.05))
    assert second.responses.cancel(running.id).status == "cancelled"
    wait_until(lambda: first.responses.retrieve(running.id).status == "cancelled", what="replica one sees the cancel")
    assert dumped(list(second.responses.retrieve(running.id, stream=True)))[-1]["response"]["status"] == "cancelled"
    assert second.responses.delete(done.id) is None
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(done.id)
