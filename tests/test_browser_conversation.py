# ruff: noqa: F811  (pytest fixtures imported from tests/page_driver.py and named again as the tests' arguments)
"""The whole conversation on the chat page, in real headless Chromium against a real gateway and
the emulated Flowise 3.1.4: the chatbot config's welcome message and starter prompts, feedback on
answers, image and file attachments within the upload policy (and refusals before sending), an
Agentflow's start form, and approve/reject for a run that stopped for a human.

What reached Flowise is read from the emulator: the prediction bodies (`flowise.app.requests`),
the images handed to its LLM (`llm_messages`), its stored feedback, files and messages
(`flowise.app.conversation`, `flowise.app.answers`).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from flowise_sse.emulator import DEMO_CHATFLOW_ID, FORM_AGENTFLOW_ID, HUMAN_INPUT_AGENTFLOW_ID, UPLOADS_CHATFLOW_ID

from .page_driver import (  # noqa: F401  (browser, flowise, gateway, page: fixtures)
    answer_text,
    ask,
    browser,
    data_uri,
    flowise,
    gateway,
    open_chat,
    open_flow,
    page,
    png,
    record_states,
    reply_to,
    script_answers,
    start_gateway,
    wait_state,
)
from .servers import ServerThread

pytestmark = pytest.mark.browser

WELCOME = "Hello! Send a picture, a recording or a file."
STARTERS = ["What is in this picture?", "Summarise my file"]
CHART = png(48, 32, lambda x, y: (36, 86, 201) if y > 31 - (x // 12 + 1) * 7 else (255, 255, 255))


def turns(page: Page) -> Any:
    return page.locator(".turn.assistant")


def test_emptyConversation_thenWelcomeAndStarterPrompts_andAClickAsksThePrompt(
        page: Page, gateway: ServerThread) -> None:
    posted = script_answers(page)
    open_chat(page, gateway.url)
    # The demo chatflow has no chatbot config: how to begin, and nothing else.
    expect(page.locator("#empty-hint")).to_be_visible()
    expect(page.get_by_test_id("welcome")).to_be_hidden()
    expect(page.get_by_test_id("starter-prompt")).to_have_count(0)

    page.get_by_test_id("chatflow").select_option(UPLOADS_CHATFLOW_ID)
    expect(page.get_by_test_id("welcome")).to_have_text(WELCOME)
    expect(page.get_by_test_id("starter-prompt")).to_have_text(STARTERS)  # in the config's order
    expect(page.locator("#empty-hint")).to_be_hidden()

    page.get_by_test_id("starter-prompt").nth(1).click()
    wait_state(page, "done")
    assert answer_text(page) == reply_to(STARTERS[1])
    assert posted == [{"chatflowId": UPLOADS_CHATFLOW_ID, "question": STARTERS[1]}]
    expect(page.locator(".turn.user")).to_have_text([STARTERS[1]])
    expect(page.get_by_test_id("welcome")).to_be_hidden()  # the conversation has begun
    expect(page.get_by_test_id("starters")).to_be_hidden()

    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("starter-prompt")).to_have_text(STARTERS)
    expect(page.get_by_test_id("welcome")).to_have_text(WELCOME)


def test_feedback_thumbsUpWithAComment_thenChangedAfterAReload_onTheSameFeedback(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    open_flow(page, gateway.url, UPLOADS_CHATFLOW_ID)
    ask(page, "Rate this answer")
    wait_state(page, "done")
    chat_id = flowise.app.requests[-1]["body"]["chatId"]
    message_id = next(m["id"] for m in flowise.app.answers if m["chatId"] == chat_id and m["role"] == "apiMessage")

    def stored() -> list[dict[str, Any]]:
        return [row for row in flowise.app.conversation.feedback.values() if row.get("chatId") == chat_id]

    up, down = page.get_by_test_id("thumbs-up"), page.get_by_test_id("thumbs-down")
    up.click()
    expect(up).to_have_attribute("aria-pressed", "true")
    expect(down).to_have_attribute("aria-pressed", "false")
    [row] = stored()
    assert (row["messageId"], row["rating"], row["content"]) == (message_id, "THUMBS_UP", None)

    page.get_by_test_id("feedback-text").fill("Clear and short")
    page.get_by_test_id("feedback-send").click()
    expect(page.get_by_test_id("feedback-note")).to_have_text("Thank you: your comment was sent.")
    expect(page.get_by_test_id("feedback-comment")).to_be_hidden()
    assert stored()[0]["content"] == "Clear and short"

    page.reload()
    expect(up).to_have_attribute("aria-pressed", "true")  # kept with the conversation
    down.click()
    expect(down).to_have_attribute("aria-pressed", "true")
    expect(up).to_have_attribute("aria-pressed", "false")
    # Changed (PATCH), not rated twice: one feedback, with the new rating and the comment kept.
    [row] = stored()
    assert (row["rating"], row["content"]) == ("THUMBS_DOWN", "Clear and short")

    # A chatflow whose config does not turn feedback on offers none.
    page.get_by_test_id("chatflow").select_option(DEMO_CHATFLOW_ID)
    ask(page, "No thumbs here")
    wait_state(page, "done")
    expect(page.get_by_test_id("copy-answer")).to_be_visible()
    expect(page.get_by_test_id("thumbs-up")).to_be_hidden()


def test_imageAttached_thenFlowisesLlmGetsIt_andAfterAReloadItIsFetchedBackWithTheKey(
        page: Page, flowise: ServerThread) -> None:
    # With gateway keys: the stored image can only come back through a request that carries the
    # key (an <img src> could not), and only to the key that sent it.
    gateway = start_gateway(flowise.url, api_keys=["k1"])
    try:
        posted = script_answers(page)
        page.goto(gateway.url + "/")
        page.get_by_test_id("api-key").fill("k1")
        page.get_by_test_id("api-key").press("Enter")
        expect(page.get_by_test_id("chatflow")).to_have_value(DEMO_CHATFLOW_ID)
        page.get_by_test_id("chatflow").select_option(UPLOADS_CHATFLOW_ID)
        expect(page.get_by_test_id("attach")).to_be_visible()

        page.get_by_test_id("file-input").set_input_files(
            [{"name": "chart.png", "mimeType": "image/png", "buffer": CHART}])
        chip = page.get_by_test_id("attachment")
        expect(chip).to_have_attribute("data-status", "ready")
        expect(chip).to_contain_text("chart.png")
        expect(chip.locator("img")).to_have_attribute("src", data_uri("image/png", CHART))  # its preview
        # Leaving the key's field changes it again, which reads the configs again: what is attached stays.
        with page.expect_response(lambda r: r.url.endswith("/config")):
            page.get_by_test_id("api-key").dispatch_event("change")
        expect(chip).to_have_count(1)
        ask(page, STARTERS[0])
        wait_state(page, "done")
        expect(page.get_by_test_id("attachment")).to_have_count(0)  # went with the question

        image = data_uri("image/png", CHART)
        assert posted[-1]["uploads"] == [{"data": image, "type": "file", "name": "chart.png", "mime": "image/png"}]
        llm = flowise.app.requests[-1]["llm_messages"]
        assert llm[-1]["content"] == [{"type": "image_url", "image_url": {"url": image}}]  # the vision model's
        sent = page.locator(".turn.user").get_by_test_id("sent-image").locator("img")
        expect(sent).to_have_attribute("src", image)

        with page.expect_response(lambda r: "/files?" in r.url) as fetched:
            page.reload()
        assert fetched.value.status == 200 and "fileName=chart.png" in fetched.value.url
        assert fetched.value.request.all_headers()["authorization"] == "Bearer k1"
        expect(sent).to_have_attribute("src", image)  # byte for byte, as Flowise stored it
        assert sent.evaluate("(img) => img.complete && img.naturalWidth") == 48
    finally:
        gateway.__exit__(None, None, None)


def test_fileAndImageLink_thenTheFilesTextAsFileFull_andTheLinkAsUrl(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    posted = script_answers(page)
    open_flow(page, gateway.url, UPLOADS_CHATFLOW_ID)
    expect(page.get_by_test_id("attach")).to_be_visible()
    notes = "Quarterly numbers: up 12%."
    with page.expect_response(lambda r: "/attachments?" in r.url) as uploaded:
        page.get_by_test_id("file-input").set_input_files(
            [{"name": "notes.txt", "mimeType": "text/plain", "buffer": notes.encode()}])
    assert uploaded.value.status == 200
    chip = page.get_by_test_id("attachment")
    expect(chip).to_have_attribute("data-status", "ready")

    page.get_by_test_id("link").click()
    page.get_by_test_id("link-url").fill("ftp://example.com/cat.jpg")
    page.get_by_test_id("link-add").click()
    expect(page.get_by_test_id("attach-note")).to_contain_text("http(s) address")
    page.get_by_test_id("link-url").fill("https://example.com/photos/cat.jpg")
    page.get_by_test_id("link-add").click()
    expect(chip).to_have_count(2)
    expect(page.get_by_test_id("attach-note")).to_be_hidden()

    ask(page, STARTERS[1])
    wait_state(page, "done")
    link = "https://example.com/photos/cat.jpg"
    assert posted[-1]["uploads"] == [
        {"data": notes, "type": "file:full", "name": "notes.txt", "mime": "text/plain"},
        {"data": link, "type": "url", "name": "cat.jpg", "mime": "image/jpeg"},
    ]
    # The file went to Flowise's attachments under the chat the question then asked in (the page
    # made the chat's id for it), and its text before the question.
    chat_id = posted[-1]["chatId"]
    assert flowise.app.conversation.files[(UPLOADS_CHATFLOW_ID, chat_id, "notes.txt")] == (notes.encode(), "text/plain")
    llm = flowise.app.requests[-1]["llm_messages"]
    assert llm[-2]["content"].startswith(f"<doc name='notes.txt'>{notes}</doc>")
    assert llm[-1]["content"] == [{"type": "image_url", "image_url": {"url": link}}]
    user = page.locator(".turn.user")
    expect(user.get_by_test_id("sent-file")).to_have_text("notes.txt")
    expect(user.get_by_test_id("sent-link")).to_have_attribute("href", link)
    expect(user.get_by_test_id("sent-link")).to_have_attribute("rel", "noopener noreferrer")


def test_refusedFiles_thenTheReasonBeforeSending_andNothingLeavesThePage(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if r.method == "POST" else None)
    open_flow(page, gateway.url, UPLOADS_CHATFLOW_ID)
    expect(page.get_by_test_id("attach")).to_be_visible()
    big = png(8, 8, lambda x, y: (0, 0, 0)) + b"\0" * (6 * 1024 * 1024)  # a 6 MB "image"
    page.get_by_test_id("file-input").set_input_files([
        {"name": "report.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.7"},
        {"name": "big.png", "mimeType": "image/png", "buffer": big},
    ])
    note = page.get_by_test_id("attach-note")
    expect(note).to_contain_text(
        "report.pdf (application/pdf) cannot be attached: this chatflow takes images (GIF, JPEG, PNG, WEBP, "
        "up to 5 MB) and files of type text/plain, text/csv, application/json.")
    expect(note).to_contain_text("big.png is 6 MB: this chatflow takes images up to 5 MB.")
    expect(page.get_by_test_id("attachment")).to_have_count(0)

    # A chatflow that takes no attachments offers none, and says so of a file dropped on the page.
    page.get_by_test_id("chatflow").select_option(DEMO_CHATFLOW_ID)
    expect(page.get_by_test_id("attach")).to_be_hidden()
    expect(note).to_be_hidden()
    files = page.evaluate_handle("""() => {
        const data = new DataTransfer();
        data.items.add(new File(['hello'], 'hello.txt', {type: 'text/plain'}));
        return data;
    }""")
    page.dispatch_event("#conversation", "drop", {"dataTransfer": files})
    expect(note).to_have_text("hello.txt (text/plain) cannot be attached: this chatflow takes no attachments.")
    expect(page.get_by_test_id("attachment")).to_have_count(0)
    assert calls == [] and list(flowise.app.requests) == []


def test_formStart_thenItsValuesSentAsFormWithoutAQuestion(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    posted = script_answers(page)
    open_flow(page, gateway.url, FORM_AGENTFLOW_ID)
    form = page.get_by_test_id("form-start")
    expect(form.locator("h2")).to_have_text("About you")
    expect(page.get_by_test_id("question")).to_be_disabled()  # the form comes first
    form.get_by_label("Name").fill("Ada")
    form.get_by_label("Age").fill("36")
    page.get_by_test_id("form-submit").click()
    wait_state(page, "done")

    assert posted == [{"chatflowId": FORM_AGENTFLOW_ID, "form": {"name": "Ada", "age": 36}}]
    body = flowise.app.requests[-1]["body"]
    assert body["form"] == {"name": "Ada", "age": 36} and "question" not in body
    assert answer_text(page) == reply_to("name=Ada age=36")  # the emulated Agentflow read the form
    expect(page.locator(".turn.user")).to_have_text(["Name: AdaAge: 36"])
    expect(form).to_be_hidden()
    expect(page.get_by_test_id("question")).to_be_enabled()  # then the conversation goes on
    page.reload()
    expect(page.locator(".turn.user")).to_have_text(["Name: AdaAge: 36"])
    expect(page.get_by_test_id("form-start")).to_be_hidden()


def test_pausedRun_approvedWithFeedback_afterAReload_thenTheRestStreamsIntoTheConversation(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    posted = script_answers(page)
    open_flow(page, gateway.url, HUMAN_INPUT_AGENTFLOW_ID)
    ask(page, "Deploy to production?")
    wait_state(page, "done")
    approval = page.get_by_test_id("approval")
    expect(approval).to_contain_text("The run is waiting for your decision at Human Input.")
    expect(page.get_by_test_id("status")).to_have_text("Waiting for your decision")
    chat_id = flowise.app.requests[-1]["body"]["chatId"]

    page.reload()  # a paused run waits in the conversation kept
    expect(approval).to_be_visible()
    record_states(page)
    page.get_by_test_id("approval-feedback").fill("Ship it")
    page.get_by_test_id("approve").click()
    wait_state(page, "done")

    assert posted[-1] == {"chatflowId": HUMAN_INPUT_AGENTFLOW_ID, "chatId": chat_id, "humanInput": {
        "type": "proceed", "startNodeId": "humanInputAgentflow_0", "feedback": "Ship it"}}
    assert "question" not in flowise.app.requests[-1]["body"]
    assert "streaming" in page.evaluate("window.__states")  # the rest of the run streamed in
    assert answer_text(page) == reply_to("proceed: Ship it")
    expect(turns(page)).to_have_count(2)
    expect(page.locator(".turn.user").last).to_have_text("Proceed Ship it")
    expect(page.get_by_test_id("approval")).to_have_count(2)  # one per answer, both hidden now
    expect(page.get_by_test_id("approval").first).to_be_hidden()
    expect(page.get_by_test_id("regenerate")).to_be_hidden()  # the run went on: no sending it twice
    steps = turns(page).last.get_by_test_id("steps")
    steps.locator("summary").click()
    expect(steps).to_contain_text("Human Input")
    expect(steps).to_contain_text("finished")


def test_pausedRun_rejected_thenTheRejectionReachesFlowise(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    posted = script_answers(page)
    open_flow(page, gateway.url, HUMAN_INPUT_AGENTFLOW_ID)
    ask(page, "Delete the database?")
    wait_state(page, "done")
    page.get_by_test_id("reject").click()
    wait_state(page, "done")
    assert posted[-1]["humanInput"] == {"type": "reject", "startNodeId": "humanInputAgentflow_0"}
    assert answer_text(page) == reply_to("reject:")
    expect(page.locator(".turn.user").last).to_have_text("Reject")
    expect(page.get_by_test_id("approval").last).to_be_hidden()


SEQUENTIAL_ACTION = {
    "id": "b7c8a1e2-0f3d-4c5b-9a6e-1d2c3b4a5f60",
    "mapping": {"approve": "Yes", "reject": "No", "toolCalls": [{"name": "send_email", "args": {"to": "ops"}}]},
    "elements": [{"type": "approve-button", "label": "Yes"}, {"type": "reject-button", "label": "No"}],
}


def test_sequentialAgentAction_thenTheChosenLabelGoesBackWithTheAction(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    # Flowise 2.x sequential agents stop with an `action` of their own kind: the reply is the
    # button's label as the question, with the action sent back (no feedback text).
    posted = script_answers(page, {"events": [{"event": "action", "data": SEQUENTIAL_ACTION}]})
    open_chat(page, gateway.url)
    ask(page, "Email the ops team")
    wait_state(page, "done")
    expect(page.get_by_test_id("approve")).to_have_text("Yes")
    expect(page.get_by_test_id("reject")).to_have_text("No")
    expect(page.get_by_test_id("approval-feedback")).to_have_count(0)
    chat_id = flowise.app.requests[-1]["body"]["chatId"]
    page.get_by_test_id("approve").click()
    wait_state(page, "done")
    assert posted[-1] == {"chatflowId": DEMO_CHATFLOW_ID, "question": "Yes", "action": SEQUENTIAL_ACTION,
                          "chatId": chat_id}
    assert answer_text(page) == reply_to("Yes")
