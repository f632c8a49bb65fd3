"""RESULTS.md from a run's results (the dict run.py saves as results.json): the summary against the
targets, then each section's table; with a baseline's results.json, their figures side by side.
What each column means is in bench/README.md, not repeated here."""

from __future__ import annotations

import math
from typing import Any

from concurrency import LEVEL_HEAD, carried, level_row, reached


def num(x: Any, spec: str = ".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def table(head: list[str], rows: list[list[Any]], left: int = 2) -> list[str]:
    """A markdown table; columns after the first `left` are right-aligned (figures)."""
    align = ["---" if i < left else "---:" for i in range(len(head))]
    return [f"| {' | '.join(head)} |", f"| {' | '.join(align)} |"] + [f"| {' | '.join(map(str, r))} |" for r in rows]


def ratio(r: dict, spec: str = ".2f") -> str:
    """A gateway / direct pair's p50 and p99, and their ratios."""
    g, d = r["gateway"], r["direct"]
    return (f"p50 {g['p50'] * 1e3:.2f} / {d['p50'] * 1e3:.2f} ms = **{r['ratio_p50']:{spec}}x**; p99 "
            f"{g['p99'] * 1e3:.2f} / {d['p99'] * 1e3:.2f} ms = **{r['ratio_p99']:{spec}}x** (n={g['n']})")


def summary(results: dict) -> list[list[Any]]:
    """(measure, result, target, verdict) for each target the run has figures for."""
    rows: list[list[Any]] = []
    lat, real, t, w, redis = (results.get(k) for k in ("latency", "real_flowise", "throughput", "workers", "redis"))
    for name, label, target in (("sse", "SSE upstream / direct httpx SSE client", 1.5),
                                ("socketio", "socket.io upstream / direct socket.io client connecting per request",
                                 0.6)):
        if name in (lat or {}):
            r, sse = lat[name], name == "sse"
            rows += [[f"first token, gateway over {label} (zero-latency emulator)", ratio(r), f"<= {target}x",
                      f"p50 {verdict(r['ratio_p50'] <= target)}, p99 {verdict(r['ratio_p99'] <= target)}"],
                     [f"gateway CPU per request, {name} upstream (a 6-token answer, whole stream)",
                      f"**{r['gateway_cpu_ms_per_request']:.2f} ms**", "<= 0.5 ms" if sse else "-",
                      verdict(r["gateway_cpu_ms_per_request"] <= 0.5) if sse else "-"]]
    if real:
        r = real["first_token"]
        rows += [[f"first token, gateway / direct, a real Flowise {real['flowise_version']} (mock LLM, "
                  f"{real['token_delay_ms']:g} ms/token)", ratio(r, ".3f") + f"; failed {real['gateway_failures']} "
                  f"+ {real['direct_failures']}", "<= 1.03x",
                  f"p50 {verdict(r['ratio_p50'] <= 1.03)}, p99 {verdict(r['ratio_p99'] <= 1.03)}"],
                 ["gateway CPU per request up to its first token, a real Flowise",
                  f"**{real['gateway_cpu_first_token_ms']:.2f} ms**, then {real['gateway_cpu_relay_us_per_token']:.0f} "
                  "µs per further token", "<= 0.5 ms", verdict(real["gateway_cpu_first_token_ms"] <= 0.5)]]
    for name, c in (t or {}).get("contenders", {}).items():
        if name.startswith("gateway"):
            sio = "socket.io" in name
            rows.append([f"relay throughput, one fast stream, {name} (medians of {t['reps']})",
                         f"{c['median']:,.0f} tok/s = **{100 * c['of_ceiling']:.0f}%** of the ceiling; "
                         f"**{c['sut_us_per_token']:.1f} µs** of gateway CPU per token",
                         ">= 50% of the ceiling" if sio else "-", verdict(c["of_ceiling"] >= 0.5) if sio else "-"])
    for r in results.get("concurrency") or []:
        if r["streams"] == 1000 and "failed" not in r:
            us, ok = (35 if r["transport"] == "sse" else 60), reached(r)
            rows.append([f"{r['transport']} upstream, 1,000 streams x 20 tok/s",
                         f"**{r['gateway_us_per_token']:.0f} µs/token**; exact {100 * r['exact_share']:.1f}%; "
                         f"**{r['peak_flowing']:,} flowing at once**; added delay p99 **{r['added_p99_ms']:.1f} ms**; "
                         f"**{r['kb_per_stream']:.0f} KB/stream**",
                         f"<= {us} µs/token, 100% exact, all flowing, p99 <= 50 ms, <= 100 KB",
                         f"CPU {verdict(r['gateway_us_per_token'] <= us)}, exact {verdict(r['exact_share'] == 1.0)}, "
                         f"flowing {verdict(ok)}, p99 {verdict(r['added_p99_ms'] <= 50 and ok)}, "
                         f"memory {verdict(r['kb_per_stream'] <= 100)}"])
    runs = {run["workers"]: run for run in (w or {}).get("runs", [])}
    if runs.get(1, {}).get("carried") and 2 in runs:
        # A count that carried every level tried has no limit found: the ratio is then not the scaling.
        limits = all(run["levels"] and not carried(run["levels"][-1]) for run in runs.values())
        scaling = runs[2]["carried"] / runs[1]["carried"]
        rows.append(["streams carried at added delay p99 <= 50 ms, `serve --workers 1` -> `--workers 2` (Redis on)",
                     f"{runs[1]['carried']:,} -> {runs[2]['carried']:,} = **{scaling:.2f}x**", ">= 1.8x",
                     verdict(scaling >= 1.8) if limits else "n/a: a limit was not reached"])
    for mode, m in (redis or {}).get("median", {}).items():
        if mode != "memory":
            rows.append([f"gateway CPU per token, Redis {mode} over memory only (median of {redis['rounds']})",
                         f"{redis['median']['memory']['gateway_us_per_token']:.0f} -> {m['gateway_us_per_token']:.0f} "
                         f"µs (**{100 * m['extra']:+.0f}%**)", "<= +25%", verdict(m["extra"] <= 0.25)])
    return rows


def headline(results: dict) -> dict[str, tuple[float, str]]:
    """The figures a before/after compares: name -> (value, format)."""
    out: dict[str, tuple[float, str]] = {}
    for name, r in (results.get("latency") or {}).items():
        if name != "load":
            out[f"first token p50, {name} upstream (ms)"] = (r["gateway"]["p50"] * 1e3, ".2f")
            out[f"first token gateway / direct, {name} upstream, p50"] = (r["ratio_p50"], ".2f")
            out[f"gateway CPU per request, {name} upstream (ms)"] = (r["gateway_cpu_ms_per_request"], ".3f")
    for name, c in ((results.get("throughput") or {}).get("contenders") or {}).items():
        if name.startswith("gateway"):
            out[f"one fast stream, {name}: tokens/s"] = (c["median"], ",.0f")
            out[f"one fast stream, {name}: gateway µs per token"] = (c["sut_us_per_token"], ".2f")
    for mode, m in (results.get("redis") or {}).get("median", {}).items():
        out[f"Redis {mode}, median: gateway µs per token"] = (m["gateway_us_per_token"], ".1f")
    workers = [r for run in (results.get("workers") or {}).get("runs", []) for r in run["levels"]]
    for r in (results.get("concurrency") or []) + workers:
        if "failed" not in r:
            where = f"{r['transport']} {r['streams']:,} streams, {r['variant']}"
            out[f"{where}: gateway µs per token"] = (r["gateway_us_per_token"], ".0f")
            out[f"{where}: added delay p99 (ms)"] = (r["added_p99_ms"], ".1f")
            out[f"{where}: KB per stream"] = (r["kb_per_stream"], ".0f")
    real = results.get("real_flowise")
    if real:
        out["real Flowise: first token p50 (ms)"] = (real["first_token"]["gateway"]["p50"] * 1e3, ".2f")
        out["real Flowise: gateway CPU up to the first token (ms)"] = (real["gateway_cpu_first_token_ms"], ".2f")
    return out


def before_after(before: dict, after: dict) -> list[str]:
    old, new = headline(before), headline(after)
    rows = [[name, num(old[name][0], fmt), num(value, fmt), num(100 * (value / old[name][0] - 1), "+.0f") + "%"]
            for name, (value, fmt) in new.items() if name in old and old[name][0]]
    return ["## Before and after", "", f"Before: {before['date']}, code at {before['machine']['commit']} "
            f"(`{before['command']}`). After: this run.", ""] + table(["measure", "before", "after", "change"], rows,
                                                                       left=1)


def profile_lines(p: dict, cfg: dict) -> list[str]:
    unit, us = p["unit"], p["us_per_unit"]
    out = [f"#### {p['title']}", ""]
    if p.get("level"):
        r = p["level"]
        out += [f"(Profiled run, py-spy at {cfg['conc_profile_rate']} Hz: exact {100 * r['exact_share']:.1f}%, "
                f"added delay p99 {r['added_p99_ms']:.1f} ms, gateway CPU {r['gateway_cpu']:.0%}, py-spy itself "
                f"{num(r.get('sampler_cpu'), '.0%')} of a core.)", ""]
    if "self" not in p:
        return out + [f"{p.get('samples', 0)} samples, gateway CPU {us:.1f} µs per {unit}; the top frames were not "
                      f"kept in this results.json (stacks: `profiles/{p['file']}.gz`).", ""]
    total = max(1, p["samples"])
    out += [f"{p['samples']} samples holding the GIL; gateway CPU {us:.1f} µs per {unit}; stacks: "
            f"`profiles/{p['file']}`", ""]
    for key, title in (("by_package", "package (self)"), ("self", "function (self)"),
                       ("inclusive", "gateway function (inclusive, overlapping)")):
        out += table([title, "share", f"µs/{unit}"],
                     [[f"`{name}`", f"{100 * n / total:.1f}%", f"{us * n / total:.1f}"] for name, n in p[key]]) + [""]
    return out


def latency_lines(lat: dict) -> list[str]:
    rows = []
    for name, label in (("socketio", "socket.io (1.6.2)"), ("sse", "SSE (3.1.4)")):
        for who in ("gateway", "direct") if name in lat else ():
            s = lat[name][who]
            rows.append([label, who, s["n"]] + [num(s[k] * 1e3) for k in ("p50", "p90", "p99", "mean", "min", "max")]
                        + [num(lat[name]["gateway_cpu_ms_per_request"], ".3f") if who == "gateway" else ""])
    failures = ", ".join(f"{k} {lat[k]['failures']}" for k in ("socketio", "sse") if k in lat)
    return ["## 1. First-token latency", ""] + table(
        ["upstream", "contender", "n", "p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "max ms",
         "gateway CPU ms/request"], rows) + [
        "", f"Failed or inexact answers: {failures}. Foreign load: {lat['load']['foreign_cores']:.2f} cores.", ""]


def throughput_lines(t: dict) -> list[str]:
    rows = [[k, num(v["median"], ",.0f"), num(v["best"], ",.0f"), num(v["worst"], ",.0f"),
             num(100 * v["of_ceiling"], ".0f") + "%", num(100 * v["best_of_ceiling_best"], ".0f") + "%",
             num(v["sut_us_per_token"]), num(v["upstream_us_per_token"]), num(v["client_us_per_token"]),
             "yes" if v["all_ok"] else "NO"] for k, v in t["contenders"].items()]
    out = ["## 2. Relay throughput", "", f"One stream of {t['tokens']:,} tokens with no delay, {t['reps']} runs per "
           "contender, interleaved.", ""] + table(
        ["contender", "median tok/s", "best", "worst", "of ceiling (medians)", "of ceiling (bests)",
         "server µs/token", "upstream µs/token", "client µs/token", "exact"], rows) + [""]
    d = t.get("socketio_lite_direct")
    if d:
        out += ["flowise-lite-sio, the socket.io row's upstream, read directly by python-socketio (the gateway's own "
                f"socket.io client): {num(d.get('rate'), ',.0f')} tok/s, the server's CPU "
                f"{num(d.get('upstream_us_per_token'))} µs per token {d.get('error', '')}.", ""]
    return out + [f"Foreign load: {t['load']['foreign_cores']:.2f} cores.", ""]


def levels_lines(title: str, intro: str, levels: list[dict]) -> list[str]:
    errors = [f"- {r['transport']} {r['streams']:,} ({r['variant']}): {n} x `{e}`" for r in levels
              for e, n in r.get("errors", {}).items()]
    return [title, "", intro, ""] + table(LEVEL_HEAD, [level_row(r) for r in levels]) + [""] + (
        ["Streams that were not exact (commonest kinds):", ""] + errors + [""] if errors else [])


def real_lines(rf: dict) -> list[str]:
    r = rf["first_token"]
    rows = [[who, s["n"]] + [num(s[k] * 1e3) for k in ("p50", "p90", "p99", "mean", "min", "max")]
            + [num(a["p50"] * 1e3), num(a["p99"] * 1e3), failed]
            for who, s, a, failed in (("gateway", r["gateway"], rf["answer_gateway"], rf["gateway_failures"]),
                                      ("direct", r["direct"], rf["answer_direct"], rf["direct_failures"]))]
    return [f"## 5. First token against a real Flowise {rf['flowise_version']}", "",
            f"Mock LLM at {rf['token_delay_ms']:g} ms per token, {rf['answer_tokens']}-token answers, {rf['warmup']} "
            f"warm-up pairs. Placement: {rf['placement']}; the gateway on {rf['gateway_loop']}.", ""] + table(
        ["contender", "n", "first token p50 ms", "p90 ms", "p99 ms", "mean ms", "min ms", "max ms", "answer p50 ms",
         "answer p99 ms", "failed or inexact"], rows) + [
        "", f"Gateway / direct: first token p50 **{r['ratio_p50']:.3f}x**, p99 **{r['ratio_p99']:.3f}x**; answer p50 "
            f"{rf['answer_ratio_p50']:.3f}x. The gateway adds {(r['gateway']['p50'] - r['direct']['p50']) * 1e3:.2f} "
            f"ms to the median first token. CPU per request: the gateway {rf['gateway_cpu_first_token_ms']:.2f} ms up "
            f"to the first token, then {rf['gateway_cpu_relay_us_per_token']:.0f} µs per further token, "
            f"{r['gateway_cpu_ms_per_request']:.2f} ms in all (its idle CPU, {rf['gateway_idle_ms_per_s']:.1f} ms/s, "
            f"taken out); Flowise {rf['flowise_cpu_ms_per_request']:.1f} ms per prediction, the mock LLM "
            f"{rf['llm_cpu_ms_per_request']:.1f} ms. Flowise answered HTTP {rf['flowise_start_s']:.1f} s after its "
            f"start. Foreign load: {rf['load']['foreign_cores']:.2f} cores."
            + (f" Failed or inexact, by kind: {rf['errors']}." if rf["errors"] else ""), ""]


def render(results: dict, baseline: dict | None = None) -> str:
    m, cfg, bg = results["machine"], results["config"], results["background"]
    lines = ["# flowise-sse benchmark results", "",
             f"- date: {results['date']} (the run took {results['duration_s']:.0f} s)",
             f"- command: `{results['command']}`"
             + (" (**tiny counts: the figures mean nothing**)" if "--smoke" in results["command"] else ""),
             f"- code: flowise-sse at {m['commit']}",
             f"- machine: {m['nproc']} cores ({m['cpu_model']}), {m['mem_gb']} GB RAM, Linux {m['kernel']}, "
             f"{m['implementation']} {m['python']}, `ulimit -n` {m.get('nofile', '?')}",
             "- libraries: " + ", ".join(f"{k} {v}" for k, v in m["libs"].items() if k != "flowise-sse"),
             f"- placement: {results['placement']}",
             "- the gateway as shipped (`python -m flowise_sse serve --log-level warning`), on "
             f"**{(results.get('real_flowise') or {}).get('gateway_loop', results['gateway_loop'])}**",
             f"- machine load just before the run: {bg['busy_cores']:.2f} of {m['nproc']} cores busy; each section "
             "gives the CPU other processes took during it (foreign): figures taken under foreign load are "
             "pessimistic", "- what each section and column measures: [README.md](README.md)", ""]
    if results["warnings"]:
        lines += ["**Warnings:**", ""] + [f"- {w}" for w in results["warnings"]] + [""]
    lines += ["## Summary against the targets", ""] + table(["measure", "result", "target", "verdict"],
                                                            summary(results), left=4) + [""]
    if baseline:
        lines += before_after(baseline, results) + [""]
    if results.get("latency"):
        lines += latency_lines(results["latency"])
    if results.get("throughput"):
        lines += throughput_lines(results["throughput"])
    if results.get("concurrency"):
        lines += levels_lines("## 3. Concurrency", f"{cfg['conc_tokens']} tokens per stream, "
                              f"{cfg['conc_delay'] * 1000:.0f} ms apart, opened at {cfg['ramp_rate']:g} streams/s; "
                              "one gateway process per row.", results["concurrency"])
    if results.get("profiles"):
        lines += ["## 4. Where the gateway's CPU goes (py-spy)", "", f"`py-spy record --gil --rate "
                  f"{cfg['profile_rate']}` ({cfg['conc_profile_rate']} Hz under concurrency) on the gateway during "
                  "separate runs; µs per unit is a share times the gateway's CPU per unit in that run.", ""]
        for p in results["profiles"]:
            lines += profile_lines(p, cfg)
    if results.get("real_flowise"):
        lines += real_lines(results["real_flowise"])
    if results.get("workers"):
        w = results["workers"]
        lines += levels_lines("## 6. Workers: `serve --workers 1` and `--workers 2`, Redis on", w["placement"],
                              [r for run in w["runs"] for r in run["levels"]])
    if results.get("redis"):
        redis = results["redis"]
        medians = "; ".join(f"{mode} **{m['gateway_us_per_token']:.1f} µs** ({100 * m['extra']:+.0f}%), Redis's own "
                            f"{m['redis_us_per_token']:.1f} µs" for mode, m in redis["median"].items())
        lines += levels_lines("## 7. Redis's cost per token: memory, standalone, Cluster, Sentinel", f"The modes in "
                              f"turn for {redis['rounds']} round(s), a fresh gateway per level. Medians per relayed "
                              f"token: {medians} (Redis's: all its processes, a Cluster's 6, a Sentinel group's 5).",
                              [r for levels in redis["levels"].values() for r in levels])
        for p in redis["profiles"]:
            lines += profile_lines(p, cfg)
    return "\n".join(lines)
