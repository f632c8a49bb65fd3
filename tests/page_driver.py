"""What the browser tests share: one headless Chromium per module, the emulated Flowise and a
gateway in front of it, a fresh context (fresh storage) per test, and the page driven as a user
drives it. The page only talks to the gateway; tests look at what reached the emulated Flowise
(`flowise.app.requests`, `.aborts`)."""

from __future__ import annotations

import base64
import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from flowise_sse.api import create_app
from flowise_sse.emulator import DEMO_CHATFLOW_ID, EmulatorConfig, create_emulator_app
from flowise_sse.settings import Settings

from .helpers import REPLY
from .servers import ServerThread

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).parent / "artifacts"
DESKTOP = {"width": 1100, "height": 760}
PHONE = {"width": 375, "height": 740}


def reply_to(question: str) -> str:
    """The emulated LLM's answer: the prefix, then the question without its [[triggers]]."""
    return REPLY + re.sub(r"\[\[.*?\]\]", "", question).strip()


# --- servers and the browser -------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def flowise() -> Iterator[ServerThread]:
    with ServerThread(create_emulator_app(EmulatorConfig(version="3.1.4", token_delay=0.02)), lifespan="off") as server:
        yield server


def start_gateway(flowise_url: str, **overrides: Any) -> ServerThread:
    # retry_ms: EventSource reconnects 300 ms after a cut, not 2 s (the default hint).
    settings = Settings(flowise_url=flowise_url, **{"retry_ms": 300, **overrides})
    return ServerThread(create_app(settings)).__enter__()


@pytest.fixture(scope="module")
def gateway(flowise: ServerThread) -> Iterator[ServerThread]:
    server = start_gateway(flowise.url)
    yield server
    server.__exit__(None, None, None)


@pytest.fixture
def page(browser: Browser, flowise: ServerThread) -> Iterator[Page]:
    flowise.app.requests.clear()
    flowise.app.aborts.clear()
    # The copy buttons write to the clipboard; the tests read it back.
    context = browser.new_context(viewport=DESKTOP, permissions=["clipboard-read", "clipboard-write"])
    page = context.new_page()
    page.set_default_timeout(10_000)
    crashes: list[str] = []
    page.on("pageerror", lambda exc: crashes.append(str(exc)))
    yield page
    context.close()
    assert crashes == [], f"uncaught errors in the page: {crashes}"


# --- driving the page ----------------------------------------------------------------------------


def open_chat(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    expect(page.get_by_test_id("chatflow")).to_have_value(DEMO_CHATFLOW_ID)
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", "idle")


def open_flow(page: Page, base_url: str, flow_id: str) -> None:
    """The chat page on another chatflow than the demo's."""
    open_chat(page, base_url)
    page.get_by_test_id("chatflow").select_option(flow_id)


def ask(page: Page, question: str) -> None:
    """Type the question as a user would (Shift+Enter for new lines) and send it with Enter."""
    box = page.get_by_test_id("question")
    box.click()
    for i, line in enumerate(question.split("\n")):
        if i:
            box.press("Shift+Enter")
        page.keyboard.insert_text(line)
    box.press("Enter")


def wait_state(page: Page, state: str, timeout: float = 10_000) -> None:
    expect(page.get_by_test_id("status")).to_have_attribute("data-state", state, timeout=timeout)


def record_states(page: Page) -> None:
    """Remember every status the page goes through (window.__states)."""
    page.evaluate("""() => {
        const status = document.querySelector('[data-testid=status]');
        window.__states = [status.dataset.state];
        new MutationObserver(() => window.__states.push(status.dataset.state))
            .observe(status, {attributes: true, attributeFilter: ['data-state']});
    }""")


def answer_text(page: Page) -> str:
    """The latest answer's text as shown (Markdown rendered; the blank lines between its blocks
    and at its end are layout)."""
    return (page.get_by_test_id("answer").text_content() or "").strip()


def script_answers(page: Page, *plans: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Make the n-th answer the page asks for follow `plans[n]` (the emulated LLM's
    `overrideConfig.emulator`: tokens, delay, error, events...; None: as the question says).
    The page sends no overrideConfig: the test adds it to the page's POST /v1/streams, and keeps
    each body as the page sent it (the list returned)."""
    posted: list[dict[str, Any]] = []

    def add_plan(route: Route, request: Request) -> None:
        if request.method != "POST":
            route.continue_()
            return
        body = request.post_data_json
        posted.append(body)
        plan = plans[len(posted) - 1] if len(posted) <= len(plans) else None
        if plan is None:
            route.continue_()
        else:
            route.continue_(post_data=json.dumps(body | {"overrideConfig": {"emulator": plan}}))

    page.route("**/v1/streams", add_plan)
    return posted


# --- files to attach -------------------------------------------------------------------------------


def png(width: int, height: int, pixel: Callable[[int, int], tuple[int, int, int]]) -> bytes:
    """A real PNG (8-bit RGB) whose pixel (x, y) is `pixel(x, y)`: Chromium decodes it, and the
    tests need no imaging library to make one."""
    rows = b"".join(b"\x00" + b"".join(bytes(pixel(x, y)) for x in range(width)) for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def data_uri(mime: str, content: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(content).decode()}"
