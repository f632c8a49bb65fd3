"""The chat page as a product, in real headless Chromium against a real gateway and the emulated
Flowise: Markdown rendered while it streams, sanitised; the conversation kept across reloads per
chatflow, "New chat"; copy; retry and regenerate; the chatflow id field when the listing fails;
agent activity; the screenshots of docs/.

The emulated LLM says what a test scripts (`script_answers`: its `overrideConfig.emulator`), so
answers can be any Markdown, hostile HTML, or a failure after some tokens.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from flowise_sse.emulator import (
    DEMO_CHATFLOW_ID,
    NONSTREAMING_CHATFLOW_ID,
    UPLOADS_CHATFLOW_ID,
    EmulatorConfig,
    create_emulator_app,
)

from .page_driver import (  # noqa: F401  (browser, flowise, gateway, page: fixtures)
    ARTIFACTS,
    DESKTOP,
    PHONE,
    answer_text,
    ask,
    browser,
    flowise,
    gateway,
    open_chat,
    open_flow,
    page,
    png,
    reply_to,
    script_answers,
    start_gateway,
    wait_state,
)
from .servers import ServerThread

pytestmark = pytest.mark.browser

MARKDOWN = [
    "# Release plan\n\n", "The **gateway** streams", " with `curl -N`.\n\n", "- first\n", "- second\n\n",
    "| step | who |\n", "|---|---|\n", "| build | CI |\n\n", "```python\n", "print('hi')\n", "```\n\n",
    "Read [the docs](https://example.com/docs).",
]


def answer_dom(page: Page) -> dict:
    """The latest answer's rendered elements and the page's state, read at one instant."""
    return page.evaluate("""() => {
        const a = document.querySelector('[data-testid=answer]') || document.createElement('div');
        const count = (s) => a.querySelectorAll(s).length;
        return {state: document.querySelector('[data-testid=status]').dataset.state, text: a.textContent,
                h1: count('h1'), strong: count('strong'), li: count('li'), td: count('td'),
                code: count('pre > code.language-python'), links: count('a')};
    }""")


def test_markdown_whileStreaming_thenFormattedBeforeTheEnd_andWholeAtTheEnd(page: Page, gateway: ServerThread) -> None:
    script_answers(page, {"tokens": MARKDOWN, "delay": 0.25})
    open_chat(page, gateway.url)
    ask(page, "Plan the release")

    partial = None
    deadline = time.monotonic() + 10
    while partial is None:
        dom = answer_dom(page)
        assert dom["state"] != "done" and time.monotonic() < deadline, f"no formatted partial answer: {dom}"
        if dom["strong"] and dom["state"] == "streaming":
            partial = dom
        page.wait_for_timeout(20)
    # Formatted while the answer was still coming: the heading and the bold, not yet the link.
    assert partial["h1"] == 1 and "the docs" not in partial["text"]

    wait_state(page, "done")
    dom = answer_dom(page)
    assert (dom["h1"], dom["strong"], dom["li"], dom["td"], dom["code"], dom["links"]) == (1, 1, 2, 2, 1, 1)
    answer = page.get_by_test_id("answer")
    expect(answer.locator("p code")).to_have_text("curl -N")  # inline code
    expect(answer.locator("th").first).to_have_text("step")
    link = answer.get_by_role("link", name="the docs")
    expect(link).to_have_attribute("href", "https://example.com/docs")
    expect(link).to_have_attribute("target", "_blank")
    expect(link).to_have_attribute("rel", "noopener noreferrer")
    expect(answer.get_by_test_id("copy-code")).to_have_count(1)


HOSTILE = [
    "<script>window.__pwned = 'script'</script>\n\n",
    "<img src=x onerror=\"window.__pwned = 'img'\">\n\n",
    "<svg onload=\"window.__pwned = 'svg'\"><script>window.__pwned = 'svg-script'</script></svg>\n\n",
    "<iframe srcdoc=\"<script>parent.__pwned = 'iframe'</script>\"></iframe>\n\n",
    "<math><mtext><table><mglyph><style><img src=x onerror=\"window.__pwned = 'mxss'\">\n\n",
    "Inline <b onclick=\"window.__pwned = 'b'\">bold</b> and <a href=\"javascript:window.__pwned = 'a'\">raw</a>.\n\n",
    "[click me](javascript:window.__pwned='link') ",
    "[case](JaVaScRiPt:window.__pwned='case') ",
    "[entity](&#106;avascript:window.__pwned='entity') ",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==) ",
    "![picture](javascript:window.__pwned='image') ",
    "<b>bare tags stay</b><br>",
]


def test_hostileAnswer_thenNothingRuns_andRawHtmlShowsAsText(page: Page, gateway: ServerThread) -> None:
    refused: list[str] = []
    page.on("console", lambda m: refused.append(m.text) if "Content Security Policy" in m.text else None)
    script_answers(page, {"tokens": HOSTILE, "delay": 0})
    open_chat(page, gateway.url)
    ask(page, "Summarise this page for me")
    wait_state(page, "done")

    answer = page.get_by_test_id("answer")
    found = page.evaluate("""() => {
        const a = document.querySelector('[data-testid=answer]');
        const all = [...a.querySelectorAll('*')];
        return {
            dangerous: a.querySelectorAll('script, svg, math, iframe, img, style, form, object, embed').length,
            handlers: all.flatMap((e) => [...e.attributes].map((x) => x.name)).filter((n) => n.startsWith('on')),
            hrefs: [...a.querySelectorAll('a')].map((l) => l.getAttribute('href')),
            pwned: window.__pwned === undefined ? null : window.__pwned,
            bare: [...a.querySelectorAll('b')].map((b) => b.textContent),
        };
    }""")
    assert found["dangerous"] == 0 and found["handlers"] == [], found
    assert all(href is None for href in found["hrefs"]), found["hrefs"]  # javascript: and data: dropped
    assert found["bare"] == ["bare tags stay"]
    # Raw HTML is the answer's text: shown, not run.
    expect(answer).to_contain_text("<script>window.__pwned = 'script'</script>")
    expect(answer).to_contain_text("<b onclick=")
    for name in ("click me", "case", "entity", "data", "picture"):
        answer.get_by_text(name, exact=True).click()  # a link without href: nothing happens
    assert page.evaluate("window.__pwned === undefined")
    assert refused == []  # nothing even tried to run: the CSP had nothing to refuse


def test_conversation_keptAcrossReloads_perChatflow_andNewChatClearsIt(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    posted = script_answers(page)
    open_chat(page, gateway.url)
    for question in ("First question", "Second question"):
        ask(page, question)
        wait_state(page, "done")
    chat_id = flowise.app.requests[-1]["body"]["chatId"]

    page.reload()
    open_chat(page, gateway.url)
    turns = page.locator(".turn.assistant")
    expect(turns).to_have_count(2)
    expect(turns.nth(0)).to_contain_text(reply_to("First question"))
    assert answer_text(page) == reply_to("Second question")
    ask(page, "Third question")  # the same Flowise chat: its memory follows
    wait_state(page, "done")
    assert posted[-1] == {"chatflowId": DEMO_CHATFLOW_ID, "question": "Third question", "chatId": chat_id}

    # Another chatflow has its own conversation; coming back shows this one again.
    page.get_by_test_id("chatflow").select_option(NONSTREAMING_CHATFLOW_ID)
    expect(turns).to_have_count(0)
    ask(page, "Elsewhere")
    wait_state(page, "done")
    assert posted[-1] == {"chatflowId": NONSTREAMING_CHATFLOW_ID, "question": "Elsewhere"}
    page.reload()
    expect(page.get_by_test_id("chatflow")).to_have_value(NONSTREAMING_CHATFLOW_ID)  # remembered too
    expect(turns).to_have_count(1)
    page.get_by_test_id("chatflow").select_option(DEMO_CHATFLOW_ID)
    expect(turns).to_have_count(3)

    page.get_by_test_id("new-chat").click()
    expect(turns).to_have_count(0)
    page.reload()
    open_chat(page, gateway.url)
    expect(turns).to_have_count(0)
    ask(page, "A new chat")
    wait_state(page, "done")
    assert posted[-1] == {"chatflowId": DEMO_CHATFLOW_ID, "question": "A new chat"}  # a new chatId


def test_copyButtons_thenTheClipboardHoldsTheAnswersMarkdownAndTheCodesText(page: Page, gateway: ServerThread) -> None:
    script_answers(page, {"tokens": MARKDOWN, "delay": 0})
    open_chat(page, gateway.url)
    ask(page, "Plan the release")
    wait_state(page, "done")

    copy_answer = page.locator(".turn.assistant").last.get_by_test_id("copy-answer")
    copy_answer.click()
    expect(copy_answer).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "".join(MARKDOWN)

    copy_code = page.get_by_test_id("copy-code")
    copy_code.click()
    expect(copy_code).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == "print('hi')\n"


def test_failureMidAnswer_thenOneMessageInTheGatewaysWords_andRetryAnswersInTheSameChat(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    script_answers(page, {"error": "LLM quota exceeded", "errorAfter": 3, "delay": 0.02}, None)
    open_chat(page, gateway.url)
    ask(page, "Will you manage?")
    wait_state(page, "error")
    note = page.get_by_test_id("turn-note")
    expect(note).to_contain_text("LLM quota exceeded")  # the `error` event's message
    expect(note).to_contain_text("upstream_error")
    expect(page.get_by_text("LLM quota exceeded")).to_have_count(1)  # once: not again in the banner
    expect(page.get_by_test_id("error")).to_be_hidden()
    assert answer_text(page) == "This is a"  # what came before the failure stays
    failed_chat = flowise.app.requests[-1]["body"]["chatId"]

    page.get_by_test_id("retry").click()
    wait_state(page, "done")
    assert answer_text(page) == reply_to("Will you manage?")
    expect(page.locator(".turn.assistant")).to_have_count(1)  # the failed answer was replaced
    expect(page.get_by_text("LLM quota exceeded")).to_have_count(0)
    # Flowise stored nothing for the failure: the retry stays in the same chat.
    assert flowise.app.requests[-1]["body"]["chatId"] == failed_chat


def test_regenerate_thenTheLastAnswerReplaced_inAFreshChatCarryingTheTurnsBefore(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    posted = script_answers(page, None, None, {"tokens": ["Another ", "answer."]})
    open_chat(page, gateway.url)
    for question in ("Question one", "Question two"):
        ask(page, question)
        wait_state(page, "done")
    first_chat = flowise.app.requests[-1]["body"]["chatId"]

    page.get_by_test_id("regenerate").click()
    wait_state(page, "done")
    assert answer_text(page) == "Another answer."
    expect(page.locator(".turn.assistant")).to_have_count(2)
    # Flowise stored the answer replaced under the old chatId: a fresh one, with the turns before.
    before = [{"role": "user", "content": "Question one"}, {"role": "assistant", "content": reply_to("Question one")}]
    assert posted[2] == {"chatflowId": DEMO_CHATFLOW_ID, "question": "Question two", "history": before}
    new_chat = flowise.app.requests[-1]["body"]["chatId"]
    assert new_chat != first_chat

    ask(page, "Question three")
    wait_state(page, "done")
    assert posted[3] == {"chatflowId": DEMO_CHATFLOW_ID, "question": "Question three", "chatId": new_chat,
                         "history": before}


@pytest.fixture
def keyed_flowise() -> Iterator[ServerThread]:
    """A Flowise 3.x whose management routes want an API key: the gateway, given none, cannot
    list its chatflows, but an open chatflow still answers."""
    with ServerThread(create_emulator_app(EmulatorConfig(version="3.1.4", api_key="flowise-key")),
                      lifespan="off") as server:
        yield server


def test_listingRefused_thenTheReasonAndAChatflowIdField_andAskingByIdWorks(
        page: Page, keyed_flowise: ServerThread) -> None:
    gateway = start_gateway(keyed_flowise.url)
    try:
        refusal = httpx.get(gateway.url + "/v1/chatflows").json()["error"]
        page.goto(gateway.url + "/")
        error = page.get_by_test_id("error")
        expect(error).to_contain_text(refusal["message"])  # the gateway's words, and its code
        expect(error).to_contain_text("502 unauthorized")
        field = page.get_by_test_id("chatflow-id")
        expect(field).to_be_visible()
        expect(page.get_by_test_id("chatflow")).to_be_hidden()

        field.fill("not-a-chatflow")
        field.press("Enter")
        expect(error).to_contain_text("A chatflow id is a UUID")

        unknown = "00000000-0000-4000-8000-000000000000"
        field.fill(unknown)
        field.press("Enter")
        ask(page, "Anyone there?")
        wait_state(page, "error")
        expect(page.get_by_test_id("turn-note")).to_contain_text(f"chatflow {unknown}")  # the 404's message
        expect(page.get_by_test_id("turn-note")).to_contain_text("404 not_found")
        expect(page.get_by_text(f"chatflow {unknown}")).to_have_count(1)

        field.fill(DEMO_CHATFLOW_ID)
        field.press("Enter")
        expect(page.locator(".turn.assistant")).to_have_count(0)  # another chatflow, another conversation
        ask(page, "By id")
        wait_state(page, "done")
        assert answer_text(page) == reply_to("By id")

        page.reload()  # the id and its conversation are kept
        expect(field).to_have_value(DEMO_CHATFLOW_ID)
        expect(page.locator(".turn.assistant")).to_have_count(1)
        assert answer_text(page) == reply_to("By id")
    finally:
        gateway.__exit__(None, None, None)


ACTIVITY = [
    {"event": "thinking", "data": "The user wants the release "},
    {"event": "thinking", "data": "status: ask the planner."},
    {"event": "nextAgentFlow", "data": {"nodeId": "llm_0", "nodeLabel": "Planner", "status": "INPROGRESS"}},
    {"event": "agent_trace", "data": {"step": "tool_start", "name": "search", "input": "release 1.2", "runId": "r1"}},
    {"event": "agent_trace", "data": {"step": "tool_end", "output": "3 open issues", "runId": "r1"}},
    {"event": "nextAgentFlow", "data": {"nodeId": "llm_0", "nodeLabel": "Planner", "status": "FINISHED"}},
    {"event": "agentReasoning",
     "data": [{"agentName": "Reviewer", "messages": ["Looks ready"], "nodeName": "seqAgent"}]},
    {"event": "usedTools",
     "data": [{"tool": "search", "toolInput": {"q": "release 1.2"}, "toolOutput": "3 open issues"}]},
    {"event": "sourceDocuments",
     "data": [{"pageContent": "Release 1.2 ships on Friday.", "metadata": {"source": "plan.md"}}]},
]


def test_agentActivity_thenReasoningAndStepsCollapsedAboveTheAnswer_keptAcrossReload(
        page: Page, gateway: ServerThread) -> None:
    script_answers(page, {"tokens": ["Release ", "1.2 ", "is ", "ready."], "events": ACTIVITY})
    open_chat(page, gateway.url)
    ask(page, "Is the release ready?")
    wait_state(page, "done")

    for _ in range(2):  # as streamed, then as kept
        thinking, steps = page.get_by_test_id("thinking"), page.get_by_test_id("steps")
        expect(thinking.locator("summary")).to_have_text("Reasoning")
        expect(steps.locator("summary")).to_have_text("Agent steps (3)")
        expect(page.get_by_test_id("sourceDocuments").locator("summary")).to_have_text("Source (1)")
        expect(page.get_by_test_id("usedTools").locator("summary")).to_have_text("Tool used (1)")
        expect(thinking.get_by_text("ask the planner")).to_be_hidden()  # collapsed
        thinking.locator("summary").click()
        expect(thinking).to_contain_text("The user wants the release status: ask the planner.")
        steps.locator("summary").click()
        items = steps.locator("li")
        expect(items.nth(0)).to_contain_text("Planner")
        expect(items.nth(0)).to_contain_text("finished")  # one step per node, its last status
        expect(items.nth(1)).to_contain_text("Calls search")
        expect(items.nth(1)).to_contain_text("3 open issues")
        expect(items.nth(2)).to_contain_text("Reviewer")
        expect(items.nth(2)).to_contain_text("Looks ready")
        # Above the answer: what happened before it.
        assert page.evaluate("""() => {
            const bot = document.querySelector('.turn.assistant');
            return bot.querySelector('.activity').compareDocumentPosition(bot.querySelector('.bubble'))
                === Node.DOCUMENT_POSITION_FOLLOWING;
        }""")
        page.reload()
        open_chat(page, gateway.url)


SHOWCASE_ANSWER = [
    "## Sales by quarter\n\n",
    "The chart shows **steady growth**: each quarter beats the last, and Q4 is ", "more than twice Q1.\n\n",
    "| quarter | sales | change |\n", "|---|--:|--:|\n", "| Q1 | 52 | |\n", "| Q2 | 74 | +42% |\n",
    "| Q3 | 96 | +30% |\n", "| Q4 | 124 | +29% |\n\n",
    "The same total from `sales-2026.csv`:\n\n",
    "```python\n", "import csv\n", "rows = csv.DictReader(open(\"sales-2026.csv\"))\n",
    "print(sum(int(row[\"sales\"]) for row in rows))\n", "```\n",
]
SALES = b"quarter,sales\nQ1,52\nQ2,74\nQ3,96\nQ4,124\n"


def sales_chart(x: int, y: int) -> tuple[int, int, int]:
    """A small bar chart of SALES: four bars on a light grid."""
    base = 136
    for i, value in enumerate((52, 74, 96, 124)):
        if 22 + i * 54 <= x < 56 + i * 54 and base - value <= y < base:
            return (36, 86, 201)
    if (base <= y < base + 2 and 10 <= x < 230) or (y % 34 == 0 and 10 <= x < 230):
        return (200, 207, 216) if y >= base else (232, 236, 241)
    return (255, 255, 255)


def test_showcase_thenScreenshotsAtDesktopAndPhoneWidths(browser: Browser, gateway: ServerThread) -> None:
    """The screenshots of docs/chat.png and docs/chat-phone.png (copied from tests/artifacts/): a
    chart and its data attached, the answer in Markdown, rated."""
    chart = png(240, 150, sales_chart)
    for name, viewport in (("chat.png", DESKTOP | {"height": 900}), ("chat-phone.png", PHONE | {"height": 844})):
        context = browser.new_context(viewport=viewport, color_scheme="light")
        try:
            page = context.new_page()
            script_answers(page, {"tokens": SHOWCASE_ANSWER, "delay": 0})
            open_flow(page, gateway.url, UPLOADS_CHATFLOW_ID)
            expect(page.get_by_test_id("starter-prompt")).to_have_count(2)
            page.get_by_test_id("file-input").set_input_files([
                {"name": "chart.png", "mimeType": "image/png", "buffer": chart},
                {"name": "sales-2026.csv", "mimeType": "text/csv", "buffer": SALES},
            ])
            expect(page.locator("[data-testid=attachment][data-status=ready]")).to_have_count(2)
            ask(page, "What does this chart show?")
            wait_state(page, "done")
            page.get_by_test_id("thumbs-up").click()
            expect(page.get_by_test_id("thumbs-up")).to_have_attribute("aria-pressed", "true")
            page.get_by_test_id("feedback-comment").get_by_role("button", name="Close").click()
            assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]  # no sideways scroll
            # The question at the top, its answer below it.
            page.locator(".turn.user").last.evaluate("(turn) => turn.scrollIntoView({block: 'start'})")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=ARTIFACTS / name)
        finally:
            context.close()
