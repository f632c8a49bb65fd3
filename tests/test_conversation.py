"""The whole conversation through a real gateway in front of the emulated Flowise of each release
line: Flowise's prediction fields (uploads, form, humanInput, action, leadEmail, sessionId), a run
stopped for human input and its resume, and the side routes (config, feedback, attachments,
files, stored messages, RAG upserts), with the tenancy rules (a key reaches its own chats only)."""

from __future__ import annotations

import base64
import gc
from typing import Any

import httpx
import pytest

from flowise_sse.emulator import (
    DEMO_CHATFLOW_ID,
    FORM_AGENTFLOW_ID,
    HUMAN_INPUT_AGENTFLOW_ID,
    NONSTREAMING_CHATFLOW_ID,
    UPLOADS_CHATFLOW_ID,
)

from .helpers import REPLY, until
from .servers import aread_sse, joined

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()
KEY_A, KEY_B = "key-of-alice", "key-of-bob"


def image(name: str = "cat.png", data: str = PNG_URI) -> dict[str, str]:
    return {"type": "file", "name": name, "mime": "image/png", "data": data}


async def post_stream(gateway, flow: str = DEMO_CHATFLOW_ID, key: str | None = None, **body: Any):
    """(status, events or the JSON error) of a POST stream."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=headers) as client, \
            client.stream("POST", f"/v1/chatflows/{flow}/stream", json=body) as r:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            return r.status_code, await aread_sse(r)
        await r.aread()
        return r.status_code, r.json()


def last_sent(flowise) -> dict[str, Any]:
    return flowise.app.requests[-1]


# --- prediction fields -----------------------------------------------------------------------
async def test_imageUpload_byBase64AndByUrl_thenTheVisionModelGetsBoth_andTheFileIsStoredUnderTheChat(
        emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    url = "https://images.example/cat.png"
    status, events = await post_stream(gateway, UPLOADS_CHATFLOW_ID, question="What is this?", chatId="vision-1",
                                       uploads=[image(), {"type": "url", "name": "remote.png", "mime": "image/png",
                                                          "data": url}])
    assert status == 200 and events[-1].event == "end", events
    assert joined(events) == REPLY + "What is this?"
    images = last_sent(flowise)["llm_messages"][-1]["content"]
    assert [part["image_url"]["url"] for part in images] == [PNG_URI, url]
    assert flowise.app.conversation.files[(UPLOADS_CHATFLOW_ID, "vision-1", "cat.png")][0] == PNG


@pytest.mark.parametrize("version", ["1.6.2", "2.0.7", "2.1.0", "3.1.4"])
async def test_uploads_onEveryLine_passedOnThroughEitherTransport(emulators, gateways, version):
    # Through socket.io (1.6.2, 2.0.7) as through SSE: the upload is in the body Flowise got.
    flowise = emulators(version)
    status, events = await post_stream(gateways(flowise.url), UPLOADS_CHATFLOW_ID, question="look",
                                       chatId=f"up-{version}", uploads=[image()])
    assert status == 200 and events[-1].event == "end"
    sent = last_sent(flowise)["body"]
    assert sent["uploads"] == [{**image(), "data": f"<{len(PNG_URI)} characters>"}]
    assert flowise.app.conversation.files[(UPLOADS_CHATFLOW_ID, f"up-{version}", "cat.png")][0] == PNG


@pytest.mark.parametrize(("version", "body", "named"), [
    ("1.6.2", {"question": "q", "leadEmail": "ada@example.com"}, "leadEmail needs Flowise 1.7.0"),
    ("1.6.2", {"question": "q", "action": {"id": "a1"}}, "action needs Flowise 2.0.0"),
    ("1.6.2", {"question": "q", "uploads": [{"type": "url", "name": "a.png", "mime": "image/png",
                                             "data": "https://x.example/a.png"}]}, "type url need Flowise 1.8.0"),
    ("2.0.7", {"question": "q", "uploads": [{"type": "file:full", "name": "a.txt", "mime": "text/plain",
                                             "data": "text"}]}, "type file:full need Flowise 2.1.3"),
    ("2.1.0", {"form": {"name": "Ada"}}, "form needs Flowise 3.0.0"),
    ("2.1.0", {"humanInput": {"type": "proceed"}}, "humanInput needs Flowise 3.0.0"),
])
async def test_fieldTheLineDoesNotRead_then400NamingFieldAndVersions_andNothingSent(
        emulators, gateways, version, body, named):
    flowise = emulators(version)
    gateway = gateways(flowise.url)
    before = flowise.app.requests_seen
    status, answer = await post_stream(gateway, **body)
    assert status == 400, answer
    assert answer["error"]["code"] == "not_supported_by_flowise"
    assert named in answer["error"]["message"] and f"this Flowise is {version}" in answer["error"]["message"]
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction", json=body)
    assert r.status_code == 400 and named in r.json()["error"]["message"]
    assert flowise.app.requests_seen == before


@pytest.mark.parametrize("version", ["2.0.7", "3.1.4"])
async def test_leadEmailAndAction_whereTheLineHasThem_thenPassedOnAsSent(emulators, gateways, version):
    flowise = emulators(version)
    action = {"id": "a1", "mapping": {"approve": "Yes", "reject": "No"}, "elements": [{"type": "approve-button",
                                                                                     "label": "Yes"}]}
    status, events = await post_stream(gateways(flowise.url), question="Yes", leadEmail="ada@example.com",
                                       action=action, stopNodeId="pinecone_0")
    assert status == 200 and events[-1].event == "end"
    sent = last_sent(flowise)["body"]
    assert sent["leadEmail"] == "ada@example.com" and sent["action"] == action and sent["stopNodeId"] == "pinecone_0"


async def test_sessionId_goesWhereEveryLineReadsIt_overrideConfigSessionId(emulators, gateways):
    flowise = emulators("3.1.4")
    status, events = await post_stream(gateways(flowise.url), question="hi", chatId="c-1", sessionId="memory-7")
    assert status == 200
    sent = last_sent(flowise)["body"]
    assert sent["overrideConfig"] == {"sessionId": "memory-7"} and "sessionId" not in sent
    assert next(e.data for e in events if e.event == "metadata")["sessionId"] == "memory-7"


async def test_sessionId_underAnOverridePolicyOff_thenTakenAndNamespaced_whileOverrideConfigIsRefused(
        emulators, gateways):
    # The override policy judges the caller's own overrideConfig: a top-level sessionId is a field
    # of its own, in the key's chat space, though it travels as overrideConfig.sessionId.
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url, api_keys=[KEY_A], override_config="off")
    status, events = await post_stream(gateway, key=KEY_A, question="hi", chatId="c-1", sessionId="memory-7")
    assert status == 200 and events[-1].event == "end", events
    sent = last_sent(flowise)["body"]["overrideConfig"]["sessionId"]
    assert sent != "memory-7" and sent.endswith("memory-7")  # namespaced per key
    assert next(e.data for e in events if e.event == "metadata")["sessionId"] == "memory-7"
    before = flowise.app.requests_seen
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=headers) as client:
        for path, body in ((f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", {}),
                           (f"/v1/chatflows/{DEMO_CHATFLOW_ID}/prediction", {}),
                           ("/v1/streams", {"chatflowId": DEMO_CHATFLOW_ID})):
            refused = await client.post(path, json={**body, "question": "hi", "overrideConfig": {"sessionId": "s"}})
            assert refused.status_code == 400 and "FLOWISE_SSE_OVERRIDE_CONFIG" in refused.json()["error"]["message"]
    assert flowise.app.requests_seen == before


@pytest.mark.parametrize(("body", "why"), [
    ({}, "question is required"),
    ({"form": {"name": "Ada"}, "question": "hi"}, "question and form cannot be sent together"),
    ({"question": "q", "sessionId": "a", "overrideConfig": {"sessionId": "b"}}, "sessionId and overrideConfig"),
    ({"question": "q", "uploads": [image(name="../etc/passwd")]}, "plain file name"),
    ({"question": "q", "uploads": [image(name="a/b.png")]}, "plain file name"),
    ({"question": "q", "uploads": [{**image(), "mime": "image/jpeg"}]}, "the data URI says image/png"),
    ({"question": "q", "uploads": [image(data="data:image/png;base64,@@not base64@@")]}, "not valid base64"),
    ({"question": "q", "uploads": [image(data="https://x.example/a.png")]}, "base64 data URI"),
    ({"question": "q", "uploads": [{"type": "url", "name": "a", "mime": "image/png", "data": "file:///etc/x"}]},
     "http(s) URL"),
])
async def test_fieldsThatDoNotGoTogether_orAnUnsendableUpload_then400SayingWhy(emulators, gateways, body, why):
    flowise = emulators("3.1.4")
    before = flowise.app.requests_seen
    status, answer = await post_stream(gateways(flowise.url), **body)
    assert status == 400, answer
    assert answer["error"]["code"] == "bad_request" and why in answer["error"]["message"], answer
    assert flowise.app.requests_seen == before


@pytest.mark.parametrize(("body", "why"), [
    ({"question": "q", "humanInput": {"type": "maybe"}}, "humanInput.type"),
    ({"question": "q", "leadEmail": "not an address"}, "leadEmail"),
])
async def test_malformedField_then422SayingWhich(emulators, gateways, body, why):
    flowise = emulators("3.1.4")
    before = flowise.app.requests_seen
    status, answer = await post_stream(gateways(flowise.url), **body)
    assert status == 422, answer
    assert answer["error"]["code"] == "invalid_request" and why in answer["error"]["message"], answer
    assert flowise.app.requests_seen == before


async def test_audioUpload_withoutQuestion_thenSpeechToTextMakesTheQuestion(emulators, gateways):
    flowise = emulators("3.1.4")
    speech = "data:audio/webm;codecs=opus;base64," + base64.b64encode(b"what time is it").decode()
    status, events = await post_stream(gateways(flowise.url), UPLOADS_CHATFLOW_ID, uploads=[
        {"type": "audio", "name": "voice.webm", "mime": "audio/webm", "data": speech}])
    assert status == 200 and joined(events) == REPLY + "what time is it"
    assert "question" not in last_sent(flowise)["body"]


async def test_formStart_withoutQuestion_thenTheFormValuesReachTheFlow(emulators, gateways):
    flowise = emulators("3.1.4")
    status, events = await post_stream(gateways(flowise.url), FORM_AGENTFLOW_ID, form={"name": "Ada", "age": 36})
    assert status == 200, events
    assert joined(events) == REPLY + "name=Ada age=36"
    assert events[0].event == "start" and [e.data for e in events if e.event == "agentFlowEvent"] == [
        "INPROGRESS", "FINISHED"]
    assert last_sent(flowise)["body"]["form"] == {"name": "Ada", "age": 36}


async def test_fileFull_theAttachmentsTextSentBack_thenPrependedAsADocument(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.post(f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/attachments", params={"chatId": "doc-1"},
                              files={"files": ("notes.txt", b"Ada wrote the first program.", "text/plain")})
    assert r.status_code == 200, r.text
    [attachment] = r.json()
    assert attachment["content"] == "Ada wrote the first program." and attachment["name"] == "notes.txt"
    status, events = await post_stream(gateway, UPLOADS_CHATFLOW_ID, question="Who?", chatId="doc-1", uploads=[
        {"type": "file:full", "name": "notes.txt", "mime": "text/plain", "data": attachment["content"]}])
    assert status == 200
    assert joined(events) == REPLY + "<doc name='notes.txt'>Ada wrote the first program.</doc>\n\n\n\nWho?"


# --- human in the loop -----------------------------------------------------------------------
async def test_humanInput_stop_thenEndCarriesTheActionAndWaits_andTheChatIsFreeAtOnce(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    status, events = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, question="Draft a tweet", chatId="hitl-1")
    assert status == 200
    end = events[-1]
    assert end.event == "end" and end.data["waitingForInput"] is True
    action = next(e.data for e in events if e.event == "action")
    assert end.data["action"] == action and action["data"]["nodeId"] == "humanInputAgentflow_0"
    assert action["mapping"] == {"approve": "Proceed", "reject": "Reject"}
    assert gateway.app.state.services.manager.chats._holders == {}  # released with the end: no 409 for the reply
    status, resumed = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, chatId="hitl-1", humanInput={
        "type": "proceed", "startNodeId": action["data"]["nodeId"], "feedback": "Ship it"})
    assert status == 200 and resumed[-1].event == "end", resumed
    assert joined(resumed) == REPLY + "proceed: Ship it"
    assert "waitingForInput" not in resumed[-1].data
    assert last_sent(flowise)["body"]["humanInput"] == {"type": "proceed", "startNodeId": "humanInputAgentflow_0",
                                                        "feedback": "Ship it"}


async def test_humanInput_reject_thenTheRestStreams(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, question="Draft", chatId="hitl-2")
    status, events = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, chatId="hitl-2", question="Reject",
                                       humanInput={"type": "reject", "feedback": "Too long"})
    assert status == 200 and joined(events) == REPLY + "reject: Too long"


async def test_humanInput_toARunThatIsNotWaiting_thenNotWaitingError_inTheCallersNames(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url, api_keys=[KEY_A])
    status, events = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, key=KEY_A, chatId="never-stopped",
                                       humanInput={"type": "proceed"})
    assert status == 200 and events[-1].event == "error"
    error = events[-1].data
    assert error["code"] == "not_waiting"
    assert "No previous execution found for session never-stopped" in error["message"]
    assert "." + "never-stopped" not in error["message"]  # the tenant's prefix is not shown
    await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, key=KEY_A, chatId="twice", question="Draft")
    await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, key=KEY_A, chatId="twice", humanInput={"type": "proceed"})
    _, again = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, key=KEY_A, chatId="twice",
                                 humanInput={"type": "proceed"})
    assert again[-1].data["code"] == "not_waiting" and "'FINISHED' state" in again[-1].data["message"]


async def test_humanInput_resumesBySession_andAnotherKeysReplyFindsNothing(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url, api_keys=[KEY_A, KEY_B])
    _, stopped = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, key=KEY_A, chatId="c-1", sessionId="s-1",
                                   question="Draft")
    assert stopped[-1].data["waitingForInput"] is True
    metadata = next(e.data for e in stopped if e.event == "metadata")
    assert metadata["sessionId"] == "s-1" and metadata["chatId"] == "c-1"
    session = last_sent(flowise)["body"]["overrideConfig"]["sessionId"]
    assert session != "s-1" and session.endswith(".s-1")  # namespaced for key A
    _, other = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, key=KEY_B, chatId="c-2", sessionId="s-1",
                                 humanInput={"type": "proceed"})
    assert other[-1].data["code"] == "not_waiting"
    _, resumed = await post_stream(gateway, HUMAN_INPUT_AGENTFLOW_ID, key=KEY_A, chatId="c-3", sessionId="s-1",
                                   humanInput={"type": "proceed", "feedback": "ok"})
    assert joined(resumed) == REPLY + "proceed: ok"


async def test_humanInput_throughThePredictionRoute_thenActionInTheAnswer_andNotWaitingIs409(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        stopped = await client.post(f"/v1/chatflows/{HUMAN_INPUT_AGENTFLOW_ID}/prediction",
                                    json={"question": "Draft", "chatId": "p-1"})
        resumed = await client.post(f"/v1/chatflows/{HUMAN_INPUT_AGENTFLOW_ID}/prediction",
                                    json={"chatId": "p-1", "humanInput": {"type": "proceed"}})
        again = await client.post(f"/v1/chatflows/{HUMAN_INPUT_AGENTFLOW_ID}/prediction",
                                  json={"chatId": "p-1", "humanInput": {"type": "proceed"}})
    assert stopped.status_code == 200 and stopped.json()["action"]["data"]["nodeId"] == "humanInputAgentflow_0"
    assert resumed.status_code == 200 and resumed.json()["text"] == REPLY + "proceed:"
    assert again.status_code == 409 and again.json()["error"]["code"] == "not_waiting"


# --- bodies: the upload cap, one copy ----------------------------------------------------------
async def test_uploadRoutes_takeBodiesPastTheBodyCap_upToTheUploadCap_then413WithNothingSent(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url, max_body_bytes=64 * 1024, max_upload_bytes=1024 * 1024)
    big = "data:image/png;base64," + base64.b64encode(PNG * 400).decode()  # ~560 KB
    status, events = await post_stream(gateway, UPLOADS_CHATFLOW_ID, question="big", uploads=[image(data=big)])
    assert status == 200 and events[-1].event == "end"
    before = flowise.app.requests_seen
    huge = "data:image/png;base64," + base64.b64encode(PNG * 1000).decode()  # ~1.4 MB
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        for chunked in (False, True):
            body = httpx.Request("POST", "/", json={"question": "huge", "uploads": [image(data=huge)]}).content

            async def pieces(data: bytes = body):
                for i in range(0, len(data), 65536):
                    yield data[i:i + 65536]

            r = await client.post(f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/stream", content=pieces() if chunked else body,
                                  headers={"content-type": "application/json"})
            assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
            assert "FLOWISE_SSE_MAX_UPLOAD_BYTES" in r.json()["error"]["message"]
        feedback = await client.post(f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/feedback", content=b"x" * 100_000,
                                     headers={"content-type": "application/json"})
        assert feedback.status_code == 413 and "FLOWISE_SSE_MAX_BODY_BYTES" in feedback.json()["error"]["message"]
        # The upload cap is for files: a body past the body cap that carries none is refused once read.
        for path, body in ((f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/stream", {"question": "x" * 100_000}),
                           (f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/prediction", {"question": "x" * 100_000}),
                           ("/v1/streams", {"chatflowId": UPLOADS_CHATFLOW_ID, "question": "x" * 100_000})):
            wordy = await client.post(path, json=body)
            assert wordy.status_code == 413 and wordy.json()["error"]["code"] == "payload_too_large", path
            assert "FLOWISE_SSE_MAX_BODY_BYTES" in wordy.json()["error"]["message"], path
    assert flowise.app.requests_seen == before


def _large_buffers(min_size: int) -> list[str]:
    """Every str, bytes or bytearray of at least `min_size` that something refers to, each named
    by its holder's type. CPython does not track a dict or tuple of strings only: those are
    looked into from whatever tracked object holds them."""
    found: dict[int, str] = {}
    seen: set[int] = set()
    pending = [(holder, type(holder).__name__) for holder in gc.get_objects()]
    while pending:
        holder, path = pending.pop()
        for item in gc.get_referents(holder):
            if isinstance(item, (str, bytes, bytearray)):
                if len(item) >= min_size:
                    found[id(item)] = f"{path} -> {type(item).__name__} of {len(item)}"
            elif isinstance(item, (dict, tuple, list)) and not gc.is_tracked(item) and id(item) not in seen:
                seen.add(id(item))
                pending.append((item, f"{path} -> {type(item).__name__}"))
    return list(found.values())


async def test_upload_whileTheAnswerStreams_thenTheGatewayHoldsNoCopyOfIt(emulators, gateways):
    # The test client, the gateway and the emulator share this process: the emulator records the
    # upload by its size only, and the client's body is gone once sent; what is left would be the
    # gateway's (the raw body, the parsed JSON, the model, the prediction, the encoded body).
    # Ten tokens: a twenty-second answer, stopped once checked; the heap scans below take seconds
    # on a loaded machine, and the run must still be going when they end.
    flowise = emulators("3.1.4", token_delay=2)
    gateway = gateways(flowise.url)
    size = 3 * 1024 * 1024

    async def body():  # made as it is sent: the client keeps no copy
        yield b'{"question": "slow answer please", "uploads": [{"type": "file", "name": "a.png", "mime": ' \
              b'"image/png", "data": "data:image/png;base64,'
        for _ in range(size // 65536):
            yield b"A" * 65536
        yield b'"}]}'

    async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client, client.stream(
            "POST", f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/stream", content=body(),
            headers={"content-type": "application/json"}) as r:
        assert r.status_code == 200
        lines = r.aiter_lines()
        async for line in lines:
            if line.startswith("event: token"):
                break
        run = next(iter(gateway.app.state.services.manager.runs.values()))
        # Chunks still in flight (a socket's, a queue's) are let go within moments; a copy
        # held for the stream would be there until its end, seconds later.
        # What Flowise stored (the decoded file) is Flowise's copy, not the gateway's.
        flowise.app.conversation.files.clear()
        await until(lambda: not _large_buffers(size // 2), timeout=2, what="no copy of the upload held")
        assert not run.done and run.prediction.uploads is None
        assert (await client.delete(f"/v1/streams/{run.id}")).status_code == 204
        assert [line async for line in lines if line.startswith("event: ")][-1] == "event: error"


# --- side routes -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", ["1.6.2", "2.1.0", "3.1.4"])
async def test_config_starterPromptsAndUploadPolicy_withoutWhatIsNotPublic(emulators, gateways, version):
    gateway = gateways(emulators(version).url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        r = await client.get(f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/config")
        plain = await client.get(f"/v1/chatflows/{DEMO_CHATFLOW_ID}/config")
    assert r.status_code == 200, r.text
    config = r.json()
    assert config["starterPrompts"] == {"0": {"prompt": "What is in this picture?"},
                                        "1": {"prompt": "Summarise my file"}}
    assert config["uploads"]["isImageUploadAllowed"] is True and config["chatFeedback"] == {"status": True}
    assert "allowedOrigins" not in config and "allowedOriginsError" not in config and "flowData" not in config
    assert plain.status_code == 200 and "starterPrompts" not in plain.json()


async def test_config_ofAFormAgentflow_thenItsFormInputsAsAFieldOfTheirOwn(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        config = (await client.get(f"/v1/chatflows/{FORM_AGENTFLOW_ID}/config")).json()
    assert config["startInputType"] == "formInput" and config["formTitle"] == "About you"
    assert [i["name"] for i in config["formInputTypes"]] == ["name", "age"]


async def _answer_of(gateway, key: str | None, chat: str) -> str:
    _, events = await post_stream(gateway, key=key, question="rate me", chatId=chat)
    return str(events[-1].data["chatMessageId"])


@pytest.mark.parametrize("version", ["2.0.7", "3.1.4"])
async def test_feedback_writtenAndChanged_onTheKeysOwnChatOnly(emulators, gateways, version):
    flowise = emulators(version)
    gateway = gateways(flowise.url, api_keys=[KEY_A, KEY_B])
    message = await _answer_of(gateway, KEY_A, "fb-1")
    a = {"Authorization": f"Bearer {KEY_A}"}
    b = {"Authorization": f"Bearer {KEY_B}"}
    url = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/feedback"
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20) as client:
        stolen = await client.post(url, headers=b, json={"chatId": "fb-1", "messageId": message,
                                                         "rating": "THUMBS_DOWN"})
        created = await client.post(url, headers=a, json={"chatId": "fb-1", "messageId": message,
                                                          "rating": "THUMBS_UP", "content": "good"})
        feedback = created.json()
        down = {"chatId": "fb-1", "rating": "THUMBS_DOWN"}
        hijack = await client.patch(f"{url}/{feedback['id']}", headers=b, json=down)
        changed = await client.patch(f"{url}/{feedback['id']}", headers=a, json=down)
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "chat_not_found"
    assert created.status_code == 200, created.text
    assert feedback["chatId"] == "fb-1" and feedback["messageId"] == message and feedback["rating"] == "THUMBS_UP"
    assert hijack.status_code == 404
    assert changed.status_code == 200 and changed.json()["rating"] == "THUMBS_DOWN"
    [row] = flowise.app.conversation.feedback.values()
    assert row["rating"] == "THUMBS_DOWN" and row["content"] == "good" and row["chatId"].endswith(".fb-1")


async def test_attachments_refusedType_then403InTheGatewaysWords_andOldLines400(emulators, gateways):
    async with httpx.AsyncClient(timeout=20) as client:
        gateway = gateways(emulators("3.1.4").url)
        refused = await client.post(f"{gateway.url}/v1/chatflows/{UPLOADS_CHATFLOW_ID}/attachments",
                                    params={"chatId": "c"},
                                    files={"files": ("a.exe", b"MZ", "application/x-msdownload")})
        off = await client.post(f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/attachments",
                                params={"chatId": "c"}, files={"files": ("a.txt", b"hi", "text/plain")})
        old = gateways(emulators("2.0.7").url)
        unsupported = await client.post(f"{old.url}/v1/chatflows/{UPLOADS_CHATFLOW_ID}/attachments",
                                        params={"chatId": "c"}, files={"files": ("a.txt", b"hi", "text/plain")})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "upload_not_allowed"
    assert "application/x-msdownload" in refused.json()["error"]["message"]
    assert off.status_code == 403 and "not enabled" in off.json()["error"]["message"]
    assert unsupported.status_code == 400
    assert "attachments needs Flowise 2.1.3" in unsupported.json()["error"]["message"]


@pytest.mark.parametrize("version", ["1.6.2", "3.1.4"])
async def test_file_fetchedBackByteForByte_withTypeAndDisposition_andOnlyByItsKey(emulators, gateways, version):
    gateway = gateways(emulators(version).url, api_keys=[KEY_A, KEY_B])
    await post_stream(gateway, UPLOADS_CHATFLOW_ID, key=KEY_A, question="keep this", chatId="files-1",
                      uploads=[image(name="photo ünï.png")])
    url = f"{gateway.url}/v1/chatflows/{UPLOADS_CHATFLOW_ID}/files"
    query = {"chatId": "files-1", "fileName": "photo ünï.png"}
    async with httpx.AsyncClient(timeout=20) as client:
        mine = await client.get(url, params=query, headers={"Authorization": f"Bearer {KEY_A}"})
        theirs = await client.get(url, params=query, headers={"Authorization": f"Bearer {KEY_B}"})
        a = {"Authorization": f"Bearer {KEY_A}"}
        missing = await client.get(url, params={**query, "fileName": "nope.png"}, headers=a)
        sneaky = await client.get(url, params={**query, "fileName": "../x.png"}, headers=a)
    assert mine.status_code == 200 and mine.content == PNG
    assert mine.headers["content-type"] == "image/png" and mine.headers["x-content-type-options"] == "nosniff"
    assert mine.headers["content-disposition"] == (
        "attachment; filename=\"photo _n_.png\"; filename*=UTF-8''photo%20%C3%BCn%C3%AF.png")
    assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "file_not_found"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "file_not_found"
    assert sneaky.status_code == 400


@pytest.mark.parametrize("version", ["1.6.2", "3.1.4"])
async def test_storedMessages_forTheKeyThatOwnsTheChat_inItsNames(emulators, gateways, version):
    gateway = gateways(emulators(version).url, api_keys=[KEY_A, KEY_B], flowise_api_key="upstream-key")
    await post_stream(gateway, key=KEY_A, question="remember me", chatId="hist-1", leadEmail=None)
    url = f"{gateway.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/chats/hist-1/messages"
    async with httpx.AsyncClient(timeout=20) as client:
        mine = await client.get(url, headers={"Authorization": f"Bearer {KEY_A}"})
        theirs = await client.get(url, headers={"Authorization": f"Bearer {KEY_B}"})
    assert mine.status_code == 200, mine.text
    assert [(m["role"], m["content"], m["chatId"]) for m in mine.json()] == [
        ("userMessage", "remember me", "hist-1"), ("apiMessage", REPLY + "remember me", "hist-1")]
    assert theirs.status_code == 404


async def test_upsert_whereTheChatflowAllowsRagUploads_only(emulators, gateways):
    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url, api_keys=[KEY_A])
    headers = {"Authorization": f"Bearer {KEY_A}"}
    async with httpx.AsyncClient(base_url=gateway.url, timeout=20, headers=headers) as client:
        done = await client.post(f"/v1/chatflows/{UPLOADS_CHATFLOW_ID}/upsert", params={"chatId": "rag-1"},
                                 files={"files": ("kb.txt", b"knowledge", "text/plain")})
        refused = await client.post(f"/v1/chatflows/{NONSTREAMING_CHATFLOW_ID}/upsert", params={"chatId": "rag-1"},
                                    files={"files": ("kb.txt", b"knowledge", "text/plain")})
    assert done.status_code == 200, done.text
    assert done.json()["numAdded"] == 1 and done.json()["addedDocs"][0]["metadata"]["chatId"] == "rag-1"
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "upload_not_allowed"


# --- the library -----------------------------------------------------------------------------
async def test_library_sameFieldsSameChecks(emulators):
    from flowise_sse.errors import BadRequest
    from flowise_sse.library import astream_prediction
    from flowise_sse.settings import Settings

    settings = Settings(flowise_url=emulators("3.1.4").url)
    events = [e async for e in astream_prediction(FORM_AGENTFLOW_ID, None, form={"name": "Ada"}, settings=settings)]
    assert events[-1].event == "end" and events[-1].data["text"] == REPLY + "name=Ada"
    with pytest.raises(BadRequest, match="plain file name"):
        async for _ in astream_prediction(UPLOADS_CHATFLOW_ID, "q", uploads=[image(name="../x")], settings=settings):
            pass
    # An empty question may come with uploads (an image can be the whole of it), not without.
    shown = [e async for e in astream_prediction(UPLOADS_CHATFLOW_ID, "", uploads=[image()], settings=settings)]
    assert shown[-1].event == "end" and last_sent(emulators("3.1.4"))["body"]["question"] == ""
    with pytest.raises(BadRequest, match="question must be a non-empty string"):
        async for _ in astream_prediction(UPLOADS_CHATFLOW_ID, " ", settings=settings):
            pass
    old = Settings(flowise_url=emulators("2.1.0").url)
    from flowise_sse.errors import NotSupportedByFlowise
    with pytest.raises(NotSupportedByFlowise, match="humanInput needs Flowise 3.0.0"):
        async for _ in astream_prediction(DEMO_CHATFLOW_ID, None, human_input={"type": "proceed"}, settings=old):
            pass


# --- the command line ------------------------------------------------------------------------
def test_ask_throughTheGateway_withAnImageAFormAndAReply(emulators, gateways, tmp_path):
    import subprocess
    import sys

    flowise = emulators("3.1.4")
    gateway = gateways(flowise.url)
    picture = tmp_path / "cat.png"
    picture.write_bytes(PNG)

    def ask(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "flowise_sse", "ask", "--gateway", gateway.url, *argv],
                              capture_output=True, text=True, timeout=60)

    seen = ask(UPLOADS_CHATFLOW_ID, "What is this?", "--upload", str(picture), "--chat-id", "cli-1")
    assert seen.returncode == 0, seen.stderr
    assert seen.stdout.strip() == REPLY + "What is this?"
    assert flowise.app.conversation.files[(UPLOADS_CHATFLOW_ID, "cli-1", "cat.png")][0] == PNG
    form = ask(FORM_AGENTFLOW_ID, "--form", '{"name": "Ada"}')
    assert form.returncode == 0 and form.stdout.strip() == REPLY + "name=Ada", form.stderr
    assert ask(HUMAN_INPUT_AGENTFLOW_ID, "Draft", "--chat-id", "cli-2").returncode == 0
    proceed = ask(HUMAN_INPUT_AGENTFLOW_ID, "--chat-id", "cli-2", "--proceed", "--feedback", "fine")
    assert proceed.returncode == 0 and proceed.stdout.strip() == REPLY + "proceed: fine", proceed.stderr
