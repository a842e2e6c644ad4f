#!/usr/bin/env python3
"""Syscalls, context switches and CPU per GiB of one MarchProxy tunnel (bench/egress.py's bulk client):
counts that do not depend on how loaded the machine is, for before/after measures of the splice relay.

`marchproxy egress` with bench/egress.py's config (one worker, pinned to CPU 0); bench/egress.py's bulk
sender (256 KiB send()s, CPU 1) opens a CONNECT or SOCKS5 tunnel, or connects to the TCP port forward,
and streams to bench/egress.py's sink (CPU 1) for --seconds. `perf stat -p PID` counts the proxy's
syscalls (raw_syscalls:sys_enter and the splice / epoll_wait / epoll_ctl tracepoints) and context
switches over the transfer; the proxy's CPU is utime+stime from /proc/PID/stat. Gbit/s is printed too,
but on a shared machine only the per-GiB counts travel.

Usage: bench/tunnel_profile.py --marchproxy BIN [--kind connect,socks,tcp] [--seconds 4] [--rounds 3]
(needs perf with tracepoint access: root, or kernel.perf_event_paranoid <= 1).
"""

import argparse
import base64
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from egress import TOKEN, bulk_worker, cpu_seconds, start_marchproxy, start_sink  # noqa: E402

EVENTS = ["raw_syscalls:sys_enter", "syscalls:sys_enter_splice", "syscalls:sys_enter_epoll_wait",
          "syscalls:sys_enter_epoll_ctl", "context-switches"]
NAMES = {"raw_syscalls:sys_enter": "syscalls", "syscalls:sys_enter_splice": "splice",
         "syscalls:sys_enter_epoll_wait": "epoll_wait", "syscalls:sys_enter_epoll_ctl": "epoll_ctl",
         "context-switches": "context switches"}


def one_run(proxy, ports, sink_port, results, kind, seconds):
    auth = "Basic " + base64.b64encode(f"bench:{TOKEN}".encode()).decode()
    target = {"connect": ports[0], "socks": ports[1], "tcp": ports[2]}[kind]
    perf = subprocess.Popen(["perf", "stat", "-x,", "-e", ",".join(EVENTS), "-p", str(proxy.pid)],
                            stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)  # perf attached
    c0 = cpu_seconds(proxy.pid)
    w = multiprocessing.get_context("fork").Process(target=bulk_worker,
                                                    args=((kind, target, sink_port, auth, seconds, 1),))
    w.start()
    w.join()
    n, dt = results.get(timeout=30)
    while n == 0:  # the port forward's readiness probe reached the sink too
        n, dt = results.get(timeout=30)
    c1 = cpu_seconds(proxy.pid)
    perf.send_signal(2)
    _, err = perf.communicate()
    gib = n / 2**30
    row = {"Gbit/s": n * 8 / dt / 1e9 if dt else 0.0, "CPU s/GiB": (c1 - c0) / gib}
    for line in err.strip().splitlines():
        f = line.split(",")
        if len(f) > 2 and f[2] in NAMES and f[0].replace(".", "").isdigit():
            row[NAMES[f[2]]] = float(f[0]) / gib
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marchproxy", required=True)
    ap.add_argument("--kind", default="connect,socks,tcp", help="tunnels to measure: connect, socks, tcp (the port forward)")
    ap.add_argument("--seconds", type=float, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if not shutil.which("perf"):
        sys.exit("perf not found")
    work = tempfile.mkdtemp(prefix="tunnel-profile-")
    sinkp, sink_port, results = start_sink(1)
    # The port forward also goes to the sink (bench/egress.py points it at iperf3 -s).
    proxy, port, socks_port, fwd_port = start_marchproxy(a.marchproxy, work, 1, sink_port, sink_port)
    try:
        print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {a.rounds} rounds of {a.seconds:g} s, medians per GiB")
        cols = ["Gbit/s", "CPU s/GiB", "syscalls", "splice", "epoll_wait", "epoll_ctl", "context switches"]
        print("| tunnel | " + " | ".join(cols) + " |")
        print("|---|" + "---:|" * len(cols))
        for kind in a.kind.split(","):
            rows = [one_run(proxy, (port, socks_port, fwd_port), sink_port, results, kind, a.seconds)
                    for _ in range(a.rounds)]
            med = {c: statistics.median(r.get(c, 0.0) for r in rows) for c in cols}
            print(f"| {kind} | {med['Gbit/s']:.2f} | {med['CPU s/GiB']:.3f} | " +
                  " | ".join(f"{med[c]:,.0f}" for c in cols[2:]) + " |", flush=True)
    finally:
        proxy.stop()
        sinkp.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
