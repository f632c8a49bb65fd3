"""The whole conversation through the gateway against real Flowise: uploads reaching a vision
model, a form start, a run stopped for human input (a Human Input node, a tool approval) and its
resume, attachments for `file:full`, feedback, the chatbot config, files fetched back, the upload
cap. The mock LLM tells what Flowise sent the model; Flowise's own API, what it stored."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from .flowise_harness import CHATBOT_CONFIG, FORM_INPUTS, HUMAN_INPUT_QUESTION, REJECTED_REPLY, FlowiseDeployment
from .mock_llm import MockLLM, reply_for, tool_reply_for
from .test_real_flowise import TIMEOUT, Sse, StreamResult, marker

pytestmark = pytest.mark.e2e

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==")
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


def stream(gateway: Any, flow: str, **body: Any) -> StreamResult:
    from httpx_sse import connect_sse

    with httpx.Client(timeout=TIMEOUT) as client, connect_sse(
            client, "POST", f"{gateway.url}/v1/chatflows/{flow}/stream", json=body) as source:
        response = source.response
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            response.read()
            return StreamResult(response.status_code, [], response.json())
        return StreamResult(response.status_code, [Sse(e.event, e.id, json.loads(e.data)) for e in source.iter_sse()],
                            None)


def text(result: StreamResult) -> str:
    return "".join(result.tokens)


def image_parts(request: Any) -> list[str]:
    return [part["image_url"]["url"] for message in request.messages if isinstance(message.get("content"), list)
            for part in message["content"] if part.get("type") == "image_url"]


@pytest.mark.releases("1.8.4", "2.2.8", "3.1.4")
def test_image_byBase64AndByUrl_reachTheVisionModel(real_flowise: FlowiseDeployment, gateways,
                                                    mock_llm: MockLLM) -> None:
    question = f"What is this {marker()}"
    url = "https://images.example/cat.png"
    result = stream(gateways(real_flowise), real_flowise.chatflows.vision, question=question, uploads=[
        {"type": "file", "name": "dot.png", "mime": "image/png", "data": PNG_URI},
        {"type": "url", "name": "cat.png", "mime": "image/png", "data": url}])
    assert result.status == 200 and result.events[-1].event == "end", result.events or result.error_body
    word = question.split()[-1]
    [request] = [r for r in mock_llm.requests if any(word in json.dumps(m.get("content")) for m in r.messages)]
    assert image_parts(request) == [PNG_URI, url]
    # The question's text and the images go to the model as two user messages (the images last).
    assert [m["content"] for m in request.messages if m["role"] == "user"][0] == question


@pytest.mark.releases("3.1.4")
def test_humanInput_stopThenProceedWithFeedback_thenTheRestStreams_textExact(real_flowise, gateways, mock_llm) -> None:
    gateway = gateways(real_flowise)
    question, chat = f"Draft a note {marker()}", marker()
    stopped = stream(gateway, real_flowise.chatflows.human_input, question=question, chatId=chat)
    end = stopped.events[-1]
    assert end.event == "end" and end.data["waitingForInput"] is True, stopped.names
    action = stopped.first("action").data
    assert end.data["action"] == action and action["data"]["nodeId"] == "humanInputAgentflow_0"
    assert action["mapping"] == {"approve": "Proceed", "reject": "Reject"}
    assert text(stopped) == f"{reply_for(question)}\n\n{HUMAN_INPUT_QUESTION}"
    feedback = f"Ship it {marker()}"
    resumed = stream(gateway, real_flowise.chatflows.human_input, chatId=chat, humanInput={
        "type": "proceed", "startNodeId": action["data"]["nodeId"], "feedback": feedback})
    assert resumed.status == 200 and resumed.events[-1].event == "end", resumed.names
    assert text(resumed) == reply_for(feedback)
    assert "waitingForInput" not in resumed.events[-1].data
    again = stream(gateway, real_flowise.chatflows.human_input, chatId=chat, humanInput={"type": "proceed"})
    assert again.error()["code"] == "not_waiting" and "FINISHED" in again.error()["message"]


@pytest.mark.releases("3.1.4")
def test_humanInput_reject_thenTheRejectBranch_andAReplyToNothingIsNotWaiting(real_flowise, gateways) -> None:
    gateway = gateways(real_flowise)
    chat = marker()
    stream(gateway, real_flowise.chatflows.human_input, question=f"Draft {marker()}", chatId=chat)
    rejected = stream(gateway, real_flowise.chatflows.human_input, chatId=chat, humanInput={"type": "reject"})
    assert rejected.events[-1].event == "end" and text(rejected) == REJECTED_REPLY, rejected.names
    nothing = stream(gateway, real_flowise.chatflows.human_input, chatId=marker(), humanInput={"type": "proceed"})
    assert nothing.status == 200 and nothing.error()["code"] == "not_waiting"
    assert "No previous execution found" in nothing.error()["message"]


@pytest.mark.releases("3.1.4")
def test_toolApproval_stopThenProceed_thenTheToolRuns(real_flowise, gateways) -> None:
    gateway = gateways(real_flowise)
    question, chat = f"[[tool]] compute {marker()}", marker()
    stopped = stream(gateway, real_flowise.chatflows.tool_approval, question=question, chatId=chat)
    assert stopped.events[-1].data.get("waitingForInput") is True, stopped.names
    action = stopped.events[-1].data["action"]
    assert action["data"]["nodeId"] == "agentAgentflow_0"
    resumed = stream(gateway, real_flowise.chatflows.tool_approval, chatId=chat,
                     humanInput={"type": "proceed", "startNodeId": "agentAgentflow_0"})
    assert resumed.events[-1].event == "end", resumed.names
    assert "usedTools" in resumed.names and text(resumed) == tool_reply_for(question)


@pytest.mark.releases("3.1.4")
def test_formStart_withoutQuestion_thenTheFormValuesReachTheModel(real_flowise, gateways, mock_llm) -> None:
    name = f"Ada{marker()}"
    result = stream(gateways(real_flowise), real_flowise.chatflows.form, form={"name": name, "age": 36})
    assert result.status == 200 and result.events[-1].event == "end", result.names
    assert text(result) == reply_for(f"My name is {name} and I am 36")
    both = stream(gateways(real_flowise), real_flowise.chatflows.form, question="hi", form={"name": "x"})
    assert both.status == 400 and "question and form" in both.error()["message"]


@pytest.mark.releases("3.1.4")
def test_config_starterPromptsAndFormInputs(real_flowise, gateways) -> None:
    gateway = gateways(real_flowise)
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:
        vision = client.get(f"/v1/chatflows/{real_flowise.chatflows.vision}/config").json()
        form = client.get(f"/v1/chatflows/{real_flowise.chatflows.form}/config").json()
    assert vision["starterPrompts"] == CHATBOT_CONFIG["starterPrompts"]
    assert vision["welcomeMessage"] == CHATBOT_CONFIG["welcomeMessage"] and vision["chatFeedback"] == {"status": True}
    assert vision["uploads"]["isImageUploadAllowed"] is True
    assert "flowData" not in vision and "allowedOrigins" not in vision
    assert form["startInputType"] == "formInput" and form["formInputTypes"] == FORM_INPUTS


@pytest.mark.releases("3.1.4")
def test_fileFull_throughAttachments_thenTheModelReadsTheDocument(real_flowise, gateways, mock_llm) -> None:
    gateway = gateways(real_flowise)
    chat, notes = marker(), f"Ada wrote the first program {marker()}."
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:
        r = client.post(f"/v1/chatflows/{real_flowise.chatflows.vision}/attachments", params={"chatId": chat},
                        files={"files": ("notes.txt", notes.encode(), "text/plain")})
        refused = client.post(f"/v1/chatflows/{real_flowise.chatflows.vision}/attachments", params={"chatId": chat},
                              files={"files": ("page.html", b"<p>x</p>", "text/html")})
    assert r.status_code == 200, r.text
    [attachment] = r.json()
    assert attachment["content"] == notes and attachment["name"] == "notes.txt"
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "upload_not_allowed", refused.text
    question = f"Who {marker()}"
    result = stream(gateway, real_flowise.chatflows.vision, question=question, chatId=chat, uploads=[
        {"type": "file:full", "name": "notes.txt", "mime": "text/plain", "data": attachment["content"]}])
    assert result.events[-1].event == "end", result.names
    sent = f"<doc name='notes.txt'>{notes}</doc>\n\n\n\n{question}"
    assert mock_llm.requests_for(question.split()[-1])[-1].last_user_text == sent
    assert text(result) == reply_for(sent)


@pytest.mark.releases("3.1.4")
def test_feedback_writtenThroughTheGateway_readBackThroughFlowise(real_flowise, gateways) -> None:
    gateway = gateways(real_flowise)
    chat = marker()
    answer = stream(gateway, real_flowise.chatflows.open, question=f"rate me {marker()}", chatId=chat)
    message = answer.events[-1].data["chatMessageId"]
    url = f"/v1/chatflows/{real_flowise.chatflows.open}/feedback"
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:
        created = client.post(url, json={"chatId": chat, "messageId": message, "rating": "THUMBS_UP",
                                         "content": "nice"})
        assert created.status_code == 200, created.text
        changed = client.patch(f"{url}/{created.json()['id']}", json={"chatId": chat, "rating": "THUMBS_DOWN"})
        wrong = client.post(url, json={"chatId": marker(), "messageId": message, "rating": "THUMBS_UP"})
    assert changed.status_code == 200, changed.text
    assert wrong.status_code == 404
    stored = httpx.get(f"{real_flowise.url}/api/v1/feedback/{real_flowise.chatflows.open}", params={"chatId": chat},
                       timeout=30).json()
    assert [(f["messageId"], f["rating"], f["content"]) for f in stored] == [(message, "THUMBS_DOWN", "nice")]


@pytest.mark.releases("3.1.4")
def test_uploadedFile_fetchedBackByteForByte_andStoredMessagesRead(real_flowise, gateways) -> None:
    gateway = gateways(real_flowise)
    chat = marker()
    result = stream(gateway, real_flowise.chatflows.vision, question=f"keep {marker()}", chatId=chat,
                    uploads=[{"type": "file", "name": "dot.png", "mime": "image/png", "data": PNG_URI}])
    assert result.events[-1].event == "end"
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:
        got = client.get(f"/v1/chatflows/{real_flowise.chatflows.vision}/files",
                         params={"chatId": chat, "fileName": "dot.png"})
        missing = client.get(f"/v1/chatflows/{real_flowise.chatflows.vision}/files",
                             params={"chatId": chat, "fileName": "none.png"})
        messages = client.get(f"/v1/chatflows/{real_flowise.chatflows.vision}/chats/{chat}/messages")
    assert got.status_code == 200 and got.content == PNG, got.text
    assert got.headers["content-type"] == "image/png" and got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["content-disposition"].startswith('attachment; filename="dot.png"')
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found", missing.text
    assert messages.status_code == 200, messages.text
    assert [m["role"] for m in messages.json()] == ["userMessage", "apiMessage"]


@pytest.mark.releases("3.1.4")
def test_upload_of30MiB_then413_andNothingSentUpstream(real_flowise, gateways, mock_llm) -> None:
    gateway = gateways(real_flowise)
    before = len(mock_llm.requests)
    data = "data:image/png;base64," + "A" * (30 * 1024 * 1024)
    body = json.dumps({"question": "too big", "uploads": [{"type": "file", "name": "a.png", "mime": "image/png",
                                                          "data": data}]}).encode()
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:
        r = client.post(f"/v1/chatflows/{real_flowise.chatflows.vision}/stream", content=body,
                        headers={"content-type": "application/json"})
    assert r.status_code == 413 and "FLOWISE_SSE_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]
    assert len(mock_llm.requests) == before


@pytest.mark.releases("1.8.4", "2.2.8")
def test_leadEmail_storedWithTheMessage_andActionWhereTheLineHasIt(real_flowise, gateways) -> None:
    gateway = gateways(real_flowise)
    chat = marker()
    result = stream(gateway, real_flowise.chatflows.open, question=f"lead {marker()}", chatId=chat,
                    leadEmail="ada@example.com")
    assert result.events[-1].event == "end", result.names
    with httpx.Client(base_url=gateway.url, timeout=TIMEOUT) as client:
        messages = client.get(f"/v1/chatflows/{real_flowise.chatflows.open}/chats/{chat}/messages").json()
    assert [m.get("leadEmail") for m in messages if m["role"] == "userMessage"] == ["ada@example.com"]
    action = {"id": marker(), "mapping": {"approve": "Yes", "reject": "No"}, "elements": []}
    answered = stream(gateway, real_flowise.chatflows.open, question="Yes", action=action)
    if real_flowise.version.startswith("1."):
        assert answered.status == 400 and "action needs Flowise 2.0.0" in answered.error()["message"]
    else:
        assert answered.events[-1].event == "end", answered.names
    form = stream(gateway, real_flowise.chatflows.open, form={"name": "x"})
    assert form.status == 400 and "form needs Flowise 3.0.0" in form.error()["message"]


@pytest.mark.releases("3.1.4")
def test_audio_withoutQuestion_thenSpeechToTextMakesTheQuestion(real_flowise, gateways, mock_llm) -> None:
    spoken = f"what time is it {marker()}"
    recording = "data:audio/webm;base64," + base64.b64encode(spoken.encode()).decode()
    result = stream(gateways(real_flowise), real_flowise.chatflows.vision, uploads=[
        {"type": "audio", "name": "voice.webm", "mime": "audio/webm", "data": recording}])
    assert result.status == 200 and result.events[-1].event == "end", result.names
    assert spoken.encode() in mock_llm.transcriptions
    assert mock_llm.requests_for(spoken.split()[-1])[-1].last_user_text == spoken
    assert text(result) == reply_for(spoken)
