"""flowise-sse benchmark: latency, relay throughput, concurrency and profiles, side by side in one run.

    .venv/bin/python bench/run.py            # the full run (about 7 minutes), writes bench/RESULTS.md,
                                             # bench/latency.png, bench/results.json, bench/profiles/
    .venv/bin/python bench/run.py --quick    # a smoke run (under a minute), written to a temp dir

Every server runs in a process of its own: the emulated Flowise servers (bench/servers.py), the
gateway (`python -m flowise_sse serve`), the bare sse-starlette ceiling; the measuring clients are
this process and, for the concurrency runs, bench/loadgen.py workers. With two or more cores the
system under test (gateway, or ceiling) is pinned to the first core and everything else (emulators,
clients, py-spy) to the others. See bench/README.md for what is measured and how to read it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gzip
import json
import math
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx  # noqa: E402
import orjson  # noqa: E402

from common import (  # noqa: E402
    BENCH_DIR,
    CLK_TCK,
    DEMO_CHATFLOW_ID,
    PYTHON,
    REPO,
    FrameSplitter,
    cpu_seconds,
    cpu_sets,
    flowise_body,
    flowise_frame,
    free_port,
    gateway_body,
    gateway_frame,
    http_request,
    install_uvloop,
    lean_stream,
    own_cpu,
    percentile,
    raise_nofile,
    rss_kb,
    spawn,
    stop,
    tokens_for,
    wait_port,
)
from hotspots import Profile, report  # noqa: E402

PYSPY = shutil.which("py-spy", path=str(Path(PYTHON).parent)) or shutil.which("py-spy")
JSON_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}
GATEWAY_PATH = f"/v1/chatflows/{DEMO_CHATFLOW_ID}/stream"
PREDICTION_PATH = f"/api/v1/prediction/{DEMO_CHATFLOW_ID}"


@dataclass
class Config:
    quick: bool
    latency_requests: int
    latency_warmup: int
    throughput_tokens: int
    throughput_reps: int
    sse_levels: list[int]
    sio_levels: list[int]
    conc_tokens: int = 300  # 15 s answers: with the ramp below, all N streams are open together for >= 5 s
    conc_delay: float = 0.05
    ramp_rate: float = 200.0  # streams opened per second (at least 1 s of ramp): below the gateway's set-up rate
    streams_per_worker: int = 1000
    whatif: bool = True  # also measure the gateway on uvloop (a launcher in bench/servers.py)
    profile: bool = True
    profile_rate: int = 250
    conc_profile_rate: int = 50  # py-spy pauses every thread per sample: costly with the gateway's threadpool
    pin: bool = True
    wait_idle: float = 60.0
    budget: float = 900.0  # seconds for the whole run; phases past it are skipped

    @classmethod
    def make(cls, args: argparse.Namespace) -> Config:
        if args.quick:
            cfg = cls(True, 40, 3, 3000, 2, [50, 200], [50], conc_tokens=40, profile_rate=100, conc_profile_rate=50,
                      wait_idle=0.0, budget=240.0)
        else:
            # 300 is not a target level: it sits near where the gateway as shipped saturates its core.
            cfg = cls(False, 300, 10, 20000, 7, [100, 300, 1000, 2000], [100, 1000])
        cfg.profile = not args.no_profile and PYSPY is not None
        cfg.pin = not args.no_pin
        cfg.whatif = not args.no_whatif
        if args.wait_idle is not None:
            cfg.wait_idle = args.wait_idle
        return cfg


# --- machine and load ---------------------------------------------------------------------------

def proc_stat() -> tuple[int, int, int]:
    """(busy, total, steal) jiffies of the whole machine."""
    with open("/proc/stat") as fh:
        parts = [int(x) for x in fh.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = parts
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait, steal


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class LoadMeter:
    """CPU used on the whole machine during a window, split into ours (this process, its reaped
    children and the live servers named) and foreign (anything else running on the machine)."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.stat0 = proc_stat()
        self.own0, self.kids0 = own_cpu(), children_cpu()
        self.alive0 = {pid: cpu_seconds(pid) for pid in pids}

    def stop(self) -> dict[str, float]:
        wall = max(1e-6, time.monotonic() - self.t0)
        busy1, _, steal1 = proc_stat()
        ours = own_cpu() - self.own0 + children_cpu() - self.kids0
        for pid, c0 in self.alive0.items():
            try:
                ours += cpu_seconds(pid) - c0
            except OSError:
                pass
        busy = (busy1 - self.stat0[0]) / CLK_TCK
        return {"wall": wall, "busy_cores": busy / wall, "ours_cores": ours / wall,
                "foreign_cores": max(0.0, busy - ours) / wall, "steal_cores": (steal1 - self.stat0[2]) / CLK_TCK / wall}


def background_load(seconds: float = 2.0) -> dict[str, float]:
    meter = LoadMeter([])
    time.sleep(seconds)
    return meter.stop()


def machine_info() -> dict[str, Any]:
    model = "?"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    libs = {}
    for name in ("flowise-sse", "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "sse-starlette", "httpx",
                 "httpcore", "httpx-sse", "python-socketio", "python-engineio", "aiohttp", "websockets", "orjson",
                 "matplotlib", "py-spy"):
        try:
            libs[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            libs[name] = "-"
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "service"], cwd=REPO, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        commit += " (service/ has uncommitted changes)" if dirty else ""
    except (OSError, subprocess.SubprocessError):
        commit = "?"
    return {"nproc": os.cpu_count(), "affinity": sorted(os.sched_getaffinity(0)), "cpu_model": model,
            "mem_gb": round(mem_kb / 1024 / 1024, 1), "kernel": platform.release(),
            "python": platform.python_version(), "implementation": platform.python_implementation(),
            "libs": libs, "commit": commit, "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]}


# --- the servers --------------------------------------------------------------------------------

class Servers:
    def __init__(self, cfg: Config, logdir: Path) -> None:
        self.cfg = cfg
        self.logdir = logdir
        self.sut_cpus, self.other_cpus = cpu_sets() if cfg.pin else (None, None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.ports: dict[str, int] = {}

    def start(self, name: str, args: list[str], sut: bool, env: dict[str, str] | None = None) -> int:
        port = free_port()
        args = [a.replace("{port}", str(port)) for a in args]
        proc = spawn(args, env=env, cpus=self.sut_cpus if sut else self.other_cpus,
                     log=self.logdir / f"{name}.log")
        self.procs[name], self.ports[name] = proc, port
        wait_port(port, proc)
        return port

    def start_emulator(self, name: str, kind: str, version: str = "3.1.4") -> int:
        return self.start(name, [PYTHON, str(BENCH_DIR / "servers.py"), kind, "--port", "{port}", "--version", version],
                          sut=False)

    def start_gateway(self, name: str, upstream: str, env: dict[str, str] | None = None, uvloop: bool = False) -> int:
        """The gateway as shipped (`python -m flowise_sse serve`), or with uvloop installed first (what-if)."""
        env = {"FLOWISE_URL": f"http://127.0.0.1:{self.ports[upstream]}", "PYTHONUNBUFFERED": "1", **(env or {})}
        if uvloop:
            args = [PYTHON, str(BENCH_DIR / "servers.py"), "gateway-uvloop", "--port", "{port}"]
        else:
            args = [PYTHON, "-m", "flowise_sse", "serve", "--host", "127.0.0.1", "--port", "{port}", "--log-level",
                    "warning"]
        port = self.start(name, args, sut=True, env=env)
        # Ready once it has learnt the transport (warm-up) and answers.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        return port

    def pid(self, name: str) -> int:
        return self.procs[name].pid

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def stop(self, name: str) -> None:
        stop(self.procs.pop(name, None))
        self.ports.pop(name, None)

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def clear_emulator(self, name: str) -> None:
        try:
            httpx.delete(self.url(name) + "/__emulator/state", timeout=10)
        except httpx.HTTPError:
            pass


class Spy:
    """py-spy attached to one pid. It pauses the process for each sample, so it runs on the gateway's
    own core: woken there it preempts the gateway at once and the pauses stay short (on the other,
    busy core it would wait its turn while the gateway stays paused). --nonblocking is not used: on
    this kind of machine it tore about half the stacks."""

    def __init__(self, servers: Servers, pid: int, out: Path, rate: int) -> None:
        self.out = out
        self.proc = spawn([PYSPY, "record", "--pid", str(pid), "--rate", str(rate), "--full-filenames",
                           "--format", "raw", "--output", str(out)],
                          cpus=servers.sut_cpus, log=servers.logdir / f"{out.stem}.py-spy.log")
        time.sleep(0.5)  # attach

    def finish(self) -> Profile | None:
        """Stop sampling; the stacks are kept gzipped (`zcat x.txt.gz | flamegraph.pl`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if not self.out.exists():
            return None
        prof = Profile.load(self.out)
        packed = self.out.with_name(self.out.name + ".gz")
        packed.write_bytes(gzip.compress(self.out.read_bytes(), 9))
        self.out.unlink()
        return prof


# --- 1. first-token latency ---------------------------------------------------------------------

LATENCY_TOKENS = ["Hello", " from", " the", " bench", "mark", "."]


async def sse_first_token(client: httpx.AsyncClient, url: str, body: bytes, flowise: bool) -> tuple[float, bool]:
    """Seconds from sending the request to the first non-empty `token`; the stream is read to its end
    (so the keep-alive connection goes back to the pool) and checked."""
    parse = flowise_frame if flowise else gateway_frame
    parts: list[str] = []
    terminal, first = None, None
    t0 = time.perf_counter()
    async with client.stream("POST", url, content=body, headers=JSON_HEADERS) as response:
        splitter = FrameSplitter()
        async for chunk in response.aiter_raw():
            for frame in splitter.feed(chunk):
                parsed = parse(frame)
                if parsed is None:
                    continue
                name, data = parsed
                if name == "token":
                    text = data if flowise else data["text"]
                    if text:
                        if first is None:
                            first = time.perf_counter()
                        parts.append(text)
                elif name in ("end", "error"):
                    terminal = name
        ok = response.status_code == 200 and terminal == "end" and "".join(parts) == "".join(LATENCY_TOKENS)
    return (first - t0) if first else math.nan, ok


async def socketio_first_token(client: httpx.AsyncClient, base: str) -> tuple[float, bool]:
    """The usual direct way on Flowise <= 2.0: connect a socket.io client (websocket transport), POST
    the prediction with its socketIOClientId, wait for the first non-empty `token`."""
    import socketio

    loop = asyncio.get_running_loop()
    t0 = time.perf_counter()
    sio = socketio.AsyncClient(reconnection=False)
    first: asyncio.Future[float] = loop.create_future()
    parts: list[str] = []

    def on_token(data: Any = None) -> None:
        if data:
            parts.append(data)
            if not first.done():
                first.set_result(time.perf_counter())

    sio.on("token", on_token)
    await sio.connect(base, transports=["websocket"], socketio_path="/socket.io", wait_timeout=10)
    try:
        body = {"question": "latency", "chatId": str(uuid.uuid4()), "socketIOClientId": sio.get_sid("/"),
                "overrideConfig": {"emulator": {"tokens": LATENCY_TOKENS, "delay": 0.0}}}
        post = asyncio.ensure_future(client.post(base + PREDICTION_PATH, content=orjson.dumps(body),
                                                 headers={"Content-Type": "application/json"}))
        async with asyncio.timeout(30):
            t1 = await first
            answer = await post
        ok = answer.status_code == 200 and answer.json().get("text") == "".join(LATENCY_TOKENS)
    finally:
        await sio.disconnect()
    return t1 - t0, ok


def summarize(values: list[float]) -> dict[str, float]:
    vals = [v for v in values if not math.isnan(v)]
    return {"n": len(vals), "p50": percentile(vals, 50), "p90": percentile(vals, 90), "p99": percentile(vals, 99),
            "mean": sum(vals) / len(vals) if vals else math.nan, "min": min(vals, default=math.nan),
            "max": max(vals, default=math.nan)}


async def latency_pair(cfg: Config, gateway_url: str, gateway_pid: int, direct: str, direct_url: str,
                       deadline: float) -> dict:
    """Interleaved A, B, A, B ...: the gateway, then the direct client, n times (after a warm-up)."""
    gw_body = orjson.dumps(gateway_body(LATENCY_TOKENS, 0.0, "latency"))
    up_body = orjson.dumps(flowise_body(LATENCY_TOKENS, 0.0, "latency"))
    gw, dr, failures, gw_cpu = [], [], 0, 0.0
    limits = httpx.Limits(max_keepalive_connections=8)
    async with httpx.AsyncClient(timeout=30, limits=limits) as gw_client, \
            httpx.AsyncClient(timeout=30, limits=limits) as up_client:
        for i in range(cfg.latency_warmup + cfg.latency_requests):
            if time.monotonic() > deadline:
                break
            c0 = cpu_seconds(gateway_pid)
            a, ok_a = await sse_first_token(gw_client, gateway_url + GATEWAY_PATH, gw_body, flowise=False)
            c1 = cpu_seconds(gateway_pid)
            if direct == "socketio":
                b, ok_b = await socketio_first_token(up_client, direct_url)
            else:
                b, ok_b = await sse_first_token(up_client, direct_url + PREDICTION_PATH, up_body, flowise=True)
            failures += (not ok_a) + (not ok_b)
            if i >= cfg.latency_warmup:
                gw.append(a)
                dr.append(b)
                gw_cpu += c1 - c0
    g, d = summarize(gw), summarize(dr)
    return {"gateway": g, "direct": d, "gateway_ms": [x * 1000 for x in gw], "direct_ms": [x * 1000 for x in dr],
            "failures": failures, "ratio_p50": g["p50"] / d["p50"], "ratio_p99": g["p99"] / d["p99"],
            "gateway_cpu_ms_per_request": gw_cpu / max(1, len(gw)) * 1e3}


def phase_latency(cfg: Config, srv: Servers, deadline: float) -> dict:
    pairs = [("socketio", "gw_sio", "socketio", "emu_sio"), ("sse", "gw_sse", "sse", "emu_sse")]
    if "gw_sse_uv" in srv.procs:
        pairs.append(("sse_uvloop", "gw_sse_uv", "sse", "emu_sse"))
    out = {}
    meter = LoadMeter([srv.pid(n) for n in srv.procs])
    for i, (key, gw, direct, up) in enumerate(pairs):
        per = max(10.0, (deadline - time.monotonic()) / (len(pairs) - i))
        out[key] = asyncio.run(latency_pair(cfg, srv.url(gw), srv.pid(gw), direct, srv.url(up),
                                            min(deadline, time.monotonic() + per)))
        r = out[key]
        print(f"  first token [{key}] gateway p50 {r['gateway']['p50'] * 1e3:.2f} ms p99 {r['gateway']['p99'] * 1e3:.2f}"
              f" ms | direct p50 {r['direct']['p50'] * 1e3:.2f} ms p99 {r['direct']['p99'] * 1e3:.2f} ms | ratio "
              f"{r['ratio_p50']:.2f} / {r['ratio_p99']:.2f} | gateway CPU {r['gateway_cpu_ms_per_request']:.2f} "
              f"ms/request | n={r['gateway']['n']} failures={r['failures']}")
    out["load"] = meter.stop()
    return out


# --- 2. relay throughput ------------------------------------------------------------------------

async def socketio_upstream_rate(base: str, n: int) -> dict:
    """The socket.io emulator read directly by a python-socketio client: tokens per second from the
    POST to the last token (bounded by that client as much as by the emulator)."""
    import socketio

    loop = asyncio.get_running_loop()
    sio = socketio.AsyncClient(reconnection=False)
    count = [0]
    done: asyncio.Future[float] = loop.create_future()

    def on_token(data: Any = None) -> None:
        if data:
            count[0] += 1
            if count[0] == n and not done.done():
                done.set_result(time.perf_counter())

    sio.on("token", on_token)
    await sio.connect(base, transports=["websocket"], socketio_path="/socket.io", wait_timeout=10)
    try:
        body = {"question": "throughput", "chatId": str(uuid.uuid4()), "socketIOClientId": sio.get_sid("/"),
                "overrideConfig": {"emulator": {"tokens": tokens_for(n), "delay": 0.0}}}
        async with httpx.AsyncClient(timeout=120) as client:
            t0 = time.perf_counter()
            post = asyncio.ensure_future(client.post(base + PREDICTION_PATH, json=body))
            async with asyncio.timeout(120):
                t1 = await done
                await post
    finally:
        await sio.disconnect()
    return {"tokens": count[0], "seconds": t1 - t0, "rate": count[0] / (t1 - t0)}


async def one_throughput(srv: Servers, name: str, sut: str, upstream: str | None, request: bytes, port: int,
                         flowise: bool, n: int, expected: str) -> dict:
    c0 = cpu_seconds(srv.pid(sut))
    u0 = cpu_seconds(srv.pid(upstream)) if upstream else 0.0
    k0 = own_cpu()
    r = await lean_stream(port, request, flowise, timeout=120)
    k1 = own_cpu()
    c1 = cpu_seconds(srv.pid(sut))
    u1 = cpu_seconds(srv.pid(upstream)) if upstream else 0.0
    seconds = (r.t_done or time.monotonic()) - r.t_sent
    text = r.text
    return {"name": name, "ok": r.status == 200 and r.terminal == "end" and text == expected, "tokens": r.tokens,
            "chars": len(text), "seconds": seconds, "rate": n / seconds if text == expected else r.tokens / seconds,
            "first_token_ms": ((r.t_first or r.t_sent) - r.t_sent) * 1e3,
            "sut_us_per_token": (c1 - c0) / n * 1e6, "upstream_us_per_token": (u1 - u0) / n * 1e6 if upstream else None,
            "client_us_per_token": (k1 - k0) / n * 1e6, "error": None if r.error is None else str(r.error)[:300]}


def phase_throughput(cfg: Config, srv: Servers, deadline: float) -> dict:
    n = cfg.throughput_tokens
    toks = tokens_for(n)
    expected = "".join(toks)
    contenders = [
        ("ceiling (bare sse-starlette)", "ceiling", None, http_request("GET", f"/stream?n={n}", srv.ports["ceiling"]),
         srv.ports["ceiling"], False),
        ("gateway, SSE upstream (3.1.4)", "gw_sse", "emu_sse",
         http_request("POST", GATEWAY_PATH, srv.ports["gw_sse"], gateway_body(toks, 0.0)), srv.ports["gw_sse"], False),
        ("gateway, socket.io upstream (1.6.2)", "gw_sio", "emu_sio",
         http_request("POST", GATEWAY_PATH, srv.ports["gw_sio"], gateway_body(toks, 0.0)), srv.ports["gw_sio"], False),
        ("upstream alone: SSE emulator 3.1.4, read directly", "emu_sse", None,
         http_request("POST", PREDICTION_PATH, srv.ports["emu_sse"], flowise_body(toks, 0.0)), srv.ports["emu_sse"], True),
    ]
    if "gw_sse_uv" in srv.procs:
        contenders.append(("what-if: gateway on uvloop, SSE upstream (3.1.4)", "gw_sse_uv", "emu_sse",
                           http_request("POST", GATEWAY_PATH, srv.ports["gw_sse_uv"], gateway_body(toks, 0.0)),
                           srv.ports["gw_sse_uv"], False))
    runs: dict[str, list[dict]] = {c[0]: [] for c in contenders}

    async def main() -> None:
        warm_n = n  # the same size: the ceiling encodes (and caches) its frames on the first request of a size
        for name, sut, up, _, port, flowise in contenders:  # warm-up, not counted
            path = f"/stream?n={warm_n}" if sut == "ceiling" else (PREDICTION_PATH if flowise else GATEWAY_PATH)
            body = None if sut == "ceiling" else (flowise_body if flowise else gateway_body)(tokens_for(warm_n), 0.0)
            await lean_stream(port, http_request("GET" if sut == "ceiling" else "POST", path, port, body), flowise)
        for rep in range(cfg.throughput_reps):
            for name, sut, up, request, port, flowise in contenders:
                if time.monotonic() > deadline:
                    return
                runs[name].append(await one_throughput(srv, name, sut, up, request, port, flowise, n, expected))

    meter = LoadMeter([srv.pid(x) for x in srv.procs])
    install_uvloop()
    asyncio.run(main())
    load = meter.stop()
    sio_direct = None
    if time.monotonic() < deadline:
        try:
            sio_direct = asyncio.run(socketio_upstream_rate(srv.url("emu_sio"), n))
        except Exception as exc:  # reported, not fatal
            sio_direct = {"error": repr(exc)}
    summary = {}
    for name, rs in runs.items():
        rates = [r["rate"] for r in rs]
        summary[name] = {
            "runs": rs, "median": percentile(rates, 50), "best": max(rates, default=math.nan),
            "worst": min(rates, default=math.nan), "all_ok": all(r["ok"] for r in rs) and bool(rs),
            "sut_us_per_token": percentile([r["sut_us_per_token"] for r in rs], 50),
            "upstream_us_per_token": percentile([r["upstream_us_per_token"] for r in rs if r["upstream_us_per_token"]
                                                 is not None], 50),
            "client_us_per_token": percentile([r["client_us_per_token"] for r in rs], 50),
            "min_tokens": min((r["tokens"] for r in rs), default=0),
        }
    ceiling = summary[contenders[0][0]]["median"]
    ceiling_best = summary[contenders[0][0]]["best"]
    for name, s in summary.items():
        s["of_ceiling"] = s["median"] / ceiling if ceiling else math.nan
        s["best_of_ceiling_best"] = s["best"] / ceiling_best if ceiling_best else math.nan
        print(f"  throughput {name}: median {s['median']:,.0f} tok/s (best {s['best']:,.0f}) = "
              f"{100 * s['of_ceiling']:.0f}% of ceiling; server {s['sut_us_per_token']:.1f} µs/token; ok={s['all_ok']}")
    if sio_direct:
        print(f"  throughput socket.io emulator read directly: {sio_direct}")
    return {"tokens": n, "reps": cfg.throughput_reps, "contenders": summary, "socketio_direct": sio_direct,
            "load": load}


# --- 3. concurrency -----------------------------------------------------------------------------

def peak_overlap(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    cur = best = 0
    for _, d in edges:
        cur += d
        best = max(best, cur)
    return best


def ramp_for(cfg: Config, n: int) -> float:
    return max(0.5 if cfg.quick else 1.0, n / cfg.ramp_rate)


def concurrency_level(cfg: Config, srv: Servers, transport: str, n: int, logdir: Path,
                      profile_out: Path | None = None, uvloop: bool = False) -> dict:
    upstream = "lite" if transport == "sse" else "emu_sio"
    env = {"FLOWISE_SSE_MAX_STREAMS": str(max(10000, 4 * n))}
    port = srv.start_gateway("gw_conc", upstream, env, uvloop=uvloop)
    gw_pid, up_pid = srv.pid("gw_conc"), srv.pid(upstream)
    ramp = ramp_for(cfg, n)
    tag = f"{transport}-{n}{'-uvloop' if uvloop else ''}{'-profiled' if profile_out else ''}"
    try:
        async def warm() -> None:
            for _ in range(3):
                await lean_stream(port, http_request("POST", GATEWAY_PATH, port, gateway_body(tokens_for(3), 0.0)),
                                  False, timeout=20)

        install_uvloop()
        asyncio.run(warm())
        time.sleep(0.5)
        base_rss = rss_kb(gw_pid)
        workers_n = max(1, math.ceil(n / cfg.streams_per_worker))
        shares = [n // workers_n + (1 if i < n % workers_n else 0) for i in range(workers_n)]
        spy = Spy(srv, gw_pid, profile_out, cfg.conc_profile_rate) if profile_out else None
        start_at = time.monotonic() + 1.5
        outs = [logdir / f"conc-{tag}-{i}.json" for i in range(workers_n)]
        workers = [spawn([PYTHON, str(BENCH_DIR / "loadgen.py"), "--port", str(port), "--target", "gateway",
                          "--streams", str(k), "--tokens", str(cfg.conc_tokens), "--delay", str(cfg.conc_delay),
                          "--ramp", str(ramp), "--start-at", repr(start_at), "--out", str(out), "--timeout", "120"],
                         cpus=srv.other_cpus, log=logdir / "loadgen.log") for k, out in zip(shares, outs)]
        while time.monotonic() < start_at:
            time.sleep(0.01)
        meter = LoadMeter([gw_pid, up_pid] + ([spy.proc.pid] if spy else []))
        g0, u0 = cpu_seconds(gw_pid), cpu_seconds(up_pid)
        spy0 = cpu_seconds(spy.proc.pid) if spy else 0.0
        peak = base_rss
        hard_stop = start_at + ramp + cfg.conc_tokens * cfg.conc_delay + 130
        while any(w.poll() is None for w in workers) and time.monotonic() < hard_stop:
            peak = max(peak, rss_kb(gw_pid))
            time.sleep(0.05)
        for w in workers:
            stop(w)
        window = time.monotonic() - start_at
        g1, u1 = cpu_seconds(gw_pid), cpu_seconds(up_pid)
        spy_cpu = cpu_seconds(spy.proc.pid) - spy0 if spy else 0.0
        load = meter.stop()
        profile = spy.finish() if spy else None
    finally:
        srv.stop("gw_conc")
    streams, gaps, arrivals, lateness, client_cpu = [], [], [], [], 0.0
    for out in outs:
        if out.exists():
            data = orjson.loads(out.read_bytes())
            streams += data["streams"]
            gaps += data["gaps"]
            arrivals += data["arrivals"]
            lateness += data["lateness"]
            client_cpu += data["cpu"]
    spans = [s["span"] for s in streams if s.get("span")]
    nominal = (cfg.conc_tokens - 1) * cfg.conc_delay
    added = [(g - cfg.conc_delay) * 1000 for g in gaps]
    # Steady state: from the moment the last stream got its first token to the moment the first one ended,
    # every stream is open and none is being set up.
    firsts_t = [s["t_first"] for s in streams if s["t_first"]]
    dones_t = [s["t_done"] for s in streams if s["t_done"]]
    s0, s1 = (max(firsts_t), min(dones_t)) if firsts_t and dones_t else (0.0, 0.0)
    steady = [a for a, t in zip(added, arrivals) if s0 < t <= s1]
    firsts = [(s["t_first"] - s["t_sent"]) * 1000 for s in streams if s["t_first"]]
    intervals = [(s["t_sent"], s["t_done"]) for s in streams if s["t_sent"] and s["t_done"]]
    flowing = [(s["t_first"], s["t_done"]) for s in streams if s["t_first"] and s["t_done"]]
    errors: dict[str, int] = {}
    for s in streams:
        if not s["ok"]:
            key = f"status={s['status']} terminal={s['terminal']} tokens={s['tokens']} {s['error'] or ''}"[:160]
            errors[key] = errors.get(key, 0) + 1
    exact = sum(s["ok"] for s in streams)
    return {
        "transport": transport, "variant": "what-if: gateway on uvloop" if uvloop else "as shipped",
        "streams": n, "ramp_s": ramp, "tokens": cfg.conc_tokens, "finished": len(streams), "exact": exact,
        "exact_share": exact / n, "peak_concurrent": peak_overlap(intervals), "peak_flowing": peak_overlap(flowing),
        "added_p50_ms": percentile(added, 50), "added_p99_ms": percentile(added, 99),
        "added_max_ms": max(added, default=math.nan),
        "steady_s": max(0.0, s1 - s0), "steady_gaps": len(steady),
        "steady_p50_ms": percentile(steady, 50), "steady_p99_ms": percentile(steady, 99),
        "first_token_p50_ms": percentile(firsts, 50), "first_token_p99_ms": percentile(firsts, 99),
        "late_p50_ms": percentile(lateness, 50) * 1000, "late_p99_ms": percentile(lateness, 99) * 1000,
        "late_max_ms": max(lateness, default=math.nan) * 1000,
        "span_nominal_s": nominal, "span_p50_s": percentile(spans, 50), "span_p99_s": percentile(spans, 99),
        "sampler_cpu": spy_cpu / window if profile_out else None,
        "rss_base_mb": base_rss / 1024, "rss_peak_mb": peak / 1024, "kb_per_stream": (peak - base_rss) / n,
        "gateway_cpu": (g1 - g0) / window, "upstream_cpu": (u1 - u0) / window,
        "client_cpu": client_cpu / window, "workers": workers_n, "window_s": window,
        "gateway_us_per_token": (g1 - g0) / max(1, n * cfg.conc_tokens) * 1e6,
        "load": load, "errors": dict(sorted(errors.items(), key=lambda kv: -kv[1])[:5]),
        "added_ms_sample": added[:: max(1, len(added) // 20000)],
        "late_ms_sample": [x * 1000 for x in lateness[:: max(1, len(lateness) // 20000)]],
        **({"profile": profile} if profile is not None else {}),
    }


def setup_rate(results: dict) -> str:
    cpu = results.get("latency", {}).get("sse", {}).get("gateway_cpu_ms_per_request")
    return f" (section 1: {cpu:.1f} ms of CPU per request, so at most ~{1000 / cpu:.0f} streams/s on one core)" if cpu else ""


def steady(r: dict) -> str:
    if not r["steady_gaps"]:
        return "- (never all open and flowing)"
    return f"{r['steady_p50_ms']:.1f} / {r['steady_p99_ms']:.1f} ({r['steady_s']:.1f} s)"


def print_level(r: dict, tag: str = "") -> None:
    print(f"  {tag}concurrency {r['transport']} {r['streams']} ({r['variant']}): exact {r['exact']}/{r['streams']} "
          f"(peak {r['peak_concurrent']} open, {r['peak_flowing']} flowing, first token p99 "
          f"{r['first_token_p99_ms'] / 1000:.1f} s), added delay p50 {r['added_p50_ms']:.1f} ms p99 {r['added_p99_ms']:.1f} ms "
          f"max {r['added_max_ms']:.0f} ms, steady p50/p99 {steady(r)}, late p99 {r['late_p99_ms']:.0f} ms, answer "
          f"{r['span_p50_s']:.2f}/{r['span_p99_s']:.2f} s (nominal {r['span_nominal_s']:.2f}), "
          f"{r['kb_per_stream']:.0f} KB/stream, CPU gateway {r['gateway_cpu']:.0%} ({r['gateway_us_per_token']:.0f} "
          f"µs/token) upstream {r['upstream_cpu']:.0%} client {r['client_cpu']:.0%} (x{r['workers']}), foreign "
          f"{r['load']['foreign_cores']:.2f} cores{'; errors ' + str(r['errors']) if r['errors'] else ''}")


def phase_concurrency(cfg: Config, srv: Servers, logdir: Path, deadline: float) -> list[dict]:
    results = []
    plan = [("sse", n, False) for n in cfg.sse_levels]
    if cfg.whatif:
        plan.append(("sse", 1000 if 1000 in cfg.sse_levels else cfg.sse_levels[-1], True))
    plan += [("socketio", n, False) for n in cfg.sio_levels]
    for transport, n, uvloop in plan:
        if time.monotonic() > deadline:
            print(f"  concurrency {transport} {n}: skipped (time budget)")
            continue
        try:
            r = concurrency_level(cfg, srv, transport, n, logdir, uvloop=uvloop)
        except Exception as exc:  # reported, not fatal
            print(f"  concurrency {transport} {n}: failed: {exc!r}")
            results.append({"transport": transport, "streams": n, "failed": repr(exc),
                            "variant": "what-if: gateway on uvloop" if uvloop else "as shipped"})
            continue
        print_level(r)
        results.append(r)
        if transport == "socketio":
            srv.clear_emulator("emu_sio")
    return results


# --- 4. profiles --------------------------------------------------------------------------------

def phase_profiles(cfg: Config, srv: Servers, profdir: Path, logdir: Path, deadline: float) -> list[dict]:
    profiles = []

    def add(title: str, out: Path, prof: Profile | None, us_per_unit: float, unit: str, extra: dict) -> None:
        profiles.append({"title": title, "file": out.name, "samples": prof.samples if prof else 0,
                         "us_per_unit": us_per_unit, "unit": unit, **extra,
                         "markdown": report(prof, title, us_per_unit, unit) if prof else f"#### {title}\n\nno profile"})
        print(f"  profile {title}: {profiles[-1]['samples']} samples, {us_per_unit:.1f} µs/{unit}")

    # The first-token path: sequential short streams, as in section 1.
    for transport, gw in (("sse", "gw_sse"), ("socketio", "gw_sio")):
        if time.monotonic() > deadline:
            break
        out = profdir / f"first-token-{transport}.txt"
        requests_n = 300 if not cfg.quick else 60
        body = orjson.dumps(gateway_body(LATENCY_TOKENS, 0.0, "latency"))
        pid = srv.pid(gw)
        spy = Spy(srv, pid, out, cfg.profile_rate)
        c0 = cpu_seconds(pid)

        async def sequential(url: str = srv.url(gw) + GATEWAY_PATH) -> None:
            async with httpx.AsyncClient(timeout=30) as client:
                for _ in range(requests_n):
                    await sse_first_token(client, url, body, flowise=False)

        asyncio.run(sequential())
        cpu = cpu_seconds(pid) - c0
        add(f"First-token path, {transport} upstream: {requests_n} sequential requests of {len(LATENCY_TOKENS)} "
            "tokens", out, spy.finish(), cpu / requests_n * 1e6, "request", {})

    n = cfg.throughput_tokens
    reps = 8 if not cfg.quick else 2
    for transport, gw in (("sse", "gw_sse"), ("socketio", "gw_sio")):
        if time.monotonic() > deadline:
            break
        out = profdir / f"throughput-{transport}.txt"
        port = srv.ports[gw]
        request = http_request("POST", GATEWAY_PATH, port, gateway_body(tokens_for(n), 0.0))
        spy = Spy(srv, srv.pid(gw), out, cfg.profile_rate)
        c0 = cpu_seconds(srv.pid(gw))

        async def load() -> list:
            return [await lean_stream(port, request, False, timeout=120) for _ in range(reps)]

        install_uvloop()
        rs = asyncio.run(load())
        cpu = cpu_seconds(srv.pid(gw)) - c0
        tokens = sum(r.tokens for r in rs)
        add(f"Relay throughput, {transport} upstream: {reps} x {n:,} tokens, no delay", out, spy.finish(),
            cpu / max(1, tokens) * 1e6, "token", {})
    levels = [("sse", 1000 if 1000 in cfg.sse_levels else cfg.sse_levels[-1]),
              ("socketio", 1000 if 1000 in cfg.sio_levels else cfg.sio_levels[-1])]
    for transport, level in levels:
        if time.monotonic() > deadline:
            break
        out = profdir / f"concurrency-{transport}-{level}.txt"
        r = concurrency_level(cfg, srv, transport, level, logdir, profile_out=out)
        prof = r.pop("profile", None)
        r.pop("added_ms_sample", None)
        r.pop("late_ms_sample", None)
        print_level(r, "(profiled) ")
        add(f"Concurrency, {transport} upstream: {level:,} streams x {cfg.conc_tokens} tokens at "
            f"{1 / cfg.conc_delay:.0f} tokens/s", out, prof, r["gateway_us_per_token"], "token", {"level": r})
        if transport == "socketio":
            srv.clear_emulator("emu_sio")
    return profiles


# --- output -------------------------------------------------------------------------------------


def cdf(ax: Any, values: list[float], label: str, **kw: Any) -> None:
    xs = sorted(values)
    if xs:
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label, **kw)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(21, 10.5))
    lat = results.get("latency", {})
    for ax, key, title, direct_label in (
            (axes[0][0], "socketio", "1a. First token, socket.io upstream (Flowise 1.6.2 emulation)",
             "direct socket.io client (connects per request)"),
            (axes[0][1], "sse", "1b. First token, SSE upstream (Flowise 3.1.4 emulation)", "direct httpx SSE client")):
        r = lat.get(key)
        if not r:
            ax.set_visible(False)
            continue
        for values, label, kw in ((r["gateway_ms"], "gateway", {"color": "C0"}),
                                  (r["direct_ms"], direct_label, {"color": "C1"})):
            cdf(ax, values, f"{label}: p50 {percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms", **kw)
        w = lat.get("sse_uvloop") if key == "sse" else None
        if w:
            cdf(ax, w["gateway_ms"], f"what-if, gateway on uvloop: p50 {percentile(w['gateway_ms'], 50):.2f} ms, "
                                     f"p99 {percentile(w['gateway_ms'], 99):.2f} ms", color="C0", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("request sent -> first token event (ms, log scale)")
        ax.set_ylabel("share of requests (CDF)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")

    ax = axes[0][2]
    tp = results.get("throughput", {}).get("contenders", {})
    if tp:
        names = list(tp)
        med = [tp[k]["median"] for k in names]
        lo = [tp[k]["median"] - tp[k]["worst"] for k in names]
        hi = [tp[k]["best"] - tp[k]["median"] for k in names]
        ax.barh(range(len(names)), med, xerr=[lo, hi], color=[f"C{i}" for i in range(len(names))])
        ax.set_yticks(range(len(names)), [n.replace(", ", ",\n", 1) for n in names], fontsize=8)
        for i, k in enumerate(names):
            ax.text(tp[k]["best"], i, f"  {tp[k]['median']:,.0f}", va="center", fontsize=8)
        ax.set_xlabel(f"tokens/s to one client, {results['throughput']['tokens']:,} tokens (median; bars: min-max)")
        ax.set_title("2. Relay throughput", fontsize=10)
        ax.invert_yaxis()
        ax.set_xlim(0, max(tp[k]["best"] for k in names) * 1.18)
    else:
        ax.set_visible(False)

    levels = [r for r in results.get("concurrency", []) if r.get("added_ms_sample")]
    for ax, key, xlabel, title in (
            (axes[1][0], "added_ms_sample", "inter-token gap at the client minus the 50 ms pacing (ms, symlog scale)",
             "3. Added inter-token delay, streams at 20 tokens/s each"),
            (axes[1][1], "late_ms_sample", "token arrival minus its scheduled time, schedule anchored on the stream's "
                                           "most punctual token (ms, symlog)", "3. Lateness against the upstream's schedule")):
        for r in levels:
            whatif = r["variant"] != "as shipped"
            values = r[key]
            p99 = percentile(values, 99)
            cdf(ax, values, f"{r['transport']} {r['streams']:,} streams{' (what-if: uvloop)' if whatif else ''}: "
                            f"p99 {p99:.1f} ms", linestyle="--" if whatif else "-")
        if key == "added_ms_sample":
            ax.axvline(50, color="red", linestyle=":", linewidth=1, label="target: p99 <= 50 ms at 1,000 streams")
        ax.set_xscale("symlog", linthresh=10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of tokens (CDF)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        if not levels:
            ax.set_visible(False)

    ax = axes[1][2]
    if levels:
        labels = [f"{r['transport']} {r['streams']:,}{' uvloop' if r['variant'] != 'as shipped' else ''}" for r in levels]
        xs = range(len(levels))
        ax.bar([x - 0.2 for x in xs], [r["kb_per_stream"] for r in levels], width=0.4, color="C0",
               label="gateway memory, KB per stream (target <= 200 at 1,000)")
        ax.axhline(200, color="C0", linestyle=":", linewidth=1)
        ax2 = ax.twinx()
        ax2.bar([x + 0.2 for x in xs], [100 * r["gateway_cpu"] for r in levels], width=0.4, color="C3",
                label="gateway CPU, % of one core")
        ax2.set_ylim(0, 130)
        ax.set_ylim(0, max(220.0, 1.3 * max(r["kb_per_stream"] for r in levels)))
        ax2.set_ylabel("gateway CPU (% of one core)")
        ax.set_xticks(list(xs), labels, fontsize=8, rotation=20)
        ax.set_ylabel("KB per stream (RSS peak - idle) / streams")
        ax.set_title("3. Gateway memory and CPU per concurrency level", fontsize=10)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    else:
        ax.set_visible(False)
    m = results["machine"]
    fig.suptitle(f"flowise-sse benchmark, {results['date']}, {m['nproc']} cores ({m['cpu_model']}), "
                 f"Python {m['python']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def has_whatif(results: dict) -> bool:
    return bool(results.get("latency", {}).get("sse_uvloop")) or any(
        r.get("variant", "as shipped") != "as shipped" for r in results.get("concurrency", []))


def event_loop_of(pid: int) -> str:
    """Which event loop a running gateway uses: the stdlib loop's Python frames show in a stack dump,
    uvloop's run loop is native."""
    if PYSPY:
        try:
            dump = subprocess.run([PYSPY, "dump", "--pid", str(pid)], capture_output=True, text=True,
                                  timeout=20).stdout
        except (OSError, subprocess.SubprocessError):
            dump = ""
        if "base_events.py" in dump:
            return "asyncio (stdlib selector loop)"
        if dump:
            return "uvloop"
    try:
        with open(f"/proc/{pid}/maps") as fh:
            return "uvloop (its library is loaded)" if "uvloop/loop" in fh.read() else "asyncio (stdlib), probably"
    except OSError:
        return "unknown"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ms(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.2f}"


def level_reached(r: dict) -> bool:
    """Did (nearly) all N streams flow at once? A saturated gateway can instead queue the stream starts,
    so that fewer streams flow together and their gaps look fine."""
    return r["peak_flowing"] >= 0.95 * r["streams"]


def level_notes(r: dict) -> list[str]:
    notes = []
    if not level_reached(r):
        notes.append(f"**stream starts queued**: at most {r['peak_flowing']:,} of {r['streams']:,} streams flowed at "
                     f"once (first token p99 {r['first_token_p99_ms'] / 1000:.1f} s)")
    if r["gateway_cpu"] >= 0.9:
        notes.append("gateway CPU-bound (one core)")
    if r["upstream_cpu"] >= 0.9:
        notes.append("upstream emulator saturated: the row measures it as much as the gateway")
    if r["client_cpu"] / r["workers"] >= 0.9:
        notes.append("client saturated")
    if r["load"]["foreign_cores"] >= 0.3:
        notes.append(f"{r['load']['foreign_cores']:.2f} cores of other CPU work on the machine")
    return notes


def render(results: dict, cfg: Config, command: str) -> str:
    m = results["machine"]
    lines = [
        "# flowise-sse benchmark results",
        "",
        f"- date: {results['date']} (the run took {results['duration_s']:.0f} s)",
        f"- command: `{command}`" + (" (**quick smoke run: small counts, not the real figures**)" if cfg.quick else ""),
        f"- machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_gb']} GB RAM, Linux {m['kernel']}, "
        f"{m['implementation']} {m['python']}, `ulimit -n` {m['nofile']}",
        f"- code: flowise-sse {m['libs']['flowise-sse']} at {m['commit']}",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["libs"].items() if k != "flowise-sse"),
        f"- placement: {results['placement']}",
        "- the gateway as shipped: `python -m flowise_sse serve --host 127.0.0.1 --port N --log-level warning` with "
        f"`FLOWISE_URL` set, default settings otherwise; its event loop (seen with `py-spy dump`): "
        f"**{results.get('gateway_loop', '?')}**." + (
            " \"What-if\" rows run the same CLI with uvloop installed as the asyncio policy first "
            "(`bench/servers.py gateway-uvloop`), to size that difference; they are not the shipped gateway."
            if has_whatif(results) else ""),
        "- upstreams: sections 1 and 2 use the package's emulator (`flowise_sse.emulator`, token delay 0) in its own "
        "uvicorn process (uvloop, httptools); the SSE concurrency runs use `bench/servers.py lite`, a lean Flowise "
        "3.1.4 emulation on a raw asyncio protocol with tokens on loop timers, because the package emulator costs "
        f"{results.get('emulator_cost', '?')}; the socket.io concurrency runs use the package emulator 1.6.2 (there "
        "is no lean socket.io one).",
        f"- machine load: {results['background']['busy_cores']:.2f} of {m['nproc']} cores busy just before the run "
        f"(steal {results['background']['steal_cores']:.2f}). Each section gives the CPU that processes other than "
        "the benchmark's took during it (\"foreign\": other processes, and kernel work charged to no process, such "
        "as softirq threads handling loopback traffic under heavy load); figures taken under foreign load are "
        "pessimistic.",
        "",
    ]
    if results.get("warnings"):
        lines += ["**Warnings:**", ""] + [f"- {w}" for w in results["warnings"]] + [""]

    lat = results.get("latency", {})
    tp = results.get("throughput", {}).get("contenders", {})
    conc = [r for r in results.get("concurrency", []) if "failed" not in r]
    ceiling = next((v for k, v in tp.items() if k.startswith("ceiling")), None)

    # summary
    lines += ["## Summary against the targets (the gateway as shipped)", "",
              "| # | measure | result | target | verdict |", "|---|---|---|---|---|"]
    for key, label, target in (("socketio", "first token: gateway (socket.io upstream) / direct socket.io client "
                                            "connecting per request", 1.0),
                               ("sse", "first token: gateway (SSE upstream) / direct httpx SSE client", 1.10)):
        r = lat.get(key)
        if r:
            g, d = r["gateway"], r["direct"]
            lines.append(f"| 1{'a' if key == 'socketio' else 'b'} | {label} | p50 {ms(g['p50'] * 1e3)} / "
                         f"{ms(d['p50'] * 1e3)} ms = **{r['ratio_p50']:.2f}x**; p99 {ms(g['p99'] * 1e3)} / "
                         f"{ms(d['p99'] * 1e3)} ms = **{r['ratio_p99']:.2f}x** (n={g['n']}) | <= {target:.2f}x | "
                         f"p50 {verdict(r['ratio_p50'] <= target)}, p99 {verdict(r['ratio_p99'] <= target)} |")
    for k, v in tp.items():
        if k.startswith("gateway"):
            lines.append(f"| 2 | relay throughput, {k} (medians of {results['throughput']['reps']} runs) | "
                         f"{v['median']:,.0f} tok/s = **{100 * v['of_ceiling']:.0f}%** of the ceiling's "
                         f"{ceiling['median']:,.0f} tok/s (best against best: {100 * v['best_of_ceiling_best']:.0f}%) | "
                         f">= 70% | {verdict(v['of_ceiling'] >= 0.7)} |")
    for r in results.get("concurrency", []):
        if r["variant"] != "as shipped":
            continue
        if "failed" in r:
            lines.append(f"| 3 | {r['transport']} upstream, {r['streams']:,} streams | failed: {r['failed']} | | FAIL |")
            continue
        at_target = r["streams"] == 1000
        p99_ok = r["added_p99_ms"] <= 50 and level_reached(r)
        verdicts = (f"exact {verdict(r['exact_share'] == 1.0)}, p99 {verdict(p99_ok)}"
                    f"{'' if level_reached(r) else ' (level not reached)'}, memory {verdict(r['kb_per_stream'] <= 200)}"
                    ) if at_target else "-"
        lines.append(f"| 3 | {r['transport']} upstream, {r['streams']:,} streams x 20 tok/s | exact "
                     f"**{100 * r['exact_share']:.1f}%**; added delay p50 {r['added_p50_ms']:.1f} / p99 "
                     f"**{r['added_p99_ms']:.1f} ms**; **{r['kb_per_stream']:.0f} KB/stream**; answers of "
                     f"{r['span_nominal_s']:.2f} s took p50 {r['span_p50_s']:.2f} / p99 {r['span_p99_s']:.2f} s; first "
                     f"token p50 {r['first_token_p50_ms'] / 1000:.2f} / p99 {r['first_token_p99_ms'] / 1000:.2f} s; "
                     f"**{r['peak_flowing']:,} flowing at once**; gateway CPU {r['gateway_cpu']:.0%} | "
                     f"{'100%, p99 <= 50 ms, <= 200 KB' if at_target else '(1,000 is the target level)'} | {verdicts} |")
    whatif = [("1b", lat.get("sse_uvloop")), ("2", next((v for k, v in tp.items() if k.startswith("what-if")), None))]
    whatif_conc = [r for r in conc if r["variant"] != "as shipped"]
    if any(w for _, w in whatif) or whatif_conc:
        lines += ["", "What-if, not the shipped gateway: the same gateway on uvloop (see above):", "",
                  "| # | measure | result |", "|---|---|---|"]
        if whatif[0][1]:
            w = whatif[0][1]
            lines.append(f"| 1b | first token, gateway on uvloop / direct httpx SSE | p50 {ms(w['gateway']['p50'] * 1e3)} "
                         f"/ {ms(w['direct']['p50'] * 1e3)} ms = **{w['ratio_p50']:.2f}x**; p99 "
                         f"{ms(w['gateway']['p99'] * 1e3)} / {ms(w['direct']['p99'] * 1e3)} ms = "
                         f"**{w['ratio_p99']:.2f}x** |")
        if whatif[1][1]:
            w = whatif[1][1]
            lines.append(f"| 2 | relay throughput, gateway on uvloop, SSE upstream | {w['median']:,.0f} tok/s = "
                         f"**{100 * w['of_ceiling']:.0f}%** of the ceiling |")
        for r in whatif_conc:
            lines.append(f"| 3 | {r['transport']} upstream, {r['streams']:,} streams, gateway on uvloop | exact "
                         f"**{100 * r['exact_share']:.1f}%**; added delay p50 {r['added_p50_ms']:.1f} / p99 "
                         f"**{r['added_p99_ms']:.1f} ms**; **{r['kb_per_stream']:.0f} KB/stream**; answers of "
                         f"{r['span_nominal_s']:.2f} s took p50 {r['span_p50_s']:.2f} / p99 {r['span_p99_s']:.2f} s; "
                         f"first token p50 {r['first_token_p50_ms'] / 1000:.2f} / p99 "
                         f"{r['first_token_p99_ms'] / 1000:.2f} s; **{r['peak_flowing']:,} flowing at once**; "
                         f"gateway CPU {r['gateway_cpu']:.0%} |")
    lines += ["", "![latency distributions](latency.png)", ""]

    # 1. latency
    if lat:
        lines += ["## 1. First-token latency", "",
                  f"Sequential requests, the two contenders interleaved (gateway, direct, gateway, direct, ...) after "
                  f"{cfg.latency_warmup} warm-up pairs; each answer is {len(LATENCY_TOKENS)} tokens with no delay. Time "
                  "from sending the request to the first non-empty `token` event at the client. The gateway and the "
                  "direct SSE client are each one persistent keep-alive `httpx.AsyncClient`; the direct socket.io "
                  "client connects per request (python-socketio `AsyncClient`, websocket transport) as an application "
                  "talking to Flowise <= 2.0 would, while the gateway keeps `FLOWISE_SSE_SOCKETIO_POOL_SIZE` (4) "
                  "sockets connected. Gateway CPU: the gateway process's CPU time per request (whole stream).", "",
                  "| upstream | contender | n | p50 ms | p90 ms | p99 ms | mean ms | min ms | max ms | gateway CPU ms/request |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for key, label in (("socketio", "socket.io (1.6.2)"), ("sse", "SSE (3.1.4)"),
                           ("sse_uvloop", "SSE (3.1.4), what-if: gateway on uvloop")):
            r = lat.get(key)
            if not r:
                continue
            for who, s in (("gateway", r["gateway"]), ("direct", r["direct"])):
                cpu = ms(r["gateway_cpu_ms_per_request"]) if who == "gateway" else ""
                lines.append(f"| {label} | {who} | {s['n']} | {ms(s['p50'] * 1e3)} | {ms(s['p90'] * 1e3)} | "
                             f"{ms(s['p99'] * 1e3)} | {ms(s['mean'] * 1e3)} | {ms(s['min'] * 1e3)} | "
                             f"{ms(s['max'] * 1e3)} | {cpu} |")
        fails = ", ".join(f"{k} {lat[k]['failures']}" for k in ("socketio", "sse", "sse_uvloop") if k in lat)
        lines += ["", f"Failed or inexact answers: {fails}. Foreign load during the section: "
                      f"{lat['load']['foreign_cores']:.2f} cores.", ""]

    # 2. throughput
    if tp:
        t = results["throughput"]
        lines += ["## 2. Relay throughput", "",
                  f"One client, one stream of {t['tokens']:,} small tokens (`t0 `, `t1 `, ...) with no delay, read with "
                  "the lean client of `bench/common.py`; tokens per second from sending the request to the `end` "
                  f"event. {t['reps']} runs each after a warm-up, contenders interleaved. The ceiling is a bare "
                  "sse-starlette endpoint (Starlette, the gateway's `EventSourceResponse` settings) in its own uvicorn "
                  "process (uvloop, httptools), yielding the same frames, encoded by `flowise_sse.sse.encode`, from "
                  "memory. CPU columns are per token (medians), from /proc/<pid>/stat. The ceiling writes one frame "
                  "per send and is sensitive to how fast the client drains it (its CPU per token moves between runs "
                  "with that); the gateway joins the frames that pile up into one write.", "",
                  "| contender | median tok/s | best | worst | of ceiling (medians) | of ceiling (bests) | server µs/token |"
                  " upstream µs/token | client µs/token | exact |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for k, v in tp.items():
            up = v["upstream_us_per_token"]
            lines.append(f"| {k} | {v['median']:,.0f} | {v['best']:,.0f} | {v['worst']:,.0f} | "
                         f"{100 * v['of_ceiling']:.0f}% | {100 * v['best_of_ceiling_best']:.0f}% | "
                         f"{v['sut_us_per_token']:.1f} | "
                         f"{'-' if up is None or (isinstance(up, float) and math.isnan(up)) else f'{up:.1f}'} | "
                         f"{v['client_us_per_token']:.1f} | {'yes' if v['all_ok'] else 'NO'} |")
        sd = t.get("socketio_direct")
        if sd:
            lines += ["", "The socket.io emulator read directly by a python-socketio client (no gateway): " +
                      (f"{sd['rate']:,.0f} tok/s ({sd['tokens']:,} tokens in {sd['seconds']:.2f} s). The socket.io "
                       "upstream (python-socketio server and client) is the limit of the socket.io row, not the "
                       "ceiling." if "rate" in sd else f"failed: {sd.get('error')}")]
        gs = next((v for k, v in tp.items() if "socket.io" in k), None)
        if gs and gs["min_tokens"] < t["tokens"]:
            lines += ["", f"Over socket.io the gateway delivered as few as {gs['min_tokens']:,} `token` events for "
                          f"{t['tokens']:,} tokens: the socket frames fell behind Flowise's HTTP answer by more than "
                          "the late-frame grace (`FLOWISE_SSE_SOCKETIO_LATE_FRAMES`, 50 ms), so the rest of the "
                          "answer was sent as one reconciling token. The text stayed exact; the rate counts all "
                          "tokens."]
        lines += ["", f"Foreign load during the section: {t['load']['foreign_cores']:.2f} cores.", ""]

    # 3. concurrency
    if conc:
        lines += ["## 3. Concurrency", "",
                  f"N streams at once on one gateway process (restarted for each row), each {cfg.conc_tokens} tokens "
                  f"paced {cfg.conc_delay * 1000:.0f} ms apart by the upstream ({cfg.conc_tokens * cfg.conc_delay:g} s), "
                  f"opened evenly at {cfg.ramp_rate:g} streams/s (at least over 1 s) by `bench/loadgen.py` worker "
                  f"processes of up to {cfg.streams_per_worker} streams each, using the lean client. That opening "
                  f"rate is below what the gateway can set up on an otherwise idle core{setup_rate(results)}, so the "
                  "rows mostly measure relaying N streams rather than a queue of stream starts; the answers are long "
                  "enough for all N to be open together for a while (`peak open`, `steady`). **Exact**: the "
                  "joined tokens equal the expected text and the stream ended with `end`. **Added delay**: every "
                  "inter-token gap at the client minus the 50 ms pacing, over the whole run (ramp included); flowise-"
                  "lite keeps an absolute schedule, so a late token shows as one long gap then a short one (hence "
                  "negative values). **Steady**: the same over the window when every stream was open and none was "
                  "being set up (from the last stream's first token to the first stream's end; none when the "
                  "gateway fell so far behind that the last streams started after the first ones ended). **Late**: "
                  "each token's arrival against the upstream's schedule (token k due at start + k x 50 ms, the start "
                  "being the one that puts the stream's most punctual token exactly on time): this one accumulates, "
                  "so a gateway that falls behind shows here while its gaps can look fine. "
                  f"**Answer**: first to last token of each stream, nominally {(cfg.conc_tokens - 1) * cfg.conc_delay:.2f}"
                  " s. **Peak open / flowing**: most streams at once between request and end / between first token "
                  "and end; when flowing stays well under N, the gateway queued the stream starts (see `first "
                  "token`) and the delay columns describe fewer streams than N. **Memory**: gateway "
                  "VmRSS peak minus its idle value after warm-up, divided by N (finished streams stay in memory for "
                  "resume, `FLOWISE_SSE_STREAM_RETENTION`). **CPU**: cores used over the run window (1.0 = one core); "
                  "µs/token is the gateway's CPU over the run divided by the tokens relayed (stream set-up included).",
                  "",
                  "| upstream | gateway | streams | peak open / flowing | exact | added p50 / p99 / max ms | steady p50 / p99 ms "
                  "(window) | late p50 / p99 / max ms | answer p50 / p99 s | first token p50 / p99 ms | RSS idle -> "
                  "peak MB | KB/stream | gateway CPU (µs/token) | upstream CPU | client CPU (workers) | notes |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in conc:
            lines.append(
                f"| {r['transport']} | {r['variant']} | {r['streams']:,} | {r['peak_concurrent']:,} / "
                f"{r['peak_flowing']:,} | "
                f"{100 * r['exact_share']:.1f}% | {r['added_p50_ms']:.1f} / {r['added_p99_ms']:.1f} / "
                f"{r['added_max_ms']:.0f} | {steady(r)} | {r['late_p50_ms']:.0f} / {r['late_p99_ms']:.0f} / "
                f"{r['late_max_ms']:.0f} | {r['span_p50_s']:.2f} / {r['span_p99_s']:.2f} "
                f"| {r['first_token_p50_ms']:.0f} / {r['first_token_p99_ms']:.0f} | {r['rss_base_mb']:.0f} -> "
                f"{r['rss_peak_mb']:.0f} | {r['kb_per_stream']:.0f} | {r['gateway_cpu']:.0%} "
                f"({r['gateway_us_per_token']:.0f}) | {r['upstream_cpu']:.0%} | {r['client_cpu']:.0%} "
                f"({r['workers']}) | {'; '.join(level_notes(r))} |")
        failed = [r for r in results.get("concurrency", []) if "failed" in r]
        for r in failed:
            lines.append(f"| {r['transport']} | {r['variant']} | {r['streams']:,} | failed: {r['failed']} |")
        if any(r["transport"] == "socketio" for r in conc):
            lines += ["", "The socket.io rows use the package emulator, which sleeps 50 ms between tokens rather than "
                          "keeping an absolute schedule: its own overhead makes its answers slip (a few ms per token "
                          "when idle, more when loaded), and that slip counts in `late` and `answer` there."]
        errs = [(r, e) for r in conc for e in r["errors"].items()]
        if errs:
            lines += ["", "Streams that were not exact (first kinds):", ""]
            lines += [f"- {r['transport']} {r['streams']} ({r['variant']}): {n} x `{e}`" for r, (e, n) in errs]
        lines.append("")

    # 4. profiles
    profs = results.get("profiles", [])
    if profs:
        lines += ["## 4. Where the gateway's CPU goes (py-spy)", "",
                  f"`py-spy record --full-filenames --rate {cfg.profile_rate}` ({cfg.conc_profile_rate} Hz for the "
                  "concurrency runs) attached to the gateway process as shipped, on the gateway's core, during "
                  "separate runs: the figures above were taken without it. py-spy pauses the process for each sample; "
                  "under concurrency that costs more (it stops every thread, and the gateway grows a threadpool), so "
                  "the profiled concurrency runs are somewhat slower than the measured ones (their figures are given). "
                  "Shares are of the busy samples: py-spy's idle ones and samples waiting in epoll or on a threadpool "
                  "queue are left out. µs per token (or request) is a share times the gateway's CPU per token in "
                  "that run (from /proc). Native code (orjson, httptools) is charged to the Python line that called "
                  "it; h11 and the stdlib event loop are pure Python and show as themselves. Raw stacks: "
                  "`profiles/*.txt.gz` (collapsed format, gzipped: `zcat x.txt.gz | flamegraph.pl`).", ""]
        for p in profs:
            if p.get("level"):
                r = p["level"]
                sampler = f", py-spy itself {r['sampler_cpu']:.0%} of a core" if r.get("sampler_cpu") is not None else ""
                lines += [f"(Profiled run, py-spy at {cfg.conc_profile_rate} Hz: exact {100 * r['exact_share']:.1f}%, "
                          f"added delay p99 {r['added_p99_ms']:.1f} ms, gateway CPU {r['gateway_cpu']:.0%}{sampler}.)",
                          ""]
            lines += [p["markdown"], ""]
    lines += ["## Files", "", "- `results.json`: every figure above and the raw runs",
              "- `latency.png`: the distributions", "- `profiles/*.txt.gz`: py-spy stacks", ""]
    return "\n".join(lines)


# --- main ---------------------------------------------------------------------------------------

def emulator_cost(cfg: Config, srv: Servers) -> str:
    """The package emulator's and flowise-lite's CPU per paced token, measured with 200 streams."""
    costs = {}
    tokens = 40
    for name in ("emu_sse", "lite"):
        pid = srv.pid(name)
        out = Path(tempfile.mkdtemp(prefix="flowise-sse-bench-")) / "cost.json"
        c0 = cpu_seconds(pid)
        worker = spawn([PYTHON, str(BENCH_DIR / "loadgen.py"), "--port", str(srv.ports[name]), "--target", "flowise",
                        "--streams", "200", "--tokens", str(tokens), "--delay", str(cfg.conc_delay), "--ramp", "0.2",
                        "--out", str(out), "--timeout", "30"], cpus=srv.other_cpus)
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            stop(worker)
        costs[name] = (cpu_seconds(pid) - c0) / (200 * tokens) * 1e6
    srv.clear_emulator("emu_sse")
    return (f"{costs['emu_sse']:.0f} µs of CPU per paced token against flowise-lite's {costs['lite']:.0f} µs (200 "
            f"streams x {tokens} tokens at 20 tokens/s, set-up included): at 2,000 streams x 20 tokens/s that is "
            f"{costs['emu_sse'] * 40000 / 1e6:.1f} cores against {costs['lite'] * 40000 / 1e6:.1f}, on a machine "
            f"whose other core runs the clients too")


def rounded(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isnan(value) or math.isinf(value) else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def render_only(out: Path) -> int:
    """RESULTS.md again from a finished run (results.json, profiles/*.txt.gz): for a report change
    without measuring again. The plot is not redrawn (results.json keeps only part of the samples)."""
    results = json.loads((out / "results.json").read_text())
    cfg = Config(**results["config"])
    for p in results.get("profiles", []):
        packed = out / "profiles" / (p["file"] + ".gz")
        prof = Profile.load(packed) if packed.exists() else None
        p["markdown"] = report(prof, p["title"], p["us_per_unit"], p["unit"]) if prof else f"#### {p['title']}"
    command = results.get("command", ".venv/bin/python bench/run.py")
    results.setdefault("warnings", []).append(
        "this report was re-rendered after the run from its results.json (`bench/run.py --render-only`), whose "
        "figures are rounded to a few significant digits: a last digit can differ from the run's own printout")
    (out / "RESULTS.md").write_text(render(results, cfg, command))
    print(f"rewrote {out / 'RESULTS.md'} from {out / 'results.json'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, output to a temp dir")
    parser.add_argument("--out", type=Path, help="output directory (default: bench/, or a temp dir with --quick)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--no-whatif", action="store_true", help="skip the gateway-on-uvloop what-if rows")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--wait-idle", type=float, help="wait up to this many seconds for a quiet machine (default 60)")
    parser.add_argument("--only", choices=["latency", "throughput", "concurrency", "profiles"], action="append",
                        help="run only these sections (repeatable)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite RESULTS.md from the results.json and profiles/ of a previous run (no measuring)")
    args = parser.parse_args()
    if args.render_only:
        return render_only(args.out or BENCH_DIR)
    cfg = Config.make(args)
    out = args.out or (Path(tempfile.mkdtemp(prefix="flowise-sse-bench-")) if cfg.quick else BENCH_DIR)
    out.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="flowise-sse-bench-logs-"))
    profdir = out / "profiles"
    sections = set(args.only or ["latency", "throughput", "concurrency", "profiles"])
    command = " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    raise_nofile()
    started = time.monotonic()
    deadline = started + cfg.budget
    warnings: list[str] = []
    if "profiles" in sections and not cfg.profile:
        if PYSPY is None:
            warnings.append("py-spy not found (pip install py-spy): no profiles")
        sections.discard("profiles")
    if "profiles" in sections:
        profdir.mkdir(exist_ok=True)

    srv = Servers(cfg, logdir)
    if srv.other_cpus:
        os.sched_setaffinity(0, srv.other_cpus)
        placement = (f"the system under test (gateway, ceiling) pinned to core {sorted(srv.sut_cpus)[0]}; emulators, "
                     f"clients and py-spy to core(s) {', '.join(map(str, sorted(srv.other_cpus)))}")
    else:
        placement = "no pinning"
    print(f"flowise-sse bench ({'quick' if cfg.quick else 'full'}): output {out}, server logs {logdir}; {placement}")

    bg = background_load()
    waited = time.monotonic()
    while bg["busy_cores"] > 0.25 and time.monotonic() - waited < cfg.wait_idle:
        print(f"  the machine is busy ({bg['busy_cores']:.2f} cores used by other processes): waiting "
              f"(at most {cfg.wait_idle:.0f} s, --wait-idle)")
        time.sleep(5)
        bg = background_load()
    if bg["busy_cores"] > 0.25:
        warnings.append(f"the machine was busy when the run started ({bg['busy_cores']:.2f} cores used by other "
                        "processes): the figures are pessimistic")
    results: dict[str, Any] = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                               "machine": machine_info(), "config": asdict(cfg), "placement": placement,
                               "background": bg, "warnings": warnings, "command": command}
    started = time.monotonic()
    deadline = started + cfg.budget
    try:
        srv.start_emulator("emu_sio", "emulator", "1.6.2")
        srv.start_emulator("emu_sse", "emulator", "3.1.4")
        srv.start_emulator("lite", "lite")
        srv.start("ceiling", [PYTHON, str(BENCH_DIR / "servers.py"), "ceiling", "--port", "{port}"], sut=True)
        srv.start_gateway("gw_sio", "emu_sio")
        srv.start_gateway("gw_sse", "emu_sse")
        results["gateway_loop"] = event_loop_of(srv.pid("gw_sse"))
        print(f"  the gateway runs on: {results['gateway_loop']}")
        if cfg.whatif and results["gateway_loop"].startswith("uvloop"):
            cfg.whatif = False  # nothing to compare: the shipped gateway is on uvloop already
            results["config"]["whatif"] = False
        if cfg.whatif:
            srv.start_gateway("gw_sse_uv", "emu_sse", uvloop=True)
        if "latency" in sections:
            print("1. first-token latency")
            results["latency"] = phase_latency(cfg, srv, time.monotonic() + cfg.budget * 0.2)
            srv.clear_emulator("emu_sio")
            srv.clear_emulator("emu_sse")
        if "throughput" in sections:
            print("2. relay throughput")
            results["throughput"] = phase_throughput(cfg, srv, min(deadline, time.monotonic() + cfg.budget * 0.2))
            srv.clear_emulator("emu_sio")
            srv.clear_emulator("emu_sse")
        if "concurrency" in sections:
            print("3. concurrency")
            results["emulator_cost"] = emulator_cost(cfg, srv)
            print(f"  emulator cost: {results['emulator_cost']}")
            results["concurrency"] = phase_concurrency(cfg, srv, logdir, deadline - cfg.budget * 0.25)
        if "profiles" in sections:
            print("4. profiles (py-spy)")
            profs = phase_profiles(cfg, srv, profdir, logdir, deadline)
            results["profiles"] = [{k: v for k, v in p.items() if k != "level"} for p in profs]
            results["profiled_levels"] = [p["level"] for p in profs if p.get("level")]
            for p, q in zip(results["profiles"], profs):
                if q.get("level"):
                    p["level"] = q["level"]
    finally:
        srv.stop_all()
    results["duration_s"] = time.monotonic() - started
    (out / "RESULTS.md").write_text(render(results, cfg, command))
    plot(results, out / "latency.png")
    slim = json.loads(orjson.dumps(results, default=str))
    for p in slim.get("profiles", []):
        p.pop("markdown", None)
    for r in slim.get("concurrency", []):  # the plot has the full samples; 2,000 points each are kept
        for key in ("added_ms_sample", "late_ms_sample"):
            if r.get(key):
                r[key] = r[key][:: max(1, len(r[key]) // 2000)]
    (out / "results.json").write_text(json.dumps(rounded(slim), indent=1))
    print(f"done in {results['duration_s']:.0f} s: {out / 'RESULTS.md'}, {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
