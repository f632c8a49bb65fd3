"""Reading py-spy's raw (collapsed) stacks: where the gateway's CPU goes.

Each line of `py-spy record --format raw` is `frame;frame;...;leaf count`, a frame being
`function (path:line)`. Three views come out of it:

- by package: each sample charged to the package of its leaf frame (self time)
- by gateway line: each sample charged to the deepest frame in flowise_sse (the gateway line that
  is, directly or through the libraries it calls, running); samples with no gateway frame are
  charged to the library frame nearest the event loop (sse-starlette's send path, uvicorn, ...)
- inclusive: share of samples whose stack holds a given function (frames nest, shares overlap)
"""

from __future__ import annotations

import gzip
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<path>[^()]*?)(?::(?P<line>\d+))?\)$")

# Innermost frames that mean "waiting", which py-spy does not always see as idle: a worker thread of
# the threadpool blocked on its queue, the stdlib event loop in epoll.
# On uvloop a thread waiting in epoll shows as the Python frame that entered the loop and nothing
# below it (py-spy counts it busy): sampled with `--native`, 98% of such stacks were in
# `epoll_pwait` (bench/README.md), so they are idle too.
_IDLE_LEAVES = {("Condition.wait", "threading.py"), ("EpollSelector.select", "selectors.py"),
                ("Event.wait", "threading.py"), ("Thread.join", "threading.py"), ("Runner.run", "runners.py")}
# Outermost frames of a whole stack; --nonblocking sampling sometimes reads a stack mid-change, which
# then starts elsewhere: such torn stacks are left out.
_ROOTS = ("_run_module_as_main", "Thread._bootstrap", "<module>")
# Frames that only say "the event loop runs a task": not informative as an attribution.
_PLUMBING = ("asyncio/runners.py", "asyncio/base_events.py", "asyncio/events.py", "uvloop/__init__.py",
             "flowise_sse/cli.py", "flowise_sse/__main__.py", "flowise_sse/server.py", "uvicorn/server.py",
             "uvicorn/main.py", "<frozen runpy>", "runpy.py")


@dataclass
class Frame:
    func: str
    path: str
    line: int

    @property
    def package(self) -> str:
        return package_of(self.path)

    @property
    def short(self) -> str:
        return f"{self.func} ({short_path(self.path)}:{self.line})"

    @property
    def function(self) -> str:
        return f"{self.func} ({short_path(self.path)})"


def _own(path: str) -> bool:
    return ("/flowise_sse/" in path or path.startswith("flowise_sse/")) and not path.endswith(_PLUMBING)


NATIVE_LOOP = "event loop, native (uvloop's C code and its syscalls: socket I/O, callbacks, timers)"


def _leaf_package(frames: list[Frame]) -> str:
    """The package of the innermost frame; a stack of loop plumbing only is the native loop at work."""
    if not frames:
        return "?"
    if all(f.path.endswith(_PLUMBING) or f.path.endswith(("asyncio/runners.py", "servers.py")) for f in frames):
        return NATIVE_LOOP
    return frames[-1].package


def package_of(path: str) -> str:
    if "/flowise_sse/" in path or path.startswith("flowise_sse/"):
        return "flowise_sse (gateway)"
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if "/asyncio/" in path:
        return "asyncio (stdlib)"
    if path.startswith("<") or "/lib/python" in path:
        return "stdlib"
    return path


def short_path(path: str) -> str:
    for marker in ("site-packages/", "/service/", "/lib/python3."):
        if marker in path:
            tail = path.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker == "/lib/python3." else tail
    return path


def parse_frame(text: str) -> Frame:
    m = _FRAME.match(text.strip())
    if not m:
        return Frame(text.strip(), "?", 0)
    return Frame(m["func"], m["path"], int(m["line"] or 0))


@dataclass
class Profile:
    samples: int = 0  # busy samples: those kept
    idle: int = 0
    torn: int = 0
    stacks: list[tuple[list[Frame], int]] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> Profile:
        prof = cls()
        text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
        for raw in text.splitlines():
            stack, _, count = raw.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = [parse_frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))]
            n = int(count)
            if not frames or not frames[0].func.startswith(_ROOTS):
                prof.torn += n
            elif (frames[-1].func, frames[-1].path.rsplit("/", 1)[-1]) in _IDLE_LEAVES:
                prof.idle += n
            else:
                prof.stacks.append((frames, n))
                prof.samples += n
        return prof

    def by_package(self) -> Counter:
        c: Counter = Counter()
        for frames, n in self.stacks:
            c[_leaf_package(frames)] += n
        return c

    def self_functions(self) -> Counter:
        c: Counter = Counter()
        for frames, n in self.stacks:
            if frames:
                c[frames[-1].function] += n
        return c

    def self_lines(self) -> Counter:
        c: Counter = Counter()
        for frames, n in self.stacks:
            if frames:
                c[frames[-1].short] += n
        return c

    def by_gateway_line(self) -> tuple[Counter, dict[str, Counter]]:
        """Charge each sample to its deepest gateway frame (else to the outermost non-plumbing
        library frame); for each such line, which packages the time was actually spent in."""
        lines: Counter = Counter()
        below: dict[str, Counter] = {}
        for frames, n in self.stacks:
            own = [f for f in frames if _own(f.path)]
            if own:
                key = own[-1].short
            else:
                outer = [f for f in frames if not f.path.endswith(_PLUMBING)]
                key = ("(no gateway frame) " + outer[0].short) if outer else "(event loop, native code only)"
            lines[key] += n
            below.setdefault(key, Counter())[_leaf_package(frames)] += n
        return lines, below

    def inclusive(self) -> Counter:
        c: Counter = Counter()
        for frames, n in self.stacks:
            for name in {f.function for f in frames}:
                c[name] += n
        return c

    def share(self, predicate) -> float:
        hit = sum(n for frames, n in self.stacks if any(predicate(f) for f in frames))
        return hit / self.samples if self.samples else 0.0


def _has(frames: list[Frame], func: str, path: str | tuple[str, ...] = "") -> bool:
    return any(f.func == func and f.path.endswith(path) for f in frames)


def _sniffio_import(frames: list[Frame]) -> bool:
    return any(f.func == "current_async_library" and "httpcore" in f.path for f in frames) and \
        any(f.func.startswith("_find_and_load") for f in frames)


# Gateway code the named spots look for: its paths and names since the package layout of issue 9, then
# before it (so that the stacks of an older run still render the same with --render-only).
_SSE_TRANSPORT = ("upstream/sse_transport.py", "transports/sse.py")
_SSE_FRAMING = ("upstream/flowise_frames.py", "transports/sse.py")
_FRAMING_FUNCS = ("event_payloads", "_payloads", "_joined")
_TIMEOUTS = ("bounded", "_bounded")
_WATCHDOG = ("Watchdog.", "_Watchdog.")


def _bounded_own(frames: list[Frame]) -> bool:
    """Time `bounded` (upstream/timeouts.py) spends itself: a stack whose deepest gateway frame is
    `bounded` or its watchdog, and which is not inside the stream it wraps (`anext`)."""
    own = [f for f in frames if _own(f.path)]
    if not own:
        return False
    last = own[-1]
    if last.func.startswith(_WATCHDOG):
        return True
    if last.func not in _TIMEOUTS:
        return False
    rest = frames[frames.index(last) + 1:]
    return not rest or rest[0].func not in ("anext", "Upstream._open", "stream_sse", "stream_socketio")


def _threadpool(frames: list[Frame]) -> bool:
    return _has(frames, "run_in_threadpool") or _has(frames, "WorkerThread.run")


# Named spots of the gateway's data path: (label, predicate on a stack). Shares are inclusive and
# overlap (a nested spot is also inside its parent).
COMPONENTS: list[tuple[str, object]] = [
    ("upstream SSE read and framing: `_events` in upstream/sse_transport.py (socket read, HTTP/1.1 parsing, SSE "
     "framing, JSON decoding)", lambda fr: _has(fr, "_events", _SSE_TRANSPORT)),
    ("  of which aiohttp's response reading (`StreamReader`, its C HTTP parser, the socket callback)",
     lambda fr: _has(fr, "_events", _SSE_TRANSPORT) and any("/aiohttp/" in f.path for f in fr)),
    ("  of which httpcore `AnyIOStream.read` (an anyio `fail_after` cancel scope per socket read)",
     lambda fr: _has(fr, "_events", _SSE_TRANSPORT) and _has(fr, "AnyIOStream.read")),
    ("  of which h11 parsing (pure Python HTTP/1.1)",
     lambda fr: _has(fr, "_events", _SSE_TRANSPORT) and any("/h11/" in f.path for f in fr)),
    ("  of which the gateway's own frame splitting (`event_payloads` in upstream/flowise_frames.py, its own "
     "frames)", lambda fr: fr[-1].func in _FRAMING_FUNCS and fr[-1].path.endswith(_SSE_FRAMING)),
    ("socket.io upstream: python-socketio / engineio / aiohttp client receiving frames",
     lambda fr: any(("/socketio/" in f.path or "/engineio/" in f.path) for f in fr)
     and not _has(fr, "SocketPool._connect") and not _has(fr, "_Socket.close")),
    ("socket.io pool: a replacement socket connected per prediction (`SocketPool._connect`: aiohttp session, "
     "websocket, engine.io and socket.io handshakes)", lambda fr: _has(fr, "SocketPool._connect")),
    ("socket.io: closing the used socket after each prediction (`_Socket.close`)",
     lambda fr: _has(fr, "_Socket.close")),
    ("upstream request per prediction: `FlowiseClient.prediction_stream` / `http.send` (connect, headers, pool)",
     lambda fr: (_has(fr, "AsyncClient.send") or _has(fr, "FlowiseClient.prediction_stream"))
     and not _has(fr, "_events", _SSE_TRANSPORT)),
    ("  of which a new TCP connection (`connect_tcp`, aiohttp's `_create_connection`)",
     lambda fr: (_has(fr, "AsyncClient.send") or _has(fr, "FlowiseClient.prediction_stream"))
     and (_has(fr, "connect_tcp") or _has(fr, "TCPConnector._create_connection"))),
    ("httpcore's `import sniffio` on every `current_async_library()` (when sniffio is not installed)",
     _sniffio_import),
    ("`bounded` timeouts (upstream/timeouts.py): its own frames and what they call outside the wrapped stream "
     "(`Watchdog`)", _bounded_own),
    ("store: `StreamLog.append` (encode, reserve, wake)", lambda fr: _has(fr, "StreamLog.append")),
    ("  of which `StreamLog.wake` (waking the parked readers)", lambda fr: _has(fr, "StreamLog.wake")),
    ("readers: `StreamLog.frames_after` / `_follow` (waiting, batching)", lambda fr: _has(fr, "StreamLog.frames_after")),
    ("sse-starlette: whole `EventSourceResponse` (its task group, pings, disconnect and exit listeners, sends)",
     lambda fr: _has(fr, "EventSourceResponse.__call__") or any("/sse_starlette/" in f.path for f in fr)),
    ("  of which the send path `_send_with_timeout` (the send timeout, the middlewares' send wrappers, uvicorn's "
     "send)", lambda fr: _has(fr, "EventSourceResponse._send_with_timeout") or _has(fr, "_EventStream._send_with_timeout")),
    ("  of which uvicorn's `send` / transport write", lambda fr: _has(fr, "RequestResponseCycle.send")),
    ("stream set-up: `StreamManager.start` (incl. `MemoryStore.create`)", lambda fr: _has(fr, "StreamManager.start")),
    ("  of which `MemoryStore.evict_expired` (scans every stream)", lambda fr: _has(fr, "MemoryStore.evict_expired")),
    ("FastAPI request handling before the response: dependencies, body validation",
     lambda fr: _has(fr, "solve_dependencies") or _has(fr, "_extract_endpoint_context") or
     _has(fr, "request_body_to_args")),
    ("  of which sync dependencies run in the threadpool", _threadpool),
    ("uvicorn HTTP parsing (`data_received`, httptools callbacks)",
     lambda fr: _has(fr, "HttpToolsProtocol.data_received")),
    ("event loop itself (selector, scheduling; innermost frame in asyncio/selectors)",
     lambda fr: fr[-1].path.endswith(("asyncio/base_events.py", "asyncio/events.py", "selectors.py",
                                      "asyncio/selector_events.py"))),
]


def components(prof: Profile) -> list[tuple[str, float]]:
    return [(label, _share(prof, pred)) for label, pred in COMPONENTS]


def _share(prof: Profile, pred) -> float:
    hit = sum(n for frames, n in prof.stacks if frames and pred(frames))
    return hit / prof.samples if prof.samples else 0.0


def pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "-"


def report(prof: Profile, title: str, cpu_us_per_token: float | None, unit: str = "token", top: int = 12) -> str:
    """Markdown: the three views, each row with its share and, given the CPU per unit of work (a token,
    a request), its microseconds per unit."""
    total = prof.samples
    if not total:
        return f"#### {title}\n\nno samples (py-spy did not run?)\n"

    def us(n: int) -> str:
        return f"{cpu_us_per_token * n / total:.1f}" if cpu_us_per_token else "-"

    out = [f"#### {title}", ""]
    out.append(f"{total} busy samples (left out: {prof.idle} waiting in epoll or a threadpool queue, {prof.torn} "
               "torn stacks)" + (f"; gateway CPU {cpu_us_per_token:.1f} µs per {unit}" if cpu_us_per_token else ""))
    out.append("")
    out.append("Named spots on the data path (inclusive: indented rows are part of the row above; rows overlap "
               "where stacks nest):")
    out.append("")
    out.append(f"| spot | share | µs/{unit} |")
    out.append("|---|---:|---:|")
    for label, share in components(prof):
        if share >= 0.005:
            indent = "&nbsp;&nbsp;&nbsp;&nbsp;" if label.startswith("  ") else ""
            n = round(share * total)
            out.append(f"| {indent}{label.strip()} | {100 * share:.1f}% | {us(n)} |")
    out.append("")
    out.append("By package (self time: the package of the innermost frame):")
    out.append("")
    out.append(f"| package | share | µs/{unit} |")
    out.append("|---|---:|---:|")
    for name, n in prof.by_package().most_common(top):
        out.append(f"| {name} | {pct(n, total)} | {us(n)} |")
    out.append("")
    lines, below = prof.by_gateway_line()
    out.append("By gateway line (the deepest flowise_sse frame of each sample, with the libraries it was in):")
    out.append("")
    out.append(f"| gateway line | share | µs/{unit} | spent in |")
    out.append("|---|---:|---:|---|")
    for name, n in lines.most_common(top):
        spent = ", ".join(f"{pkg} {pct(m, n)}" for pkg, m in below[name].most_common(3))
        out.append(f"| `{name}` | {pct(n, total)} | {us(n)} | {spent} |")
    out.append("")
    out.append("Inclusive (share of samples with the function anywhere on the stack; overlapping):")
    out.append("")
    out.append(f"| function | share | µs/{unit} |")
    out.append("|---|---:|---:|")
    shown = 0
    for name, n in prof.inclusive().most_common():
        if n / total > 0.97 or any(name.endswith(f"({p})") for p in _PLUMBING):
            continue
        out.append(f"| `{name}` | {pct(n, total)} | {us(n)} |")
        shown += 1
        if shown >= top + 8:
            break
    out.append("")
    out.append("Top self lines:")
    out.append("")
    out.append("| line | share |")
    out.append("|---|---:|")
    for name, n in prof.self_lines().most_common(top):
        out.append(f"| `{name}` | {pct(n, total)} |")
    out.append("")
    return "\n".join(out)
