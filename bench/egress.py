#!/usr/bin/env python3
"""Egress forward proxy beside Squid: forward-proxy requests/s, CONNECT throughput, CONNECT setup rate.

    bench/egress.py [--marchproxy PATH] [--duration 10] [--connections 32] [--tunnel-mib 2048]
                    [--setups 2000] [--rounds 3] [--no-squid]

Same machine, same origin (one nginx worker), one worker/process each, alternating targets round
after round; the numbers that travel are the ratios and the proxy's CPU per unit of work (from
/proc/PID/stat), not absolute rates. Writes bench/results/egress-<timestamp>.md (and .json) for a
full run (--duration >= 10, --rounds >= 3), else under bench/work/results/. Standard library only;
needs nginx, wrk, squid (scripts/setup.sh installs them).

Scenarios
  fwd     wrk -> proxy -> nginx, absolute-form GET http://127.0.0.1:ORIGIN/ (keep-alive client side)
  tunnel  one CONNECT tunnel, the client pushes --tunnel-mib MiB to a sink on loopback
  setup   --setups sequential CONNECTs (connect, CONNECT, 200, one byte each way, close)
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "bench-token"
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        st = f.read()
    fields = st[st.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICK  # utime + stime


def wait_port(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def taskset(cpu):
    return ["taskset", "-c", str(cpu)] if shutil.which("taskset") and os.cpu_count() > 1 else []


class Proc:
    def __init__(self, args, work, name):
        self.log = open(os.path.join(work, f"{name}.log"), "w")
        self.p = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.p.pid

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait(5)
        self.log.close()


def start_origin(work):
    port = free_port()
    conf = os.path.join(work, "origin.conf")
    os.makedirs(os.path.join(work, "origin-tmp"), exist_ok=True)
    with open(conf, "w") as f:
        f.write(f"""worker_processes 1; daemon off; master_process off;
pid {work}/origin.pid; error_log {work}/origin-error.log warn;
events {{ worker_connections 4096; }}
http {{ access_log off; keepalive_timeout 300s; keepalive_requests 1000000;
  client_body_temp_path {work}/origin-tmp; proxy_temp_path {work}/origin-tmp;
  fastcgi_temp_path {work}/origin-tmp; uwsgi_temp_path {work}/origin-tmp; scgi_temp_path {work}/origin-tmp;
  server {{ listen 127.0.0.1:{port} backlog=4096; location / {{ return 200 "hello from the origin, 31 b\\n"; }} }} }}
""")
    p = Proc(taskset(0) + ["nginx", "-c", conf, "-p", work], work, "origin")
    wait_port(port)
    return p, port


def start_marchproxy(binary, work, origin_port, sink_port):
    port = free_port()
    h = hashlib.sha256(TOKEN.encode()).hexdigest()
    conf = os.path.join(work, "egress.yaml")
    with open(conf, "w") as f:
        f.write(f"""schema: 1
kind: egress
workers: 1
listeners: [{{name: http, address: 127.0.0.1, port: {port}}}]
admin: {{address: 127.0.0.1, port: 0}}
services: [{{name: bench, tokens: ["sha256:{h}"]}}]
mappings:
  - {{name: bench, sources: [bench], destinations: [127.0.0.1/32], protocols: [http, tcp],
     ports: ["{origin_port}", "{sink_port}"]}}
timeouts: {{idle: 10m}}
""")
    p = Proc(taskset(0) + [binary, "egress", "--config", conf, "--no-watch", "--log-level", "warn"], work, "marchproxy")
    wait_port(port)
    return p, port


def start_squid(work):
    port = free_port()
    d = os.path.join(work, "squid")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    conf = os.path.join(d, "squid.conf")
    with open(conf, "w") as f:
        f.write(f"""http_port 127.0.0.1:{port}
workers 1
http_access allow all
cache deny all
cache_mem 8 MB
access_log none
cache_store_log none
cache_log {d}/cache.log
pid_filename {d}/squid.pid
coredump_dir {d}
max_filedescriptors 16384
via off
forwarded_for delete
server_persistent_connections on
client_persistent_connections on
""")
    p = Proc(taskset(0) + ["squid", "-N", "-f", conf], work, "squid")
    wait_port(port, 30)
    return p, port


def wrk_fwd(proxy_port, origin_port, duration, connections, auth, work):
    script = os.path.join(work, "fwd.lua")
    hdr = f'wrk.headers["Proxy-Authorization"] = "{auth}"\n' if auth else ""
    with open(script, "w") as f:
        f.write(f'wrk.path = "http://127.0.0.1:{origin_port}/"\n{hdr}')
    out = subprocess.run(taskset(1) + ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script,
                                       f"http://127.0.0.1:{proxy_port}/"], capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    p99ms = float(p99.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[p99.group(2)] if p99 else float("nan")
    return rps, p99ms, (int(non2xx.group(1)) if non2xx else 0), (errors.group(1) if errors else "")


class Sink:
    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1024)
        self.port = self.sock.getsockname()[1]
        self.received = 0
        self.done = threading.Event()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        buf = bytearray(1 << 20)
        n = 0
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            if n == 0 and k == 1:  # setup scenario: echo the one byte
                c.sendall(buf[:1])
            n += k
        self.received = n
        c.close()
        self.done.set()


def connect_via(proxy_port, target_port, auth):
    s = socket.create_connection(("127.0.0.1", proxy_port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1:{target_port}\r\n"
    if auth:
        req += f"Proxy-Authorization: {auth}\r\n"
    s.sendall((req + "\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(4096)
        if not d:
            raise RuntimeError("proxy closed during CONNECT")
        head += d
    if not head.startswith(b"HTTP/1.1 200") and not head.startswith(b"HTTP/1.0 200"):
        raise RuntimeError(f"CONNECT refused: {head[:80]!r}")
    return s


def tunnel(proxy_port, sink, mib, auth):
    """Returns seconds to push mib MiB through one tunnel (None = direct to the sink)."""
    chunk = memoryview(bytes(1 << 20))
    if proxy_port is None:
        s = socket.create_connection(("127.0.0.1", sink.port))
    else:
        s = connect_via(proxy_port, sink.port, auth)
    sink.done.clear()
    t0 = time.monotonic()
    for _ in range(mib):
        s.sendall(chunk)
    s.shutdown(socket.SHUT_WR)
    sink.done.wait(300)
    dt = time.monotonic() - t0
    s.close()
    return dt


def setups(proxy_port, sink, n, auth):
    t0 = time.monotonic()
    for _ in range(n):
        s = connect_via(proxy_port, sink.port, auth)
        s.sendall(b"x")
        s.recv(1)
        s.close()
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marchproxy", default=None)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--tunnel-mib", type=int, default=2048)
    ap.add_argument("--setups", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-squid", action="store_true")
    a = ap.parse_args()
    binary = a.marchproxy or next((p for p in (os.path.join(ROOT, "build", b, "src", "cli", "marchproxy")
                                               for b in ("bench", "release")) if os.access(p, os.X_OK)), None)
    if not binary:
        sys.exit("no marchproxy binary: cmake --preset release && cmake --build --preset release --target marchproxy")
    for tool in ("nginx", "wrk") + (() if a.no_squid else ("squid",)):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/setup.sh installs it)")
    work = tempfile.mkdtemp(prefix="egress-bench-")
    os.chmod(work, 0o755)
    auth = "Basic " + base64.b64encode(f"bench:{TOKEN}".encode()).decode()
    procs = []
    try:
        origin, origin_port = start_origin(work)
        procs.append(origin)
        sink = Sink()
        mp, mp_port = start_marchproxy(binary, work, origin_port, sink.port)
        procs.append(mp)
        targets = [("MarchProxy", mp, mp_port, auth)]
        if not a.no_squid:
            sq, sq_port = start_squid(work)
            procs.append(sq)
            targets.append(("Squid", sq, sq_port, None))
        res = {name: {"fwd_rps": [], "fwd_us": [], "fwd_p99": [], "fwd_bad": 0, "mibs": [], "cpu_gb": [],
                      "setup_rate": [], "setup_us": []} for name, *_ in targets}
        direct = []
        for r in range(a.rounds):
            direct.append(a.tunnel_mib / tunnel(None, sink, a.tunnel_mib, None))
            for name, proc, port, au in targets:
                c0 = cpu_seconds(proc.pid)
                rps, p99, bad, err = wrk_fwd(port, origin_port, a.duration, a.connections, au, work)
                c1 = cpu_seconds(proc.pid)
                res[name]["fwd_rps"].append(rps)
                res[name]["fwd_us"].append((c1 - c0) / max(1, rps * a.duration) * 1e6)
                res[name]["fwd_p99"].append(p99)
                res[name]["fwd_bad"] += bad
                c0 = cpu_seconds(proc.pid)
                dt = tunnel(port, sink, a.tunnel_mib, au)
                c1 = cpu_seconds(proc.pid)
                res[name]["mibs"].append(a.tunnel_mib / dt)
                res[name]["cpu_gb"].append((c1 - c0) / (a.tunnel_mib / 1024))
                c0 = cpu_seconds(proc.pid)
                dt = setups(port, sink, a.setups, au)
                c1 = cpu_seconds(proc.pid)
                res[name]["setup_rate"].append(a.setups / dt)
                res[name]["setup_us"].append((c1 - c0) / a.setups * 1e6)
                print(f"round {r + 1} {name}: fwd {rps:,.0f} req/s, tunnel {a.tunnel_mib / dt if False else res[name]['mibs'][-1]:,.0f} MiB/s, "
                      f"setup {res[name]['setup_rate'][-1]:,.0f}/s", flush=True)
    finally:
        for p in reversed(procs):
            p.stop()

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    rows = []
    for name in res:
        d = res[name]
        rows.append((name, med(d["fwd_rps"]), med(d["fwd_us"]), med(d["fwd_p99"]), d["fwd_bad"], med(d["mibs"]),
                     med(d["cpu_gb"]), med(d["setup_rate"]), med(d["setup_us"])))
    sq = next((r for r in rows if r[0] == "Squid"), None)
    lines = [f"# egress — MarchProxy beside Squid ({datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ})", "",
             f"{a.rounds} rounds; fwd: wrk -t1 -c{a.connections} {a.duration}s; tunnel: {a.tunnel_mib} MiB through one "
             f"CONNECT; setup: {a.setups} sequential CONNECTs. One worker each, proxy pinned to CPU 0 with the origin, "
             f"clients on CPU 1. Medians. Direct loopback (no proxy): {med(direct):,.0f} MiB/s.", "",
             "| target | fwd req/s | fwd CPU µs/req | fwd p99 ms | non-2xx | tunnel MiB/s | tunnel CPU s/GiB | CONNECT setups/s | CPU µs/setup |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]:,.0f} | {r[2]:.1f} | {r[3]:.2f} | {r[4]} | {r[5]:,.0f} | {r[6]:.3f} | {r[7]:,.0f} | {r[8]:.1f} |")
    if sq:
        mp = rows[0]
        lines += ["", f"- fwd requests/s: {mp[1] / sq[1]:.2f}× Squid (goal ≥ 3×); CPU per request {mp[2] / sq[2]:.2f}× Squid's",
                  f"- tunnel throughput: {mp[5] / sq[5]:.2f}× Squid, {mp[5] / med(direct):.2f}× direct (goal ≥ 0.7× direct); CPU per GiB {mp[6] / sq[6]:.2f}× Squid's",
                  f"- CONNECT setups/s: {mp[7] / sq[7]:.2f}× Squid; CPU per setup {mp[8] / sq[8]:.2f}× Squid's"]
    lines += ["", "The tunnel and setup clients are Python (one connection at a time): they bound the absolute rates; "
              "the CPU columns are the proxy's own."]
    text = "\n".join(lines) + "\n"
    print(text)
    full = a.duration >= 10 and a.rounds >= 3
    outdir = os.path.join(ROOT, "bench", "results" if full else os.path.join("work", "results"))
    os.makedirs(outdir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(outdir, f"egress-{stamp}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(outdir, f"egress-{stamp}.json"), "w") as f:
        json.dump({"args": vars(a), "binary": binary, "direct_mibs": direct, "results": res}, f, indent=1)
    print(f"wrote {outdir}/egress-{stamp}.md")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
