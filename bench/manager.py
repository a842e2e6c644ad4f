#!/usr/bin/env python3
"""Manager API benchmark, on SQLite and on PostgreSQL 15 (started in a temp dir like the tests).

  1. Reads: a cluster with 10,000 services and 10,000 mappings (seeded directly in the database, so
     the set-up is quick; the reads go through the API): latency of a 100-item (the default) and a
     1,000-item page of services,
     of a 1,000-item page of mappings, of one service, and of walking all 10,000 services in pages.
  2. Writes: 1,000 service creations through the API (one client, then 4 concurrent clients); each
     is a durable transaction with its audit row and config-version bump.

Prints a table and writes bench/results/manager-<timestamp>.{json,md} and manager-LATEST.md.
Numbers from a shared, noisy machine: compare backends within one run, not runs with each other.

    python3 bench/manager.py [--backends sqlite,postgres] [--reads 200] [--writes 1000]
"""
import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
from manager_harness import Manager, Postgres  # noqa: E402

N_SERVICES = 10_000


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summary(ms):
    return {"n": len(ms), "p50_ms": round(pct(ms, 50), 2), "p95_ms": round(pct(ms, 95), 2),
            "p99_ms": round(pct(ms, 99), 2), "max_ms": round(max(ms), 2), "mean_ms": round(statistics.mean(ms), 2)}


def seed_sql(cluster_id, n):
    now = "2026-01-01T00:00:00.000Z"
    rows = []
    for i in range(n):
        rows.append(f"({cluster_id}, 'svc{i:05d}', '10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}', "
                    f"'c{i % 50}', '{now}', '{now}')")
    svc = ("INSERT INTO services (cluster_id, name, ip_fqdn, collection, created_at, updated_at) VALUES "
           + ", ".join(rows))
    maps = []
    for i in range(n):
        maps.append(f"({cluster_id}, 'map{i:05d}', '[{i + 1}]', '[{(i + 1) % n + 1}]', '[\"tcp\"]', '[443]', "
                    f"'{now}', '{now}')")
    mp = ("INSERT INTO mappings (cluster_id, name, source_services, destination_services, protocols, ports, "
          "created_at, updated_at) VALUES " + ", ".join(maps))
    return svc, mp


def timed(fn, n):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        st = fn()
        out.append((time.perf_counter() - t0) * 1000)
        if st != 200:
            raise RuntimeError(f"status {st}")
    return out


def run_backend(backend, args):
    tmp = tempfile.mkdtemp(prefix="mp-bench-mgr-")
    try:
        if backend == "postgres":
            pg = Postgres.shared()
            name, url = pg.new_database()
        else:
            url = "sqlite://" + os.path.join(tmp, "manager.db")
        m = Manager(tmp, url, env={"MARCHPROXY_ADMIN_PASSWORD": "bench-admin-password"})
        m.start()
        try:
            c = m.client()
            c.login("admin", "bench-admin-password")
            st, _, cl = c.post("/api/v1/clusters", {"name": "big"})
            cid = cl["id"]
            svc, mp = seed_sql(cid, N_SERVICES)
            if backend == "postgres":
                # ANALYZE: a cluster that grew through the API has planner statistics (autovacuum);
                # a bulk seed read a moment later would not, and PostgreSQL would sort 10,000 rows.
                for stmt in (svc, mp, "ANALYZE services; ANALYZE mappings;"):
                    r = pg.psql(stmt, db=name)
                    if r.returncode:
                        raise RuntimeError(r.stderr)
            else:
                con = sqlite3.connect(url[len("sqlite://"):], timeout=30)
                con.execute(svc)
                con.execute(mp)
                con.execute("ANALYZE")
                con.commit()
                con.close()
            res = {"backend": backend}
            c.get(f"/api/v1/services?cluster_id={cid}&limit=1000")  # warm
            res["read_services_page_100"] = summary(timed(
                lambda: c.get(f"/api/v1/services?cluster_id={cid}&limit=100&offset=5000")[0], args.reads))
            res["read_services_page_1000"] = summary(timed(
                lambda: c.get(f"/api/v1/services?cluster_id={cid}&limit=1000&offset=5000")[0], args.reads))
            res["read_mappings_page_1000"] = summary(timed(
                lambda: c.get(f"/api/v1/mappings?cluster_id={cid}&limit=1000&offset=5000")[0], args.reads))
            res["read_one_service"] = summary(timed(lambda: c.get("/api/v1/services/5000")[0], args.reads))

            def walk():
                for off in range(0, N_SERVICES, 1000):
                    st, _, b = c.get(f"/api/v1/services?cluster_id={cid}&limit=1000&offset={off}")
                    if st != 200:
                        return st
                return 200
            res["walk_10000_services"] = summary(timed(walk, max(5, args.reads // 20)))

            t0 = time.perf_counter()
            lat = []
            for i in range(args.writes):
                s0 = time.perf_counter()
                st, _, b = c.post("/api/v1/services", {"cluster_id": cid, "name": f"w{i}", "ip_fqdn": "10.9.0.1"})
                lat.append((time.perf_counter() - s0) * 1000)
                if st != 201:
                    raise RuntimeError(f"write {i}: {st} {b}")
            res["write_1000_serial"] = {"total_s": round(time.perf_counter() - t0, 2), **summary(lat)}

            lat2, lock = [], threading.Lock()

            def writer(k):
                cc = m.client(c.token)
                for i in range(args.writes // 4):
                    s0 = time.perf_counter()
                    st, _, b = cc.post("/api/v1/services", {"cluster_id": cid, "name": f"p{k}-{i}",
                                                            "ip_fqdn": "10.9.0.2"})
                    with lock:
                        lat2.append((time.perf_counter() - s0) * 1000)
                    if st != 201:
                        raise RuntimeError(f"write: {st} {b}")
            t0 = time.perf_counter()
            ts = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            res["write_1000_4clients"] = {"total_s": round(time.perf_counter() - t0, 2), **summary(lat2)}
            st, _, v = c.get("/api/v1/audit/verify")
            res["audit_rows_verified"] = v["rows_verified"]
            res["audit_ok"] = v["ok"]
            return res
        finally:
            m.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="sqlite,postgres")
    ap.add_argument("--reads", type=int, default=200)
    ap.add_argument("--writes", type=int, default=1000)
    args = ap.parse_args()
    results = [run_backend(b, args) for b in args.backends.split(",")]
    git = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    lines = [f"# Manager API benchmark ({stamp} UTC, commit {git}, {os.cpu_count()} CPUs, shared machine)", "",
             f"Cluster with {N_SERVICES} services and {N_SERVICES} mappings; latencies over loopback HTTP, "
             "one connection per request; client time includes Python's JSON parsing of the response.", "",
             "| backend | measurement | n | p50 ms | p95 ms | p99 ms | max ms | total s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for k, v in r.items():
            if isinstance(v, dict):
                lines.append(f"| {r['backend']} | {k} | {v['n']} | {v['p50_ms']} | {v['p95_ms']} | {v['p99_ms']} | "
                             f"{v['max_ms']} | {v.get('total_s', '')} |")
        lines.append(f"| {r['backend']} | audit chain after the run | {r['audit_rows_verified']} rows | "
                     f"{'verifies' if r['audit_ok'] else 'BROKEN'} | | | | |")
    md = "\n".join(lines) + "\n"
    print(md)
    out = os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"manager-{stamp}.json"), "w") as f:
        json.dump({"stamp": stamp, "commit": git, "results": results}, f, indent=1)
    for name in (f"manager-{stamp}.md", "manager-LATEST.md"):
        with open(os.path.join(out, name), "w") as f:
            f.write(md)


if __name__ == "__main__":
    main()
