#!/usr/bin/python3
"""MarchProxy ingress beside nginx and HAProxy, in one run, on the same origin, printing ratios.

Called by bench/run.sh (which raises the fd limit and ends leftover PIDs); see bench/README.md.
For each scenario: start the origin once, then for each round run every target back to back
(origin alone, nginx, HAProxy, MarchProxy, then again), each proxy started fresh and pinned to the
proxy core(s), and the load generator pinned to the other core. Results go to bench/results/ for a
full run (duration >= 10 s and >= 3 rounds) and to bench/work/results/ otherwise.
"""

import argparse
import datetime
import json
import os
import resource
import shlex
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import loadgen  # noqa: E402
import procstat  # noqa: E402
import report  # noqa: E402
from targets import (BENCH_DIR, BODY, BUILD_HINT, PROXIES, MarchProxy, Origin, PidRegistry,  # noqa: E402
                     StartError, default_marchproxy_binary, http_get, make_certificates)

SCENARIOS = ["h1", "h1-new", "idle", "tls", "tls-new", "tls-new-p384", "h2"]
TLS_SCENARIOS = ("tls", "tls-new", "tls-new-p384")
TITLES = {
    "tls": "HTTPS keep-alive (TLS 1.3, ECDSA P-256), small response",
    "tls-new": "HTTPS, a new TLS connection (full handshake, ECDSA P-256) per request",
    "tls-new-p384": "HTTPS, a new TLS connection (full handshake, ECDSA P-384) per request",
    "h1": "HTTP/1.1 keep-alive, small response",
    "h1-new": "HTTP/1.1, a new client connection per request",
    "idle": "RSS per idle keep-alive client connection",
    "h2": "HTTP/2 (h2c, prior knowledge), 10 connections x 10 concurrent streams, small response",
}
READING = {
    "h1": ("CPU µs/req is the proxy's utime+stime (all its processes) over the measured run ÷ "
           "requests completed; × columns are the median of per-round ratios (lower is better for "
           "CPU and p99). The origin-alone row is the physical limit: wrk straight at the origin. "
           "busy % is the target's CPU time ÷ wall time, then the whole proxy core's: a core near "
           "100 % was the bottleneck (by default the origin shares it, the load generator does "
           "not). noise % is the share of the proxy core used by processes outside the benchmark. "
           "origin conns /1k req should be ~0 for a proxy (its pool to the origin is reused)."),
    "h1-new": ("Every request opens a new client connection (wrk -H 'Connection: close'); the "
               "proxies keep their pool to the origin. wrk's latency starts when the request is "
               "written, so it excludes the TCP handshake. CPU µs/req includes accept, the "
               "handshake's kernel work charged to the proxy, and close."),
    "tls": ("As h1, over TLS (wrk negotiates TLS 1.3 with X25519; each proxy with its default "
            "TLS settings). There is no origin-alone row: the origin speaks plain HTTP."),
    "tls-new": ("As h1-new, over TLS: wrk makes a new connection per request and offers the newest "
                "session ticket it holds (it keeps its SSL object's session across SSL_clear), so a "
                "proxy that re-issues a ticket on each resumed TLS 1.3 connection resumes every one "
                "(PSK + X25519, no signature); one that does not makes a full handshake every other "
                "connection (ECDSA signature). The handshake, done by OpenSSL, dominates CPU µs/req."),
    "tls-new-p384": ("As tls-new with an ECDSA P-384 certificate (a full handshake's signature costs "
                     "~5x P-256's in OpenSSL 3.0; a resumed one has none)."),
    "h2": ("h2load -c 10 -m 10 against each proxy's h2c listener; every proxy speaks HTTP/1.1 to the "
           "origin. h2load gives no percentiles: the p50 column is its mean request time and p99 "
           "its mean + 2 sd. There is no origin-alone row: the origin speaks HTTP/1.1 only."),
    "idle": ("RSS per idle conn = (RSS with N idle client connections − RSS before) ÷ N, summed "
             "over the proxy's processes (VmRSS). Each connection did one request through the "
             "proxy first. Kernel socket buffers are not in RSS. Pss splits pages shared between "
             "nginx's master and worker."),
}


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", default="all", choices=SCENARIOS + ["all"])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of all targets (results: >= 3)")
    ap.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run")
    ap.add_argument("--warmup", type=int, default=2, help="seconds of unmeasured wrk load first")
    ap.add_argument("--workers", type=int, default=1, help="workers/threads of every proxy")
    ap.add_argument("--proxies", default="nginx,haproxy,marchproxy",
                    help="comma-separated, in the order they run in each round")
    ap.add_argument("--no-origin", action="store_true", help="skip the origin-alone reference")
    ap.add_argument("--connections", type=int, default=50, help="wrk connections")
    ap.add_argument("--idle-conns", type=int, default=10000,
                    help="idle client connections in the idle scenario")
    ap.add_argument("--idle-settle", type=float, default=2.0,
                    help="seconds to wait with N idle connections before reading RSS")
    ap.add_argument("--quiet-wait", type=float, default=20.0,
                    help="before each run, wait up to this many seconds for the proxy core(s) to be "
                         "less than 15%% busy with other work (0: don't wait)")
    ap.add_argument("--proxy-cpus", default="0", help="taskset list for the proxy under test")
    ap.add_argument("--load-cpus", default="1", help="taskset list for wrk / the idle client")
    ap.add_argument("--origin-cpus", default=None,
                    help="taskset list for the origin (default: the proxy's, so that the load "
                         "generator keeps a core to itself and is never the limit)")
    ap.add_argument("--marchproxy", default=None,
                    help="binary (default build/bench/src/cli/marchproxy, then build/release/...)")
    ap.add_argument("--results-dir", default=None,
                    help="default bench/results for a full run, bench/work/results otherwise")
    # Set by run.sh.
    ap.add_argument("--work-dir", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--pid-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--invocation", default=None, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


class Bench:
    def __init__(self, args):
        self.args = args
        self.registry = PidRegistry(args.pid_file)
        self.proxy_cpus = procstat.parse_cpus(args.proxy_cpus)
        self.load_cpus = procstat.parse_cpus(args.load_cpus)
        if args.origin_cpus is None:
            args.origin_cpus = args.proxy_cpus
        self.origin_cpus = procstat.parse_cpus(args.origin_cpus)
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        # Same connection limits for every server: enough for the idle scenario, within the fd limit.
        conns = max(1024, min(nofile - 512, 16384))
        self.values = {"WORK": args.work_dir, "NOFILE": nofile, "WORKER_CONNECTIONS": conns,
                       "MAXCONN": conns, "WORKERS": args.workers, "BODY": BODY.replace("\n", "\\n")}
        self.values.update(make_certificates(args.work_dir))
        self.origin = None
        self.proxies = {}  # name -> Target
        self.skipped = {}  # name -> reason
        self.broken = set()  # proxies that failed to start once: not started again
        self.quiet_timeouts = 0  # consecutive quiet waits that ran out

    # ------------------------------------------------------------ setup
    def check_layout(self):
        n = os.cpu_count()
        for name, cpus in (("proxy", self.proxy_cpus), ("load", self.load_cpus),
                           ("origin", self.origin_cpus)):
            if not cpus or max(cpus) >= n:
                sys.exit(f"--{name}-cpus {sorted(cpus)}: this machine has CPUs 0..{n - 1}")
        if self.proxy_cpus & self.load_cpus:
            log("warning: the proxy and the load generator share a CPU; CPU µs/req stays valid, "
                "req/s and latency will not reflect the proxy alone")
        if self.args.workers > len(self.proxy_cpus):
            log(f"warning: {self.args.workers} workers on {len(self.proxy_cpus)} proxy CPU(s)")

    def layout(self):
        a = self.args
        if self.load_cpus & self.proxy_cpus:
            shares = "all of them sharing CPUs"
        elif self.origin_cpus & self.proxy_cpus:
            shares = "sharing the proxy's core, so the load generator's core has headroom"
        elif self.origin_cpus & self.load_cpus:
            shares = "sharing the load generator's core"
        else:
            shares = "on a core of its own"
        return (f"pinning: proxy under test on CPU {a.proxy_cpus} ({a.workers} worker(s)); "
                f"origin (1 nginx worker) on CPU {a.origin_cpus}, {shares}; load generator on "
                f"CPU {a.load_cpus}; the origin-alone row runs the origin on CPU {a.proxy_cpus}")

    def layout_short(self):
        a = self.args
        return f"proxy cpu {a.proxy_cpus}, load cpu {a.load_cpus}, origin cpu {a.origin_cpus}"

    def make_proxies(self):
        wanted = [p.strip() for p in self.args.proxies.split(",") if p.strip()]
        for name in wanted:
            if name not in PROXIES:
                sys.exit(f"--proxies: unknown proxy {name!r} (known: {', '.join(PROXIES)})")
        for name in wanted:
            cls = PROXIES[name]
            values = dict(self.values, ORIGIN_PORT=self.origin.port)
            if cls is MarchProxy:
                binary = self.args.marchproxy or default_marchproxy_binary()
                binary = os.path.abspath(binary) if binary else None
                if not binary or not os.access(binary, os.X_OK):
                    where = binary or "build/bench/src/cli/marchproxy, build/release/src/cli/marchproxy"
                    self.skip(name, f"binary not found ({where}); build it with: {BUILD_HINT}")
                    continue
                t = MarchProxy(self.args.work_dir, self.registry, self.args.proxy_cpus, values,
                               binary)
                if t.build_type not in ("Release", "RelWithDebInfo"):
                    log(f"warning: {binary} is a {t.build_type or 'unknown'} build; numbers from "
                        f"it are not representative (build: {BUILD_HINT})")
            else:
                t = cls(self.args.work_dir, self.registry, self.args.proxy_cpus, values)
            t.prepare()
            self.proxies[name] = t

    def skip(self, name, reason):
        self.skipped[name] = reason
        first, *rest = reason.splitlines()
        log(f"SKIP {name}: {first}")
        for line in rest:
            print(f"    {line}")

    def start_origin(self):
        self.origin = Origin(self.args.work_dir, self.registry, self.args.origin_cpus, self.values)
        self.origin.start()

    def versions(self):
        v = {"origin / nginx": self.origin.version()}
        for name, t in self.proxies.items():
            v[name] = t.version()
        v["wrk"] = loadgen.wrk_version()
        v["python"] = sys.version.split()[0]
        return v

    def wait_quiet(self):
        """Wait (bounded) for the proxy core(s) to be idle: other tenants' bursts pass by.

        Returns the busy % seen last. After two waits in a row that ran out, the machine is
        taken to be busy for good and the remaining runs no longer wait.
        """
        if self.args.quiet_wait <= 0 or self.quiet_timeouts >= 2:
            c0 = procstat.core_ticks(self.proxy_cpus)
            time.sleep(0.2)
            d = procstat.core_delta(c0, procstat.core_ticks(self.proxy_cpus))
            return 100 * d["busy"] / d["total"] if d["total"] else None
        deadline = time.monotonic() + self.args.quiet_wait
        waited = False
        while True:
            c0 = procstat.core_ticks(self.proxy_cpus)
            time.sleep(0.5)
            d = procstat.core_delta(c0, procstat.core_ticks(self.proxy_cpus))
            busy = 100 * d["busy"] / d["total"] if d["total"] else 0.0
            if busy < 15 or time.monotonic() > deadline:
                self.quiet_timeouts = 0 if busy < 15 else self.quiet_timeouts + 1
                if waited:
                    log(f"    proxy core {'quiet' if busy < 15 else 'still busy'} "
                        f"({busy:.0f}% busy)")
                if self.quiet_timeouts == 2:
                    log("    the machine stays busy: not waiting before the next runs")
                return busy
            if not waited:
                log(f"    proxy core {busy:.0f}% busy with other work: waiting up to "
                    f"{self.args.quiet_wait:.0f} s")
                waited = True

    # ------------------------------------------------------------ one wrk run
    def wrk_run(self, scenario, rnd, name, target):
        a = self.args
        run = {"round": rnd, "target": name, "ok": False, "flags": [], "noise": []}
        is_origin = target is self.origin
        try:
            if is_origin:
                procstat.set_affinity(self.origin.proc.pid, self.proxy_cpus)
            else:
                target.start()
            if scenario in TLS_SCENARIOS:
                port = target.tls384_port if scenario == "tls-new-p384" else target.tls_port
                url = f"https://127.0.0.1:{port}/"
            elif scenario == "h2":
                url = f"http://127.0.0.1:{target.h2c_port}/"
            else:
                url = f"http://127.0.0.1:{target.port}/"
            if scenario == "h2":
                cmd = loadgen.h2load_command(url, a.duration, 10, 10, 1, a.load_cpus)
                run_load = loadgen.run_h2load
            else:
                cmd = loadgen.wrk_command(url, a.duration, a.connections, len(self.load_cpus), a.load_cpus,
                                          scenario in ("h1-new", "tls-new", "tls-new-p384"))
                run_load = loadgen.run_wrk
            wrk_log = os.path.join(a.work_dir, f"wrk-{scenario}.log")
            if a.warmup > 0:
                warm = list(cmd)
                warm[warm.index("-D" if scenario == "h2" else "-d") + 1] = f"{a.warmup}" + ("" if scenario == "h2" else "s")
                run_load(warm, wrk_log, self.registry)
            target.track()
            pids = target.pids()
            origin_pids = self.origin.pids()
            o_conns0, o_reqs0 = self.origin.status()
            cpu0 = procstat.cpu_ticks(pids)
            ctx0 = procstat.ctx_switches(pids)
            ocpu0 = procstat.cpu_ticks(origin_pids)
            core0 = procstat.core_ticks(self.proxy_cpus)
            lcore0 = procstat.core_ticks(self.load_cpus)
            w = run_load(cmd, wrk_log, self.registry)
            core1 = procstat.core_ticks(self.proxy_cpus)
            lcore1 = procstat.core_ticks(self.load_cpus)
            if not target.alive():
                raise RuntimeError(f"{target.label} exited during the measured run "
                                   f"(status {target.proc.returncode}); see {target.log_path}")
            pids_after = target.pids()
            cpu1 = procstat.cpu_ticks(set(pids) | set(pids_after))
            ctx1 = procstat.ctx_switches(pids_after)
            ocpu1 = procstat.cpu_ticks(origin_pids)
            o_conns1, o_reqs1 = self.origin.status()
            mem = procstat.memory_kb(pids_after)
        except StartError as e:
            run.update(error=str(e), start_failed=True)
            run["flags"].append(f"did not start: {str(e).splitlines()[0]}")
            return run
        except (RuntimeError, OSError, ValueError, IndexError) as e:
            run["error"] = str(e)
            run["flags"].append(f"run failed: {str(e).splitlines()[0]}")
            return run
        finally:
            if is_origin:
                procstat.set_affinity(self.origin.proc.pid, self.origin_cpus)
            else:
                target.stop()
        cpu_s, stable = procstat.cpu_delta_seconds(cpu0, cpu1)
        ocpu_s, _ = procstat.cpu_delta_seconds(ocpu0, ocpu1)
        core = procstat.core_delta(core0, core1)
        wall = w["duration_us"] / 1e6
        reqs = w["requests"]
        errs = w["errors"]
        n_err = sum(errs.values())
        run.update({
            "ok": reqs > 0,
            "requests": reqs, "duration_s": wall,
            "rps": reqs / wall if wall else None,
            "p50_ms": w["latency_us"]["p50"] / 1000, "p99_ms": w["latency_us"]["p99"] / 1000,
            "latency_us": w["latency_us"],
            "errors": errs, "error_count": n_err,
            "cpu_s": cpu_s,
            "cpu_us_per_req": cpu_s * 1e6 / reqs if reqs else None,
            "util_pct": 100 * cpu_s / wall if wall else None,
            "sleeps_per_req": (ctx1[0] - ctx0[0]) / reqs if reqs else None,
            "preemptions_per_req": (ctx1[1] - ctx0[1]) / reqs if reqs else None,
            "hwm_mib": mem["hwm_kb"] / 1024, "rss_mib": mem["rss_kb"] / 1024,
            "pss_mib": mem["pss_kb"] / 1024,
            "pids": pids_after,
            # The status probe after the run is counted in both of its own counters.
            "origin_new_conns": o_conns1 - o_conns0 - 1,
            "origin_requests": o_reqs1 - o_reqs0 - 1,
            "origin_conns_per_1k": 1000 * (o_conns1 - o_conns0 - 1) / reqs if reqs else None,
            "origin_cpu_us_per_req": (None if is_origin else ocpu_s * 1e6 / reqs if reqs else None),
            "loadgen_cpu_us_per_req": w["cpu_s"] * 1e6 / reqs if reqs else None,
            "loadgen_util_pct": 100 * w["cpu_s"] / (wall * len(self.load_cpus)) if wall else None,
            "steal_pct": 100 * core["steal"] / core["total"] if core["total"] else None,
            "core_busy_pct": 100 * core["busy"] / core["total"] if core["total"] else None,
            "wrk_command": shlex.join(cmd),
            "wrk_text": w["text"],
        })
        # CPU time on the proxy core(s) that none of our processes used: other tenants, noise.
        ours = cpu_s
        if self.origin_cpus & self.proxy_cpus and not is_origin:
            ours += ocpu_s
        if not (self.load_cpus & self.proxy_cpus):
            run["foreign_pct"] = max(0.0, 100 * (core["busy"] - ours) / core["total"]) \
                if core["total"] else None
        # The same on the load generator's core(s), where the origin also runs by default.
        lcore = procstat.core_delta(lcore0, lcore1)
        if not (self.load_cpus & self.proxy_cpus) and lcore["total"]:
            theirs = w["cpu_s"] + (ocpu_s if (self.origin_cpus & self.load_cpus and not is_origin)
                                   else 0.0)
            run["load_core_foreign_pct"] = max(0.0, 100 * (lcore["busy"] - theirs) / lcore["total"])
            if run["load_core_foreign_pct"] > 10:
                run["noise"].append(f"{run['load_core_foreign_pct']:.0f}% of the load generator's "
                                    f"core went to other processes")
        if run["loadgen_util_pct"] and run["loadgen_util_pct"] > 90:
            run["noise"].append(f"the load generator was {run['loadgen_util_pct']:.0f}% busy: "
                                f"req/s and latency describe wrk more than the target")
        if n_err:
            detail = ", ".join(f"{k} {v}" for k, v in errs.items() if v)
            run["flags"].append(f"{n_err} errors ({detail}; status = non-2xx/3xx responses)")
        if w["exit_code"] != 0:
            run["flags"].append(f"wrk exited with {w['exit_code']}")
        if not stable:
            run["flags"].append("a process of the target exited or appeared during the run: "
                                "CPU time may be incomplete")
        if reqs and not is_origin and abs(run["origin_requests"] - reqs) > 0.01 * reqs + 100:
            run["flags"].append(f"origin saw {run['origin_requests']} requests for {reqs} "
                                f"completed through the proxy")
        if run.get("foreign_pct") and run["foreign_pct"] > 10:
            run["noise"].append(f"{run['foreign_pct']:.0f}% of the proxy core went to "
                                f"other processes")
        if run["steal_pct"] and run["steal_pct"] > 5:
            run["noise"].append(f"{run['steal_pct']:.0f}% steal on the proxy core")
        return run

    # ------------------------------------------------------------ one idle run
    def idle_run(self, rnd, name, target):
        a = self.args
        run = {"round": rnd, "target": name, "ok": False, "flags": [], "noise": []}
        client_cmd = ["taskset", "-c", a.load_cpus, sys.executable,
                      os.path.join(os.path.dirname(os.path.abspath(__file__)), "idle_client.py"),
                      "--port", str(target.port if target else 0)]
        client = None
        try:
            target.start()
            # Warm up with a few connections, opened and closed, so that the baseline includes what
            # the first connection allocates once (upstream pool, code pages). Only a few: memory
            # they free goes back to malloc and would hide part of the idle connections' cost.
            warm = subprocess.run(client_cmd + ["--n", "16"], capture_output=True, text=True,
                                  timeout=60)  # seconds; ends on its own
            if warm.returncode != 0:
                raise RuntimeError(f"idle client warm-up failed: {warm.stdout}{warm.stderr}")
            time.sleep(0.5)
            target.track()
            pids = target.pids()
            before = procstat.memory_kb(pids)
            cpu0 = procstat.cpu_ticks(pids)
            full = client_cmd + ["--n", str(a.idle_conns), "--hold"]
            client = subprocess.Popen(full, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
            self.registry.add(client.pid, "idle-client")
            est = json.loads(client.stdout.readline() or '{"event": "error", "error": "no output"}')
            if est.get("event") != "established":
                raise RuntimeError(f"idle client: {est} {client.stderr.read()[-500:]}")
            cpu1 = procstat.cpu_ticks(set(pids) | set(target.pids()))
            time.sleep(a.idle_settle)
            if not target.alive():
                raise RuntimeError(f"{target.label} exited while holding idle connections "
                                   f"(status {target.proc.returncode}); see {target.log_path}")
            pids_idle = target.pids()
            during = procstat.memory_kb(pids_idle)
            client.stdin.write("check\n")
            client.stdin.flush()
            alive = json.loads(client.stdout.readline() or '{"open": 0, "closed": -1}')
            client.wait(60)
            self.registry.remove([client.pid])
            client = None
        except StartError as e:
            run.update(error=str(e), start_failed=True)
            run["flags"].append(f"did not start: {str(e).splitlines()[0]}")
            return run
        except (RuntimeError, OSError, ValueError, subprocess.TimeoutExpired) as e:
            run["error"] = str(e)
            run["flags"].append(f"run failed: {str(e).splitlines()[0]}")
            return run
        finally:
            if client is not None:
                client.kill()
                client.wait()
                self.registry.remove([client.pid])
            target.stop()
        ok = est["ok"]
        cpu_s, stable = procstat.cpu_delta_seconds(cpu0, cpu1)
        run.update({
            "ok": ok > 0,
            "established": ok, "failed": est["failed"], "non200": est["non200"],
            "client_errors": est["errors"], "setup_seconds": est["seconds"],
            "open_at_check": alive.get("open"), "closed_at_check": alive.get("closed"),
            "error_count": est["failed"] + est["non200"] + max(0, alive.get("closed", 0)),
            "rss_before_mib": before["rss_kb"] / 1024, "rss_idle_mib": during["rss_kb"] / 1024,
            "pss_before_mib": before["pss_kb"] / 1024, "pss_idle_mib": during["pss_kb"] / 1024,
            "hwm_mib": during["hwm_kb"] / 1024,
            "rss_per_conn_bytes": (during["rss_kb"] - before["rss_kb"]) * 1024 / ok if ok else None,
            "pss_per_conn_bytes": (during["pss_kb"] - before["pss_kb"]) * 1024 / ok if ok else None,
            "setup_cpu_us_per_conn": cpu_s * 1e6 / ok if ok else None,
            "pids": pids_idle,
            "client_command": shlex.join(full),
        })
        if ok < a.idle_conns:
            run["flags"].append(f"only {ok} of {a.idle_conns} connections established "
                                f"({est['failed']} failed: {est['errors']})")
        if est["non200"]:
            run["flags"].append(f"{est['non200']} responses were not 200")
        if alive.get("closed"):
            run["flags"].append(f"{alive['closed']} idle connections were closed by the proxy "
                                f"within {a.idle_settle:.0f} s")
        if not stable:
            run["flags"].append("a process of the target exited or appeared during the run")
        return run

    # ------------------------------------------------------------ a scenario
    def scenario(self, sc):
        a = self.args
        started = datetime.datetime.now().astimezone()
        load_before = procstat.loadavg()
        order = ([] if a.no_origin or sc in ("idle", "h2") or sc in TLS_SCENARIOS else ["origin"]) + list(self.proxies)
        order = [t for t in order if t not in self.broken]
        runs = []
        for rnd in range(1, a.rounds + 1):
            for name in order:
                if name in self.broken:
                    continue
                target = self.origin if name == "origin" else self.proxies[name]
                log(f"{sc} round {rnd}/{a.rounds}: {name}")
                busy_before = self.wait_quiet()
                if sc == "idle":
                    run = self.idle_run(rnd, name, target)
                else:
                    run = self.wrk_run(sc, rnd, name, target)
                run["proxy_core_busy_before_pct"] = busy_before
                runs.append(run)
                print("    " + one_line(sc, run), flush=True)
                if run.get("start_failed") and name != "origin":
                    # A proxy that does not start is not retried in later rounds or scenarios.
                    self.broken.add(name)
                    self.skip(name, f"did not start: {run['error']}")
        # A proxy that never ran is listed under "skipped", not as a row of dashes.
        ran = {r["target"] for r in runs if r.get("ok")}
        order = [t for t in order if t not in self.broken or t in ran]
        runs = [r for r in runs if r["target"] in order]
        finished = datetime.datetime.now().astimezone()
        summary = report.summarize(sc, runs, order)
        full = a.rounds >= 3 and (a.idle_conns >= 10000 if sc == "idle" else a.duration >= 10)
        commands = {}
        commands["origin"] = shlex.join(self.origin.full_command())
        for name in order:
            if name != "origin":
                commands[name] = shlex.join(self.proxies[name].full_command())
        tool = next((r.get("wrk_command") or r.get("client_command") for r in runs
                     if r.get("ok")), None)
        if tool:
            commands["load generator (port differs per target)"] = tool
        configs = {"origin": self.origin.config_text}
        configs.update({n: t.config_text for n, t in self.proxies.items() if n in order})
        params = {"rounds": a.rounds, "duration": a.duration, "warmup": a.warmup,
                  "quiet_wait": a.quiet_wait,
                  "workers": a.workers, "connections": a.connections,
                  "idle_conns": a.idle_conns, "idle_settle": a.idle_settle,
                  "proxy_cpus": a.proxy_cpus, "load_cpus": a.load_cpus,
                  "origin_cpus": a.origin_cpus, "body_bytes": len(BODY)}
        results = {
            "schema": 1, "scenario": sc, "title": TITLES[sc], "reading": READING[sc],
            "stamp": started.strftime("%Y%m%d-%H%M%S"),
            "started": started.isoformat(timespec="seconds"),
            "finished": finished.isoformat(timespec="seconds"),
            "full_run": full, "machine": procstat.machine(),
            "loadavg_before": load_before, "loadavg_after": procstat.loadavg(),
            "layout": self.layout(), "layout_short": self.layout_short(),
            "params": params, "versions": self.versions(), "invocation": a.invocation,
            "commands": commands, "configs": configs, "order": order,
            "skipped": {k: v for k, v in self.skipped.items()},
            "summary": summary, "goals": report.goals(sc, summary), "runs": runs,
        }
        if any(r.get("flags") for r in runs) or self.skipped:
            # Tell run.sh to keep the logs and configs of this run.
            open(os.path.join(a.work_dir, "KEEP"), "w").close()
        if not summary:
            log(f"{sc}: no target ran, no results written")
            return results
        out_dir = a.results_dir or (os.path.join(BENCH_DIR, "results") if full
                                    else os.path.join(BENCH_DIR, "work", "results"))
        paths = report.write(results, out_dir, a.work_dir)
        print()
        print(report.table(sc, summary, params))
        print()
        for g in report._goal_lines(results) if results["goals"] else []:
            print(g)
        if not full:
            print("(short run: written under bench/work/results, not bench/results)")
        print("results: " + ", ".join(os.path.relpath(p) for p in paths if p))
        print()
        return results


def one_line(sc, run):
    if not run.get("ok"):
        return "FAILED: " + run.get("error", "no requests").splitlines()[0]
    if sc == "idle":
        s = (f"{run['established']} idle, RSS {run['rss_before_mib']:.1f} -> "
             f"{run['rss_idle_mib']:.1f} MiB = {run['rss_per_conn_bytes']:.0f} B/conn")
    else:
        s = (f"{run['rps']:.0f} req/s, p50 {run['p50_ms']:.3f} ms, p99 {run['p99_ms']:.3f} ms, "
             f"CPU {run['cpu_us_per_req']:.2f} µs/req ({run['util_pct']:.0f}% busy), "
             f"RSS peak {run['hwm_mib']:.1f} MiB")
    if run["flags"]:
        s += "  ⚠ " + "; ".join(run["flags"])
    if run.get("noise"):
        s += "  (noise: " + "; ".join(run["noise"]) + ")"
    return s


def main(argv):
    # run.sh sends SIGTERM when it is interrupted: unwind so the finally below stops our targets.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    args.work_dir = os.path.abspath(args.work_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    if args.invocation is None:
        args.invocation = shlex.join([sys.argv[0]] + argv)
    bench = Bench(args)
    bench.check_layout()
    scenarios = SCENARIOS if args.scenario == "all" else [args.scenario]
    try:
        bench.start_origin()
        status, body = http_get(bench.origin.port)
        log(f"origin up on 127.0.0.1:{bench.origin.port} (status {status}, {len(body)}-byte body), "
            f"work dir {args.work_dir}")
        bench.make_proxies()
        if not bench.proxies:
            log("no proxy to measure")
        log(bench.layout())
        for sc in scenarios:
            bench.scenario(sc)
    except StartError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        for t in bench.proxies.values():
            t.stop()
        if bench.origin:
            bench.origin.stop()
        bench.registry.kill_all()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
