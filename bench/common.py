"""Shared by the benchmark's processes: spawning servers, per-process figures, and a lean SSE client.

The lean client is a raw asyncio protocol with httptools doing the HTTP/1.1 (chunked) parsing, so
that the measuring side spends a few microseconds per token and is not what limits the figures.
It reads both framings: the gateway's (`event: token` / `data: {"text": ...}`) and Flowise's
(`message:` / `data:{"event": "token", "data": ...}`).
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

import httptools
import orjson
import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
DEMO_CHATFLOW_ID = "3c9866f3-f7de-4cf0-bcca-26807ac532c4"  # flowise_sse.emulator.DEMO_CHATFLOW_ID
GATEWAY_PATH = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
PREDICTION_PATH = f"/api/v1/prediction/{DEMO_CHATFLOW_ID}"


# --- processes ------------------------------------------------------------------------------

def raise_nofile() -> int:
    """The soft limit on open files raised to the hard one: 2,000 streams are 4,000 sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def spawn(args: list[str], env: dict[str, str] | None = None, cpus: set[int] | None = None,
          log: Path | None = None) -> subprocess.Popen:
    out = open(log, "ab") if log else subprocess.DEVNULL
    return subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT,
                            cwd=str(REPO), preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)


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


def stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def cpu_seconds(pid: int) -> float:
    """CPU seconds of a whole process (every thread) from its POSIX CPU clock, the id
    clock_getcpuclockid(pid) returns: nanoseconds, where /proc's (and so psutil's) clock ticks of
    10 ms are too coarse for a millisecond of CPU per request."""
    return time.clock_gettime(((~pid) << 3) | 2)


def rss_kb(pids: list[int]) -> float:
    return sum(psutil.Process(pid).memory_info().rss for pid in pids) / 1024


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a `serve --workers` parent and its workers)."""
    return [pid] + [child.pid for child in psutil.Process(pid).children(recursive=True)]


def percentile(values: list[float], q: int) -> float:
    """Linear interpolation between order statistics (numpy's default)."""
    if len(values) < 2:
        return values[0] if values else math.nan
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def distribution(values: list[float]) -> dict[str, float]:
    """Seconds; NaN samples (no first token) left out."""
    vals = [v for v in values if not math.isnan(v)]
    return {"n": len(vals), "p50": percentile(vals, 50), "p90": percentile(vals, 90), "p99": percentile(vals, 99),
            "mean": statistics.fmean(vals) if vals else math.nan, "min": min(vals, default=math.nan),
            "max": max(vals, default=math.nan)}


# --- SSE frames -----------------------------------------------------------------------------

def parse_frame(frame: bytes, flowise: bool) -> tuple[str, Any] | None:
    """(name, data) of one frame: Flowise's own `message:\ndata:{"event": name, "data": ...}`, or the
    gateway's `[: keep-alive\n][retry:\n]event: name\ndata: {json}\nid: ..`; None for a comment alone."""
    if flowise:
        d = frame.find(b"data:")
        message = orjson.loads(frame[d + 5:]) if d >= 0 else None
        return (message["event"], message.get("data")) if message else None
    e = frame.find(b"event: ")
    if e < 0:
        return None
    nl = frame.find(b"\n", e)
    d = frame.find(b"data: ", nl)
    end = frame.find(b"\n", d)
    return frame[e + 7:nl].decode(), orjson.loads(frame[d + 6:end] if end >= 0 else frame[d + 6:])


def split_frames(buffer: bytes, data: bytes) -> tuple[list[bytes], bytes]:
    """(complete `\n\n`-terminated frames, the rest) of what was buffered plus `data`."""
    frames = (buffer + data if buffer else data).split(b"\n\n")
    return frames, frames.pop()


async def response_events(response: Any, flowise: bool) -> AsyncIterator[tuple[str, Any]]:
    """(name, data) of each event of a streamed httpx response, Flowise's own framing or the gateway's."""
    rest = b""
    async for chunk in response.aiter_raw():
        frames, rest = split_frames(rest, chunk)
        for frame in frames:
            if (parsed := parse_frame(frame, flowise)) is not None:
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
    """One HTTP/1.1 request whose answer is an event stream, parsed by httptools frame by frame as it
    arrives: a client on aiohttp took half as much CPU again per token (11 µs against 7 reading the
    ceiling), enough to be the limit of the throughput rows on a quiet machine."""

    def __init__(self, request: bytes, flowise: bool, keep_times: bool, done: asyncio.Future) -> None:
        self.request, self.flowise, self.keep_times, self.done = request, flowise, keep_times, done
        self.result, self.rest = StreamResult(), b""
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
        frames, self.rest = split_frames(self.rest, body)
        for frame in frames:
            name, data = parse_frame(frame, self.flowise) or ("", None)
            text = (data if self.flowise else data["text"]) if name == "token" else None
            if text:
                result.tokens += 1
                result.parts.append(text)
                result.t_first = result.t_first or now
                if self.keep_times:
                    result.times.append(now)
            elif name in ("end", "error"):
                result.terminal, result.error = name, data if name == "error" else None
                return self._finish(None)

    def on_message_complete(self) -> None:
        self._finish(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(None if exc is None else repr(exc))

    def _finish(self, error: Any) -> None:
        if not self.done.done():
            self.result.t_done = time.monotonic()
            self.result.error = self.result.error or error
            self.transport.close()  # type: ignore[union-attr]
            self.done.set_result(self.result)


async def lean_stream(url: str, body: bytes | None, flowise: bool, keep_times: bool = False,
                      timeout: float = 120.0) -> StreamResult:
    """A POST of `body` (or a GET) to a local `url`, on a connection of its own, read to its end."""
    parts = urlsplit(url)
    request = (f"{'GET' if body is None else 'POST'} {parts.path}{'?' + parts.query if parts.query else ''} "
               f"HTTP/1.1\r\nHost: {parts.netloc}\r\nAccept: text/event-stream\r\nConnection: close\r\n").encode()
    if body is not None:
        request += b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    else:
        request += b"\r\n"
    loop = asyncio.get_running_loop()
    done: asyncio.Future[StreamResult] = loop.create_future()
    try:
        async with asyncio.timeout(timeout):
            transport, _ = await loop.create_connection(
                lambda: SseStream(request, flowise, keep_times, done), parts.hostname, parts.port)
            try:
                return await done
            finally:
                transport.close()
    except (TimeoutError, OSError) as exc:
        result = done.result() if done.done() else StreamResult()
        result.error = result.error or repr(exc)
        return result


def prediction(tokens: list[str] | None = None, delay: float = 0.0, *, count: int | None = None,
               flowise: bool = False, question: str = "bench") -> dict[str, Any]:
    """A request body the emulators answer with these tokens, or with `count` of "t0 ", "t1 ", ...
    made upstream (a list rides in the request and stays with the run; a real client's question
    does not); for Flowise itself (`flowise`) or the gateway."""
    controls = {"count": count, "delay": delay} if count is not None else {"tokens": tokens, "delay": delay}
    return {"question": question, **({"streaming": True} if flowise else {}),
            "overrideConfig": {"emulator": controls}}


def tokens_for(n: int, prefix: str = "t") -> list[str]:
    """n small distinct tokens ("t0 ", "t1 ", ...), so a lost, doubled or reordered one shows."""
    return [f"{prefix}{i} " for i in range(n)]


def run_async(main: Callable[[], Any]) -> Any:
    """`asyncio.run(main())` on uvloop, as the servers measured run."""
    import uvloop

    return uvloop.run(main())
