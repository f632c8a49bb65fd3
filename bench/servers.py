"""The servers the benchmark runs, each a process of its own (the gateway is started apart, as
`python -m flowise_sse serve`): `python bench/servers.py KIND --port N`, KIND one of

    emulator --version 1.6.2|3.1.4   the package's emulated Flowise (flowise_sse.emulator)
    lite       "flowise-lite": a lean Flowise 3.1.4 (SSE) on a raw asyncio protocol, tokens from loop
               timers: thousands of paced streams would make the package emulator (a Starlette app,
               one sleeping task per stream) eat the CPU the gateway is measured with
    lite-sio   "flowise-lite-sio": a lean Flowise 1.6.2 in Node on the `socket.io` npm server
               (bench/flowise_lite_sio/server.js), where the package emulator's python-socketio server
               is slower than the gateway; runs `npm ci` first when its node_modules are missing
    ceiling    a bare sse-starlette endpoint, configured as the gateway's responses are, yielding the
               gateway's own encoded frames from memory
    mock-llm   the e2e suite's mock OpenAI LLM (tests/e2e/mock_llm.py), the LLM of section 5
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httptools  # noqa: E402
import orjson  # noqa: E402

from common import BENCH_DIR, DEMO_CHATFLOW_ID, REPO, raise_nofile, run_async, tokens_for  # noqa: E402

LITE_SIO = BENCH_DIR / "flowise_lite_sio"


def run_emulator(version: str, port: int) -> None:
    import uvicorn

    from flowise_sse.emulator import EmulatorConfig, create_emulator_app

    app = create_emulator_app(EmulatorConfig(version=version, token_delay=0.0))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off",
                loop="uvloop", http="httptools", backlog=4096)


def run_ceiling(port: int) -> None:
    import uvicorn
    from sse_starlette import EventSourceResponse, ServerSentEvent
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    from flowise_sse.events import END, START, Event, token
    from flowise_sse.streams.sse_encoder import encode

    @functools.cache
    def frames(n: int) -> list[bytes]:
        """start, n tokens ("t0 ", "t1 ", ...), end: encoded exactly as the gateway encodes them."""
        sid = uuid.uuid4().hex
        events = [Event(START, {"streamId": sid, "chatId": str(uuid.uuid4()), "chatflowId": DEMO_CHATFLOW_ID,
                                "transport": "sse"}), *(token(t) for t in tokens_for(n)),
                  Event(END, {"text": "".join(tokens_for(n)), "chatId": "x"})]
        return [encode(sid, seq, ev, 2000 if seq == 1 else None) for seq, ev in enumerate(events, 1)]

    async def stream(request: Request) -> EventSourceResponse:
        async def body():
            for frame in frames(int(request.query_params.get("n", "1000"))):
                yield frame

        return EventSourceResponse(body(), headers={"Cache-Control": "no-cache"}, ping=15,
                                   ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"), sep="\n")

    app = Starlette(routes=[Route("/stream", stream, methods=["GET", "POST"])])
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", loop="uvloop", http="httptools",
                backlog=4096)


# --- flowise-lite ---------------------------------------------------------------------------

_HEAD = b"message:\ndata:"
_JSON = b"application/json; charset=utf-8"


def _frame(event: str, data: Any) -> bytes:
    # Flowise: res.write('message:\ndata:' + JSON.stringify({event, data}) + '\n\n')
    return _HEAD + orjson.dumps({"event": event, "data": data}) + b"\n\n"


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class LiteFlowise(asyncio.Protocol):
    """Flowise 3.1.4 as the gateway sees it, minus everything the gateway does not touch:
    `/api/v1/version`, `/api/v1/chatflows-streaming/{id}`, `/api/v1/ping`, the abort route and the
    streaming prediction (`message:`/`data:` frames, chunked, keep-alive). Tokens go out on an
    absolute schedule (start + k * delay) from loop timers, not one sleeping task per stream."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.url = b""
        self.body: list[bytes] = []

    # asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.close()  # type: ignore[union-attr]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    # httptools
    def on_message_begin(self) -> None:
        self.url, self.body = b"", []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, path = self.parser.get_method(), self.url.split(b"?")[0]
        keep = self.parser.should_keep_alive()
        if path == b"/api/v1/version":
            self.json({"version": "3.1.4"}, keep)
        elif path == b"/api/v1/ping":
            self.reply(200, b"text/html; charset=utf-8", b"pong", keep)
        elif path.startswith(b"/api/v1/chatflows-streaming/"):
            if path.rsplit(b"/", 1)[1].decode() == DEMO_CHATFLOW_ID:
                self.json({"isStreaming": True}, keep)
            else:
                self.json({"statusCode": 404, "success": False, "message": "Chatflow not found"}, keep, 404)
        elif path.startswith(b"/api/v1/chatmessage/abort/") and method == b"PUT":
            self.json({"status": 200, "message": "Chat message aborted"}, keep)
        elif path.startswith(b"/api/v1/prediction/") and method == b"POST":
            self.predict(path.rsplit(b"/", 1)[1].decode(), keep)
        else:
            self.json({"statusCode": 404, "success": False, "message": "not found"}, keep, 404)

    # answers
    def reply(self, status: int, ctype: bytes, body: bytes, keep: bool) -> None:
        if self.transport is None:
            return
        reason = b"OK" if status == 200 else b"Error"
        self.transport.write(b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"
                             % (status, reason, ctype, len(body), b"keep-alive" if keep else b"close", body))
        if not keep:
            self.transport.close()

    def json(self, content: Any, keep: bool, status: int = 200) -> None:
        self.reply(status, _JSON, orjson.dumps(content), keep)

    def predict(self, flow_id: str, keep: bool) -> None:
        body = orjson.loads(b"".join(self.body) or b"{}")
        controls = (body.get("overrideConfig") or {}).get("emulator") or {}
        tokens = controls.get("tokens") or (tokens_for(int(controls["count"])) if "count" in controls
                                            else ["This", " is", " a", " reply."])
        delay = float(controls.get("delay", 0.0))
        chat_id = body.get("chatId") or str(uuid.uuid4())
        if flow_id != DEMO_CHATFLOW_ID or body.get("streaming") is not True:  # the gateway streams the demo flow
            self.json({"statusCode": 404, "success": False, "message": "streams the demo chatflow only"}, keep, 404)
            return
        metadata = {"chatId": chat_id, "chatMessageId": str(uuid.uuid4()), "question": body.get("question"),
                    "sessionId": chat_id, "memoryType": "Buffer Memory"}
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
            b"Connection: keep-alive\r\nX-Accel-Buffering: no\r\nTransfer-Encoding: chunked\r\n\r\n"
            + _chunk(_frame("start", "")))
        tail = _chunk(_frame("metadata", metadata) + _frame("end", "[DONE]")) + b"0\r\n\r\n"
        loop = asyncio.get_running_loop()
        t0 = loop.time()

        def tick(i: int = 0) -> None:  # token i, due at t0 + (i + 1) * delay
            transport = self.transport
            if transport is None or transport.is_closing():
                return
            if i < len(tokens):
                transport.write(_chunk(_frame("token", tokens[i])))
                loop.call_at(t0 + (i + 2) * delay, tick, i + 1)
            else:
                transport.write(tail)
                if not keep:
                    transport.close()

        loop.call_at(t0 + delay, tick)


def run_lite(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(LiteFlowise, "127.0.0.1", port, backlog=4096)
        await server.serve_forever()

    run_async(main)


# --- flowise-lite-sio ------------------------------------------------------------------------

def run_lite_sio(port: int) -> None:
    """Install flowise-lite-sio's locked dependencies if needed (from npm's cache when it has them),
    then replace this process with node, so the benchmark's pid, CPU figures and signals are node's."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None:
        sys.exit("lite-sio needs Node.js: `node` is not on PATH (install Node.js >= 18 with npm)")
    if not (LITE_SIO / "node_modules" / "socket.io").exists():
        print(f"lite-sio: npm ci in {LITE_SIO}", file=sys.stderr, flush=True)
        if npm is None or subprocess.run([npm, "ci", "--prefix", str(LITE_SIO), "--prefer-offline", "--no-audit",
                                          "--no-fund"], stdout=sys.stderr).returncode != 0:
            sys.exit(f"lite-sio: `npm ci --prefix {LITE_SIO}` failed or npm is missing; run it by hand to see why")
    os.execv(node, [node, str(LITE_SIO / "server.js"), "--port", str(port)])


def run_mock_llm(port: int, token_delay_ms: float) -> None:
    import uvicorn

    sys.path.insert(0, str(REPO))
    from tests.e2e.mock_llm import MockLLM

    uvicorn.run(MockLLM(token_delay=token_delay_ms / 1000).app, host="127.0.0.1", port=port, log_level="warning",
                lifespan="off")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["emulator", "lite", "lite-sio", "ceiling", "mock-llm"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--version", default="3.1.4", help="emulator: the Flowise version emulated")
    parser.add_argument("--token-delay-ms", type=float, default=20.0, help="mock-llm: before each token")
    args = parser.parse_args()
    raise_nofile()
    {"emulator": lambda: run_emulator(args.version, args.port), "lite": lambda: run_lite(args.port),
     "lite-sio": lambda: run_lite_sio(args.port), "ceiling": lambda: run_ceiling(args.port),
     "mock-llm": lambda: run_mock_llm(args.port, args.token_delay_ms)}[args.kind]()


if __name__ == "__main__":
    main()
