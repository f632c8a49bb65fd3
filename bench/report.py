"""The run's outputs from its Results: RESULTS.md (summary against the targets, then each section),
latency.png (the distributions), and RESULTS.md again from a saved results.json (--render-only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from common import percentile
from concurrency import steady_text
from hotspots import Profile, components
from latency import LATENCY_TOKENS
from profiles import with_markdown
from results import ConcurrencyLevel, FailedLevel, LatencyPair, RealFlowiseResult, Results, carried, load


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def ms(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.2f}"


def setup_rate(results: Results) -> str:
    cpu = results.latency.sse.gateway_cpu_ms_per_request if results.latency else None
    return f" (section 1: {cpu:.1f} ms of CPU per request, so at most ~{1000 / cpu:.0f} streams/s on one core)" if cpu else ""


def level_notes(r: ConcurrencyLevel, cores: int = 1) -> list[str]:
    """`cores`: the gateway's processes (its CPU is bound at that many cores)."""
    notes = []
    if not r.reached:
        notes.append(f"**stream starts queued**: at most {r.peak_flowing:,} of {r.streams:,} streams flowed at "
                     f"once (first token p99 {r.first_token_p99_ms / 1000:.1f} s)")
    if r.gateway_cpu >= 0.9 * cores:
        notes.append("gateway CPU-bound (one core)" if cores == 1 else f"gateway CPU-bound ({cores} cores)")
    if r.upstream_cpu >= 0.9:
        notes.append("upstream emulator saturated: the row measures it as much as the gateway")
    if r.upstream_late_p99_ms is not None:
        notes.append(f"the upstream's own timers late p99 {r.upstream_late_p99_ms:.1f} / max "
                     f"{r.upstream_late_max_ms:.1f} ms (included in `late`)")
    if r.client_cpu / r.workers >= 0.9:
        notes.append("client saturated")
    if r.load.foreign_cores >= 0.3:
        notes.append(f"{r.load.foreign_cores:.2f} cores of other CPU work on the machine")
    return notes


def level_figures(r: ConcurrencyLevel) -> str:
    """A summary row's result cell."""
    return (f"exact **{100 * r.exact_share:.1f}%**; added delay p50 {r.added_p50_ms:.1f} / p99 "
            f"**{r.added_p99_ms:.1f} ms**; **{r.kb_per_stream:.0f} KB/stream**; answers of "
            f"{r.span_nominal_s:.2f} s took p50 {r.span_p50_s:.2f} / p99 {r.span_p99_s:.2f} s; first "
            f"token p50 {r.first_token_p50_ms / 1000:.2f} / p99 {r.first_token_p99_ms / 1000:.2f} s; "
            f"**{r.peak_flowing:,} flowing at once**; gateway CPU {r.gateway_cpu:.0%}, "
            f"**{r.gateway_us_per_token:.0f} µs/token**")


def socketio_direct_lines(t: Any) -> list[str]:
    """Section 2: the socket.io upstreams read directly, to show which one limits the socket.io row."""
    rows = [(t.socketio_lite_direct, "flowise-lite-sio (Node, `socket.io` npm server): the socket.io row's upstream"),
            (t.socketio_direct, "the package emulator 1.6.2 (python-socketio server), for context")]
    rows = [(d, label) for d, label in rows if d]
    if not rows:
        return []
    lines = ["", "The socket.io upstreams read directly by a python-socketio client (websocket transport, no "
                 f"gateway; one stream of {t.tokens:,} tokens, tokens per second from the POST to the last token). "
                 "The client (python-socketio, the gateway's own socket.io client) is as much a limit here as the "
                 "server, so the server's CPU per token is given too: one core's worth of it is the server's own "
                 "capacity." + (
                     " With no token delay, flowise-lite-sio sends its HTTP answer once an Engine.IO ping sent "
                     "after `end` has its pong (the one frame real Flowise would not send): a fast stream is written "
                     "far ahead of its reader, and an earlier answer would let the gateway make up the unread rest "
                     "from the answer's text after its 50 ms grace, timing that instead of the relay."
                     if t.socketio_lite_direct else ""), "",
             "| upstream read directly | tok/s | server µs/token | server capacity on one core, tok/s |",
             "|---|---:|---:|---:|"]
    for d, label in rows:
        if d.rate is None:
            lines.append(f"| {label} | failed: {d.error} | | |")
            continue
        cpu = d.upstream_us_per_token
        lines.append(f"| {label} | {d.rate:,.0f} | {'-' if cpu is None else f'{cpu:.1f}'} | "
                     f"{'-' if not cpu else f'{1e6 / cpu:,.0f}'} |")
    return lines


def ratio_figures(r: LatencyPair) -> str:
    g, d = r.gateway, r.direct
    return (f"p50 {ms(g.p50 * 1e3)} / {ms(d.p50 * 1e3)} ms = **{r.ratio_p50:.2f}x**; p99 {ms(g.p99 * 1e3)} / "
            f"{ms(d.p99 * 1e3)} ms = **{r.ratio_p99:.2f}x**")


def level_summary(r: ConcurrencyLevel | FailedLevel, row: str, us_target: float) -> str:
    """One concurrency level's summary row; at 1,000 streams (the target level) with its verdicts."""
    if isinstance(r, FailedLevel):
        return f"| {row} | {r.transport} upstream, {r.streams:,} streams | failed: {r.failed} | | FAIL |"
    head = f"| {row} | {r.transport} upstream, {r.streams:,} streams x 20 tok/s | {level_figures(r)} | "
    if r.streams != 1000:
        return head + "(1,000 is the target level) | - |"
    verdicts = [f"CPU {verdict(r.gateway_us_per_token <= us_target)}", f"exact {verdict(r.exact_share == 1.0)}",
                f"all flowing {verdict(r.reached)}", f"p99 {verdict(r.added_p99_ms <= 50 and r.reached)}",
                f"memory {verdict(r.kb_per_stream <= 100)}"]
    return head + (f"<= {us_target:g} µs/token, 100% exact, all 1,000 flowing at once, p99 <= 50 ms, <= 100 KB | "
                   + ", ".join(verdicts) + " |")


def real_summary(rf: RealFlowiseResult) -> list[str]:
    """Section 5's summary rows: the first-token ratio and the gateway's CPU per request."""
    r, n = rf.first_token, rf.first_token.gateway.n
    exact = f"exact: gateway {n - rf.gateway_failures}/{n}, direct {n - rf.direct_failures}/{n}"
    upstream = f"a real Flowise {rf.flowise_version} (mock LLM, {rf.token_delay_ms:g} ms/token)"
    return [
        f"| 2 | first token: gateway / direct httpx SSE client, {upstream} | p50 {ms(r.gateway.p50 * 1e3)} / "
        f"{ms(r.direct.p50 * 1e3)} ms = **{r.ratio_p50:.3f}x**; p99 {ms(r.gateway.p99 * 1e3)} / "
        f"{ms(r.direct.p99 * 1e3)} ms = **{r.ratio_p99:.3f}x** (n={n}; {exact}) | <= 1.03x | "
        f"p50 {verdict(r.ratio_p50 <= 1.03)}, p99 {verdict(r.ratio_p99 <= 1.03)} |",
        f"| 2 | gateway CPU per request up to its first token, {upstream} | "
        f"**{rf.gateway_cpu_first_token_ms:.2f} ms** (the whole {rf.answer_tokens}-token answer: "
        f"{r.gateway_cpu_ms_per_request:.2f} ms, {rf.gateway_cpu_relay_us_per_token:.0f} µs per token after the "
        f"first; idle CPU taken out) | <= 0.5 ms | {verdict(rf.gateway_cpu_first_token_ms <= 0.5)} |",
    ]


def real_section(rf: RealFlowiseResult) -> list[str]:
    r = rf.first_token
    lines = [f"## 5. First token against a real Flowise {rf.flowise_version}", "",
             f"A real Flowise {rf.flowise_version} (node), installed by `tests/e2e/install_flowise.sh` into the e2e "
             "suite's cache and started and set up by its harness (`tests/e2e/flowise_harness.py`: first user, API "
             "key, chatflows built from the server's own node definitions), with a fresh database; the chatflow is "
             "its streaming conversation chain (ChatOpenAI + buffer memory). The chat model is the e2e mock LLM "
             f"(`tests/e2e/mock_llm.py`, its own process: `bench/servers.py mock-llm`), which streams its reply one "
             f"word per chunk, {rf.token_delay_ms:g} ms before each (the first included): each answer is "
             f"{rf.answer_tokens} tokens. The gateway as shipped sits in front (`FLOWISE_URL`, `FLOWISE_API_KEY`, "
             f"transport detected). Sequential requests, interleaved in pairs that alternate which goes first "
             f"(gateway then direct, direct then gateway, ...: whatever Flowise still does after an answer delays "
             f"both alike) after {rf.warmup} warm-up pairs; each question is distinct (it carries the request's "
             "number) and so is the mock's reply to it. **Gateway**: `POST /v1/chatflows/{id}/stream` `{question}`; **direct**: Flowise's "
             "own `POST /api/v1/prediction/{id}` `{question, streaming: true}`; each one persistent keep-alive "
             "`httpx.AsyncClient`. **First token**: sending the request to the first non-empty `token` event at the "
             "client; **answer**: to the `end` event. **Exact**: the joined tokens (and the gateway's `end` text) "
             "equal the mock's reply to that question, and the stream ended with `end`. **CPU**: each process's "
             "POSIX CPU clock (nanoseconds, all threads) over the measured window, divided by the requests; the "
             "gateway's is also read by the client as each gateway request is sent, at its first token and at its "
             "`end`, which splits it into the set-up up to the first token (what the CPU-per-request target is "
             "about, as in section 1) and the relay of the remaining tokens, each arriving alone. The gateway's "
             f"idle CPU, measured for 2 s just before ({rf.gateway_idle_ms_per_s:.1f} ms/s: uvicorn's 0.1 s tick "
             "and the like), is taken out of each figure over its own duration. Placement: "
             f"{rf.placement}. The gateway ran on {rf.gateway_loop}.", "",
             "| contender | n | first token p50 ms | p90 ms | p99 ms | mean ms | min ms | max ms | answer p50 ms | "
             "answer p99 ms | failed or inexact |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for who, s, a, failed in (("gateway", r.gateway, rf.answer_gateway, rf.gateway_failures),
                              ("direct", r.direct, rf.answer_direct, rf.direct_failures)):
        lines.append(f"| {who} | {s.n} | {ms(s.p50 * 1e3)} | {ms(s.p90 * 1e3)} | {ms(s.p99 * 1e3)} | "
                     f"{ms(s.mean * 1e3)} | {ms(s.min * 1e3)} | {ms(s.max * 1e3)} | {ms(a.p50 * 1e3)} | "
                     f"{ms(a.p99 * 1e3)} | {failed} |")
    lines.append(f"| gateway / direct | | **{r.ratio_p50:.3f}x** | {r.gateway.p90 / r.direct.p90:.3f}x | "
                 f"**{r.ratio_p99:.3f}x** | {r.gateway.mean / r.direct.mean:.3f}x | | | {rf.answer_ratio_p50:.3f}x | "
                 f"{rf.answer_ratio_p99:.3f}x | |")
    lines += ["", f"The gateway adds {(r.gateway.p50 - r.direct.p50) * 1e3:.2f} ms to the median first token and "
                  f"{(rf.answer_gateway.p50 - rf.answer_direct.p50) * 1e3:.2f} ms to the median answer. CPU per "
                  f"request: the gateway **{rf.gateway_cpu_first_token_ms:.2f} ms up to the first token**, then "
                  f"{rf.gateway_cpu_relay_us_per_token:.0f} µs per further token, "
                  f"{r.gateway_cpu_ms_per_request:.2f} ms for the whole answer "
                  f"({rf.gateway_cpu_gross_ms_per_request:.2f} ms with its idle CPU); Flowise "
                  f"{rf.flowise_cpu_ms_per_request:.1f} ms per prediction, the mock LLM "
                  f"{rf.llm_cpu_ms_per_request:.1f} ms. Flowise answered HTTP {rf.flowise_start_s:.1f} s after it was "
                  f"started. Foreign load during the section: {rf.load.foreign_cores:.2f} cores (ours "
                  f"{rf.load.ours_cores:.2f})."]
    if rf.errors:
        lines += ["", "Failed or inexact answers, by kind: " + ", ".join(f"{n} x `{e}`" for e, n in rf.errors.items())
                  + "."]
    return lines + [""]


BASELINE = Path(__file__).resolve().parent / "baseline"


def before_after(results: Results, out: Path) -> list[str]:
    """The figures and profiles of the last full run before issue 14's work (bench/baseline/:
    its results.json and py-spy stacks, kept as they were) next to this run's."""
    if not (BASELINE / "results.json").exists():
        return []
    old = load(BASELINE / "results.json")

    def level(res: Results, transport: str) -> ConcurrencyLevel | None:
        return next((r for r in res.concurrency or [] if isinstance(r, ConcurrencyLevel) and not r.whatif
                     and r.transport == transport and r.streams == 1000), None)

    def tput(res: Results, socketio: bool) -> Any:
        return next((c for k, c in (res.throughput.gateways if res.throughput else [])
                     if ("socket.io" in k) == socketio), None)

    rows: list[tuple[str, str, str, str]] = []
    for transport, us in (("sse", 35), ("socketio", 60)):
        b, a = level(old, transport), level(results, transport)
        if b and a:
            rows += [
                (f"{transport}, 1,000 streams x 20 tok/s: gateway CPU per relayed token", f"{b.gateway_us_per_token:.0f} µs",
                 f"{a.gateway_us_per_token:.0f} µs", f"<= {us} µs"),
                (f"{transport}, 1,000 streams: flowing at once / first token p99", f"{b.peak_flowing:,} / "
                 f"{b.first_token_p99_ms / 1000:.1f} s", f"{a.peak_flowing:,} / {a.first_token_p99_ms / 1000:.1f} s",
                 "1,000"),
                (f"{transport}, 1,000 streams: added delay p99", f"{b.added_p99_ms:.1f} ms", f"{a.added_p99_ms:.1f} ms",
                 "<= 50 ms"),
                (f"{transport}, 1,000 streams: memory per stream", f"{b.kb_per_stream:.0f} KB", f"{a.kb_per_stream:.0f} KB",
                 "<= 100 KB")]
    if old.latency and results.latency:
        for name, target in (("sse", "<= 1.5x"), ("socketio", "<= 0.6x")):
            b, a = getattr(old.latency, name), getattr(results.latency, name)
            rows.append((f"first token, {name} upstream: gateway / direct, p50 (p99)",
                         f"{b.ratio_p50:.2f}x ({b.ratio_p99:.2f}x)", f"{a.ratio_p50:.2f}x ({a.ratio_p99:.2f}x)", target))
            rows.append((f"first token, {name} upstream: gateway CPU per request", f"{b.gateway_cpu_ms_per_request:.2f} ms",
                         f"{a.gateway_cpu_ms_per_request:.2f} ms", "<= 0.5 ms" if name == "sse" else "-"))
    for socketio in (False, True):
        b, a = tput(old, socketio), tput(results, socketio)
        if b and a:
            rows.append((f"one fast stream, {'socket.io' if socketio else 'SSE'} upstream: tokens/s (gateway µs/token)",
                         f"{b.median:,.0f} ({b.sut_us_per_token:.1f} µs)", f"{a.median:,.0f} ({a.sut_us_per_token:.1f} µs)",
                         ">= 50% of the ceiling" if socketio else "-"))
    lines = ["## Before and after (issue 14)", "",
             f"Before: the last full run before this work ({old.date}, code at {old.machine.commit}; its "
             "`results.json` and stacks are kept in `bench/baseline/`). After: this run. Same machine kind (2 cores), "
             "same method; the socket.io rows' upstream changed from the package emulator to flowise-lite-sio "
             "(which is not the limit any more: section 2), and the ceiling's figure moves between runs with how fast "
             "the client drains it, so the fast-stream rows compare tokens/s and CPU, not shares.", "",
             "| measure | before | after | target |", "|---|---:|---:|---|"]
    lines += [f"| {m} | {b} | {a} | {t} |" for m, b, a, t in rows]
    # The named spots of each profile, before and after, with the same attribution rules (hotspots.py).
    after = {p.title: p for p in results.profiles or []}
    for p in old.profiles or []:
        q = after.get(p.title)
        before_file, after_file = BASELINE / "profiles" / (p.file + ".gz"), out / "profiles" / (p.file + ".gz")
        if q is None or not before_file.exists() or not after_file.exists():
            continue
        b_prof, a_prof = Profile.load(before_file), Profile.load(after_file)
        b_spots, a_spots = dict(components(b_prof)), dict(components(a_prof))
        lines += ["", f"#### {p.title}: before {p.us_per_unit:.1f} -> after {q.us_per_unit:.1f} µs per {q.unit}", "",
                  f"| spot (py-spy, inclusive) | before µs/{q.unit} | after µs/{q.unit} |", "|---|---:|---:|"]
        for label, _ in components(a_prof):
            bs, as_ = b_spots.get(label, 0.0) * p.us_per_unit, a_spots.get(label, 0.0) * q.us_per_unit
            if bs >= 0.05 * p.us_per_unit or as_ >= 0.05 * q.us_per_unit:
                lines.append(f"| {label.strip()} | {bs:.1f} | {as_:.1f} |")
    return lines + [""]


def holding_back(results: Results, out: Path) -> list[str]:
    """Issue 14's targets that this run misses, each with what its profile says holds it back."""
    files = {p.title: (out / "profiles" / (p.file + ".gz"), p.us_per_unit) for p in results.profiles or []}
    spots = {title: (dict(components(Profile.load(path))), us) for title, (path, us) in files.items() if path.exists()}

    def spot(title_start: str, label_start: str) -> float:
        for title, (found, us) in spots.items():
            if title.startswith(title_start):
                return us * next((v for k, v in found.items() if k.strip().startswith(label_start)), 0.0)
        return math.nan

    conc = "Concurrency, sse upstream"
    first = "First-token path, sse upstream"
    sse = [r for r in results.concurrency or [] if isinstance(r, ConcurrencyLevel) and not r.whatif
           and r.transport == "sse"]
    at_1000 = next((r for r in sse if r.streams == 1000), None)
    level_1000 = (f"1,000 came within {at_1000.added_p99_ms:.0f} ms with {at_1000.peak_flowing:,} flowing at once"
                  if at_1000 else "1,000 was not run")
    memory = (f"{min(r.kb_per_stream for r in sse):.0f}-{max(r.kb_per_stream for r in sse):.0f} KB per stream at "
              f"{', '.join(f'{r.streams:,}' for r in sse)} streams here" if sse else "not measured here")
    first_profile = next((p for p in results.profiles or [] if p.title.startswith(first)), None)
    per_request = first_profile.us_per_unit if first_profile else math.nan
    response, handling, upstream = (spot(first, "sse-starlette"), spot(first, "FastAPI request"),
                                    spot(first, "upstream request"))
    t = results.throughput
    lite = t.socketio_lite_direct if t else None
    lite_rate = f"{lite.rate:,.0f}" if lite and lite.rate else "?"
    return [
        "## What holds the missed targets back", "",
        "- **35 µs of CPU per relayed token (item 1)**: per token the gateway reads one socket, parses, "
        "stores, wakes the reader's task, and writes one socket. From the profile at 1,000 streams: the upstream "
        f"read and framing {spot(conc, 'upstream SSE read'):.0f} µs (aiohttp's C parser, the frame splitter, "
        f"orjson), sse-starlette's send path {spot(conc, 'of which the send path'):.0f} µs (of which uvicorn's "
        f"write {spot(conc, 'of which uvicorn'):.0f} µs, mostly the syscall), the event log "
        f"{spot(conc, 'store'):.0f} µs, the timeouts {spot(conc, '`bounded`'):.0f} µs; the rest is the event loop "
        "and the two task switches per token (the run that reads Flowise, the response that writes). A stream "
        "is two asyncio tasks by design (a run outlives its readers: resume, several readers, Redis), and "
        "sse-starlette writes each frame through the ASGI send chain; below ~60 µs the remaining costs are "
        "that chain and the switches, not the gateway's own code. One core therefore carries several "
        f"hundred streams at 20 tokens/s with p99 <= 50 ms, not 1,000 (section 3: {level_1000}; section 6 has "
        "one worker with Redis on); `--workers` carries more per host.",
        "- **<= 100 KB per live stream (item 1)**: each stream keeps its frames for resume (~110 bytes per "
        f"token) beside its connections, tasks and buffers on both sides: {memory} (the RSS peak over the "
        "streams open at once, so a level where starts queue spreads it over fewer live streams).",
        f"- **0.5 ms of CPU per request, first token <= 1.5x (item 2)**: {per_request:.0f} µs per request in the "
        f"profiled first-token run; sse-starlette's response (its task group of four tasks, headers, sends) "
        f"{response:.0f} µs, FastAPI's request handling (routing, dependencies, body validation) {handling:.0f} µs "
        f"and the upstream request {upstream:.0f} µs make {response + handling + upstream:.0f} µs of it, the rest "
        "being uvicorn's parsing, the run's task and the relay of its events. Against a real Flowise the "
        "gateway's added delay is that set-up CPU plus its cold wake-ups between slow tokens (section 5).",
        "- **socket.io (items 2 and 3)**: python-socketio's client is the floor: read directly by it, "
        f"flowise-lite-sio gives {lite_rate} tokens/s (section 2), about a third of the SSE ceiling; engine.io's "
        "read loop wraps each packet in `asyncio.wait_for` (a task per packet on Python 3.11). A prediction also "
        "needs a socket of its own (Flowise <= 2.0.7 emits to a socket id), so 1,000 streams mean 1,000 "
        "socket.io handshakes.",
        "",
    ]


def render(results: Results, out: Path | None = None) -> str:
    cfg, m, bg = results.config, results.machine, results.background
    lines = [
        "# flowise-sse benchmark results",
        "",
        f"- date: {results.date} (the run took {results.duration_s:.0f} s)",
        f"- command: `{results.command}`" + (" (**quick smoke run: small counts, not the real figures**)"
                                             if cfg.quick else ""),
        f"- machine: {m.nproc} cores ({m.cpu_model}), {m.mem_gb} GB RAM, Linux {m.kernel}, "
        f"{m.implementation} {m.python}, `ulimit -n` {m.nofile}",
        f"- code: flowise-sse {m.libs['flowise-sse']} at {m.commit}",
        "- libraries: " + ", ".join(f"{k} {v}" for k, v in m.libs.items() if k != "flowise-sse"),
        f"- placement: {results.placement}",
        "- the gateway as shipped: `python -m flowise_sse serve --host 127.0.0.1 --port N --log-level warning` with "
        f"`FLOWISE_URL` set, default settings otherwise; its event loop (seen with `py-spy dump`): "
        f"**{results.gateway_loop}**." + (
            " \"What-if\" rows run the same CLI with uvloop installed as the asyncio policy first "
            "(`bench/servers.py gateway-uvloop`), to size that difference; they are not the shipped gateway."
            if results.has_whatif else ""),
        "- upstreams: section 1 and the SSE rows of section 2 use the package's emulator (`flowise_sse.emulator`, "
        "token delay 0) in its own uvicorn process (uvloop, httptools); the SSE concurrency runs use "
        "`bench/servers.py lite`, a lean Flowise 3.1.4 emulation on a raw asyncio protocol with tokens on loop "
        f"timers, because the package emulator costs {results.emulator_cost or '?'}; the socket.io rows of "
        "sections 2 and 3 (and their profiles) use `bench/servers.py lite-sio`, flowise-lite-sio: a lean Flowise "
        "1.6.2 in Node on the `socket.io` 4.x npm server that real Flowise 1.x runs, tokens from timers on an "
        "absolute schedule, because the package emulator's python-socketio server runs out of CPU before the "
        "gateway does (section 2 reads both directly)." + (
            f" Section 5 runs against a real Flowise {results.real_flowise.flowise_version} (node) and the e2e suite's "
            "mock LLM." if results.real_flowise else ""),
        f"- machine load: {bg.busy_cores:.2f} of {m.nproc} cores busy just before the run "
        f"(steal {bg.steal_cores:.2f}). Each section gives the CPU that processes other than "
        "the benchmark's took during it (\"foreign\": other processes, and kernel work charged to no process, such "
        "as softirq threads handling loopback traffic under heavy load); figures taken under foreign load are "
        "pessimistic.",
        "",
    ]
    if results.warnings:
        lines += ["**Warnings:**", ""] + [f"- {w}" for w in results.warnings] + [""]

    lat, t = results.latency, results.throughput
    tp = t.contenders if t else {}
    levels = results.concurrency or []
    conc = [r for r in levels if isinstance(r, ConcurrencyLevel)]
    ceiling = t.ceiling if t else None

    # summary
    # Issue 14's targets, numbered as its items: 1 per-token cost at 1,000 SSE streams, 2 first token,
    # 3 the socket.io relay, 4 workers.
    lines += ["## Summary against the targets (the gateway as shipped)", "",
              "| # | measure | result | target | verdict |", "|---|---|---|---|---|"]
    for r in levels:
        if r.whatif or r.transport != "sse":
            continue
        lines.append(level_summary(r, "1", 35))
    if lat:
        cpu = lat.sse.gateway_cpu_ms_per_request
        lines.append(f"| 2 | gateway CPU per request, SSE upstream (a {len(LATENCY_TOKENS)}-token answer from the "
                     f"zero-latency emulator, whole stream) | **{cpu:.2f} ms** | <= 0.5 ms | {verdict(cpu <= 0.5)} |")
        for r, label, target in (
                (lat.sse, "first token: gateway (SSE upstream) / direct httpx SSE client, zero-latency emulator", 1.5),
                (lat.socketio, "first token: gateway (socket.io upstream) / direct socket.io client connecting per "
                               "request", 0.6)):
            lines.append(f"| 2 | {label} | {ratio_figures(r)} (n={r.gateway.n}) | <= {target:.2f}x | "
                         f"p50 {verdict(r.ratio_p50 <= target)}, p99 {verdict(r.ratio_p99 <= target)} |")
    if results.real_flowise:
        lines += real_summary(results.real_flowise)
    for k, v in (t.gateways if t else []):
        socketio = "socket.io" in k
        lines.append(f"| {'3' if socketio else '-'} | relay throughput, one fast stream, {k} (medians of {t.reps} "
                     f"runs) | {v.median:,.0f} tok/s = **{100 * v.of_ceiling:.0f}%** of the ceiling's "
                     f"{ceiling.median:,.0f} tok/s (best against best: {100 * v.best_of_ceiling_best:.0f}%); "
                     f"{v.sut_us_per_token:.1f} µs of gateway CPU per token | "
                     + (f">= 50% | {verdict(v.of_ceiling >= 0.5)} |" if socketio else "(context) | - |"))
    for r in levels:
        if r.whatif or r.transport == "sse":
            continue
        lines.append(level_summary(r, "3", 60))
    if results.workers:
        w = results.workers
        lines.append(f"| 4 | streams carried at added delay p99 <= 50 ms, `serve --workers 1` -> `--workers 2` (both with "
                     f"Redis; section 6) | {w.carried_text(1)} -> {w.carried_text(2)} = **{w.scaling:.2f}x** | "
                     f">= 1.8x | {verdict(w.scaling >= 1.8) if w.limits_found else 'n/a: a limit was not reached'} |")
    whatif_lat = lat.sse_uvloop if lat else None
    whatif_tp = t.whatif if t else None
    whatif_conc = [r for r in conc if r.whatif]
    if whatif_lat or whatif_tp or whatif_conc:
        lines += ["", "What-if, not the shipped gateway: the same gateway on uvloop (see above):", "",
                  "| # | measure | result |", "|---|---|---|"]
        if whatif_lat:
            lines.append(f"| 1b | first token, gateway on uvloop / direct httpx SSE | {ratio_figures(whatif_lat)} |")
        if whatif_tp:
            lines.append(f"| 2 | relay throughput, gateway on uvloop, SSE upstream | {whatif_tp.median:,.0f} tok/s = "
                         f"**{100 * whatif_tp.of_ceiling:.0f}%** of the ceiling |")
        for r in whatif_conc:
            lines.append(f"| 3 | {r.transport} upstream, {r.streams:,} streams, gateway on uvloop | "
                         f"{level_figures(r)} |")
    lines += ["", "![latency distributions](latency.png)", ""]
    if out is not None:
        lines += before_after(results, out)
        lines += holding_back(results, out)

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
        pairs = [(name, label, r) for name, label, r in (
            ("socketio", "socket.io (1.6.2)", lat.socketio), ("sse", "SSE (3.1.4)", lat.sse),
            ("sse_uvloop", "SSE (3.1.4), what-if: gateway on uvloop", lat.sse_uvloop)) if r]
        for _, label, r in pairs:
            for who, s in (("gateway", r.gateway), ("direct", r.direct)):
                cpu = ms(r.gateway_cpu_ms_per_request) if who == "gateway" else ""
                lines.append(f"| {label} | {who} | {s.n} | {ms(s.p50 * 1e3)} | {ms(s.p90 * 1e3)} | "
                             f"{ms(s.p99 * 1e3)} | {ms(s.mean * 1e3)} | {ms(s.min * 1e3)} | "
                             f"{ms(s.max * 1e3)} | {cpu} |")
        fails = ", ".join(f"{name} {r.failures}" for name, _, r in pairs)
        lines += ["", f"Failed or inexact answers: {fails}. Foreign load during the section: "
                      f"{lat.load.foreign_cores:.2f} cores.", ""]

    # 2. throughput
    if tp:
        lines += ["## 2. Relay throughput", "",
                  f"One client, one stream of {t.tokens:,} small tokens (`t0 `, `t1 `, ...) with no delay, read with "
                  "the lean client of `bench/common.py`; tokens per second from sending the request to the `end` "
                  f"event. {t.reps} runs each after a warm-up, contenders interleaved. The ceiling is a bare "
                  "sse-starlette endpoint (Starlette, the gateway's `EventSourceResponse` settings) in its own uvicorn "
                  "process (uvloop, httptools), yielding the same frames, encoded by "
                  "`flowise_sse.streams.sse_encoder.encode`, from "
                  "memory. CPU columns are per token (medians), from /proc/<pid>/stat. The ceiling writes one frame "
                  "per send and is sensitive to how fast the client drains it (its CPU per token moves between runs "
                  "with that); the gateway joins the frames that pile up into one write.", "",
                  "| contender | median tok/s | best | worst | of ceiling (medians) | of ceiling (bests) | server µs/token |"
                  " upstream µs/token | client µs/token | exact |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
        for k, v in tp.items():
            up = v.upstream_us_per_token
            lines.append(f"| {k} | {v.median:,.0f} | {v.best:,.0f} | {v.worst:,.0f} | "
                         f"{100 * v.of_ceiling:.0f}% | {100 * v.best_of_ceiling_best:.0f}% | "
                         f"{v.sut_us_per_token:.1f} | {'-' if math.isnan(up) else f'{up:.1f}'} | "
                         f"{v.client_us_per_token:.1f} | {'yes' if v.all_ok else 'NO'} |")
        lines += socketio_direct_lines(t)
        gs = t.socketio_gateway
        if gs and gs.min_tokens < t.tokens:
            lines += ["", f"Over socket.io the gateway delivered as few as {gs.min_tokens:,} `token` events for "
                          f"{t.tokens:,} tokens: the socket frames fell behind Flowise's HTTP answer by more than "
                          "the late-frame grace (`FLOWISE_SSE_SOCKETIO_LATE_FRAMES`, 50 ms), so the rest of the "
                          "answer was sent as one reconciling token. The text stayed exact; the rate counts all "
                          "tokens."]
        lines += ["", f"Foreign load during the section: {t.load.foreign_cores:.2f} cores.", ""]

    # 3. concurrency
    if conc:
        lines += ["## 3. Concurrency", "",
                  f"N streams at once on one gateway process (restarted for each row), each {cfg.conc_tokens} tokens "
                  f"paced {cfg.conc_delay * 1000:.0f} ms apart by the upstream ({cfg.conc_tokens * cfg.conc_delay:g} s; "
                  "the request asks for them by count, as `overrideConfig.emulator.count`: a list of them would ride "
                  "in the request and stay with the run, which no real client's question does), "
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
                f"| {r.transport} | {r.variant} | {r.streams:,} | {r.peak_concurrent:,} / {r.peak_flowing:,} | "
                f"{100 * r.exact_share:.1f}% | {r.added_p50_ms:.1f} / {r.added_p99_ms:.1f} / "
                f"{r.added_max_ms:.0f} | {steady_text(r)} | {r.late_p50_ms:.0f} / {r.late_p99_ms:.0f} / "
                f"{r.late_max_ms:.0f} | {r.span_p50_s:.2f} / {r.span_p99_s:.2f} "
                f"| {r.first_token_p50_ms:.0f} / {r.first_token_p99_ms:.0f} | {r.rss_base_mb:.0f} -> "
                f"{r.rss_peak_mb:.0f} | {r.kb_per_stream:.0f} | {r.gateway_cpu:.0%} "
                f"({r.gateway_us_per_token:.0f}) | {r.upstream_cpu:.0%} | {r.client_cpu:.0%} "
                f"({r.workers}) | {'; '.join(level_notes(r))} |")
        for f in levels:
            if isinstance(f, FailedLevel):
                lines.append(f"| {f.transport} | {f.variant} | {f.streams:,} | failed: {f.failed} |")
        if any(r.transport == "socketio" for r in conc):
            lines += ["", "The socket.io rows use flowise-lite-sio (`bench/flowise_lite_sio/server.js`, Node, the "
                          "`socket.io` npm server): like flowise-lite it emits each token from a timer on an absolute "
                          "schedule, so a slip in `late` or `answer` is the gateway's (or the machine's), not an "
                          "accumulated upstream delay. It answers the prediction's HTTP JSON 10 ms after `end`, as "
                          "real 1.6.2 does."]
        errs = [(r, e) for r in conc for e in r.errors.items()]
        if errs:
            lines += ["", "Streams that were not exact (first kinds):", ""]
            lines += [f"- {r.transport} {r.streams} ({r.variant}): {n} x `{e}`" for r, (e, n) in errs]
        lines.append("")

    # 4. profiles
    if results.profiles:
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
        for p in results.profiles:
            if p.level:
                r = p.level
                sampler = f", py-spy itself {r.sampler_cpu:.0%} of a core" if r.sampler_cpu is not None else ""
                lines += [f"(Profiled run, py-spy at {cfg.conc_profile_rate} Hz: exact {100 * r.exact_share:.1f}%, "
                          f"added delay p99 {r.added_p99_ms:.1f} ms, gateway CPU {r.gateway_cpu:.0%}{sampler}.)",
                          ""]
            lines += [p.markdown, ""]
    if results.real_flowise:
        lines += real_section(results.real_flowise)
    if results.workers:
        lines += workers_section(results)
    lines += ["## Files", "", "- `results.json`: every figure above and the raw runs",
              "- `latency.png`: the distributions", "- `profiles/*.txt.gz`: py-spy stacks", ""]
    return "\n".join(lines)


def workers_section(results: Results) -> list[str]:
    w, cfg = results.workers, results.config
    assert w is not None
    lines = ["## 6. Workers: `serve --workers 1` and `--workers 2`", "",
             f"The levels of section 3 (SSE upstream, flowise-lite, {cfg.conc_tokens} tokens paced "
             f"{cfg.conc_delay * 1000:.0f} ms apart per stream) against `serve --workers N` with a redis-server on "
             "loopback for both counts (every token is mirrored to Redis in both), a fresh gateway per level, in "
             f"ascending order ({', '.join(f'{n:,}' for n in cfg.workers_levels)}) until one is not carried. "
             "**Carried**: every stream exact, at least 95% of them flowing at once, added inter-token delay p99 "
             "<= 50 ms over the whole run; the figure is the last level carried, so its resolution is the step "
             f"between levels. Placement: {w.placement}. Gateway CPU and memory are those of the parent and its "
             "workers together.", "",
             f"Streams carried: **{w.carried_text(1)}** with one worker, **{w.carried_text(2)}** with two: "
             f"**{w.scaling:.2f}x** (target >= 1.8x)"
             f"{'' if w.limits_found else '; a count that carried every level tried (>=) has no limit found, so the ratio is not the scaling'}.",
             "",
             "| workers | streams | peak open / flowing | exact | added p50 / p99 / max ms | steady p50 / p99 ms (window) "
             "| first token p50 / p99 ms | RSS idle -> peak MB | gateway CPU (µs/token) | upstream CPU | client CPU | "
             "carried | notes |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for run in w.runs:
        for r in run.levels:
            if isinstance(r, FailedLevel):
                lines.append(f"| {run.workers} | {r.streams:,} | failed: {r.failed} |")
                continue
            lines.append(
                f"| {run.workers} | {r.streams:,} | {r.peak_concurrent:,} / {r.peak_flowing:,} | "
                f"{100 * r.exact_share:.1f}% | {r.added_p50_ms:.1f} / {r.added_p99_ms:.1f} / {r.added_max_ms:.0f} | "
                f"{steady_text(r)} | {r.first_token_p50_ms:.0f} / {r.first_token_p99_ms:.0f} | {r.rss_base_mb:.0f} -> "
                f"{r.rss_peak_mb:.0f} | {r.gateway_cpu:.0%} ({r.gateway_us_per_token:.0f}) | {r.upstream_cpu:.0%} | "
                f"{r.client_cpu:.0%} | {'yes' if carried(r) else 'no'} | {'; '.join(level_notes(r, cores=run.workers))} |")
    return lines + [""]


def rerender(out: Path) -> int:
    """RESULTS.md again from a finished run (results.json, profiles/*.txt.gz): for a report change
    without measuring again. The plot is not redrawn (results.json keeps only part of the samples)."""
    results = load(out / "results.json")
    for p in results.profiles or []:
        packed = out / "profiles" / (p.file + ".gz")
        with_markdown(p, Profile.load(packed) if packed.exists() else None)
    results.warnings.append(
        "this report was re-rendered after the run from its results.json (`bench/run.py --render-only`), whose "
        "figures are rounded to a few significant digits: a last digit can differ from the run's own printout")
    (out / "RESULTS.md").write_text(render(results, out))
    print(f"rewrote {out / 'RESULTS.md'} from {out / 'results.json'}")
    return 0


# --- latency.png --------------------------------------------------------------------------------

def cdf(ax: Any, values: list[float], label: str, **kw: Any) -> None:
    xs = sorted(values)
    if xs:
        ax.plot(xs, [(i + 1) / len(xs) for i in range(len(xs))], label=label, **kw)


def plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(21, 10.5))
    lat = results.latency
    for ax, r, title, direct_label in (
            (axes[0][0], lat.socketio if lat else None, "1a. First token, socket.io upstream (Flowise 1.6.2 emulation)",
             "direct socket.io client (connects per request)"),
            (axes[0][1], lat.sse if lat else None, "1b. First token, SSE upstream (Flowise 3.1.4 emulation)",
             "direct httpx SSE client")):
        if not r:
            ax.set_visible(False)
            continue
        for values, label, kw in ((r.gateway_ms, "gateway", {"color": "C0"}),
                                  (r.direct_ms, direct_label, {"color": "C1"})):
            cdf(ax, values, f"{label}: p50 {percentile(values, 50):.2f} ms, p99 {percentile(values, 99):.2f} ms", **kw)
        w = lat.sse_uvloop if r is lat.sse else None
        if w:
            cdf(ax, w.gateway_ms, f"what-if, gateway on uvloop: p50 {percentile(w.gateway_ms, 50):.2f} ms, "
                                  f"p99 {percentile(w.gateway_ms, 99):.2f} ms", color="C0", linestyle="--")
        ax.set_xscale("log")
        ax.set_xlabel("request sent -> first token event (ms, log scale)")
        ax.set_ylabel("share of requests (CDF)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")

    ax = axes[0][2]
    tp = results.throughput.contenders if results.throughput else {}
    if tp:
        names = list(tp)
        med = [tp[k].median for k in names]
        lo = [tp[k].median - tp[k].worst for k in names]
        hi = [tp[k].best - tp[k].median for k in names]
        ax.barh(range(len(names)), med, xerr=[lo, hi], color=[f"C{i}" for i in range(len(names))])
        ax.set_yticks(range(len(names)), [n.replace(", ", ",\n", 1) for n in names], fontsize=8)
        for i, k in enumerate(names):
            ax.text(tp[k].best, i, f"  {tp[k].median:,.0f}", va="center", fontsize=8)
        ax.set_xlabel(f"tokens/s to one client, {results.throughput.tokens:,} tokens (median; bars: min-max)")
        ax.set_title("2. Relay throughput", fontsize=10)
        ax.invert_yaxis()
        ax.set_xlim(0, max(tp[k].best for k in names) * 1.18)
    else:
        ax.set_visible(False)

    levels = [r for r in results.concurrency or [] if isinstance(r, ConcurrencyLevel) and r.added_ms_sample]
    for ax, samples, xlabel, title, target in (
            (axes[1][0], lambda r: r.added_ms_sample,
             "inter-token gap at the client minus the 50 ms pacing (ms, symlog scale)",
             "3. Added inter-token delay, streams at 20 tokens/s each", True),
            (axes[1][1], lambda r: r.late_ms_sample,
             "token arrival minus its scheduled time, schedule anchored on the stream's most punctual token (ms, "
             "symlog)", "3. Lateness against the upstream's schedule", False)):
        for r in levels:
            values = samples(r)
            p99 = percentile(values, 99)
            cdf(ax, values, f"{r.transport} {r.streams:,} streams{' (what-if: uvloop)' if r.whatif else ''}: "
                            f"p99 {p99:.1f} ms", linestyle="--" if r.whatif else "-")
        if target:
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
        labels = [f"{r.transport} {r.streams:,}{' uvloop' if r.whatif else ''}" for r in levels]
        xs = range(len(levels))
        ax.bar([x - 0.2 for x in xs], [r.kb_per_stream for r in levels], width=0.4, color="C0",
               label="gateway memory, KB per stream (target <= 100 at 1,000)")
        ax.axhline(100, color="C0", linestyle=":", linewidth=1)
        ax2 = ax.twinx()
        ax2.bar([x + 0.2 for x in xs], [100 * r.gateway_cpu for r in levels], width=0.4, color="C3",
                label="gateway CPU, % of one core")
        ax2.set_ylim(0, 130)
        ax.set_ylim(0, max(220.0, 1.3 * max(r.kb_per_stream for r in levels)))
        ax2.set_ylabel("gateway CPU (% of one core)")
        ax.set_xticks(list(xs), labels, fontsize=8, rotation=20)
        ax.set_ylabel("KB per stream (RSS peak - idle) / streams")
        ax.set_title("3. Gateway memory and CPU per concurrency level", fontsize=10)
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="upper left")
    else:
        ax.set_visible(False)
    m = results.machine
    fig.suptitle(f"flowise-sse benchmark, {results.date}, {m.nproc} cores ({m.cpu_model}), "
                 f"Python {m.python}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
