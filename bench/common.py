"""Shared by the benchmark's processes: spawning servers, reading /proc, and a lean SSE client.

The lean client is a raw asyncio protocol with httptools doing the HTTP/1.1 (chunked) parsing, so
that the measuring side spends a few microseconds per token and is not what limits the figures.
It understands both framings: the gateway's (`event: token` / `data: {"text": ...}`) and Flowise's
native one (`message:` / `data:{"event": "token", "data": ...}`).
"""

from __future__ import annotations

import asyncio
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import httptools
import orjson

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEMO_CHATFLOW_ID = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"  # flowise_sse.emulator.DEMO_CHATFLOW_ID


# --- processes ------------------------------------------------------------------------------

def raise_nofile(target: int = 65536) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(target, hard) if hard != resource.RLIM_INFINITY else target
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_sets() -> tuple[set[int] | None, set[int] | None]:
    """(system under test, everything else): core 0 for the server measured, the rest for the
    emulators and the clients, when there are at least two cores."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def spawn(args: list[str], env: dict[str, str] | None = None, cpus: set[int] | None = None,
          log: Path | None = None) -> subprocess.Popen:
    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(args, env={**os.environ, **(env or {})}, preexec_fn=pin, stdout=out,
                            stderr=subprocess.STDOUT, cwd=str(REPO))


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process {proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} did not open within {timeout} s ({proc.args})")


def stop(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """user + system CPU of a process (all its threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def process_tree(pid: int) -> list[int]:
    """`pid` and its live descendants (a `serve --workers` parent, its workers), from /proc."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents.setdefault(int(fh.read().rpartition(")")[2].split()[1]), []).append(int(entry))
            except OSError:
                pass
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += parents.get(tree[-1], [])
    return tree
def process_cpu_clock(pid: int) -> float:
    """CPU seconds of a whole process (every thread, exited ones included) with nanosecond
    resolution: its POSIX CPU clock, the id clock_getcpuclockid(pid) returns (CPUCLOCK_SCHED). Where
    /proc's clock ticks (10 ms) are too coarse: a few ms of CPU per request."""
    return time.clock_gettime(((~pid) << 3) | 2)


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- SSE frames -----------------------------------------------------------------------------

def gateway_frame(frame: bytes) -> tuple[str, Any] | None:
    """`[: keep-alive\\n][retry:\\n]event: name\\ndata: {json}\\nid: ..` -> (name, data); None for a
    comment alone."""
    e = frame.find(b"event: ")
    if e < 0:
        return None
    nl = frame.find(b"\n", e)
    d = frame.find(b"data: ", nl)
    end = frame.find(b"\n", d)
    return frame[e + 7:nl].decode(), orjson.loads(frame[d + 6:end] if end >= 0 else frame[d + 6:])


def flowise_frame(frame: bytes) -> tuple[str, Any] | None:
    """Flowise >= 2.1: `message:\\ndata:{"event": name, "data": ...}` -> (name, data)."""
    d = frame.find(b"data:")
    if d < 0:
        return None
    message = orjson.loads(frame[d + 5:])
    return message["event"], message.get("data")


def token_text(name: str, data: Any, flowise: bool) -> str | None:
    if name != "token":
        return None
    return (data or "") if flowise else data["text"]


class FrameSplitter:
    """Bytes in, complete `\\n\\n`-terminated frames out."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data if self.buf else data
        frames = buf.split(b"\n\n")
        self.buf = frames.pop()
        return frames


async def response_events(response: Any, flowise: bool) -> AsyncIterator[tuple[str, Any]]:
    """(name, data) of each event of a streamed httpx response, Flowise's own framing or the gateway's."""
    parse = flowise_frame if flowise else gateway_frame
    splitter = FrameSplitter()
    async for chunk in response.aiter_raw():
        for frame in splitter.feed(chunk):
            parsed = parse(frame)
            if parsed is not None:
                yield parsed


# --- the lean client ------------------------------------------------------------------------

@dataclass
class StreamResult:
    status: int = 0
    t_sent: float = 0.0
    t_first: float | None = None  # first non-empty token
    t_done: float | None = None
    terminal: str | None = None  # "end", "error" or None (cut)
    error: Any = None
    tokens: int = 0
    parts: list[str] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # arrival of each non-empty token

    @property
    def text(self) -> str:
        return "".join(self.parts)


class SseStream(asyncio.Protocol):
    """One HTTP request whose answer is an event stream, read frame by frame as it arrives."""

    def __init__(self, request: bytes, flowise: bool, keep_times: bool, done: asyncio.Future) -> None:
        self.request = request
        self.parse = flowise_frame if flowise else gateway_frame
        self.flowise = flowise
        self.keep_times = keep_times
        self.done = done
        self.result = StreamResult()
        self.splitter = FrameSplitter()
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.result.t_sent = time.monotonic()
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(f"bad HTTP: {exc}")

    def on_headers_complete(self) -> None:
        self.result.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        result = self.result
        if result.status != 200:
            result.error = (result.error or b"") + body
            return
        now = time.monotonic()
        for frame in self.splitter.feed(body):
            parsed = self.parse(frame)
            if parsed is None:
                continue
            name, data = parsed
            if name == "token":
                text = data if self.flowise else data["text"]
                if text:
                    result.tokens += 1
                    result.parts.append(text)
                    if result.t_first is None:
                        result.t_first = now
                    if self.keep_times:
                        result.times.append(now)
            elif name in ("end", "error"):
                result.terminal = name
                if name == "error":
                    result.error = data
                self._finish(None)
                return

    def on_message_complete(self) -> None:
        self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(None if exc is None else repr(exc))

    def _finish(self, error: Any) -> None:
        if self.done.done():
            return
        self.result.t_done = time.monotonic()
        if error is not None and self.result.error is None:
            self.result.error = error
        if self.transport is not None:
            self.transport.close()
        self.done.set_result(self.result)


def http_request(method: str, path: str, port: int, body: Any = None) -> bytes:
    payload = orjson.dumps(body) if body is not None else b""
    head = (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: text/event-stream\r\n"
            f"Connection: close\r\n")
    if body is not None:
        head += f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
    return head.encode() + b"\r\n" + payload


async def lean_stream(port: int, request: bytes, flowise: bool, keep_times: bool = False,
                      timeout: float = 120.0) -> StreamResult:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[StreamResult] = loop.create_future()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: SseStream(request, flowise, keep_times, done), "127.0.0.1", port)
            try:
                return await done
            finally:
                transport.close()
    except (TimeoutError, OSError) as exc:
        result = done.result() if done.done() else StreamResult()
        result.error = result.error or repr(exc)
        return result


def gateway_body(tokens: list[str], delay: float, question: str = "bench") -> dict[str, Any]:
    return {"question": question, "overrideConfig": {"emulator": {"tokens": tokens, "delay": delay}}}


def flowise_body(tokens: list[str], delay: float, question: str = "bench", **extra: Any) -> dict[str, Any]:
    return {"question": question, "streaming": True,
            "overrideConfig": {"emulator": {"tokens": tokens, "delay": delay}}, **extra}


def tokens_for(n: int, prefix: str = "t") -> list[str]:
    """n small distinct tokens ("t0 ", "t1 ", ...), so a lost, doubled or reordered one shows."""
    return [f"{prefix}{i} " for i in range(n)]


def install_uvloop() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass


def run_async(main: Callable[[], Any]) -> Any:
    install_uvloop()
    return asyncio.run(main())
