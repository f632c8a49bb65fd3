"""The commands a newcomer runs: `flowise-sse serve --demo`, `flowise-sse ask`, `flowise-sse openapi`."""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile
import time

import httpx
import pytest

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


# --- the commands of the README and the docs, as written --------------------------------------------
ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI_PAGE = "docs/user-guide/library-and-cli.md"


def docs_block(page: str, first_line_start: str) -> list[str]:
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", (ROOT / page).read_text(), re.M | re.S)
    return next(b for b in blocks if b.startswith(first_line_start)).splitlines()


class DemoServer:
    """`flowise-sse serve ...` as a user starts it, its log captured."""

    def __init__(self, argv: list[str], port: int, cwd: pathlib.Path | None = None, env: dict | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, stderr=self.log, stdout=subprocess.DEVNULL, cwd=cwd,
                                     env=os.environ if env is None else env)
        def up() -> bool:
            assert self.proc.poll() is None, f"the server exited: {self.stop()}"
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=20, interval=0.05, what="the server answers /healthz")

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        self.log.seek(0)
        return self.log.read()


def run(line: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def test_docsCommandLine_asWritten_thenEachCommandWorksAndExitsCleanly(emulators):
    lines = docs_block(CLI_PAGE, "flowise-sse serve --demo")
    port, flowise = free_port(), emulators("1.6.2")
    # The page's addresses, made this test's: the gateway's port, a Flowise 1.6.2 (socket.io).
    lines = [line.replace("8080", str(port)).replace("http://localhost:3000", flowise.url) for line in lines]
    exe = str(pathlib.Path(sys.executable).parent / "flowise-sse")
    lines = [exe + line[len("flowise-sse"):] for line in lines]
    demo = DemoServer(shlex.split(lines[0]) + ["--port", str(port)], port)
    try:
        results = {line: run(line) for line in lines[1:]}
    finally:
        log = demo.stop()
    for line, out in results.items():
        assert out.returncode == 0 and out.stderr == "", (line, out.stderr)  # no "Task was destroyed", ...
    outputs = list(results.values())
    table = outputs[0].stdout.splitlines()
    assert table[0].split() == ["ID", "NAME", "STREAMING"]
    assert any(row.startswith(DEMO_CHATFLOW_ID) and row.endswith("yes") for row in table[1:])
    assert any(row.endswith("no") for row in table[1:])  # the emulator's non-streaming chatflow
    assert outputs[1].stdout == REPLY + "Hello\n"
    names = [json.loads(line)["event"] for line in outputs[2].stdout.splitlines()]
    assert names[0] == "start" and names[-1] == "end" and names.count("token") > 3
    assert outputs[3].stdout == outputs[0].stdout  # the same chatflows straight from Flowise
    assert outputs[4].stdout == REPLY + "Hello\n"
    assert re.fullmatch(r"flowise-sse \d+\.\d+\.\d+\n", outputs[5].stdout)
    assert "emulated Flowise 1.6.2" in log


@pytest.mark.parametrize("page,first_line", [("README.md", "curl -N"), ("docs/user-guide/clients.md", "FLOW=")])
def test_curlExample_asWritten_thenItStreamsFromTheDemo(page, first_line):
    block = "\n".join(docs_block(page, first_line))
    port = free_port()
    demo = DemoServer([sys.executable, "-m", "flowise_sse", "serve", "--demo", "--port", str(port)], port)
    try:
        out = subprocess.run(["bash", "-euc", block.replace("8080", str(port))], capture_output=True, text=True,
                             timeout=30)
    finally:
        demo.stop()
    assert out.returncode == 0 and "event: start" in out.stdout and "event: end" in out.stdout


@pytest.mark.parametrize("version,transport", [("1.6.2", "socketio"), ("2.0.7", "socketio"), ("2.1.0", "sse"),
                                               ("3.1.4", "sse")])
def test_serveDemo_eachFlowiseVersion_thenOneBannerAndNoEmulatorLines(version, transport):
    port = free_port()
    demo = DemoServer([sys.executable, "-m", "flowise_sse", "serve", "--demo", "--flowise-version", version,
                       "--port", str(port)], port)
    try:
        ready = httpx.get(demo.url + "/readyz").json()
        with httpx.stream("GET", f"{demo.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": "v"}) as r:
            r.read()
        events = parse_sse(r)
    finally:
        log = demo.stop()
    assert ready == {"status": "ready", "flowiseVersion": version, "transport": transport}
    assert events[0].data["transport"] == transport and events[-1].event == "end"
    assert log.count("Uvicorn running on") == 1 and f":{port}" in log.split("Uvicorn running on")[1].splitlines()[0]
    assert log.count(" ready on ") == 1 and log.count("DEMO MODE") == 1 and f"emulated Flowise {version}" in log
    # The emulator's own lines (its requests from the gateway, its socket.io) are not shown.
    assert "/api/v1/" not in log and "socket.io" not in log and "WebSocket" not in log


def test_serve_readsDotEnv_andAskThroughTheGatewayNeedsItsKey(emulators, tmp_path):
    flowise = emulators("3.1.4")
    (tmp_path / ".env").write_text(f"FLOWISE_URL={flowise.url}\nFLOWISE_SSE_API_KEYS=dotenv-key-1\n"
                                   "FLOWISE_SSE_LOG_FORMAT=json\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLOWISE")}
    server = DemoServer([sys.executable, "-m", "flowise_sse", "serve", "--port", str(port)], port, cwd=tmp_path,
                        env=env)
    ask = [sys.executable, "-m", "flowise_sse", "ask", "--gateway", server.url, DEMO_CHATFLOW_ID, "keyed"]
    try:
        refused = subprocess.run(ask, capture_output=True, text=True, timeout=30, env=env)
        by_env = subprocess.run(ask, capture_output=True, text=True, timeout=30,
                                env={**env, "FLOWISE_SSE_API_KEY": "dotenv-key-1"})
        by_flag = subprocess.run(ask + ["--api-key", "dotenv-key-1"], capture_output=True, text=True, timeout=30,
                                 env=env)
    finally:
        log = server.stop()
    assert refused.returncode == 1 and refused.stderr.startswith("error: not_authenticated:")
    assert by_env.returncode == 0 and by_env.stdout == REPLY + "keyed\n" and by_env.stderr == ""
    assert by_flag.returncode == 0 and by_flag.stdout == REPLY + "keyed\n"
    lines = [json.loads(line) for line in log.splitlines()]  # FLOWISE_SSE_LOG_FORMAT=json from .env
    assert any(line["msg"] == "stream ended" and line["outcome"] == "completed" for line in lines)
    assert "dotenv-key-1" not in log


def test_ask_whenTheGatewayIsDown_thenErrorAndExitCode1():
    out = subprocess.run([sys.executable, "-m", "flowise_sse", "ask", "--gateway", f"http://127.0.0.1:{free_port()}",
                          DEMO_CHATFLOW_ID, "x"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith("error: gateway_unreachable:")
    assert "Traceback" not in out.stderr


def test_ask_throughTheGateway_whenTheStreamFails_thenItsErrorAndExitCode1(emulators, gateways):
    gateway = gateways(emulators("3.1.4").url)
    out = subprocess.run([sys.executable, "-m", "flowise_sse", "ask", "--gateway", gateway.url,
                          f"{'0' * 8}-0000-0000-0000-{'0' * 12}", "x"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith("error: not_found:")
