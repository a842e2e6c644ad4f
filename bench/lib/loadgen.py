"""Running wrk and reading its totals.

wrk prints its totals through bench/lib/wrk_report.lua as one JSON line; its own CPU time comes
from wait4()'s rusage, so we can tell when the load generator, not the proxy, was the limit.
"""

import json
import os
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


def run_wrk(cmd, log_path=None, registry=None):
    """Run one wrk command; return its totals, its CPU seconds and its text report.

    registry (targets.PidRegistry) records wrk's PID while it runs, for cleanup on interruption.
    """
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL)
    if registry:
        registry.add(p.pid, "wrk")
    out = p.stdout.read().decode(errors="replace")
    p.stdout.close()
    _, status, ru = os.wait4(p.pid, 0)
    if registry:
        registry.remove([p.pid])
    p.returncode = os.waitstatus_to_exitcode(status)
    if log_path:
        with open(log_path, "a") as f:
            f.write(f"$ {' '.join(cmd)}\n{out}\n")
    result = None
    for line in out.splitlines():
        if line.startswith("WRK_JSON "):
            result = json.loads(line[len("WRK_JSON "):])
    if result is None:
        raise RuntimeError(f"wrk exited {p.returncode} without totals:\n{out[-2000:]}")
    result["exit_code"] = p.returncode
    result["cpu_s"] = ru.ru_utime + ru.ru_stime
    result["text"] = out
    return result


def wrk_version():
    try:
        p = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=5)
        return (p.stdout + p.stderr).splitlines()[0].strip()
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return "unknown"
