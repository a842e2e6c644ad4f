#!/usr/bin/env python3
"""Syscalls per keep-alive request (scenario h1) for MarchProxy, nginx and HAProxy.

Each proxy runs with the bench configs (1 worker, pinned to CPU 0, origin nginx on CPU 0, wrk on
CPU 1). Two passes per proxy, each over a fresh set of wrk connections:
  - perf stat -e 'syscalls:sys_enter_*' on the proxy's processes: every syscall counted by the
    kernel, at full speed (no ptrace), divided by the origin's request count (stub_status);
  - strace -f -yy on the proxy: each socket syscall attributed to the client side (local port =
    the proxy's listener) or the origin side (remote port = the origin's), plus epoll/timer calls.
    strace slows the proxy, so batching (events per epoll_wait) differs from the perf pass.

Usage: bench/syscalls.py [--marchproxy BIN] [--proxies marchproxy,nginx,haproxy] [--seconds 5]
Prints one markdown table per pass.
"""

import argparse
import collections
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib"))
import procstat  # noqa: E402
import targets  # noqa: E402

# Outside the proxies' config directory: MarchProxy watches it (inotify) for reloads.
TRACE_DIR = tempfile.mkdtemp(prefix="mp-syscalls-trace-")

WRK = ["taskset", "-c", "1", "wrk", "-t", "1", "-c", "50"]


def wrk(port, seconds):
    subprocess.run(WRK + ["-d", f"{seconds}s", f"http://127.0.0.1:{port}/"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def measured(origin, target, seconds, tracer):
    """Runs tracer (a Popen) around one wrk run; returns the origin's request count and the
    proxy's CPU seconds (utime + stime of all its processes) over the run."""
    time.sleep(0.5)
    pids = target.pids()
    _, r0 = origin.status()
    c0 = procstat.cpu_ticks(pids)
    wrk(target.port, seconds)
    c1 = procstat.cpu_ticks(pids)
    _, r1 = origin.status()
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    return r1 - r0 - 1, procstat.cpu_delta_seconds(c0, c1)[0]


def perf_pass(origin, target, seconds, work):
    out = os.path.join(TRACE_DIR, f"perf-{target.name}.txt")
    pids = ",".join(str(p) for p in target.pids())
    p = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out, "-e", "syscalls:sys_enter_*",
                          "-e", "syscalls:sys_exit_recvfrom", "--filter", "ret == -11",
                          "-p", pids], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reqs, cpu = measured(origin, target, seconds, p)
    counts = {"CPU µs/req (perf counting; loaded machine)": cpu * 1e6}  # ÷ reqs in the table
    with open(out) as f:
        for line in f:
            parts = line.strip().split(",")
            if len(parts) > 3 and parts[2] == "syscalls:sys_exit_recvfrom" and parts[0].isdigit():
                counts["recvfrom (EAGAIN, included above)"] = int(parts[0])
            elif len(parts) > 3 and parts[2].startswith("syscalls:sys_enter_") and parts[0].isdigit():
                n = int(parts[0])
                if n:
                    counts[parts[2][len("syscalls:sys_enter_"):]] = n
    return reqs, counts


LINE = re.compile(r"^(\d+)\s+(\w+)\((.*)")
RESUMED = re.compile(r"^(\d+)\s+<\.\.\. \w+ resumed>")
FD = re.compile(r"^(\d+)<([^\[>]*(?:\[[^\]]*\])?)>")


def strace_pass(origin, target, seconds, work):
    out = os.path.join(TRACE_DIR, f"strace-{target.name}.txt")
    cmd = ["strace", "-f", "-qq", "-yy", "-s", "0", "-o", out]
    for pid in target.pids():
        cmd += ["-p", str(pid)]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    reqs, _ = measured(origin, target, seconds, p)
    client = f"127.0.0.1:{target.port}->"
    upstream = f"->127.0.0.1:{origin.port}]"
    counts = collections.Counter()
    pending = {}  # pid -> (side, name) of a call strace split in two ("<unfinished ...>")

    def count(key, line):
        side, name = key
        if "= -1 EAGAIN" in line:
            name += " (EAGAIN)"
        counts[(side, name)] += 1

    with open(out) as f:
        for line in f:
            r = RESUMED.match(line)
            if r:
                if r.group(1) in pending:
                    count(pending.pop(r.group(1)), line)
                continue
            m = LINE.match(line)
            if not m:
                continue
            pid, name, args = m.group(1), m.group(2), m.group(3)
            side = ""
            fdm = FD.match(args)
            if name == "epoll_ctl":
                # epoll_ctl(epfd<anon_inode:[eventpoll]>, EPOLL_CTL_MOD, fd<...>, ...)
                parts = args.split(", ", 3)
                fdm = FD.match(parts[2]) if len(parts) > 2 else None
                name = f"epoll_ctl {parts[1].replace('EPOLL_CTL_', '')}" if len(parts) > 1 else name
            if fdm:
                what = fdm.group(2)
                if client in what:
                    side = "client"
                elif upstream in what:
                    side = "origin"
                elif "timerfd" in what:
                    side = "timerfd"
                elif "eventfd" in what:
                    side = "eventfd"
            if line.rstrip().endswith("<unfinished ...>"):
                pending[pid] = (side, name)
            else:
                count((side, name), line)
    return reqs, counts


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--marchproxy", default=targets.default_marchproxy_binary())
    ap.add_argument("--proxies", default="marchproxy,nginx,haproxy")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--strace-seconds", type=int, default=3)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mp-syscalls-")
    reg = targets.PidRegistry(None)
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    conns = max(1024, min(nofile - 512, 16384))
    values = {"WORK": work, "NOFILE": nofile, "WORKER_CONNECTIONS": conns, "MAXCONN": conns,
              "WORKERS": 1, "BODY": targets.BODY.replace("\n", "\\n")}
    values.update(targets.make_certificates(work))
    origin = targets.Origin(work, reg, "0", values)
    origin.start()
    values["ORIGIN_PORT"] = origin.port
    results = {}
    try:
        for name in a.proxies.split(","):
            cls = targets.PROXIES[name]
            t = cls(work, reg, "0", values, a.marchproxy) if cls is targets.MarchProxy else cls(work, reg, "0", values)
            t.start()
            try:
                wrk(t.port, 1)  # warm-up: the origin pool is filled
                t.track()
                results[name] = (perf_pass(origin, t, a.seconds, work),
                                 strace_pass(origin, t, a.strace_seconds, work))
            finally:
                t.stop()
    finally:
        origin.stop()
    names = list(results)
    print(f"perf stat, syscalls per request ({a.seconds} s, wrk -c 50)\n")
    table(names, [results[n][0] for n in names], ["syscall"], lambda k: [k])
    print(f"\nstrace -f -yy, syscalls per request by side ({a.strace_seconds} s, wrk -c 50)\n")
    table(names, [results[n][1] for n in names], ["side", "syscall"], lambda k: [k[0] or "-", k[1]])


def table(names, passes, key_columns, cells):
    """One markdown table: a row per counted key (per request), its total and the request count.
    Rows that are not syscalls of their own (EAGAIN share, CPU time) stay out of the total."""
    print("| " + " | ".join(key_columns) + " | " + " | ".join(names) + " |")
    print("|" + "---|" * len(key_columns) + "---:|" * len(names))
    totals = [0.0] * len(names)
    pad = "| " * (len(key_columns) - 1)
    for k in sorted({k for _, c in passes for k in c}):
        row = []
        for i, (reqs, c) in enumerate(passes):
            v = c.get(k, 0) / reqs
            totals[i] += 0 if "included above" in str(k) or "CPU" in str(k) else v
            row.append(f"{v:.3f}")
        if any(float(x) >= 0.001 for x in row):
            print("| " + " | ".join(cells(k)) + " | " + " | ".join(row) + " |")
    print(f"{pad}| **total** | " + " | ".join(f"**{t:.2f}**" for t in totals) + " |")
    print(f"{pad}| requests | " + " | ".join(str(reqs) for reqs, _ in passes) + " |")

if __name__ == "__main__":
    main()
