"""Running wrk and reading its totals.

wrk prints its totals through bench/lib/wrk_report.lua as one JSON line; its own CPU time comes
from wait4()'s rusage, so we can tell when the load generator, not the proxy, was the limit.
"""

import json
import os
import re
import shutil
import subprocess

LUA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wrk_report.lua")


def wrk_command(url, duration, connections, threads, cpus, new_connection, timeout_s=2):
    cmd = ["taskset", "-c", cpus, shutil.which("wrk") or "wrk",
           "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
           "--timeout", f"{timeout_s}s", "--latency", "-s", LUA]
    if new_connection:
        # wrk closes and reopens its connection after a response to "Connection: close".
        cmd += ["-H", "Connection: close"]
    return cmd + [url]


def _run_logged(cmd, log_path, registry, name):
    """Runs a load generator to completion: (output, exit code, rusage). registry
    (targets.PidRegistry) records its PID while it runs, for cleanup on interruption."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    if registry:
        registry.add(p.pid, name)
    out = p.stdout.read().decode(errors="replace")
    p.stdout.close()
    _, status, ru = os.wait4(p.pid, 0)
    if registry:
        registry.remove([p.pid])
    if log_path:
        with open(log_path, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out}\n")
    return out, os.waitstatus_to_exitcode(status), ru


def run_wrk(cmd, log_path=None, registry=None):
    """Run one wrk command; return its totals, its CPU seconds and its text report.

    registry (targets.PidRegistry) records wrk's PID while it runs, for cleanup on interruption.
    """
    out, code, ru = _run_logged(cmd, log_path, registry, "wrk")
    result = None
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            result = json.loads(line[len("WRK_JSON "):])
    if result is None:
        raise RuntimeError(f"wrk exited {code} without totals:\n{out[-2000:]}")
    result["exit_code"] = code
    result["cpu_s"] = ru.ru_utime + ru.ru_stime
    result["text"] = out
    return result


def wrk_version():
    try:
        p = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        return (p.stdout + p.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"


def h2load_command(url, duration, connections, streams, threads, cpus):
    """h2load (nghttp2-client) for scenario h2: `connections` HTTP/2 connections with `streams`
    concurrent streams each, for `duration` seconds (prior knowledge for http:// URLs)."""
    return ["taskset", "-c", cpus, shutil.which("h2load") or "h2load",
            "-D", str(duration), "-c", str(connections), "-m", str(streams), "-t", str(threads), url]


def run_h2load(cmd, log_path=None, registry=None):
    """Runs h2load; returns totals in run_wrk()'s shape. h2load reports no percentiles: p50 is its
    mean request time and p99 its mean + 2 sd (labelled so in the scenario's reading notes)."""
    out, code, ru = _run_logged(cmd, log_path, registry, "h2load")
    m_fin = re.search(r"finished in ([0-9.]+)(ms|s)", out)
    m_req = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", out)
    m_time = re.search(r"time for request:\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)\s+([0-9.]+)(us|ms|s)"
                       r"\s+([0-9.]+)(us|ms|s)", out)
    if not (m_fin and m_req and m_time):
        raise RuntimeError(f"h2load exited {code} without totals:\n{out[-2000:]}")
    unit = {"us": 1, "ms": 1000, "s": 1_000_000}
    dur_us = float(m_fin.group(1)) * unit[m_fin.group(2)]
    mean_us = float(m_time.group(5)) * unit[m_time.group(6)]
    sd_us = float(m_time.group(7)) * unit[m_time.group(8)]
    return {
        "requests": int(m_req.group(4)), "duration_us": dur_us,
        "latency_us": {"p50": mean_us, "p99": mean_us + 2 * sd_us},
        "errors": {"failed": int(m_req.group(5)), "errored": int(m_req.group(6)), "timeout": int(m_req.group(7))},
        "exit_code": code, "cpu_s": ru.ru_utime + ru.ru_stime, "text": out,
    }
