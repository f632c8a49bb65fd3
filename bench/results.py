"""The figures of a run, one dataclass per section, and their results.json form.

`save` writes results.json in the shape the report has always read (the committed bench/results.json
has it), `load` reads such a file back into these classes (for `run.py --render-only`): the field
names are the JSON keys, and nothing else reads the JSON. A NaN is written as null (orjson) and read
back as NaN where the field is a float; figures are rounded to 6 significant digits on the way out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from harness import Config

AS_SHIPPED = "as shipped"
ON_UVLOOP = "what-if: gateway on uvloop"
DEFAULT_COMMAND = ".venv/bin/python bench/run.py"

OMIT_NONE = {"omit_none": True}  # the key is left out of the JSON when the value is None (not measured)
NOT_SAVED = {"saved": False}  # kept in memory only
KEPT_SAMPLES = 2000  # per concurrency level in results.json: the plot, drawn before saving, has them all


@dataclass
class Load:
    """CPU used on the whole machine during a window, in cores: ours (the benchmark's processes) and
    foreign (anything else, including kernel work charged to no process)."""

    wall: float
    busy_cores: float
    ours_cores: float
    foreign_cores: float
    steal_cores: float


@dataclass
class Machine:
    nproc: int
    affinity: list[int]
    cpu_model: str
    mem_gb: float
    kernel: str
    python: str
    implementation: str
    libs: dict[str, str]
    commit: str
    nofile: int


# --- 1. first-token latency ---------------------------------------------------------------------

@dataclass
class Distribution:
    """Seconds; NaN samples (no first token) left out."""

    n: int
    p50: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float


@dataclass
class LatencyPair:
    """The gateway against a direct client of the same upstream, measured interleaved."""

    gateway: Distribution
    direct: Distribution
    gateway_ms: list[float]
    direct_ms: list[float]
    failures: int
    ratio_p50: float
    ratio_p99: float
    gateway_cpu_ms_per_request: float


@dataclass(kw_only=True)
class LatencyResult:
    socketio: LatencyPair
    sse: LatencyPair
    # The what-if: the gateway on uvloop, SSE upstream.
    sse_uvloop: LatencyPair | None = field(default=None, metadata=OMIT_NONE)
    load: Load


# --- 2. relay throughput ------------------------------------------------------------------------

@dataclass
class ThroughputRun:
    name: str
    ok: bool
    tokens: int
    chars: int
    seconds: float
    rate: float
    first_token_ms: float
    sut_us_per_token: float
    upstream_us_per_token: float | None  # None: no separate upstream (the ceiling, an emulator read directly)
    client_us_per_token: float
    error: str | None


@dataclass
class Contender:
    """One contender's runs and their medians (rates in tokens/s)."""

    runs: list[ThroughputRun]
    median: float
    best: float
    worst: float
    all_ok: bool
    sut_us_per_token: float
    upstream_us_per_token: float  # NaN without an upstream
    client_us_per_token: float
    min_tokens: int
    of_ceiling: float = math.nan
    best_of_ceiling_best: float = math.nan


@dataclass
class DirectRate:
    """A socket.io upstream read directly by python-socketio: either the figures or the error."""

    tokens: int | None = field(default=None, metadata=OMIT_NONE)
    seconds: float | None = field(default=None, metadata=OMIT_NONE)
    rate: float | None = field(default=None, metadata=OMIT_NONE)
    error: str | None = field(default=None, metadata=OMIT_NONE)
    upstream_us_per_token: float | None = field(default=None, metadata=OMIT_NONE)  # the server's CPU


@dataclass
class ThroughputResult:
    tokens: int
    reps: int
    contenders: dict[str, Contender]  # by name, in the order run, the ceiling first
    socketio_direct: DirectRate | None  # the package emulator 1.6.2; None: skipped (time budget)
    load: Load
    socketio_lite_direct: DirectRate | None = field(default=None, metadata=OMIT_NONE)  # flowise-lite-sio

    # The roles are read from the names, as in every results.json so far.
    @property
    def ceiling(self) -> Contender | None:
        return next((c for name, c in self.contenders.items() if name.startswith("ceiling")), None)

    @property
    def gateways(self) -> list[tuple[str, Contender]]:
        """The gateway as shipped, one row per upstream."""
        return [(name, c) for name, c in self.contenders.items() if name.startswith("gateway")]

    @property
    def whatif(self) -> Contender | None:
        return next((c for name, c in self.contenders.items() if name.startswith("what-if")), None)

    @property
    def socketio_gateway(self) -> Contender | None:
        return next((c for name, c in self.contenders.items() if "socket.io" in name), None)


# --- 3. concurrency -----------------------------------------------------------------------------

@dataclass(kw_only=True)
class ConcurrencyLevel:
    """N paced streams on one gateway process. Times in ms unless named _s; CPU in cores over the window."""

    transport: str
    variant: str  # AS_SHIPPED or ON_UVLOOP
    streams: int
    ramp_s: float
    tokens: int
    finished: int
    exact: int
    exact_share: float
    peak_concurrent: int  # most streams between request and end at once
    peak_flowing: int  # most streams between first token and end at once
    added_p50_ms: float  # inter-token gap at the client minus the pacing
    added_p99_ms: float
    added_max_ms: float
    steady_s: float  # the window when every stream was open and none being set up
    steady_gaps: int
    steady_p50_ms: float
    steady_p99_ms: float
    first_token_p50_ms: float
    first_token_p99_ms: float
    late_p50_ms: float  # arrival against the upstream's schedule
    late_p99_ms: float
    late_max_ms: float
    span_nominal_s: float
    span_p50_s: float
    span_p99_s: float
    sampler_cpu: float | None  # py-spy's CPU, in a profiled run
    rss_base_mb: float
    rss_peak_mb: float
    kb_per_stream: float
    gateway_cpu: float
    upstream_cpu: float
    client_cpu: float
    workers: int
    window_s: float
    gateway_us_per_token: float
    load: Load
    errors: dict[str, int]  # the commonest kinds of inexact stream
    added_ms_sample: list[float] | None = field(default=None, metadata=OMIT_NONE)  # None in a profiled run
    late_ms_sample: list[float] | None = field(default=None, metadata=OMIT_NONE)
    # flowise-lite-sio's own timers against its schedule (its /__lite/stats), apart from the gateway's delay
    upstream_late_p99_ms: float | None = field(default=None, metadata=OMIT_NONE)
    upstream_late_max_ms: float | None = field(default=None, metadata=OMIT_NONE)

    @property
    def whatif(self) -> bool:
        return self.variant != AS_SHIPPED

    @property
    def reached(self) -> bool:
        """Did (nearly) all N streams flow at once? A saturated gateway can instead queue the stream
        starts, so that fewer streams flow together and their gaps look fine."""
        return self.peak_flowing >= 0.95 * self.streams


@dataclass
class FailedLevel:
    transport: str
    streams: int
    failed: str  # the exception
    variant: str

    @property
    def whatif(self) -> bool:
        return self.variant != AS_SHIPPED


# --- 6. workers (`serve --workers N`) -----------------------------------------------------------

WORKERS_P99_MS = 50.0  # a level is carried when exact, all flowing, and added delay p99 within this


@dataclass(kw_only=True)
class WorkersRun:
    workers: int
    levels: list[ConcurrencyLevel | FailedLevel]  # ascending, up to the first one not carried
    carried: int  # the most streams carried (0: not even the first level)

    @property
    def limit_found(self) -> bool:
        """A level was not carried: `carried` is the limit (to the step), not a lower bound."""
        return bool(self.levels) and not carried(self.levels[-1])


@dataclass(kw_only=True)
class WorkersResult:
    placement: str
    runs: list[WorkersRun]

    def carried(self, workers: int) -> int:
        return next((r.carried for r in self.runs if r.workers == workers), 0)

    @property
    def limits_found(self) -> bool:
        return bool(self.runs) and all(r.limit_found for r in self.runs)

    def carried_text(self, workers: int) -> str:
        run = next((r for r in self.runs if r.workers == workers), None)
        return "-" if run is None else f"{run.carried:,}" if run.limit_found else f">= {run.carried:,}"

    @property
    def scaling(self) -> float:
        one = self.carried(1)
        return self.carried(2) / one if one else math.nan


def carried(r: ConcurrencyLevel | FailedLevel) -> bool:
    return (isinstance(r, ConcurrencyLevel) and r.exact_share == 1.0 and r.reached
            and r.added_p99_ms <= WORKERS_P99_MS)


# --- 4. profiles --------------------------------------------------------------------------------

@dataclass(kw_only=True)
class ProfileRun:
    title: str
    file: str  # under profiles/, gzipped
    samples: int
    us_per_unit: float  # the gateway's CPU per unit of work in that run
    unit: str  # "token" or "request"
    # A concurrency profile's run, with its own figures (py-spy slows it down).
    level: ConcurrencyLevel | None = field(default=None, metadata=OMIT_NONE)
    markdown: str = field(default="", metadata=NOT_SAVED)  # rendered from the stacks


# --- 5. first token against a real Flowise ------------------------------------------------------

@dataclass(kw_only=True)
class RealFlowiseResult:
    """The gateway against a direct client of a real Flowise (3.1.4, SSE) whose chat model is the
    e2e suite's mock LLM answering one token every `token_delay_ms`, measured interleaved."""

    flowise_version: str
    token_delay_ms: float
    answer_tokens: int  # tokens per answer (the mock's reply to each question)
    warmup: int  # pairs before the measured ones
    # Seconds to the first non-empty token; its gateway_cpu_ms_per_request is the gateway's CPU over
    # the measured window, less its idle CPU over as long, divided by the gateway requests in it.
    first_token: LatencyPair
    answer_gateway: Distribution  # seconds from sending the request to the `end` event
    answer_direct: Distribution
    answer_ratio_p50: float
    answer_ratio_p99: float
    gateway_failures: int
    direct_failures: int
    errors: dict[str, int]  # the kinds of failed or inexact answers, "gateway: ..." / "direct: ..."
    gateway_cpu_gross_ms_per_request: float  # the same, idle CPU included
    # Per gateway request, idle CPU out: from sending it to its first token (the set-up, and the
    # figure for the CPU-per-request target), and from there to `end`, per token relayed.
    gateway_cpu_first_token_ms: float
    gateway_cpu_relay_us_per_token: float
    gateway_idle_ms_per_s: float  # the gateway's CPU while idle, just before the measured window
    flowise_cpu_ms_per_request: float  # Flowise's (node, every thread) per prediction, both contenders'
    llm_cpu_ms_per_request: float  # the mock LLM's per prediction
    flowise_start_s: float  # process start until it answered HTTP
    placement: str
    gateway_loop: str
    load: Load


# --- the run ------------------------------------------------------------------------------------

@dataclass(kw_only=True)
class Results:
    date: str
    machine: Machine
    config: Config
    placement: str
    background: Load  # just before the run
    warnings: list[str]
    command: str = DEFAULT_COMMAND
    gateway_loop: str = "?"
    # A section not run is None, and absent from results.json.
    latency: LatencyResult | None = field(default=None, metadata=OMIT_NONE)
    throughput: ThroughputResult | None = field(default=None, metadata=OMIT_NONE)
    emulator_cost: str | None = field(default=None, metadata=OMIT_NONE)
    concurrency: list[ConcurrencyLevel | FailedLevel] | None = field(default=None, metadata=OMIT_NONE)
    profiles: list[ProfileRun] | None = field(default=None, metadata=OMIT_NONE)
    real_flowise: RealFlowiseResult | None = field(default=None, metadata=OMIT_NONE)
    workers: WorkersResult | None = field(default=None, metadata=OMIT_NONE)
    duration_s: float = math.nan

    @property
    def has_whatif(self) -> bool:
        return bool(self.latency and self.latency.sse_uvloop) or any(r.whatif for r in self.concurrency or [])


# --- results.json -------------------------------------------------------------------------------

def save(results: Results, path: Path) -> None:
    if results.concurrency:
        results = dataclasses.replace(results, concurrency=[_thinned(r) for r in results.concurrency])
    if results.workers:
        results = dataclasses.replace(results, workers=dataclasses.replace(results.workers, runs=[
            dataclasses.replace(run, levels=[_thinned(r) for r in run.levels]) for run in results.workers.runs]))
    data = _encode(results)
    if results.profiles is not None:  # the profiled runs' figures are listed once more, together
        duration = data.pop("duration_s")
        data["profiled_levels"] = [_encode(p.level) for p in results.profiles if p.level]
        data["duration_s"] = duration
    path.write_text(json.dumps(_rounded(json.loads(orjson.dumps(data, default=str))), indent=1))


def load(path: Path) -> Results:
    return _decode(Results, json.loads(path.read_text()))


def _thinned(r: ConcurrencyLevel | FailedLevel) -> ConcurrencyLevel | FailedLevel:
    if isinstance(r, FailedLevel):
        return r
    return dataclasses.replace(r, added_ms_sample=_thin(r.added_ms_sample), late_ms_sample=_thin(r.late_ms_sample))


def _thin(values: list[float] | None) -> list[float] | None:
    return None if values is None else values[:: max(1, len(values) // KEPT_SAMPLES)]


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.metadata.get("saved", True)
                and not (f.metadata.get("omit_none") and getattr(value, f.name) is None)}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(kind: Any, value: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(kind) if a is not type(None)]
        if value is None:
            return None
        if len(options) == 1:
            return _decode(options[0], value)
        for option in options:  # a union of dataclasses: the first whose required fields are all there
            required = {f.name for f in dataclasses.fields(option)
                        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
            if required <= value.keys():
                return _decode(option, value)
        raise ValueError(f"none of {options} fits {sorted(value)}")
    if origin is list:
        return [_decode(typing.get_args(kind)[0], v) for v in value]
    if origin is dict:
        return {k: _decode(typing.get_args(kind)[1], v) for k, v in value.items()}
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        return kind(**{f.name: _decode(hints[f.name], value[f.name]) for f in dataclasses.fields(kind)
                       if f.name in value})
    if kind is float:
        return math.nan if value is None else float(value)
    return value


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isnan(value) or math.isinf(value) else float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value
