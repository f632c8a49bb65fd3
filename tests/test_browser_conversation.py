# ruff: noqa: F811  (pytest fixtures imported from tests/page_driver.py and named again as the tests' arguments)
"""The whole conversation on the chat page, in real headless Chromium against a real gateway and
the emulated Flowise 3.1.4: the chatbot config's welcome message and starter prompts, feedback on
answers, and an Agentflow's start form.

What reached Flowise is read from the emulator: the prediction bodies (`flowise.app.requests`), its
stored feedback and messages (`flowise.app.conversation`, `flowise.app.answers`).
"""

from __future__ import annotations

from typing import Any

import pytest
from playwright.sync_api import Page, expect

from flowise_sse.emulator import DEMO_CHATFLOW_ID, FORM_AGENTFLOW_ID, UPLOADS_CHATFLOW_ID

from .page_driver import (  # noqa: F401  (browser, flowise, gateway, page: fixtures)
    answer_text,
    ask,
    browser,
    flowise,
    gateway,
    open_chat,
    open_flow,
    page,
    reply_to,
    script_answers,
    wait_state,
)
from .servers import ServerThread

pytestmark = pytest.mark.browser

WELCOME = "Hello! Send a picture, a recording or a file."
STARTERS = ["What is in this picture?", "Summarise my file"]


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
