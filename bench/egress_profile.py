#!/usr/bin/env python3
"""Instructions and syscalls per forwarded request of `marchproxy egress` (bench/egress.py's fwd
scenario, MarchProxy alone): deterministic before/after measures for the forward path.

One worker, one HTTP listener, Basic Proxy-Authorization, one mapping to bench/egress.py's nginx origin
(one worker, pinned to CPU 0, 31-byte body); `wrk -t1 -c8` sends absolute-form `GET http://127.0.0.1:ORIGIN/` through the proxy.
  callgrind: valgrind --tool=callgrind --instr-atstart=no, `callgrind_control -i on` after start-up,
             Collected Ir / requests (wrk's count). Writes the callgrind.out file for callgrind_annotate.
  strace:    strace -c -f attached to every thread of a running proxy over the wrk run; calls per
             request, by syscall.
Usage: bench/egress_profile.py --marchproxy BIN [--tool callgrind|strace|both] [--seconds 5] [--out DIR]
"""

import argparse
import base64
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from egress import TOKEN, free_port, start_origin, wait_port  # noqa: E402


def proxy_config(work, origin_port):
    """bench/egress.py's MarchProxy config without the SOCKS5 listener and the port forward (JSON is YAML)."""
    port = free_port()
    conf = os.path.join(work, "egress.yaml")
    with open(conf, "w") as f:
        json.dump({"schema": 1, "kind": "egress", "workers": 1,
                   "listeners": [{"name": "http", "address": "127.0.0.1", "port": port}],
                   "admin": {"address": "127.0.0.1", "port": 0},
                   "services": [{"name": "bench", "tokens": ["sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest()]}],
                   "mappings": [{"name": "bench", "sources": ["bench"], "destinations": ["127.0.0.1/32"],
                                 "protocols": ["http"], "ports": [str(origin_port)]}],
                   "timeouts": {"idle": "10m"}}, f)
    return conf, port


def wrk(work, port, origin_port, seconds):
    script = os.path.join(work, "fwd.lua")
    auth = "Basic " + base64.b64encode(f"bench:{TOKEN}".encode()).decode()
    with open(script, "w") as f:
        f.write(f'wrk.path = "http://127.0.0.1:{origin_port}/"\nwrk.headers["Proxy-Authorization"] = "{auth}"\n')
    out = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", "-s", script, f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        sys.exit("wrk saw errors:\n" + out)
    return int(re.search(r"(\d+) requests in", out).group(1))


def callgrind(binary, work, origin_port, seconds, out_dir):
    conf, port = proxy_config(work, origin_port)
    out_file = os.path.join(out_dir, "callgrind.out.egress-fwd")
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--trace-children=yes", "--instr-atstart=no",
                          f"--callgrind-out-file={out_file}",
                          binary, "egress", "--config", conf, "--no-watch", "--log-level", "warn"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, 120)
    subprocess.run(["callgrind_control", "-i", "on", str(p.pid)], check=True, stdout=subprocess.DEVNULL)
    n = wrk(work, port, origin_port, seconds)
    subprocess.run(["callgrind_control", "-i", "off", str(p.pid)], check=True, stdout=subprocess.DEVNULL)
    p.send_signal(signal.SIGTERM)
    p.wait(120)
    with open(out_file) as f:
        ir = sum(int(m.group(1)) for m in re.finditer(r"^totals: (\d+)", f.read(), re.M))
    print(f"callgrind: {n} requests, {ir} Ir, {ir / n:,.0f} Ir/request ({out_file})")


def strace(binary, work, origin_port, seconds, out_dir):
    conf, port = proxy_config(work, origin_port)
    p = subprocess.Popen([binary, "egress", "--config", conf, "--no-watch", "--log-level", "warn"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    out_file = os.path.join(out_dir, "strace-egress-fwd.txt")
    tids = os.listdir(f"/proc/{p.pid}/task")
    t = subprocess.Popen(["strace", "-c", "-f", "-o", out_file] + [a for tid in tids for a in ("-p", tid)],
                         stderr=subprocess.DEVNULL)
    time.sleep(1)
    n = wrk(work, port, origin_port, seconds)
    t.send_signal(signal.SIGINT)
    t.wait(30)
    p.send_signal(signal.SIGTERM)
    p.wait(30)
    calls = {}
    with open(out_file) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)$", line)
            if m and m.group(2) != "total":
                calls[m.group(2)] = int(m.group(1))
    total = sum(calls.values())
    print(f"strace: {n} requests, {total / n:.2f} syscalls/request: " +
          ", ".join(f"{k} {v / n:.3f}" for k, v in sorted(calls.items(), key=lambda kv: -kv[1]) if v / n >= 0.001))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marchproxy", required=True)
    ap.add_argument("--tool", choices=("callgrind", "strace", "both"), default="both")
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--out", default=None, help="where the callgrind/strace files go (default: a temp dir)")
    a = ap.parse_args()
    for tool in ("nginx", "wrk") + (("valgrind", "callgrind_control") if a.tool != "strace" else ()) + \
            (("strace",) if a.tool != "callgrind" else ()):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found")
    work = tempfile.mkdtemp(prefix="egress-profile-")
    out_dir = a.out or work
    os.makedirs(out_dir, exist_ok=True)
    origin, origin_port = start_origin(work)
    try:
        if a.tool in ("callgrind", "both"):
            callgrind(os.path.abspath(a.marchproxy), work, origin_port, a.seconds, out_dir)
        if a.tool in ("strace", "both"):
            strace(os.path.abspath(a.marchproxy), work, origin_port, a.seconds, out_dir)
    finally:
        origin.stop()


if __name__ == "__main__":
    main()
