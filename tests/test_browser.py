"""The chat page (`/`) in real headless Chromium, against a real gateway and the emulated Flowise:
streaming, the conversation's chatId, stop, errors, sources and tools, a cut connection, other
origins, gateway keys. What makes the page a product (Markdown, sanitising, persistence, copy,
retry, the chatflow id field, agent activity) is tests/test_chat_page.py's.

One browser per module, one context (fresh storage) per test (tests/page_driver.py).
"""

from __future__ import annotations

import time

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from starlette.applications import Starlette
from starlette.responses import HTMLResponse
from starlette.routing import Route as StarletteRoute

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .cutting_proxy import CuttingProxy
from .helpers import wait_until
from .page_driver import (  # noqa: F401  (browser, flowise, gateway, page: fixtures)
    ARTIFACTS,
    PHONE,
    answer_text,
    ask,
    browser,
    flowise,
    gateway,
    open_chat,
    page,
    record_states,
    reply_to,
    script_answers,
    start_gateway,
    wait_state,
)
from .servers import ServerThread, parse_sse

pytestmark = pytest.mark.browser

# --- tests -------------------------------------------------------------------------------------


def test_tokensAppearProgressively_thenTheExactAnswer(page: Page, gateway: ServerThread) -> None:
    open_chat(page, gateway.url)
    question = "[[delay=60]] Do the tokens stream in?"
    expected = reply_to(question)
    ask(page, question)

    seen: list[str] = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        text = answer_text(page)
        if not seen or seen[-1] != text:
            seen.append(text)
        if text == expected:
            break
        time.sleep(0.01)

    assert seen[-1] == expected
    partial = [text for text in seen if text and text != expected]
    assert partial, f"never saw a partial answer: {seen}"
    assert all(expected.startswith(text) for text in partial)  # strict non-empty prefixes, growing
    assert [len(t) for t in seen] == sorted(len(t) for t in seen)
    wait_state(page, "done")
    expect(page.get_by_test_id("answer")).to_have_attribute("data-testid", "answer")
    expect(page.get_by_test_id("stop")).to_be_disabled()
    expect(page.get_by_test_id("send")).to_be_enabled()
    expect(page.get_by_test_id("question")).to_be_focused()
    expect(page.get_by_test_id("error")).to_be_hidden()


def test_secondQuestion_sendsTheConversationsChatIdNotItsHistory(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    posted = script_answers(page)
    open_chat(page, gateway.url)

    first = "My name is Ada.\nI like event streams."  # typed with Shift+Enter: a newline, not a send
    ask(page, first)
    wait_state(page, "done")
    assert answer_text(page) == reply_to(first)
    expect(page.get_by_test_id("question")).to_have_value("")
    first_chat_id = flowise.app.requests[-1]["body"]["chatId"]

    second = "What is my name?"
    ask(page, second)
    wait_state(page, "done")
    assert answer_text(page) == reply_to(second)

    # The first question starts a chat (the gateway picks its id); the second goes on in it, and
    # Flowise's memory, keyed by that chatId, carries the conversation: no history is resent.
    assert posted[0] == {"chatflowId": DEMO_CHATFLOW_ID, "question": first}
    assert posted[1] == {"chatflowId": DEMO_CHATFLOW_ID, "question": second, "chatId": first_chat_id}
    upstream = flowise.app.requests[-1]["body"]
    assert upstream["chatId"] == first_chat_id and "history" not in upstream

    page.set_viewport_size(PHONE)
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]  # no sideways scroll

    page.get_by_test_id("new-chat").click()
    expect(page.get_by_test_id("answer")).to_have_count(0)
    ask(page, "Fresh start?")
    wait_state(page, "done")
    assert posted[-1] == {"chatflowId": DEMO_CHATFLOW_ID, "question": "Fresh start?"}
    assert flowise.app.requests[-1]["body"]["chatId"] != first_chat_id


def test_stop_midStream_thenStoppedAndNoFurtherTokens(page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    open_chat(page, gateway.url)
    question = "[[delay=200]] Please stop me before I reach the end of this rather long sentence"
    ask(page, question)
    expect(page.get_by_test_id("answer")).to_contain_text("This is a")
    expect(page.get_by_test_id("stop")).to_be_enabled()

    with page.expect_request(lambda r: r.method == "DELETE") as deleted:
        page.get_by_test_id("stop").click()
    wait_state(page, "stopped")
    expect(page.get_by_test_id("turn-note")).to_have_text("Stopped.")
    stopped = answer_text(page)
    time.sleep(1.0)  # a quiet window of five token periods: no token may come (nothing to wait for)
    assert answer_text(page) == stopped
    assert stopped and reply_to(question).startswith(stopped) and stopped != reply_to(question)

    stream_id = deleted.value.url.rsplit("/", 1)[1]
    chat_id = flowise.app.requests[-1]["body"]["chatId"]
    wait_until(lambda: (DEMO_CHATFLOW_ID, chat_id) in flowise.app.aborts, what="the gateway called Flowise's abort")
    wait_until(lambda: flowise.app.active_predictions == 0, what="and closed the upstream")
    with httpx.stream("GET", f"{gateway.url}/v1/streams/{stream_id}/events", timeout=10) as r:
        events = parse_sse(r)  # the stream, as the gateway kept it: tokens, then `aborted`
    assert events[-1].event == "error" and events[-1].data["code"] == "aborted"
    assert "".join(e.data["text"] for e in events if e.event == "token") == stopped
    expect(page.get_by_test_id("send")).to_be_enabled()


def test_upstreamError_thenItsMessageOnceInTheTurn_andTheNextQuestionWorks(
        page: Page, gateway: ServerThread, flowise: ServerThread) -> None:
    open_chat(page, gateway.url)
    ask(page, "[[http400]] Will this fail?")
    wait_state(page, "error")
    note = page.get_by_test_id("turn-note")
    expect(note).to_contain_text("400 mock error 400")  # the gateway's `error` event's message
    expect(note).to_contain_text("upstream_error")
    expect(page.get_by_test_id("error")).to_be_hidden()  # the turn says it; the banner does not repeat it
    expect(page.get_by_text("400 mock error 400")).to_have_count(1)
    expect(page.get_by_test_id("retry")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat-error.png")

    # The failed turn stays on screen, not in the conversation Flowise keeps.
    ask(page, "And now?")
    wait_state(page, "done")
    expect(page.get_by_test_id("retry")).to_have_count(0)
    assert "history" not in flowise.app.requests[-1]["body"]


def test_sourcesAndTools_thenCollapsibleUnderTheAnswer(page: Page, gateway: ServerThread) -> None:
    # The emulated Flowise sends these events after the answer's tokens.
    extra = [
        {"event": "sourceDocuments", "data": [
            {"pageContent": "Server-sent events let a server push text over HTTP.",
             "metadata": {"source": "sse-spec.html"}},
            {"pageContent": "EventSource reconnects by itself.", "metadata": {"source": "mdn-eventsource.html"}}]},
        {"event": "usedTools", "data": [{"tool": "calculator", "toolInput": {"input": "6*7"}, "toolOutput": "42"}]},
    ]

    script_answers(page, {"events": extra})
    open_chat(page, gateway.url)
    ask(page, "What is SSE?")
    wait_state(page, "done")
    sources, tools = page.get_by_test_id("sourceDocuments"), page.get_by_test_id("usedTools")
    expect(sources.locator("summary")).to_have_text("Sources (2)")
    expect(tools.locator("summary")).to_have_text("Tool used (1)")
    expect(sources.get_by_text("sse-spec.html")).to_be_hidden()  # collapsed
    sources.locator("summary").focus()
    page.keyboard.press("Enter")  # opens with the keyboard
    expect(sources.get_by_text("sse-spec.html")).to_be_visible()
    expect(sources).to_contain_text("EventSource reconnects by itself.")
    tools.locator("summary").click()
    expect(tools).to_contain_text("calculator")
    expect(tools).to_contain_text("6*7")
    expect(tools).to_contain_text("42")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "chat-sources.png")


def test_connectionCut_midStream_thenResumesWithoutDuplicates(page: Page, gateway: ServerThread) -> None:
    # This test used to see Chromium, about one run in eight, neither error nor reconnect after a
    # cut: the proxy's pump closed the browser's socket with close() while its other pump thread
    # sat in recv() on it, so no FIN ever left (see CuttingProxy._pump). Chromium was right.
    with CuttingProxy(gateway.port) as proxy:
        open_chat(page, proxy.url)  # the page, its fetches and its eventsUrl all go through the proxy
        record_states(page)
        question = "[[delay=100]] Cut the wire in the middle of this answer and carry on"
        expected = reply_to(question)
        ask(page, question)
        expect(page.get_by_test_id("answer")).to_contain_text("deterministic")
        before = answer_text(page)
        assert before and before != expected

        assert proxy.cut() >= 1
        # Polled from here: wait_for_function evaluates its string with eval, which the page's
        # Content-Security-Policy (rightly) forbids.
        deadline = time.monotonic() + 5
        while not page.evaluate("window.__states.includes('reconnecting')"):
            assert time.monotonic() < deadline, "Chromium neither errored nor reconnected after the cut"
            page.wait_for_timeout(50)
        wait_state(page, "done")
        text = answer_text(page)
        assert text == expected  # exact: nothing lost, nothing doubled
        assert text.split() == expected.split()

        events = [head for head in proxy.requests if "/events?" in head.split("\r\n", 1)[0]]
        assert len(events) >= 2, proxy.requests
        resumed = events[-1].lower()
        assert "last-event-id:" in resumed  # EventSource sent it by itself


def test_foreignOrigin_refusedUnlessAllowlisted(browser: Browser, flowise: ServerThread) -> None:
    flowise.app.requests.clear()
    elsewhere = ServerThread(Starlette(routes=[StarletteRoute(
        "/", lambda request: HTMLResponse("<!doctype html><title>another site</title><p>another site</p>"))]))
    with elsewhere:
        foreign = elsewhere.url  # another port: another origin
        closed = start_gateway(flowise.url)
        allowing = start_gateway(flowise.url, cors_origins=[foreign])
        context = browser.new_context()
        try:
            page = context.new_page()
            page.goto(foreign + "/")
            script = """async (gateway) => {
                const attempt = async (fn) => { try { return await fn(); } catch (e) { return {failed: String(e)}; } };
                const out = {};
                out.list = await attempt(async () => {
                    const r = await fetch(gateway + '/v1/chatflows');
                    return {status: r.status, body: await r.json()};
                });
                out.create = await attempt(async () => {
                    const r = await fetch(gateway + '/v1/streams', {method: 'POST',
                        headers: {'Content-Type': 'application/json'},
                        body: JSON.stringify({chatflowId: 'CHATFLOW_ID', question: 'from elsewhere'})});
                    return {status: r.status, body: await r.json()};
                });
                // A "simple" POST goes out without a preflight: only the gateway itself can refuse it.
                out.simple = await attempt(async () => {
                    const r = await fetch(gateway + '/v1/streams', {method: 'POST', mode: 'no-cors',
                        headers: {'Content-Type': 'text/plain'},
                        body: JSON.stringify({chatflowId: 'CHATFLOW_ID', question: 'sneaky'})});
                    return {type: r.type};
                });
                if (out.create.body && out.create.body.eventsUrl) {
                    out.text = await new Promise((resolve) => {
                        const es = new EventSource(out.create.body.eventsUrl);
                        let text = '';
                        es.addEventListener('token', (e) => { text += JSON.parse(e.data).text; });
                        es.addEventListener('end', () => { es.close(); resolve(text); });
                        es.addEventListener('error', (e) => { es.close(); resolve('error ' + (e.data || '')); });
                    });
                }
                return out;
            }""".replace("CHATFLOW_ID", DEMO_CHATFLOW_ID)

            answered: list[tuple[str, str, int]] = []
            page.on("response", lambda r: answered.append((r.request.method, r.url, r.status)))
            refused = page.evaluate(script, closed.url)
            assert "failed" in refused["list"] and "failed" in refused["create"], refused  # TypeError: Failed to fetch
            assert refused["simple"] == {"type": "opaque"}
            assert ("POST", closed.url + "/v1/streams", 403) in answered  # the browser sent it; the gateway said no
            time.sleep(0.2)  # a quiet window: no request may reach Flowise (nothing to wait for)
            assert list(flowise.app.requests) == []  # nothing reached Flowise
            # What the gateway answers to that Origin (the browser hides it from the page):
            for method, path, body in (("GET", "/v1/chatflows", None),
                                       ("POST", "/v1/streams", {"chatflowId": DEMO_CHATFLOW_ID, "question": "hi"})):
                r = httpx.request(method, closed.url + path, json=body, headers={"Origin": foreign})
                assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text

            allowed = page.evaluate(script, allowing.url)
            assert allowed["list"]["status"] == 200
            assert DEMO_CHATFLOW_ID in [flow["id"] for flow in allowed["list"]["body"]]
            assert allowed["create"]["status"] == 201
            assert allowed["text"] == reply_to("from elsewhere")
        finally:
            context.close()
            closed.__exit__(None, None, None)
            allowing.__exit__(None, None, None)


def test_gatewayApiKeys_without401Message_withKeyStreams(page: Page, flowise: ServerThread) -> None:
    gateway = start_gateway(flowise.url, api_keys=["k1"])
    try:
        events_urls: list[str] = []
        page.on("request", lambda r: events_urls.append(r.url) if "/events?" in r.url else None)
        page.goto(gateway.url + "/")
        error = page.get_by_test_id("error")
        expect(error).to_contain_text("401")
        expect(error).to_contain_text("API key")
        wait_state(page, "error")

        key = page.get_by_test_id("api-key")
        key.fill("wrong")
        key.press("Enter")
        expect(error).to_contain_text("401")

        key.fill("k1")
        key.press("Enter")
        expect(page.get_by_test_id("chatflow")).to_have_value(DEMO_CHATFLOW_ID)
        expect(error).to_be_hidden()
        assert page.evaluate("sessionStorage.getItem('flowise-sse.apiKey')") == "k1"

        question = "Does my key work?"
        ask(page, question)
        wait_state(page, "done")
        assert answer_text(page) == reply_to(question)
        assert len(events_urls) == 1 and "token=" in events_urls[0]  # EventSource read with eventsUrl's token
        assert flowise.app.requests[-1]["body"]["question"] == question
    finally:
        gateway.__exit__(None, None, None)
