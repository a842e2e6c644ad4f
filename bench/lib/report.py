"""Turning the runs of one scenario into medians, side-by-side ratios, files and a chart.

Ratios are taken round by round (targets of one round ran back to back, minutes apart at most) and
the median of those per-round ratios is reported; the medians of the absolute numbers are shown
beside them for reading, not for comparing across runs.
"""

import json
import os
import shutil
import statistics
import subprocess

# Metrics summarised per scenario kind: (key in a run, unit shown in the table).
WRK_METRICS = ["rps", "p50_ms", "p99_ms", "cpu_us_per_req", "util_pct", "sleeps_per_req",
               "preemptions_per_req", "hwm_mib",
               "origin_conns_per_1k", "origin_cpu_us_per_req", "loadgen_cpu_us_per_req",
               "loadgen_util_pct", "core_busy_pct", "foreign_pct", "load_core_foreign_pct", "steal_pct"]
IDLE_METRICS = ["rss_per_conn_bytes", "pss_per_conn_bytes", "rss_before_mib", "rss_idle_mib",
                "hwm_mib", "setup_cpu_us_per_conn", "setup_seconds"]
# Metrics compared with the peers round by round.
WRK_RATIOS = ["cpu_us_per_req", "p99_ms", "rps"]
IDLE_RATIOS = ["rss_per_conn_bytes"]
PEERS = ["nginx", "haproxy", "origin"]

LABELS = {"origin": "origin alone", "nginx": "nginx", "haproxy": "HAProxy",
          "marchproxy": "MarchProxy"}

# Goals of issue 2 (docs/benchmarks.md): metric, peer, ceiling of marchproxy/peer.
GOALS = {
    "h1": [("cpu_us_per_req", "nginx", 0.8), ("cpu_us_per_req", "haproxy", 0.8),
           ("p99_ms", "nginx", 1.0), ("p99_ms", "haproxy", 1.0)],
    "h1-new": [("cpu_us_per_req", "nginx", 1.0), ("cpu_us_per_req", "haproxy", 1.0),
               ("p99_ms", "nginx", 1.0), ("p99_ms", "haproxy", 1.0)],
    "idle": [("rss_per_conn_bytes", "nginx", 1.0)],
    # Issue 3: CPU per request ≤ 0.8× both peers; handshakes (OpenSSL-bound) at parity or better.
    "tls": [("cpu_us_per_req", "nginx", 0.8), ("cpu_us_per_req", "haproxy", 0.8)],
    "tls-new": [("cpu_us_per_req", "nginx", 1.0), ("cpu_us_per_req", "haproxy", 1.0)],
    "tls-new-p384": [("cpu_us_per_req", "nginx", 1.0), ("cpu_us_per_req", "haproxy", 1.0)],
}


def _stats(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "n": len(values)}


def summarize(scenario, runs, order):
    """Per target: median/min/max of each metric and median per-round ratio to each peer."""
    kind_idle = scenario == "idle"
    metrics = IDLE_METRICS if kind_idle else WRK_METRICS
    ratio_metrics = IDLE_RATIOS if kind_idle else WRK_RATIOS
    good = [r for r in runs if r.get("ok")]
    by_round = {}
    for r in good:
        by_round.setdefault(r["round"], {})[r["target"]] = r
    summary = {}
    for t in order:
        mine = [r for r in runs if r["target"] == t]
        if not mine:
            continue
        ok = [r for r in mine if r.get("ok")]
        s = {"target": t, "label": LABELS.get(t, t), "runs": len(mine), "ok_runs": len(ok),
             "flagged_runs": sum(1 for r in mine if r.get("flags")),
             "errors": sum(r.get("error_count", 0) for r in mine),
             "flags": sorted({f for r in mine for f in r.get("flags", [])})}
        for m in metrics:
            s[m] = _stats([r.get(m) for r in ok])
        s["ratios"] = {}
        for m in ratio_metrics:
            for peer in PEERS:
                if peer == t:
                    continue
                per_round = []
                for rnd in sorted(by_round):
                    a, b = by_round[rnd].get(t), by_round[rnd].get(peer)
                    if a and b and a.get(m) and b.get(m):
                        per_round.append(a[m] / b[m])
                if per_round:
                    s["ratios"].setdefault(m, {})[peer] = {
                        "median": statistics.median(per_round), "per_round": per_round}
        summary[t] = s
    return summary


def goals(scenario, summary):
    mp = summary.get("marchproxy")
    out = []
    for metric, peer, ceiling in GOALS.get(scenario, []):
        ratio = None
        if mp:
            ratio = mp["ratios"].get(metric, {}).get(peer, {}).get("median")
        out.append({"metric": metric, "peer": peer, "ceiling": ceiling, "ratio": ratio,
                    "met": None if ratio is None else ratio <= ceiling})
    return out


# ---------------------------------------------------------------- markdown

def _f(x, digits=1):
    if x is None:
        return "—"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _med(s, key, digits=1):
    v = s.get(key)
    return _f(v["median"] if v else None, digits)


def _range(s, key, digits=1):
    v = s.get(key)
    if not v:
        return "—"
    return f"{_f(v['median'], digits)} ({_f(v['min'], digits)}–{_f(v['max'], digits)})"


def _ratio(s, metric, peer):
    r = s["ratios"].get(metric, {}).get(peer)
    return f"{r['median']:.2f}×" if r else "—"


def _errors(s):
    if not s["errors"] and not s["flagged_runs"] and s["ok_runs"] == s["runs"]:
        return "0"
    bits = []
    if s["errors"]:
        bits.append(f"{s['errors']} errors")
    if s["flagged_runs"]:
        bits.append(f"{s['flagged_runs']}/{s['runs']} runs flagged")
    if s["ok_runs"] != s["runs"]:
        bits.append(f"{s['runs'] - s['ok_runs']} runs failed")
    return "**⚠ " + ", ".join(bits) + "**"


def table(scenario, summary, params):
    rows = []
    if scenario == "idle":
        n = params["idle_conns"]
        rows.append(f"| target | RSS per idle conn, bytes (min–max) | × nginx | × HAProxy | "
                    f"Pss per conn, bytes | RSS before, MiB | RSS with {n:,} idle, MiB | "
                    f"setup CPU µs/conn | peak RSS, MiB | errors |")
        rows.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for t, s in summary.items():
            rows.append(
                f"| {LABELS.get(t, t)} | {_range(s, 'rss_per_conn_bytes', 0)} | "
                f"{_ratio(s, 'rss_per_conn_bytes', 'nginx')} | "
                f"{_ratio(s, 'rss_per_conn_bytes', 'haproxy')} | {_med(s, 'pss_per_conn_bytes', 0)} | "
                f"{_med(s, 'rss_before_mib')} | {_med(s, 'rss_idle_mib')} | "
                f"{_med(s, 'setup_cpu_us_per_conn')} | {_med(s, 'hwm_mib')} | {_errors(s)} |")
        return "\n".join(rows)
    rows.append("| target | req/s | p50 ms | p99 ms | CPU µs/req (min–max) | × nginx | × HAProxy | "
                "× origin | p99 × nginx | p99 × HAProxy | busy %: target / core | noise % | "
                "peak RSS MiB | "
                "origin conns /1k req | errors |")
    rows.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for t, s in summary.items():
        rows.append(
            f"| {LABELS.get(t, t)} | {_med(s, 'rps', 0)} | {_med(s, 'p50_ms', 3)} | "
            f"{_med(s, 'p99_ms', 3)} | {_range(s, 'cpu_us_per_req', 2)} | "
            f"{_ratio(s, 'cpu_us_per_req', 'nginx')} | {_ratio(s, 'cpu_us_per_req', 'haproxy')} | "
            f"{_ratio(s, 'cpu_us_per_req', 'origin')} | {_ratio(s, 'p99_ms', 'nginx')} | "
            f"{_ratio(s, 'p99_ms', 'haproxy')} | {_med(s, 'util_pct', 0)} / "
            f"{_med(s, 'core_busy_pct', 0)} | "
            f"{_med(s, 'foreign_pct', 0)} | {_med(s, 'hwm_mib')} | "
            f"{_med(s, 'origin_conns_per_1k', 2)} | {_errors(s)} |")
    return "\n".join(rows)


def _goal_lines(results):
    lines = []
    for g in results["goals"]:
        name = {"cpu_us_per_req": "CPU µs/req", "p99_ms": "p99",
                "rss_per_conn_bytes": "RSS per idle connection"}[g["metric"]]
        if g["ratio"] is None:
            verdict = "not measured (MarchProxy did not run)"
        else:
            verdict = f"{g['ratio']:.2f}× — {'met' if g['met'] else '**not met**'}"
        lines.append(f"- {name} ≤ {g['ceiling']}× {LABELS[g['peer']]}: {verdict}")
    return lines


def markdown(results, chart_name):
    sc = results["scenario"]
    p = results["params"]
    m = results["machine"]
    out = [f"# `{sc}` — {results['title']}", ""]
    out.append(f"Run {results['started']} → {results['finished']}; "
               f"{'full run' if results['full_run'] else '**short run (not a result)**'}; "
               f"medians of {p['rounds']} rounds, targets alternating "
               f"({' '.join(LABELS.get(t, t) for t in results['order'])}, repeated).")
    out.append("")
    out.append(table(sc, results["summary"], p))
    out.append("")
    if chart_name:
        out.append(f"![{sc} chart]({chart_name})")
        out.append("")
    out.append(results["reading"])
    out.append("")
    if results["goals"]:
        out.append("Goals (issue 2), MarchProxy ÷ peer, median of per-round ratios:")
        out.append("")
        out += _goal_lines(results)
        out.append("")
    if results["skipped"]:
        out.append("Skipped:")
        out.append("")
        for t, why in results["skipped"].items():
            first = why.strip().splitlines()[0] if why.strip() else "?"
            out.append(f"- {LABELS.get(t, t)}: {first}")
        out.append("")
    flags = [(r["round"], r["target"], f) for r in results["runs"] for f in r.get("flags", [])]
    if flags:
        out.append("Flags (errors or failures; a flagged run that completed is kept in the medians, "
                   "read its numbers with care):")
        out.append("")
        for rnd, t, f in flags:
            out.append(f"- round {rnd}, {LABELS.get(t, t)}: {f}")
        out.append("")
    rounds = sorted({r["round"] for r in results["runs"]})
    if sc != "idle" and any(r.get("noise") for r in results["runs"]):
        out.append("Noise: % of the proxy core / of the load generator's core used by processes "
                   "outside the benchmark during each run (CPU µs/req counts only the target's own "
                   "processes, but caches are shared and req/s and latency suffer):")
        out.append("")
        out.append("| target | " + " | ".join(f"round {r}" for r in rounds) + " |")
        out.append("|---|" + "---:|" * len(rounds))
        for t in results["summary"]:
            cells = []
            for rnd in rounds:
                run = next((r for r in results["runs"]
                            if r["target"] == t and r["round"] == rnd), None)
                if not run or not run.get("ok"):
                    cells.append("—")
                else:
                    cells.append(f"{_f(run.get('foreign_pct'), 0)} / "
                                 f"{_f(run.get('load_core_foreign_pct'), 0)}")
            out.append(f"| {LABELS.get(t, t)} | " + " | ".join(cells) + " |")
        out.append("")
    # Per-round numbers show the noise at a glance.
    key = "rss_per_conn_bytes" if sc == "idle" else "cpu_us_per_req"
    unit = "RSS bytes per idle connection" if sc == "idle" else "CPU µs per request"
    out.append(f"Per round ({unit}):")
    out.append("")
    out.append("| target | " + " | ".join(f"round {r}" for r in rounds) + " |")
    out.append("|---|" + "---:|" * len(rounds))
    for t in results["summary"]:
        cells = []
        for rnd in rounds:
            run = next((r for r in results["runs"] if r["target"] == t and r["round"] == rnd), None)
            cells.append("—" if not run or not run.get("ok") else _f(run.get(key), 2))
        out.append(f"| {LABELS.get(t, t)} | " + " | ".join(cells) + " |")
    out.append("")
    out.append("## Machine and layout")
    out.append("")
    out.append(f"- {m['nproc']} CPUs: {m['cpu_model']}; kernel {m['kernel']}; {m['distro']}; "
               f"{m['mem_total_mib']} MiB; load average before {results['loadavg_before']}, "
               f"after {results['loadavg_after']}")
    out.append(f"- {results['layout']}")
    out.append(f"- parameters: {json.dumps(p)}")
    out.append("")
    out.append("## Versions")
    out.append("")
    for k, v in results["versions"].items():
        out.append(f"- {k}: {v}")
    out.append("")
    out.append("## Command lines")
    out.append("")
    out.append("```")
    out.append(f"$ {results['invocation']}")
    for k, v in results["commands"].items():
        out.append(f"# {k}")
        out.append(v)
    out.append("```")
    out.append("")
    out.append("The configs each target ran with are in the JSON file next to this one (`configs`).")
    out.append("")
    return "\n".join(out)


# ---------------------------------------------------------------- chart

COLORS = {"origin": 0x999999, "nginx": 0x2f9e44, "haproxy": 0x1c7ed6, "marchproxy": 0xe8590c}


def chart(results, png_path, work_dir):
    """A bar per target (median) with min–max whiskers; returns False if gnuplot is missing."""
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        return False
    sc = results["scenario"]
    key = "rss_per_conn_bytes" if sc == "idle" else "cpu_us_per_req"
    ylabel = ("RSS per idle connection (bytes)" if sc == "idle"
              else "CPU µs per request (lower is better)")
    dat = os.path.join(work_dir, f"chart-{sc}.dat")
    n = 0
    with open(dat, "w") as f:
        for t, s in results["summary"].items():
            v = s.get(key)
            if not v:
                continue
            label = LABELS.get(t, t).replace(" ", "\\n")
            f.write(f"\"{label}\" {v['median']} {v['min']} {v['max']} {COLORS.get(t, 0x555555)}\n")
            n += 1
    if n == 0:
        return False
    title = (f"{sc}: {results['title']} — median of {results['params']['rounds']} rounds, "
             f"whiskers min–max")
    script = f"""
set terminal pngcairo size 820,460 font "sans,10"
set output '{png_path}'
set title "{title}"
set ylabel "{ylabel}"
set style fill solid 0.75 border -1
set yrange [0:*]
set offsets 0, 0, graph 0.08, 0
set xrange [-0.6:{n - 0.4}]
set bmargin 5
set grid ytics
set key off
set label 1 "{results['started']} · {results['machine']['nproc']} CPUs · {results['layout_short']}" at screen 0.01,0.025 font "sans,8"
plot '{dat}' using 0:2:(0.6):5:xtic(1) with boxes lc rgb variable, \\
     '' using 0:2:3:4 with yerrorbars lc rgb "black" pt 7 ps 0.4, \\
     '' using 0:4:(sprintf("%.{0 if sc == 'idle' else 1}f", $2)) with labels offset 0,0.8
"""
    p = subprocess.run([gnuplot], input=script, text=True, capture_output=True)
    if p.returncode != 0:
        print(f"gnuplot failed: {p.stderr.strip()}")
        return False
    return True


# ---------------------------------------------------------------- files

def write(results, out_dir, work_dir, write_json=True):
    """Write <scenario>-<stamp>.json/.md/.png into out_dir and refresh LATEST.md; return paths."""
    os.makedirs(out_dir, exist_ok=True)
    base = f"{results['scenario']}-{results['stamp']}"
    json_path = os.path.join(out_dir, base + ".json")
    md_path = os.path.join(out_dir, base + ".md")
    png_path = os.path.join(out_dir, base + ".png")
    has_chart = chart(results, png_path, work_dir)
    if write_json:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=1, sort_keys=False)
            f.write("\n")
    with open(md_path, "w") as f:
        f.write(markdown(results, os.path.basename(png_path) if has_chart else None))
    update_latest(out_dir, results, base, has_chart)
    return json_path, md_path, png_path if has_chart else None


LATEST_HEADER = """# Latest benchmark results

The newest full run of each scenario (`bench/run.sh`; see `bench/README.md` for what the numbers
mean). Absolute numbers move with the machine; compare the ratios, which were measured side by side.
"""


def update_latest(out_dir, results, base, has_chart):
    path = os.path.join(out_dir, "LATEST.md")
    sections = {}
    if os.path.exists(path):
        with open(path) as f:
            text = f.read()
        for chunk in text.split("<!-- scenario:")[1:]:
            name, _, rest = chunk.partition(" -->")
            body = rest.split("<!-- /scenario -->")[0]
            sections[name.strip()] = body.strip("\n")
    sc = results["scenario"]
    body = [f"## `{sc}` — {results['title']}", "",
            f"[{base}.md]({base}.md) · [{base}.json]({base}.json) · {results['started']} · "
            f"{results['machine']['nproc']} × {results['machine']['cpu_model']} · "
            f"{results['params']['rounds']} rounds" +
            ("" if sc == "idle" else f" × {results['params']['duration']} s"), "",
            table(sc, results["summary"], results["params"]), ""]
    if has_chart:
        body += [f"![{sc}]({base}.png)", ""]
    if results["goals"]:
        body += _goal_lines(results) + [""]
    if "marchproxy" in results["summary"]:
        body += [f"MarchProxy: {results['versions'].get('marchproxy', '?')}", ""]
    body.append(results["layout"])
    sections[sc] = "\n".join(body)
    order = ["h1", "h1-new", "idle"]
    names = [s for s in order if s in sections] + sorted(s for s in sections if s not in order)
    with open(path, "w") as f:
        f.write(LATEST_HEADER)
        for name in names:
            f.write(f"\n<!-- scenario:{name} -->\n{sections[name]}\n<!-- /scenario -->\n")


if __name__ == "__main__":
    # Re-draw the .md, the chart and LATEST.md from results files, after this file changed:
    #   python3 bench/lib/report.py bench/results/h1-20261125-194812.json ...
    import sys
    import tempfile
    for path in sys.argv[1:]:
        with open(path) as f:
            res = json.load(f)
        with tempfile.TemporaryDirectory() as tmp:
            print(", ".join(p for p in write(res, os.path.dirname(os.path.abspath(path)), tmp,
                                             write_json=False) if p))
