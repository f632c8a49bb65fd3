"""The commands a newcomer runs: `flowise-sse serve --demo`, `flowise-sse ask`, `flowise-sse openapi`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .helpers import REPLY, free_port, wait_until
from .servers import parse_sse


def test_serveDemo_thenTokensStreamWithNoFlowiseAround():
    port = free_port()
    env = {**os.environ, "FLOWISE_URL": "http://127.0.0.1:9"}  # ignored in demo mode
    proc = subprocess.Popen([sys.executable, "-m", "flowise_sse", "serve", "--demo", "--port", str(port)],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx.get(url + "/readyz").status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout=10, interval=0.05, what="serve --demo is ready")
        flows = httpx.get(url + "/v1/chatflows").json()
        assert any(f["id"] == DEMO_CHATFLOW_ID and "emulated" in f["name"].lower() for f in flows)
        started = time.monotonic()
        with httpx.stream("GET", f"{url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": "Hi"}) as r:
            r.read()
        events = parse_sse(r)
        assert events[-1].event == "end" and events[-1].data["text"].endswith("You said: Hi")
        assert time.monotonic() - started > 0.3  # paced, so a newcomer sees tokens arrive
        page = httpx.get(url + "/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert "DEMO MODE" in err and "emulated" in err.lower()


def test_ask_thenAnswerPrintedAsItStreams(emulators):
    flowise = emulators("1.6.2")
    env = {**os.environ, "FLOWISE_URL": flowise.url}
    out = subprocess.run([sys.executable, "-m", "flowise_sse", "ask", DEMO_CHATFLOW_ID, "from the shell"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == REPLY + "from the shell"
    events = subprocess.run([sys.executable, "-m", "flowise_sse", "ask", "--events", DEMO_CHATFLOW_ID, "x"],
                            env=env, capture_output=True, text=True, timeout=30)
    names = [json.loads(line)["event"] for line in events.stdout.splitlines()]
    assert names[0] == "start" and names[-1] == "end" and "metadata" in names


def test_ask_whenFlowiseDown_thenErrorAndExitCode1():
    env = {**os.environ, "FLOWISE_URL": f"http://127.0.0.1:{free_port()}"}
    out = subprocess.run([sys.executable, "-m", "flowise_sse", "ask", DEMO_CHATFLOW_ID, "x"],
                         env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "upstream_unavailable" in out.stderr
