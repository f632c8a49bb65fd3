"""The commands a newcomer runs: `flowise-sse serve --demo`, `flowise-sse ask`, `flowise-sse flows`,
`flowise-sse openapi`, and the library examples of the docs, each as written.

Starting `serve --demo` takes seconds: the tests that only ask a demo things share one per Flowise
version for the module (`demos`); those that need a server of their own (a `.env` beside it) start one.
"""

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
from collections.abc import Callable, Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from flowise_sse.emulator import DEMO_CHATFLOW_ID

from .helpers import REPLY, free_port, wait_until
from .servers import ServerThread, parse_sse

ROOT = pathlib.Path(__file__).resolve().parent.parent
CLI_PAGE = "docs/user-guide/library-and-cli.md"
EXE = str(pathlib.Path(sys.executable).parent / "flowise-sse")


class DemoServer:
    """`flowise-sse serve ...` as a user starts it, its log in a file (appended to by the server,
    read by the test whenever it likes)."""

    def __init__(self, argv: list[str], port: int, cwd: pathlib.Path | None = None, env: dict | None = None) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.port = port
        fd, self.log_path = tempfile.mkstemp(prefix="flowise-sse-serve-", suffix=".log")
        os.close(fd)
        with open(self.log_path, "ab") as log:  # O_APPEND: the server's writes never overwrite
            self.proc = subprocess.Popen(argv, stderr=log, stdout=subprocess.DEVNULL, cwd=cwd,
                                         env=os.environ if env is None else env)

        def up() -> bool:
            assert self.proc.poll() is None, f"the server exited: {self.stop()}"
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout=20, interval=0.05, what="the server answers /healthz")
        wait_until(lambda: " ready on " in self.log(), timeout=10, what="the banner")

    def log(self) -> str:
        return pathlib.Path(self.log_path).read_text()

    @property
    def flowise_url(self) -> str:
        """The demo's emulated Flowise, as its banner says."""
        found = re.search(r"emulated Flowise \S+ at (http://\S+)", self.log())
        assert found, self.log()
        return found[1]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(15)
        log = self.log()
        os.unlink(self.log_path)
        return log


@pytest.fixture(scope="module")
def demos() -> Iterator[Callable[[str], DemoServer]]:
    """`flowise-sse serve --demo --flowise-version V`, one per version, for the whole module; with
    a FLOWISE_URL that leads nowhere, which demo mode ignores."""
    running: dict[str, DemoServer] = {}

    def get(version: str = "3.1.4") -> DemoServer:
        if version not in running:
            port = free_port()
            running[version] = DemoServer([EXE, "serve", "--demo", "--flowise-version", version, "--port", str(port)],
                                          port, env={**os.environ, "FLOWISE_URL": "http://127.0.0.1:9"})
        return running[version]

    yield get
    for demo in running.values():
        demo.stop()


@pytest.fixture
def demo(demos: Callable[[str], DemoServer]) -> DemoServer:
    return demos("3.1.4")


def run(line: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(shlex.split(line), capture_output=True, text=True, timeout=60,
                          env={**os.environ, **env})


def docs_block(page: str, first_line_start: str) -> list[str]:
    blocks = re.findall(r"^```[a-z]*\n(.*?)^```$", (ROOT / page).read_text(), re.M | re.S)
    return next(b for b in blocks if b.startswith(first_line_start)).splitlines()


def test_serveDemo_thenTokensStreamWithNoFlowiseAround_andItsBannerNamesTheEmulatedFlowise(demo):
    flows = httpx.get(demo.url + "/v1/chatflows").json()
    assert any(f["id"] == DEMO_CHATFLOW_ID and "emulated" in f["name"].lower() for f in flows)
    started = time.monotonic()
    with httpx.stream("GET", f"{demo.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": "Hi"}) as r:
        r.read()
    events = parse_sse(r)
    assert events[-1].event == "end" and events[-1].data["text"].endswith("You said: Hi")
    assert time.monotonic() - started > 0.3  # paced, so a newcomer sees tokens arrive
    page = httpx.get(demo.url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "DEMO MODE" in demo.log()
    # The URL in the banner is the emulated Flowise itself (the library's examples use it).
    assert httpx.get(demo.flowise_url + "/api/v1/version").json() == {"version": "3.1.4"}


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


# --- the commands and examples of the README and the docs, as written ------------------------------
def test_docsCommandLine_asWritten_thenEachCommandWorksAndExitsCleanly(demos, emulators):
    lines = docs_block(CLI_PAGE, "flowise-sse serve --demo")
    assert lines[0] == "flowise-sse serve --demo --flowise-version 1.6.2"
    demo, flowise = demos("1.6.2"), emulators("1.6.2")
    # The page's addresses, made this test's: the gateway's port, a Flowise 1.6.2 (socket.io).
    lines = [line.replace("8080", str(demo.port)).replace("http://localhost:3000", flowise.url) for line in lines]
    lines = [EXE + line[len("flowise-sse"):] for line in lines]
    results = {line: run(line) for line in lines[1:]}
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
    assert "emulated Flowise 1.6.2" in demo.log()


# What each Python example of the library page prints, in the page's order.
LIBRARY_EXAMPLES = [
    lambda out: out == REPLY + "Hello\n",  # the async client
    lambda out: DEMO_CHATFLOW_ID + " Demo chat (emulated Flowise)\n" in out and out.endswith(REPLY + "Hello\n"),
    lambda out: re.fullmatch(r"This is a( \w+)+\nstopped: .+\n", out) is not None,  # read, resumed, stopped
    lambda out: out == "upstream_error: Error: predictionsServices.buildChatflow - 400 mock error 400\n"
                       "upstream_error: Error: predictionsServices.buildChatflow - quota exceeded\n",
    lambda out: out.startswith(REPLY + "Hello\nstart {") and "\nend {" in out,  # the library, straight to Flowise
]


def test_docsLibraryExamples_asWritten_thenEachRunsAgainstTheDemo(demo):
    blocks = re.findall(r"^```python\n(.*?)^```$", (ROOT / CLI_PAGE).read_text(), re.M | re.S)
    assert len(blocks) == len(LIBRARY_EXAMPLES)
    # FLOWISE_URL as the page says: the URL the demo's banner prints.
    env = {**os.environ, "FLOWISE_URL": demo.flowise_url}
    for block, prints_what_it_should in zip(blocks, LIBRARY_EXAMPLES, strict=True):
        out = subprocess.run([sys.executable, "-c", block.replace("8080", str(demo.port))], capture_output=True,
                             text=True, timeout=60, env=env)
        assert out.returncode == 0 and out.stderr == "", (block, out.stderr)
        assert prints_what_it_should(out.stdout), (block, out.stdout)


@pytest.mark.parametrize("page,first_line", [("README.md", "curl -N"), ("docs/user-guide/clients.md", "FLOW=")])
def test_curlExample_asWritten_thenItStreamsFromTheDemo(demo, page, first_line):
    block = "\n".join(docs_block(page, first_line))
    out = subprocess.run(["bash", "-euc", block.replace("8080", str(demo.port))], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0 and "event: start" in out.stdout and "event: end" in out.stdout


@pytest.mark.parametrize("version,transport", [("1.6.2", "socketio"), ("2.0.7", "socketio"), ("2.1.0", "sse"),
                                               ("3.1.4", "sse")])
def test_serveDemo_eachFlowiseVersion_thenOneBannerAndNoEmulatorLines(demos, version, transport):
    demo = demos(version)
    ready = httpx.get(demo.url + "/readyz").json()
    with httpx.stream("GET", f"{demo.url}/v1/chatflows/{DEMO_CHATFLOW_ID}/stream", params={"question": "v"}) as r:
        r.read()
    events = parse_sse(r)
    log = demo.log()
    assert ready == {"status": "ready", "flowiseVersion": version, "transport": transport}
    assert events[0].data["transport"] == transport and events[-1].event == "end"
    assert log.count("Uvicorn running on") == 1
    assert f":{demo.port}" in log.split("Uvicorn running on")[1].splitlines()[0]
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
    assert "Traceback" not in out.stderr and "ConnectError(" not in out.stderr


def test_ask_throughTheGateway_whenTheStreamFails_thenItsErrorAndExitCode1(demo):
    out = subprocess.run([sys.executable, "-m", "flowise_sse", "ask", "--gateway", demo.url,
                          f"{'0' * 8}-0000-0000-0000-{'0' * 12}", "x"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and out.stderr.startswith("error: not_found:")
    events = subprocess.run([sys.executable, "-m", "flowise_sse", "ask", "--gateway", demo.url, "--events",
                             DEMO_CHATFLOW_ID, "[[http400]] x"], capture_output=True, text=True, timeout=30)
    lines = [json.loads(line) for line in events.stdout.splitlines()]
    assert events.returncode == 1 and events.stderr.startswith("error: upstream_error:")
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "error"  # the stream as it went
    assert lines[-1]["data"]["code"] == "upstream_error"


# --- output: pipes, terminals -----------------------------------------------------------------------
def test_askPipedIntoHead_thenAQuietEnd_andTheAbandonedStreamIsStopped(demo):
    question = "[[delay=100]] " + " ".join(["word"] * 40)
    out = subprocess.run(["bash", "-c", f'{EXE} ask --gateway {demo.url} {DEMO_CHATFLOW_ID} "{question}" '
                                        '| head -c 12; exit "${PIPESTATUS[0]}"'],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "This is a de" and out.stderr == ""  # no BrokenPipeError traceback
    assert out.returncode == 141  # as a Unix tool ended by SIGPIPE
    wait_until(lambda: "outcome=aborted" in demo.log(), what="the stream was stopped (DELETE)")


def test_openapiPipedIntoHead_thenAQuietEnd():
    out = subprocess.run(["bash", "-c", f'{EXE} openapi | head -n 1; exit "${{PIPESTATUS[0]}}"'],
                         capture_output=True, text=True, timeout=60)
    assert out.stdout == "{\n" and out.stderr == ""
    assert out.returncode in (0, 141)  # 0 when it all fitted in the pipe before head left


CONTROLS = "\x1b]0;owned\x07 \x1b[2J\x1b[31mred\x1b[0m over\rwrite \u202eesrever\u202c \x9b1m"
SHOWN = "\\x1b]0;owned\\x07 \\x1b[2J\\x1b[31mred\\x1b[0m over\\x0dwrite \\u202eesrever\\u202c \\x9b1m"


def test_ask_answerWithControlCharacters_thenShownAsEscapes_butEventsStayExactJson(demo):
    # The demo's LLM says the question back: an answer carrying what a hostile one could.
    shown = run_cli("ask", "--gateway", demo.url, DEMO_CHATFLOW_ID, "Line one\n" + CONTROLS + "\tend")
    assert shown.returncode == 0 and shown.stderr == ""
    assert shown.stdout == REPLY + "Line one\n" + SHOWN + "\tend\n"  # newlines and tabs stay
    events = run_cli("ask", "--gateway", demo.url, "--events", DEMO_CHATFLOW_ID, CONTROLS)
    tokens = [json.loads(line)["data"].get("text", "") for line in events.stdout.splitlines()
              if json.loads(line)["event"] == "token"]
    assert "".join(tokens) == REPLY + CONTROLS  # JSON escapes them; the text is exact
    assert "\x1b" not in events.stdout


def test_flows_namesWithControlCharacters_thenShownAsEscapes_butJsonExact():
    name = "Support\x1b]8;;http://evil.example\x07 bot\nsecond line"
    fake = Starlette(routes=[  # a gateway's two routes `flows` reads, with a name a Flowise user typed
        Route("/v1/chatflows", lambda request: JSONResponse([{"id": DEMO_CHATFLOW_ID, "name": name}])),
        Route("/v1/chatflows/{id}/streaming", lambda request: JSONResponse({"isStreaming": True})),
    ])
    with ServerThread(fake, lifespan="off") as gateway:
        table = run_cli("flows", "--gateway", gateway.url)
        as_json = run_cli("flows", "--gateway", gateway.url, "--json")
    assert table.returncode == 0 and table.stderr == ""
    row = table.stdout.splitlines()[1]
    assert row.split("  ")[0] == DEMO_CHATFLOW_ID and row.endswith("yes")
    assert "Support\\x1b]8;;http://evil.example\\x07 bot\\x0asecond line" in row  # one row, escaped
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]", table.stdout)
    assert json.loads(as_json.stdout) == [{"id": DEMO_CHATFLOW_ID, "name": name, "streaming": True}]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=60)
