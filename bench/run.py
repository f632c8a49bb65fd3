"""flowise-sse benchmark: latency, relay throughput, concurrency, profiles, a real Flowise and worker
scaling, side by side in one run.

    .venv/bin/python bench/run.py            # the full run (about 15 minutes), writes bench/RESULTS.md,
                                             # bench/latency.png, bench/results.json, bench/profiles/
    .venv/bin/python bench/run.py --quick    # a smoke run (under a minute), written to a temp dir
    .venv/bin/python bench/run.py --only workers   # section 6 alone: `serve --workers 1` and `2`

Every server runs in a process of its own: the emulated Flowise servers (bench/servers.py), the
gateway (`python -m flowise_sse serve`), the bare sse-starlette ceiling; the measuring clients are
this process and, for the concurrency runs, bench/loadgen.py workers. With two or more cores the
system under test (gateway, or ceiling) is pinned to the first core and everything else (emulators,
clients, py-spy) to the others. See bench/README.md for what is measured and how to read it.

This file is the orchestrator: each section is a module (latency, throughput, concurrency, profiles,
real_flowise, workers) that returns its dataclass of results.py; report.py turns them into RESULTS.md
and latency.png. Section 5 (`real`) runs against a real Flowise 3.1.4 from the e2e suite's cache, and
only when it is installed there (tests/e2e/install_flowise.sh); otherwise it is skipped and says so.
Section 6 (`workers`) runs `serve --workers 1` and `--workers 2`, each with a redis-server of its own.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import concurrency  # noqa: E402
import latency  # noqa: E402
import machine  # noqa: E402
import profiles  # noqa: E402
import report  # noqa: E402
import throughput  # noqa: E402
import workers  # noqa: E402
from common import BENCH_DIR, raise_nofile  # noqa: E402
from harness import PYSPY, Config, Servers, event_loop_of  # noqa: E402
from results import Results, save  # noqa: E402

SECTIONS = ["latency", "throughput", "concurrency", "profiles", "real", "workers"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: small counts, output to a temp dir")
    parser.add_argument("--out", type=Path, help="output directory (default: bench/, or a temp dir with --quick)")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profiles")
    parser.add_argument("--no-whatif", action="store_true", help="skip the gateway-on-uvloop what-if rows")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    parser.add_argument("--wait-idle", type=float, help="wait up to this many seconds for a quiet machine (default 60)")
    parser.add_argument("--only", choices=SECTIONS, action="append", help="run only these sections (repeatable)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite RESULTS.md from the results.json and profiles/ of a previous run (no measuring)")
    args = parser.parse_args()
    if args.render_only:
        return report.rerender(args.out or BENCH_DIR)
    cfg = Config.make(args)
    out = args.out or (Path(tempfile.mkdtemp(prefix="flowise-sse-bench-")) if cfg.quick else BENCH_DIR)
    out.mkdir(parents=True, exist_ok=True)
    logdir = Path(tempfile.mkdtemp(prefix="flowise-sse-bench-logs-"))
    profdir = out / "profiles"
    sections = set(args.only or SECTIONS)
    command = " ".join([".venv/bin/python", "bench/run.py", *sys.argv[1:]])
    raise_nofile()
    warnings: list[str] = []
    if "profiles" in sections and not cfg.profile:
        if PYSPY is None:
            warnings.append("py-spy not found (pip install py-spy): no profiles")
        sections.discard("profiles")
    if "profiles" in sections:
        profdir.mkdir(exist_ok=True)
    if "real" in sections:
        import real_flowise

        absent = real_flowise.missing()
        if absent:
            print(absent)
            warnings.append(absent)
            sections.discard("real")
    emulated = sections - {"real"}  # the sections that run against the emulators

    srv = Servers(cfg, logdir)
    placement = srv.place_self()
    print(f"flowise-sse bench ({'quick' if cfg.quick else 'full'}): output {out}, server logs {logdir}; {placement}")

    bg = machine.wait_idle(cfg.wait_idle)
    if bg.busy_cores > machine.IDLE_MAX:
        warnings.append(f"the machine was busy when the run started ({bg.busy_cores:.2f} cores used by other "
                        "processes): the figures are pessimistic")
    results = Results(date=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                      machine=machine.machine_info(), config=cfg, placement=placement, background=bg,
                      warnings=warnings, command=command)
    started = time.monotonic()
    deadline = started + cfg.budget
    try:
        if emulated:
            srv.start_emulator("emu_sio", "emulator", "1.6.2")
            srv.start_emulator("emu_sse", "emulator", "3.1.4")
            srv.start_emulator("lite", "lite")
            srv.start_emulator("lite_sio", "lite-sio")
            srv.start_ceiling("ceiling")
            srv.start_gateway("gw_sio", "emu_sio")
            srv.start_gateway("gw_sio_lite", "lite_sio")
            srv.start_gateway("gw_sse", "emu_sse")
            results.gateway_loop = event_loop_of(srv.pid("gw_sse"))
            print(f"  the gateway runs on: {results.gateway_loop}")
            if cfg.whatif and results.gateway_loop.startswith("uvloop"):
                cfg.whatif = False  # nothing to compare: the shipped gateway is on uvloop already
            if cfg.whatif:
                srv.start_gateway("gw_sse_uv", "emu_sse", uvloop=True)
        if "latency" in sections:
            print("1. first-token latency")
            results.latency = latency.run(cfg, srv, time.monotonic() + cfg.budget * 0.2)
            srv.clear_emulator("emu_sio")
            srv.clear_emulator("emu_sse")
        if "real" in sections:  # run next to section 1, its counterpart; numbered 5 as it came last
            print(f"5. first token against a real Flowise {real_flowise.VERSION}")
            try:
                results.real_flowise = real_flowise.run(cfg, srv, logdir, min(deadline, time.monotonic() + 240))
                if results.gateway_loop == "?":
                    results.gateway_loop = results.real_flowise.gateway_loop
            except Exception as exc:  # an outside install that fails to start must not cost the other sections
                first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                failed = f"section 5 (real Flowise) failed: {type(exc).__name__}: {first_line[:300]} (logs: {logdir})"
                print(f"  {failed}")
                warnings.append(failed)
        if "throughput" in sections:
            print("2. relay throughput")
            results.throughput = throughput.run(cfg, srv, min(deadline, time.monotonic() + cfg.budget * 0.2))
            srv.clear_emulator("emu_sio")
            srv.clear_emulator("emu_sse")
        if "concurrency" in sections:
            print("3. concurrency")
            results.emulator_cost = concurrency.emulator_cost(cfg, srv)
            print(f"  emulator cost: {results.emulator_cost}")
            results.concurrency = concurrency.run(cfg, srv, logdir, deadline - cfg.budget * 0.25)
        if "profiles" in sections:
            print("4. profiles (py-spy)")
            results.profiles = profiles.run(cfg, srv, profdir, logdir, deadline)
        if "workers" in sections:
            print("6. workers (serve --workers 1 and 2, with Redis)")
            results.workers = workers.run(cfg, srv, logdir, time.monotonic() + cfg.workers_budget)
    finally:
        srv.stop_all()
    results.duration_s = time.monotonic() - started
    (out / "RESULTS.md").write_text(report.render(results, out))
    report.plot(results, out / "latency.png")
    save(results, out / "results.json")
    print(f"done in {results.duration_s:.0f} s: {out / 'RESULTS.md'}, {out / 'latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
