#!/usr/bin/env python3
"""Control-loop benchmark (issue 5): how fast a change made through the manager API reaches proxies,
and what 1,000 heartbeating proxies cost the manager.

  1. propagate: N simulated proxies (N = 1, 10, 50; threads in this process) speak the real protocol
     (docs/control-protocol.md) to a real manager on SQLite: register with an `openssl req` CSR, then
     long-poll GET …/config over mTLS on a kept-alive connection and "apply" each snapshot (parse the
     JSON, check its version). The driver PATCHes a route through the API and measures, per proxy,
     the time from sending the PATCH to that proxy holding the new version. p50/p99 over all
     (write, proxy) pairs. Goal: p99 < 100 ms at N = 50.
  2. heartbeats: 1,000 proxies registered one by one over the control listener (sharing one key and
     CSR to keep openssl out of the loop; each has its own id, token and certificate) each send one
     heartbeat, spread evenly over --beat-window seconds (a compressed 30 s interval), three times:
     over a new mTLS connection per beat, over a new connection resuming the last TLS session, and
     over a kept-alive connection (what the agent does); each time the manager's CPU time
     (/proc/PID/stat utime+stime) during the window is scaled to "1,000 proxies every 30 s". Goal:
     under 5 % of one core.

A licence for 2,000 proxies is made with `marchproxy license keygen/issue` (community allows 3).
Prints a table, writes bench/results/propagate-<timestamp>.{json,md}. Shared machine: numbers are
marked "loaded machine" when the load average exceeds the core count.

    python3 bench/propagate.py [--sizes 1,10,50] [--writes 20] [--beats 1000] [--beat-window 10]
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
sys.path.append(os.path.join(HERE, "lib"))  # after tests/integration: both have a harness.py
from control_client import ControlClient, make_csr  # noqa: E402
from harness import find_binary  # noqa: E402
from manager_harness import Manager  # noqa: E402
import procstat  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def licence(tmp):
    priv, pub = os.path.join(tmp, "lic.key"), os.path.join(tmp, "lic.pub")
    lic = os.path.join(tmp, "license.json")
    subprocess.run([find_binary(), "license", "keygen", "--out-private", priv, "--out-public", pub], check=True,
                   capture_output=True)
    expires = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
    subprocess.run([find_binary(), "license", "issue", "--key", priv, "--customer", "bench", "--max-proxies", "2000",
                    "--expires", expires, "--out", lic], check=True, capture_output=True)
    return ["--license-file", lic, "--license-public-key", pub]


class SimProxy(threading.Thread):
    """Long-polls forever; records when each version arrived."""

    def __init__(self, client, version):
        super().__init__(daemon=True)
        self.c, self.version, self.arrived, self.stop = client, version, {}, False
        self.cv = threading.Condition()

    def run(self):
        while not self.stop:
            try:
                st, _, body = self.c.config(since=self.version, wait=30, keep=True)
            except Exception:  # noqa: BLE001 - manager stopping
                if self.stop:
                    return
                time.sleep(0.1)
                continue
            if st == 200:
                snap = body if isinstance(body, dict) else json.loads(body)  # "apply" = parse
                now = time.perf_counter()
                with self.cv:
                    self.version = snap["version"]
                    self.arrived[snap["version"]] = now
                    self.cv.notify_all()


def propagate(mgr, admin, cluster, key, ca, tmp, n, writes):
    route_id = admin.post("/api/v1/routes", {"cluster_id": cluster, "name": f"r{n}", "hosts": [f"n{n}.example.test"],
                                             "backends": [{"address": "127.0.0.1:9001"}]})[2]["id"]
    sims = []
    for i in range(n):
        c = ControlClient(mgr.control_port, ca, tmp, f"p{n}-{i}")
        st, _, b = c.register(key)
        assert st == 201, b
        st, _, snap = c.config(keep=True)
        assert st == 200
        sims.append(SimProxy(c, snap["version"]))
    for s in sims:
        s.start()
    # Wait until every proxy is parked in its long-poll.
    deadline = time.time() + 30
    while time.time() < deadline:
        m = admin.get("/metrics")[2]
        line = [x for x in m.splitlines() if x.startswith("marchproxy_manager_config_long_polls ")]
        if line and int(line[0].split()[1]) >= n:
            break
        time.sleep(0.05)
    lat = []
    for w in range(writes):
        t0 = time.perf_counter()
        st, _, b = admin.patch(f"/api/v1/routes/{route_id}", {"paths": [f"/w{w}/"]})
        assert st == 200, b
        want = admin.get(f"/api/v1/clusters/{cluster}")[2]["config_version"]
        for s in sims:
            with s.cv:
                s.cv.wait_for(lambda: s.version >= want, timeout=30)
                first = min((t for v, t in s.arrived.items() if v >= want), default=None)
            lat.append((first - t0) * 1000 if first else float("inf"))
        time.sleep(0.05)
    for s in sims:
        s.stop = True
    # Free the licence slots for the next size.
    for s in sims:
        admin.delete(f"/api/v1/proxies/{s.c.id}")
    return {"proxies": n, "writes": writes, "samples": len(lat), "p50_ms": round(pct(lat, 50), 1),
            "p99_ms": round(pct(lat, 99), 1), "max_ms": round(max(lat), 1)}


def heartbeats(mgr, key, ca, tmp, beats, window):
    """Manager CPU per heartbeat in three ways of calling: a new mTLS connection per beat (the agent
    before keep-alive), a new connection that resumes the last TLS session, and a kept-alive
    connection (what the agent does now: a handshake only when the connection was lost)."""
    # One key/CSR shared by all simulated proxies keeps openssl out of the loop; each still gets its
    # own id, token and certificate.
    shared = make_csr(tmp, "fleet")
    fleet = []
    for i in range(beats):
        c = ControlClient(mgr.control_port, ca, tmp, f"hb{i}", key=shared)
        st, _, b = c.register(key)
        assert st == 201, b
        fleet.append(c)
    pid = mgr.proc.pid
    out = {"proxies": beats}
    for mode in ("new", "resumed", "kept"):
        if mode != "new":  # prime: a session to resume / an open connection to keep (not measured)
            for c in fleet:
                st, _, _ = c.heartbeat(1, keep=mode == "kept", resume=mode == "resumed")
                assert st == 200
        before = procstat.cpu_ticks([pid])
        t0 = time.perf_counter()
        for i, c in enumerate(fleet):
            target = t0 + window * i / len(fleet)
            delay = target - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            st, _, _ = c.heartbeat(1, keep=mode == "kept", resume=mode == "resumed")
            assert st == 200
        elapsed = time.perf_counter() - t0
        cpu, _ = procstat.cpu_delta_seconds(before, procstat.cpu_ticks([pid]))
        per_beat = cpu / beats  # CPU seconds per heartbeat
        out[mode] = {"window_s": round(elapsed, 2), "manager_cpu_s": round(cpu, 3),
                     "cpu_ms_per_beat": round(per_beat * 1000, 2),
                     # 1,000 proxies, one beat every 30 s each:
                     "cpu_share_of_one_core_at_30s": round(100 * per_beat * 1000 / 30.0, 2)}
    for c in fleet:
        if c._conn:
            c._conn.close()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1,10,50")
    ap.add_argument("--writes", type=int, default=20)
    ap.add_argument("--beats", type=int, default=1000)
    ap.add_argument("--beat-window", type=float, default=10.0)
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mp-propagate-")
    mgr = Manager(tmp, "sqlite://" + os.path.join(tmp, "manager.db"), extra_args=licence(tmp),
                  env={"MARCHPROXY_BCRYPT_COST": "4"})
    mgr.start()
    try:
        admin = mgr.client()
        admin.login()
        ca = os.path.join(tmp, "ca.pem")
        with open(ca, "w") as f:
            f.write(admin.get("/api/v1/ca.pem")[2])
        st, _, cl = admin.post("/api/v1/clusters", {"name": "bench"})
        rows = [propagate(mgr, admin, cl["id"], cl["api_key"], ca, tmp, int(n), a.writes) for n in a.sizes.split(",")]
        hb = heartbeats(mgr, cl["api_key"], ca, tmp, a.beats, a.beat_window)
    finally:
        mgr.stop()
    load = os.getloadavg()[0]
    loaded = load > (os.cpu_count() or 1)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    md = [f"# propagate {stamp}" + (" (loaded machine: load average %.1f on %d cores)" % (load, os.cpu_count())
                                    if loaded else ""), "",
          "API write → new version held by every simulated proxy (long-poll over mTLS, SQLite):", "",
          "| proxies | writes | samples | p50 ms | p99 ms | max ms |", "|---|---|---|---|---|---|"]
    md += [f"| {r['proxies']} | {r['writes']} | {r['samples']} | {r['p50_ms']} | {r['p99_ms']} | {r['max_ms']} |"
           for r in rows]
    md += ["", f"Heartbeats: {hb['proxies']} proxies, one beat each; manager CPU a beat and the share of one core "
               "for 1,000 proxies beating every 30 s:", "",
           "| connection per beat | window s | manager CPU s | ms a beat | % of one core |", "|---|---|---|---|---|"]
    for mode, label in (("new", "new mTLS handshake"), ("resumed", "new, TLS session resumed"),
                        ("kept", "kept alive (the agent)")):
        m = hb[mode]
        md.append(f"| {label} | {m['window_s']} | {m['manager_cpu_s']} | {m['cpu_ms_per_beat']} | "
                  f"{m['cpu_share_of_one_core_at_30s']} |")
    md.append("")
    text = "\n".join(md)
    print(text)
    out = os.path.join(HERE, "results", f"propagate-{stamp}")
    with open(out + ".md", "w") as f:
        f.write(text)
    with open(out + ".json", "w") as f:
        json.dump({"propagate": rows, "heartbeats": hb, "loadavg": load, "loaded_machine": loaded}, f, indent=1)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
