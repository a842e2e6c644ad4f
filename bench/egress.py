#!/usr/bin/env python3
"""Egress forward proxy beside Squid, tinyproxy and HAProxy: forward-proxy requests/s, tunnel
throughput (iperf3), tunnel setup rate.

    bench/egress.py [--marchproxy PATH] [--duration 10] [--connections 32] [--iperf-seconds 6]
                    [--setups 2000] [--setup-clients 4] [--rounds 3] [--note TEXT]

Same machine, same origin (one nginx worker), one worker/thread each, every proxy pinned to CPU 0,
the clients to CPU 1, targets alternating round after round; the numbers that travel are the ratios
and the proxy's CPU per unit of work (from /proc/PID/stat), not absolute rates. Writes
bench/results/egress-<timestamp>.md (and .json) for a full run (--duration >= 10, --rounds >= 3),
else under bench/work/results/. Standard library only; needs nginx, wrk, squid, tinyproxy, haproxy,
iperf3 (scripts/setup.sh installs them).

Scenarios
  fwd     wrk -> proxy -> nginx, absolute-form GET http://127.0.0.1:ORIGIN/: MarchProxy, Squid, tinyproxy
          (MarchProxy and Squid both check Basic credentials on every request; tinyproxy checks none)
  tunnel  one TCP stream, 1. iperf3 -c -> path -> iperf3 -s: direct; TCP port forwards (HAProxy mode
          tcp, MarchProxy forwards:); 2. a bulk sender that opens the path itself (direct, HAProxy mode
          tcp, or a CONNECT / SOCKS5 handshake, then the same socket carries the data, as a real client
          does) -> a sink: direct, HAProxy, MarchProxy CONNECT and SOCKS5, Squid and tinyproxy CONNECT
  setup   --setups tunnels from --setup-clients processes: connect, CONNECT or SOCKS5, 200,
          GET / HTTP/1.0 to the origin through the tunnel, read to the close
"""

import argparse
import base64
import datetime
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
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


def cpu_busy():
    """(busy, total) jiffies per CPU from /proc/stat."""
    out = []
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d", line):
                v = [int(x) for x in line.split()[1:]]
                out.append((sum(v) - v[3] - v[4], sum(v)))  # minus idle and iowait
    return out


def busy_pct(b0, b1):
    return [100 * (x1[0] - x0[0]) / max(1, x1[1] - x0[1]) for x0, x1 in zip(b0, b1)]


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


def start_marchproxy(binary, work, origin_port, iperf_port, sink_port):
    port, socks_port, fwd_port = free_port(), free_port(), free_port()
    h = hashlib.sha256(TOKEN.encode()).hexdigest()
    conf = os.path.join(work, "egress.yaml")
    with open(conf, "w") as f:
        f.write(f"""schema: 1
kind: egress
workers: 1
listeners:
  - {{name: http, address: 127.0.0.1, port: {port}}}
  - {{name: socks, address: 127.0.0.1, port: {socks_port}, protocol: socks5}}
forwards:
  - {{name: iperf, listen: "127.0.0.1:{fwd_port}", destination: "127.0.0.1:{iperf_port}",
     sources: [{{cidr: 127.0.0.0/8, service: bench}}]}}
admin: {{address: 127.0.0.1, port: 0}}
services: [{{name: bench, tokens: ["sha256:{h}"]}}]
mappings:
  - {{name: bench, sources: [bench], destinations: [127.0.0.1/32], protocols: [http, tcp],
     ports: ["{origin_port}", "{iperf_port}", "{sink_port}"]}}
timeouts: {{idle: 10m}}
""")
    p = Proc(taskset(0) + [binary, "egress", "--config", conf, "--no-watch", "--log-level", "warn"], work, "marchproxy")
    for q in (port, socks_port, fwd_port):
        wait_port(q)
    return p, port, socks_port, fwd_port


def start_squid(work):
    port = free_port()
    d = os.path.join(work, "squid")
    os.makedirs(d, exist_ok=True)
    os.chmod(d, 0o777)
    conf = os.path.join(d, "squid.conf")
    # Basic credentials like MarchProxy's (an htpasswd entry for bench:TOKEN through Squid's own
    # helper; Squid caches a verified credential for credentialsttl, as MarchProxy's worker cache
    # does): every proxy in the comparison authenticates every request.
    passwd = os.path.join(d, "passwd")
    digest = subprocess.run(["openssl", "passwd", "-apr1", TOKEN], capture_output=True, text=True,
                            check=True).stdout.strip()
    with open(passwd, "w") as f:
        f.write(f"bench:{digest}\n")
    os.chmod(passwd, 0o644)
    helper = next((h for h in ("/usr/lib/squid/basic_ncsa_auth", "/usr/lib64/squid/basic_ncsa_auth")
                   if os.access(h, os.X_OK)), None)
    if not helper:
        sys.exit("Squid's basic_ncsa_auth helper not found")
    with open(conf, "w") as f:
        f.write(f"""http_port 127.0.0.1:{port}
workers 1
auth_param basic program {helper} {passwd}
auth_param basic children 1
auth_param basic credentialsttl 2 hours
acl bench proxy_auth bench
http_access allow bench
http_access deny all
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


def start_haproxy(work, iperf_port, sink_port):
    port, port2 = free_port(), free_port()
    conf = os.path.join(work, "haproxy.cfg")
    with open(conf, "w") as f:
        f.write(f"""global
  nbthread 1
  maxconn 4096
defaults
  mode tcp
  option splice-auto
  timeout connect 5s
  timeout client 10m
  timeout server 10m
listen fwd
  bind 127.0.0.1:{port}
  server iperf 127.0.0.1:{iperf_port}
listen sink
  bind 127.0.0.1:{port2}
  server sink 127.0.0.1:{sink_port}
""")
    p = Proc(taskset(0) + ["haproxy", "-db", "-f", conf], work, "haproxy")
    wait_port(port)
    wait_port(port2)
    return p, port, port2


def start_tinyproxy(work):
    port = free_port()
    conf = os.path.join(work, "tinyproxy.conf")
    with open(conf, "w") as f:
        f.write(f"""User nobody
Group nogroup
Port {port}
Listen 127.0.0.1
Timeout 600
LogFile "{work}/tinyproxy-own.log"
LogLevel Critical
MaxClients 4096
Allow 127.0.0.1
DisableViaHeader Yes
""")
    os.chmod(work, 0o777)
    p = Proc(taskset(0) + ["tinyproxy", "-d", "-c", conf], work, "tinyproxy")
    wait_port(port)
    return p, port


def read_until(s, marker):
    head = b""
    while marker not in head:
        d = s.recv(4096)
        if not d:
            raise RuntimeError(f"proxy closed the connection during the handshake after {head[:80]!r}")
        head += d
    return head


def recv_exact(s, n):
    b = b""
    while len(b) < n:
        d = s.recv(n - len(b))
        if not d:
            raise RuntimeError("proxy closed the connection during the SOCKS5 handshake")
        b += d
    return b


def connect_via(proxy_port, target_port, auth):
    """An HTTP CONNECT tunnel to 127.0.0.1:target_port through the proxy."""
    s = socket.create_connection(("127.0.0.1", proxy_port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    req = f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1:{target_port}\r\n"
    if auth:
        req += f"Proxy-Authorization: {auth}\r\n"
    s.sendall((req + "\r\n").encode())
    head = read_until(s, b"\r\n\r\n")
    if not re.match(rb"HTTP/1\.[01] 200", head):
        raise RuntimeError(f"CONNECT refused: {head[:80]!r}")
    if not head.endswith(b"\r\n\r\n"):
        raise RuntimeError(f"bytes after the CONNECT response: {head[:120]!r}")
    return s


def socks5_via(proxy_port, target_port, user, password):
    """A SOCKS5 CONNECT (RFC 1928, username/password RFC 1929) to 127.0.0.1:target_port."""
    s = socket.create_connection(("127.0.0.1", proxy_port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"\x05\x01\x02")
    if recv_exact(s, 2) != b"\x05\x02":
        raise RuntimeError("SOCKS5: username/password method refused")
    u, pw = user.encode(), password.encode()
    s.sendall(bytes([1, len(u)]) + u + bytes([len(pw)]) + pw)
    if recv_exact(s, 2) != b"\x01\x00":
        raise RuntimeError("SOCKS5: authentication failed")
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + target_port.to_bytes(2, "big"))
    rep = recv_exact(s, 10)
    if rep[1] != 0:
        raise RuntimeError(f"SOCKS5 CONNECT refused: reply {rep[1]}")
    return s


BULK_CHUNK = 256 * 1024  # bytes per send(); iperf3 writes 128 KiB


def sink_main(lsock, cpu, results):
    """The bulk scenario's receiver (a process on the load CPU): for each connection, reads to EOF into
    one buffer and reports (bytes, seconds from the first byte to the last) on `results`."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    mv = memoryview(bytearray(1 << 20))
    while True:
        c, _ = lsock.accept()
        n, first, last = 0, None, None
        while True:
            try:
                k = c.recv_into(mv)
            except OSError:
                k = 0
            if not k:
                break
            last = time.monotonic()
            if first is None:
                first = last
            n += k
        c.close()
        results.put((n, (last - first) if n else 0.0))


def start_sink(cpu):
    lsock = socket.socket()
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(16)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    p = ctx.Process(target=sink_main, args=(lsock, cpu, results), daemon=True)
    p.start()
    port = lsock.getsockname()[1]
    lsock.close()
    return p, port, results


def bulk_worker(args):
    """One stream of `seconds` through a path the sender opens itself: directly or through a TCP
    forward ("tcp"), or through an HTTP CONNECT / SOCKS5 tunnel whose socket then carries the data (no
    relay in the client), then a close (not a half-close: Squid ends a CONNECT tunnel on one). The
    sink measures what arrived."""
    kind, port, sink_port, auth, seconds, cpu = args
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    if kind == "tcp":
        s = socket.create_connection(("127.0.0.1", port))
    elif kind == "connect":
        s = connect_via(port, sink_port, auth)
    else:
        s = socks5_via(port, sink_port, "bench", TOKEN)
    buf = memoryview(bytes(BULK_CHUNK))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.sendall(buf)
    s.close()


def iperf(port, seconds, work):
    """iperf3 -c through 127.0.0.1:port; returns (Gbit/s received, bytes received)."""
    for attempt in range(5):
        out = subprocess.run(taskset(1) + ["iperf3", "-c", "127.0.0.1", "-p", str(port), "-t", str(seconds), "-J"],
                             capture_output=True, text=True)
        try:
            j = json.loads(out.stdout)
        except ValueError:
            j = {"error": out.stdout[-300:] + out.stderr[-300:]}
        if "error" not in j:
            r = j["end"]["sum_received"]
            return r["bits_per_second"] / 1e9, r["bytes"]
        if "busy" not in j["error"] or attempt == 4:
            raise RuntimeError(f"iperf3 through port {port}: {j['error']}")
        time.sleep(1)  # the server is still closing the previous test


def setup_worker(args):
    kind, proxy_port, target_port, auth, n, cpu = args
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    req = b"GET / HTTP/1.0\r\nHost: origin\r\n\r\n"
    for _ in range(n):
        s = connect_via(proxy_port, target_port, auth) if kind == "connect" else \
            socks5_via(proxy_port, target_port, "bench", TOKEN)
        s.sendall(req)
        got = b""
        while True:
            d = s.recv(4096)
            if not d:
                break
            got += d
        s.close()
        if not got.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(f"through the tunnel: {got[:80]!r}")
    return n


def setups(pool, kind, proxy_port, origin_port, auth, n, clients, cpu):
    """n tunnels, from `clients` processes each opening them one after another: connect, CONNECT (or
    SOCKS5), 200, GET / HTTP/1.0 to the origin through the tunnel, read the response to the close."""
    per = [n // clients + (1 if i < n % clients else 0) for i in range(clients)]
    t0 = time.monotonic()
    done = sum(pool.map(setup_worker, [(kind, proxy_port, origin_port, auth, k, cpu) for k in per]))
    return done / (time.monotonic() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--marchproxy", default=None)
    ap.add_argument("--duration", type=int, default=10, help="seconds of wrk per fwd run")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--iperf-seconds", type=int, default=6, help="seconds of iperf3 per tunnel run")
    ap.add_argument("--setups", type=int, default=2000)
    ap.add_argument("--setup-clients", type=int, default=4, help="client processes opening tunnels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default="fwd,tunnel,setup", help="scenarios to run (a quick look: not written to bench/results)")
    ap.add_argument("--note", default="", help="a line added to the results (e.g. what else ran)")
    a = ap.parse_args()
    binary = a.marchproxy or next((p for p in (os.path.join(ROOT, "build", b, "src", "cli", "marchproxy")
                                               for b in ("bench", "release")) if os.access(p, os.X_OK)), None)
    if not binary:
        sys.exit("no marchproxy binary: cmake --preset release && cmake --build --preset release --target marchproxy")
    for tool in ("nginx", "wrk", "squid", "tinyproxy", "haproxy", "iperf3"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found (scripts/setup.sh installs it)")
    work = tempfile.mkdtemp(prefix="egress-bench-")
    os.chmod(work, 0o755)
    auth = "Basic " + base64.b64encode(f"bench:{TOKEN}".encode()).decode()
    load_cpu = 1 if os.cpu_count() > 1 else None
    procs, sinks = [], []
    fwd = {n: {"rps": [], "us": [], "p99": [], "bad": 0, "errors": []} for n in ("MarchProxy", "Squid", "tinyproxy")}
    load = [os.getloadavg()[0]]
    tun = {}  # name -> {"gbps": [], "cpu_gib": []}
    setup = {n: {"rate": [], "us": [], "busy": []} for n in ("MarchProxy CONNECT", "MarchProxy SOCKS5", "Squid CONNECT", "tinyproxy CONNECT")}
    pool = multiprocessing.get_context("fork").Pool(a.setup_clients)
    try:
        origin, origin_port = start_origin(work)
        procs.append(origin)
        iperf_port = free_port()
        procs.append(Proc(taskset(1) + ["iperf3", "-s", "-p", str(iperf_port)], work, "iperf3-server"))
        wait_port(iperf_port)
        sink, sink_port, sink_results = start_sink(load_cpu)
        sinks.append(sink)
        mp, mp_port, mp_socks, mp_fwd = start_marchproxy(binary, work, origin_port, iperf_port, sink_port)
        hp, hp_port, hp_sink_port = start_haproxy(work, iperf_port, sink_port)
        sq, sq_port = start_squid(work)
        tp, tp_port = start_tinyproxy(work)
        procs += [mp, hp, sq, tp]

        tunnels = [  # name, proxy process, (iperf3, port) or (bulk, kind, port, auth)
            ("direct", None, ("iperf3", iperf_port)),
            ("HAProxy mode tcp", hp, ("iperf3", hp_port)),
            ("MarchProxy forward", mp, ("iperf3", mp_fwd)),
            ("bulk: direct", None, ("bulk", "tcp", sink_port, None)),
            ("bulk: HAProxy mode tcp", hp, ("bulk", "tcp", hp_sink_port, None)),
            ("MarchProxy CONNECT", mp, ("bulk", "connect", mp_port, auth)),
            ("MarchProxy SOCKS5", mp, ("bulk", "socks5", mp_socks, None)),
            ("Squid CONNECT", sq, ("bulk", "connect", sq_port, auth)),
            ("tinyproxy CONNECT", tp, ("bulk", "connect", tp_port, None)),
        ]
        tun = {n: {"gbps": [], "cpu_gib": [], "busy": []} for n, *_ in tunnels}
        fwd_targets = [("MarchProxy", mp, mp_port, auth), ("Squid", sq, sq_port, auth), ("tinyproxy", tp, tp_port, None)]
        setup_targets = [("MarchProxy CONNECT", mp, "connect", mp_port, auth), ("MarchProxy SOCKS5", mp, "socks5", mp_socks, None),
                         ("Squid CONNECT", sq, "connect", sq_port, auth), ("tinyproxy CONNECT", tp, "connect", tp_port, None)]
        for r in range(a.rounds):
            for name, proc, port, au in (fwd_targets if "fwd" in a.only else []):
                c0 = cpu_seconds(proc.pid)
                rps, p99, bad, err = wrk_fwd(port, origin_port, a.duration, a.connections, au, work)
                c1 = cpu_seconds(proc.pid)
                fwd[name]["rps"].append(rps)
                fwd[name]["us"].append((c1 - c0) / max(1, rps * a.duration) * 1e6)
                fwd[name]["p99"].append(p99)
                fwd[name]["bad"] += bad
                fwd[name]["errors"].append(err)
                print(f"round {r + 1} fwd {name}: {rps:,.0f} req/s {err}", flush=True)
            for name, proc, port in (tunnels if "tunnel" in a.only else []):
                c0, b0 = (cpu_seconds(proc.pid) if proc else 0), cpu_busy()
                if port[0] == "iperf3":
                    gbps, nbytes = iperf(port[1], a.iperf_seconds, work)
                else:
                    while not sink_results.empty():  # e.g. the start-up checks' empty connections
                        sink_results.get()
                    pool.apply(bulk_worker, ((port[1], port[2], sink_port, port[3], a.iperf_seconds, load_cpu),))
                    nbytes, secs = sink_results.get(timeout=60)
                    gbps = nbytes * 8 / secs / 1e9
                tun[name]["busy"].append(busy_pct(b0, cpu_busy()))
                c1 = cpu_seconds(proc.pid) if proc else 0
                tun[name]["gbps"].append(gbps)
                tun[name]["cpu_gib"].append((c1 - c0) / (nbytes / 2**30) if proc else 0.0)
                print(f"round {r + 1} tunnel {name}: {gbps:.2f} Gbit/s", flush=True)
            for name, proc, kind, port, au in (setup_targets if "setup" in a.only else []):
                c0, b0 = cpu_seconds(proc.pid), cpu_busy()
                rate = setups(pool, kind, port, origin_port, au, a.setups, a.setup_clients, load_cpu)
                c1 = cpu_seconds(proc.pid)
                setup[name]["rate"].append(rate)
                setup[name]["us"].append((c1 - c0) / a.setups * 1e6)
                setup[name]["busy"].append(busy_pct(b0, cpu_busy()))
                print(f"round {r + 1} setup {name}: {rate:,.0f}/s", flush=True)
        load.append(os.getloadavg()[0])
    finally:
        pool.terminate()
        for sk in sinks:
            sk.terminate()
        for p in reversed(procs):
            p.stop()

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    if set(a.only.split(",")) != {"fwd", "tunnel", "setup"}:  # a quick look: medians only, nothing written
        for group in (fwd, tun, setup):
            for n, d in group.items():
                if d.get("rps") or d.get("gbps") or d.get("rate"):
                    key = "rps" if "rps" in d else "gbps" if "gbps" in d else "rate"
                    cpu = f", CPU {med(d['us']):.1f} µs/unit" if d.get("us") else ""
                    print(f"{n}: {key} {med(d[key]):,.2f}{cpu}")
        shutil.rmtree(work, ignore_errors=True)
        return

    def busy(d):  # median busy % of the first two CPUs over the rounds
        return " / ".join(f"{med([b[i] for b in d['busy']]):.0f}" for i in range(min(2, len(d["busy"][0]))))
    now = datetime.datetime.now(datetime.timezone.utc)
    lines = [f"# egress — MarchProxy beside Squid, tinyproxy and HAProxy ({now:%Y-%m-%dT%H:%M:%SZ})", "",
             f"{a.rounds} rounds, medians. One worker/thread each where the peer has the knob (tinyproxy is a thread per "
             f"connection), every proxy pinned to CPU 0 (with the nginx origin), the clients (wrk, iperf3 client and server, "
             f"the bulk sender and sink, the setup clients) on CPU 1. Load average (1 min) at start {load[0]:.1f}, at end {load[-1]:.1f} "
             f"on {os.cpu_count()} CPUs: other work shared the machine, so absolute rates move from run to run; compare the "
             f"ratios and the CPU-per-unit columns.", ""]
    if a.note:
        lines += [a.note, ""]
    lines += ["## fwd: HTTP forward proxy", "",
              f"wrk -t1 -c{a.connections} {a.duration} s, absolute-form `GET http://127.0.0.1:ORIGIN/` (31-byte body).", "",
              "| proxy | req/s | CPU µs/req | p99 ms | non-2xx | wrk socket errors (last round) |", "|---|---:|---:|---:|---:|---|"]
    for n, d in fwd.items():
        lines.append(f"| {n} | {med(d['rps']):,.0f} | {med(d['us']):.1f} | {med(d['p99']):.2f} | {d['bad']} | {d['errors'][-1] or '—'} |")
    m, s_, t_ = (med(fwd[n]["rps"]) for n in ("MarchProxy", "Squid", "tinyproxy"))
    lines += ["", f"MarchProxy: **{m / s_:.2f}× Squid** (goal ≥ 3×), {m / t_:.2f}× tinyproxy in requests/s; CPU per request "
              f"{med(fwd['MarchProxy']['us']) / med(fwd['Squid']['us']):.2f}× Squid's, "
              f"{med(fwd['MarchProxy']['us']) / med(fwd['tinyproxy']['us']):.2f}× tinyproxy's.", "",
              "## tunnel: throughput of one TCP stream", "",
              f"Two clients, {a.iperf_seconds} s each, one stream. **iperf3** (`iperf3 -c` to `iperf3 -s`): directly, or through a TCP "
              "port forward (HAProxy `mode tcp` with `option splice-auto`, MarchProxy `forwards:`; both relay with splice(2)). "
              f"**bulk** (rows named `bulk:` and the CONNECT / SOCKS5 rows): a sender that opens the path itself, directly, "
              f"through HAProxy's port forward, or with a CONNECT / SOCKS5 handshake after which the same socket carries the "
              f"data (as a real tunnel client does: no relay in the client), sends {BULK_CHUNK // 1024} KiB buffers for the "
              "duration and closes; the sink divides the bytes it received by the time from the first to the last. Each row is compared "
              "with direct and HAProxy *with the same client*. CPU s/GiB is the proxy's own (utime+stime from /proc/PID/stat) "
              "per GiB received.", "",
              "| path | client | Gbit/s | proxy CPU s/GiB | × HAProxy | × direct | CPU 0 / CPU 1 busy % |",
              "|---|---|---:|---:|---:|---:|---:|"]
    base = {"iperf3": (med(tun["HAProxy mode tcp"]["gbps"]), med(tun["direct"]["gbps"])),
            "bulk": (med(tun["bulk: HAProxy mode tcp"]["gbps"]), med(tun["bulk: direct"]["gbps"]))}
    client = {n: ("iperf3" if spec[0] == "iperf3" else "bulk") for n, _, spec in tunnels}
    for n, d in tun.items():
        g = med(d["gbps"])
        hgb, dgb = base[client[n]]
        cpu = f"{med(d['cpu_gib']):.3f}" if "direct" not in n else "—"
        lines.append(f"| {n} | {client[n]} | {g:.2f} | {cpu} | {g / hgb:.2f} | {g / dgb:.2f} | {busy(d)} |")
    hc = med(tun["HAProxy mode tcp"]["cpu_gib"])
    lines += [""] + [f"- {n}: **{med(tun[n]['gbps']) / base[client[n]][0]:.2f}× HAProxy** (goal ≥ 1.0×), "
                     f"**{med(tun[n]['gbps']) / base[client[n]][1]:.2f}× direct** (goal ≥ 0.7×); CPU per GiB "
                     f"{med(tun[n]['cpu_gib']) / hc:.2f}× HAProxy's (iperf3)"
                     for n in ("MarchProxy forward", "MarchProxy CONNECT", "MarchProxy SOCKS5")]
    lines += [f"- the two clients: bulk direct {base['bulk'][1]:.2f} Gbit/s, iperf3 direct {base['iperf3'][1]:.2f} Gbit/s"]
    lines += ["", "## setup: new tunnels per second", "",
              f"{a.setups} tunnels from {a.setup_clients} client processes (on CPU 1), each: connect, CONNECT (or SOCKS5 "
              "handshake), 200, `GET / HTTP/1.0` to the origin through the tunnel, read to the close.", "",
              "| proxy | tunnels/s | CPU µs/tunnel | CPU 0 / CPU 1 busy % |", "|---|---:|---:|---:|"]
    for n, d in setup.items():
        lines.append(f"| {n} | {med(d['rate']):,.0f} | {med(d['us']):.1f} | {busy(d)} |")
    sr, su = med(setup["Squid CONNECT"]["rate"]), med(setup["Squid CONNECT"]["us"])
    lines += ["", f"MarchProxy CONNECT: **{med(setup['MarchProxy CONNECT']['rate']) / sr:.2f}× Squid** in tunnels/s, CPU per "
              f"tunnel {med(setup['MarchProxy CONNECT']['us']) / su:.2f}× Squid's (the origin's share of CPU 0 is the same "
              "for every proxy). CPU 1 near 100 % means the Python clients were the limit, and tunnels/s is theirs; the CPU "
              "µs column is the proxy's own either way. The busy % include the other tenants of the machine."]
    text = "\n".join(lines) + "\n"
    print(text)
    full = a.duration >= 10 and a.rounds >= 3
    outdir = os.path.join(ROOT, "bench", "results" if full else os.path.join("work", "results"))
    os.makedirs(outdir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(outdir, f"egress-{stamp}.md"), "w") as f:
        f.write(text)
    with open(os.path.join(outdir, f"egress-{stamp}.json"), "w") as f:
        json.dump({"args": vars(a), "binary": binary, "loadavg": load, "fwd": fwd, "tunnel": tun, "setup": setup}, f, indent=1)
    print(f"wrote {outdir}/egress-{stamp}.md")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
