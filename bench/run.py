"""flowise-sse benchmark: the gateway against direct clients, a bare sse-starlette ceiling and itself
(socket.io vs SSE upstream, memory vs each kind of Redis, one worker vs two), side by side in one run.

    .venv/bin/python bench/run.py              # the full run (about 16 minutes): bench/RESULTS.md, results.json,
                                               # py-spy stacks in bench/profiles/ (not in git)
    .venv/bin/python bench/run.py --quick      # first token and throughput only (about a minute): the gateway's
                                               # CPU per request and per token, in bench/out/quick/
    .venv/bin/python bench/run.py --quick --out bench/out/after --baseline bench/out/before/results.json
                                               # the same, with a before/after table against an earlier run
    .venv/bin/python bench/run.py --smoke      # every section at tiny counts: proves the code runs, nothing more

bench/README.md says what each section measures, how the processes are placed, and how to read it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import concurrency  # noqa: E402
import latency  # noqa: E402
import machine  # noqa: E402
import profiles  # noqa: E402
import real_flowise  # noqa: E402
import report  # noqa: E402
import throughput  # noqa: E402
import workers  # noqa: E402
from common import BENCH_DIR, raise_nofile  # noqa: E402
from harness import PYSPY, Config, Servers, event_loop_of  # noqa: E402

SECTIONS = ["latency", "throughput", "concurrency", "profiles", "real", "workers", "redis"]
QUICK = ["latency", "throughput"]


def load(path: Path | None) -> dict | None:
    return json.loads(path.read_text()) if path else None


def write(results: dict, out: Path, baseline: dict | None) -> None:
    (out / "RESULTS.md").write_text(report.render(results, baseline))
    print(f"wrote {out / 'RESULTS.md'}")
    if baseline:
        print("\n".join(report.before_after(baseline, results)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="sections latency and throughput only, in bench/out/quick")
    mode.add_argument("--smoke", action="store_true", help="every section at tiny counts, in bench/out/smoke")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    parser.add_argument("--out", type=Path, help="output folder (default: bench/, or bench/out/quick|smoke)")
    parser.add_argument("--baseline", type=Path, help="an earlier run's results.json: a before/after table")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--wait-idle", type=float, help="wait up to this many seconds for a quiet machine (default 60)")
    parser.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from the results.json in --out")
    args = parser.parse_args()
    out = args.out or (BENCH_DIR / "out" / "quick" if args.quick else BENCH_DIR / "out" / "smoke" if args.smoke
                       else BENCH_DIR)
    baseline = load(args.baseline)
    if args.render_only:
        write(load(out / "results.json"), out, baseline)
        return 0
    cfg = Config.make(args)
    sections = set(args.only or (QUICK if args.quick else SECTIONS))
    (out / "profiles").mkdir(parents=True, exist_ok=True)  # py-spy's stacks (sections 4 and 7)
    logdir = Path(tempfile.mkdtemp(prefix="flowise-sse-bench-logs-"))
    warnings = ["py-spy not found (pip install py-spy): no profiles"] if "profiles" in sections and not PYSPY else []
    if args.no_profile or not PYSPY:
        sections.discard("profiles")
    if "real" in sections and (why := real_flowise.missing()):
        print(why)
        warnings.append(why)
        sections.discard("real")

    nofile = raise_nofile()
    srv = Servers(logdir)
    placement = srv.place_self()
    print(f"flowise-sse bench: sections {sorted(sections)}, output {out}, server logs {logdir}; {placement}")
    bg = machine.wait_idle(cfg.wait_idle)
    if bg["foreign_cores"] > machine.IDLE_MAX:
        warnings.append(f"the machine was busy when the run started ({bg['foreign_cores']:.2f} cores used by other "
                        "processes): the figures are pessimistic")
    results: dict = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                     "command": " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]]),
                     "machine": {**machine.machine_info(), "nofile": nofile}, "config": dataclasses.asdict(cfg),
                     "placement": placement, "background": bg, "warnings": warnings, "gateway_loop": "?"}
    started = time.monotonic()
    deadline = started + cfg.budget

    def section(name: str, title: str, measure, key: str | None = None) -> None:
        if name not in sections:
            return
        print(title)
        try:
            results[key or name] = measure()
        except Exception as exc:  # reported: a section that fails (a Flowise that will not start) costs no other
            warnings.append(f"section {title} failed: {type(exc).__name__}: "
                            f"{(str(exc).strip().splitlines() or [''])[0][:300]} (logs: {logdir})")
            print(f"  {warnings[-1]}")
        for emulator in ("emu_sio", "emu_sse"):  # the package emulators keep every prediction: let go
            if emulator in srv.procs:
                srv.clear_emulator(emulator)

    try:
        if sections - {"real"}:
            for name, kind, version in (("emu_sio", "emulator", "1.6.2"), ("emu_sse", "emulator", "3.1.4"),
                                        ("lite", "lite", "3.1.4"), ("lite_sio", "lite-sio", "1.6.2"),
                                        ("ceiling", "ceiling", "3.1.4")):
                srv.start_emulator(name, kind, version)
            for name, upstream in (("gw_sio", "emu_sio"), ("gw_sio_lite", "lite_sio"), ("gw_sse", "emu_sse")):
                srv.start_gateway(name, upstream)
            results["gateway_loop"] = event_loop_of(srv.pid("gw_sse"))
            print(f"  the gateway runs on: {results['gateway_loop']}")
        section("latency", "1. first-token latency", lambda: latency.run(cfg, srv, time.monotonic() + cfg.budget * 0.2))
        section("real", f"5. first token against a real Flowise {real_flowise.VERSION}",  # next to its counterpart
                lambda: real_flowise.run(cfg, srv, logdir, time.monotonic() + 240), "real_flowise")
        section("throughput", "2. relay throughput",
                lambda: throughput.run(cfg, srv, min(deadline, time.monotonic() + cfg.budget * 0.2)))
        section("concurrency", "3. concurrency",
                lambda: concurrency.run(cfg, srv, logdir, deadline - cfg.budget * 0.25))
        section("profiles", "4. profiles (py-spy)", lambda: profiles.run(cfg, srv, out / "profiles", logdir, deadline))
        section("workers", "6. workers (serve --workers 1 and 2, with Redis)",
                lambda: workers.run(cfg, srv, logdir, time.monotonic() + cfg.workers_budget))
        section("redis", "7. Redis's cost per token: memory, standalone, Cluster, Sentinel", lambda: workers.run_redis(
            cfg, srv, logdir, None if args.no_profile or not PYSPY else out / "profiles"))
    finally:
        srv.stop_all()
    results["duration_s"] = time.monotonic() - started
    (out / "results.json").write_text(json.dumps(results, indent=1))
    write(results, out, baseline)
    print(f"done in {results['duration_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
