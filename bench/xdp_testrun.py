#!/usr/bin/env python3
"""bench/xdp_testrun.py — the XDP program alone, per run, through BPF_PROG_TEST_RUN with repeat:
the kernel times the whole repeat loop once (no per-run clock reads, no bpf_stats), so the average
is the program's own cost on a warm cache, with far less noise than a receive-path measurement.

A marchproxy with bench/xdp.py's drop configuration (lists, buckets, port filter, counters) attaches
its program to one end of a veth pair (generic mode) in a private network namespace; `bpftool prog run`
then runs each packet below `--repeat` times through our program and through the minimal
`mp_xdp_drop_all` of the same object, `--rounds` times, median. Packets:

  flood     UDP to port 9 from one source, which the per-source bucket (1 pps, burst 1) drops:
            the drop path bench/xdp.py measures: after the first drop, the per-CPU drop hint
            (hint lookup and compare, jiffies, counter; no clock call, no prefix or bucket lookup)
  denied    the same from a deny-listed source (dropped after the LPM lookup)
  allowed   the same from an allow-listed source (passed after the LPM lookup)

Usage: bench/xdp_testrun.py [--marchproxy PATH] [--repeat N] [--rounds R] [--label TEXT]
Needs root, bpftool, iproute2. Prints a markdown table (also written to --out when given).
"""
import argparse
import os
import re
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from xdp import PROXY_YAML  # noqa: E402  (the same drop configuration as bench/xdp.py)

ROOT = os.path.dirname(HERE)
NS, IF = "mpxtestrun", "mpxt0"



def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def frame(src):
    udp = struct.pack("!HHHH", 40000, 9, 8 + 64, 0) + b"x" * 64
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0, socket.inet_aton(src),
                     socket.inet_aton("10.251.0.1"))
    return b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp


def prog_id(name):
    for line in sh("ip", "netns", "exec", NS, "bpftool", "prog", "show").stdout.splitlines():
        m = re.match(r"(\d+): xdp\s+name (\S+)", line)
        if m and m.group(2) == name:
            yield int(m.group(1))


def run_ns(pid, path, repeat):
    out = sh("bpftool", "prog", "run", "id", str(pid), "data_in", path, "repeat", str(repeat)).stdout
    m = re.search(r"Return value: (\d+), duration \(average\): (\d+)ns", out)
    if not m:
        raise RuntimeError(f"bpftool prog run: {out}")
    return int(m.group(1)), int(m.group(2))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marchproxy", default=os.path.join(ROOT, "build", "release", "src", "cli", "marchproxy"))
    ap.add_argument("--repeat", type=int, default=2_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--label", default="")
    ap.add_argument("--out")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/xdp_testrun.py needs root")
    work = tempfile.mkdtemp(prefix="mp-xdp-testrun-")
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "netns", "add", NS)
    proxy = None
    try:
        sh("ip", "netns", "exec", NS, "ip", "link", "add", IF, "type", "veth", "peer", "name", IF + "p")
        for dev in (IF, IF + "p"):
            sh("ip", "netns", "exec", NS, "ip", "link", "set", dev, "up")
        sh("ip", "netns", "exec", NS, "ip", "link", "set", "lo", "up")
        cfg = os.path.join(work, "proxy.yaml")
        open(cfg, "w").write(PROXY_YAML % ("127.0.0.1", IF, "generic"))
        proxy = subprocess.Popen(["ip", "netns", "exec", NS, a.marchproxy, "ingress", "--no-watch", "-c", cfg],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for line in proxy.stderr:
            if "marchproxy ingress ready" in line:
                break
            if "cannot attach" in line:
                raise RuntimeError(line)
        ours = max(prog_id("mp_xdp"))
        minimal = max(prog_id("mp_xdp_drop_all"))
        packets = {"flood": "203.0.113.5", "denied": "192.0.2.9", "allowed": "198.51.100.7"}
        files = {}
        for name, src in packets.items():
            files[name] = os.path.join(work, name + ".bin")
            open(files[name], "wb").write(frame(src))
        results = {}
        for r in range(a.rounds):
            for name, path in files.items():
                for prog, pid in (("marchproxy", ours), ("minimal", minimal)):
                    ret, ns = run_ns(pid, path, a.repeat)
                    results.setdefault((name, prog), []).append((ret, ns))
            print(f"round {r + 1}: " + ", ".join(f"{k[0]}/{k[1]} {v[-1][1]} ns" for k, v in results.items()),
                  flush=True)
    finally:
        if proxy:
            proxy.terminate()
            proxy.wait(20)
        sh("ip", "netns", "del", NS, check=False)
    verdict = {1: "drop", 2: "pass"}
    lines = [f"| packet | marchproxy ns/run | minimal XDP_DROP ns/run | × minimal | verdict |", "|---|---|---|---|---|"]
    for name in files:
        ours_ns = statistics.median(ns for _, ns in results[(name, "marchproxy")])
        min_ns = statistics.median(ns for _, ns in results[(name, "minimal")])
        ret = results[(name, "marchproxy")][-1][0]
        lines.append(f"| {name} | {ours_ns:.0f} | {min_ns:.0f} | {ours_ns / max(min_ns, 1):.2f} | "
                     f"{verdict.get(ret, ret)} |")
    table = "\n".join(lines)
    print(table)
    if a.out:
        with open(a.out, "a") as f:
            f.write(f"\n{a.label} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {a.rounds} rounds × "
                    f"{a.repeat} runs, median):\n\n{table}\n")


if __name__ == "__main__":
    main()
