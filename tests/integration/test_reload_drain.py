"""Reload (SIGHUP under load, file change, bad config rejected) and graceful drain on SIGTERM."""
import os
import signal
import socket
import threading
import time
import unittest

from harness import ProxyTestCase, Conn, ConnectionClosed, get, render, wait_until, connect_refused

BLUE_GREEN = """
schema: 1
version: ${VERSION}
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: ${CLUSTER} }
clusters:
  - name: blue
    endpoints: [ "${A}" ]
  - name: green
    endpoints: [ "${B}" ]
timeouts: { header_read: 2s, idle: 30s, drain: 5s }
"""

# The error is on the line holding "cluster: nope" (found by text search below).
BAD_CLUSTER = """
schema: 1
version: 99
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: nope }
clusters:
  - name: blue
    endpoints: [ "${A}" ]
"""

BAD_TYPE = """
schema: 1
version: 98
workers: lots
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: blue }
clusters:
  - name: blue
    endpoints: [ "${A}" ]
"""

BAD_SYNTAX = """
schema: 1
version: 97
listeners: [ { name: http, address: 127.0.0.1, port: 0 }
virtual_hosts:
  - name: app
"""


def line_of(text, needle):
    for i, line in enumerate(text.split("\n"), 1):
        if needle in line:
            return i
    raise ValueError(needle)


class ReloadTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.b = self.start_origin("B")

    def config(self, version, cluster):
        return render(BLUE_GREEN, VERSION=version, CLUSTER=cluster, A=self.a.address, B=self.b.address)

    def wait_version(self, p, version, timeout=10):
        wait_until(lambda: p.config_info().get("version") == version, timeout,
                   message=f"/config version {version}")

    def test_idle_keepalive_connection_follows_reload(self):
        # A connection that sits idle across a reload must route its next request on the new
        # config: the session used to keep the config it had when it began waiting.
        p = self.start_proxy(self.config(1, "blue"))
        c = Conn(p.port)
        try:
            self.assertEqual(c.request("GET", "/id").text, "A")
            for i, (cluster, origin) in enumerate([("green", "B"), ("blue", "A"), ("green", "B")]):
                p.reload(self.config(i + 2, cluster))
                self.wait_version(p, i + 2)
                r = c.request("GET", "/id")
                self.assertEqual(r.text, origin, f"request on a kept connection after reload {i + 1}")
                self.assertNotEqual((r.header("connection") or "").lower(), "close")
        finally:
            c.close()

    def test_sighup_reload_under_load(self):
        p = self.start_proxy(self.config(1, "blue"))
        stop = threading.Event()
        failures, results = [], []  # results: (monotonic start, body)
        lock = threading.Lock()

        def client(n):
            c = Conn(p.port)
            try:
                while not stop.is_set():
                    t0 = time.monotonic()
                    # client 3 is slow, so that reloads land while its requests are in flight
                    path = f"/sleep/150?client={n}" if n == 3 else f"/id?client={n}"
                    try:
                        r = c.request("GET", path)
                    except ConnectionClosed as e:
                        with lock:
                            failures.append(f"client {n}: {e} (got {e.got_bytes} bytes on this "
                                            "connection; a keep-alive connection closed under a "
                                            "request counts as a failed request)")
                        c.close()
                        c = Conn(p.port)
                        continue
                    except OSError as e:
                        with lock:
                            failures.append(f"client {n}: {e!r}")
                        c.close()
                        c = Conn(p.port)
                        continue
                    with lock:
                        if r.status != 200:
                            failures.append(f"client {n}: {r!r}")
                        results.append((t0, r.text))
                    if (r.header("connection") or "").lower() == "close":
                        c.close()
                        c = Conn(p.port)
            finally:
                c.close()

        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        prev_hash = p.config_info().get("hash")
        try:
            wait_until(lambda: len(results) > 20, 10, message="traffic flowing")
            confirmed = None
            for i in range(1, 21):
                cluster, origin = ("green", "B") if i % 2 else ("blue", "A")
                p.reload(self.config(i + 1, cluster))
                self.wait_version(p, i + 1)
                confirmed = time.monotonic()
                h = p.config_info().get("hash")
                self.assertNotEqual(h, prev_hash, f"reload {i}: new content, same hash")
                prev_hash = h
                self.assertEqual(get(p.port, "/id").text, origin, f"after reload {i}")
                n0 = len(results)
                wait_until(lambda: len(results) >= n0 + 8, 10, message="traffic after a reload")
            final_from = confirmed
            time.sleep(0.3)
        finally:
            stop.set()
            for t in threads:
                t.join(15)
        self.assertEqual(failures[:10], [], f"{len(failures)} failed requests during reloads")
        late = [body for t0, body in results if t0 > final_from]
        self.assertTrue(late, "no request after the last reload")
        self.assertEqual(set(late), {"A"}, "requests after the last reload go to its origin")
        self.assertEqual(p.metric("marchproxy_config_reloads_total", result="ok"), 20)
        self.assertEqual(p.metric("marchproxy_config_reloads_total", result="failed"), 0)
        self.assertEqual(p.metric("marchproxy_config_version"), 21)

    def test_file_change_reload(self):
        p = self.start_proxy(self.config(1, "blue"), watch=True)
        self.assertEqual(get(p.port, "/id").text, "A")
        mark = p.mark()
        p.write_config(self.config(2, "green"), atomic=False)  # rewritten in place
        self.wait_version(p, 2)
        self.assertEqual(get(p.port, "/id").text, "B")
        p.wait_log("config reloaded", since=mark)
        p.write_config(self.config(3, "blue"), atomic=True)  # replaced by rename
        self.wait_version(p, 3)
        self.assertEqual(get(p.port, "/id").text, "A")
        p.write_config(self.config(4, "green"), atomic=False)  # still watched after the rename
        self.wait_version(p, 4)
        self.assertEqual(get(p.port, "/id").text, "B")

    def test_bad_config_rejected_old_keeps_serving(self):
        p = self.start_proxy(self.config(1, "blue"))
        info = p.config_info()
        self.assertEqual(info.get("version"), 1)
        cases = [
            (render(BAD_CLUSTER, A=self.a.address), line_of(BAD_CLUSTER, "cluster: nope"), "nope"),
            (render(BAD_TYPE, A=self.a.address), line_of(BAD_TYPE, "workers: lots"), "workers"),
            (BAD_SYNTAX, None, None),
        ]
        for n, (text, line, word) in enumerate(cases, 1):
            with self.subTest(case=n):
                mark = p.mark()
                p.reload(text)
                p.wait_log("config reload failed", since=mark)
                time.sleep(0.2)  # let the diagnostic lines that follow arrive
                out = "\n".join(p.log_lines_since(mark))
                if line is not None:
                    self.assertRegex(out, rf"line {line}\b", f"diagnostic must name line {line}")
                    self.assertIn(word, out)
                else:
                    self.assertRegex(out, r"line \d+")
                wait_until(lambda: p.metric("marchproxy_config_reloads_total", result="failed") == n,
                           5, message=f"failed reload counter at {n}")
                self.assertTrue(p.alive())
                self.assertEqual(get(p.port, "/id").text, "A", "old config still serving")
                now = p.config_info()
                self.assertEqual((now.get("version"), now.get("hash"), now.get("config")),
                                 (info.get("version"), info.get("hash"), info.get("config")),
                                 "/config version, hash and config unchanged after a failed reload")
        self.assertEqual(p.metric("marchproxy_config_reloads_total", result="ok"), 0)
        mark = p.mark()
        p.reload(self.config(2, "green"))
        self.wait_version(p, 2)
        p.wait_log("config reloaded", since=mark)
        self.assertEqual(get(p.port, "/id").text, "B")
        self.assertEqual(p.metric("marchproxy_config_reloads_total", result="ok"), 1)


DETAILS = """
schema: 1
version: ${VERSION}
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: http, address: 127.0.0.1, port: 0 }
${EXTRA}
virtual_hosts:
  - name: app
    domains: ["*"]
    request_headers: { set: { x-config: "v${VERSION}" } }
    routes:
      - match: { prefix: / }
        forward: { cluster: c }
clusters:
  - name: c
    endpoints: [ "${A}", "${B}" ]
    health_check: { type: http, path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 1, unhealthy_threshold: 1 }
    outlier_detection: { enabled: false }
timeouts: { header_read: 2s, idle: 30s, drain: 1s }
"""


class ReloadDetailsTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.b = self.start_origin("B")

    def config(self, version, extra=""):
        return render(DETAILS, VERSION=version, EXTRA=extra, A=self.a.address, B=self.b.address)

    def wait_version(self, p, version):
        wait_until(lambda: p.config_info().get("version") == version, 10,
                   message=f"/config version {version}")

    def test_version_only_change_is_applied(self):
        # Contract: a good new config logs "config reloaded" and /config shows the new version.
        # Here the file differs from the running one only in its version.
        p = self.start_proxy(self.config(1).replace('"v1"', '"same"'))
        mark = p.mark()
        p.reload(self.config(2).replace('"v2"', '"same"'))
        self.wait_version(p, 2)
        p.wait_log("config reloaded", since=mark)

    def test_listener_added_and_removed(self):
        p = self.start_proxy(self.config(1))
        http = p.port
        p.reload(self.config(2, "  - { name: extra, address: 127.0.0.1, port: 0 }"))
        self.wait_version(p, 2)
        wait_until(lambda: "extra" in p.ports, 5, message="a listening line for the new listener")
        extra = p.ports["extra"]
        self.assertStatus(get(extra, "/id"), 200)
        self.assertStatus(get(http, "/id"), 200, "the old listener keeps its port")
        p.reload(self.config(3))
        self.wait_version(p, 3)
        wait_until(lambda: connect_refused(extra), 5, message="removed listener's port refused")
        self.assertStatus(get(http, "/id"), 200)
        self.assertEqual(p.port_conflicts, [], "a listener changed port across reloads")

    def test_listener_bind_failure_is_a_failed_reload(self):
        p = self.start_proxy(self.config(1))
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        mark = p.mark()
        p.reload(self.config(2, f"  - {{ name: clash, address: 127.0.0.1, port: {port} }}"))
        p.wait_log("config reload failed", since=mark)
        wait_until(lambda: p.metric("marchproxy_config_reloads_total", result="failed") == 1, 5,
                   message="failed reload counted")
        self.assertEqual(p.config_info().get("version"), 1)
        self.assertStatus(get(p.port, "/id"), 200)

    def test_health_state_and_idle_connections_survive_reload(self):
        p = self.start_proxy(self.config(1))
        wait_until(lambda: {get(p.port, "/id").text for _ in range(4)} == {"A", "B"}, 10,
                   message="both endpoints serving")
        self.a.healthy = False
        wait_until(lambda: p.metric("marchproxy_upstream_endpoint_healthy", cluster="c",
                                    endpoint=lambda e: e.endswith(f":{self.a.port}")) == 0, 10,
                   message="A unhealthy")
        for _ in range(4):
            self.assertEqual(get(p.port, "/id").text, "B")
        # Health checks open a connection each; only connections that carried proxied requests count.
        conns_b = self.b.data_connections
        p.reload(self.config(2))
        self.wait_version(p, 2)
        a0 = self.a.count
        ids = [get(p.port, "/id").text for _ in range(10)]
        self.assertEqual(ids, ["B"] * 10, "an endpoint that stays keeps its (unhealthy) state")
        self.assertEqual(self.a.count, a0)
        self.assertEqual(self.b.data_connections, conns_b,
                         "idle upstream connections to endpoints that remain are kept")

    def test_unchanged_content_is_ignored_then_change_applies(self):
        p = self.start_proxy(self.config(1), watch=True)
        text = self.config(1)
        mark = p.mark()
        p.write_config(text, atomic=False)
        p.write_config(text, atomic=True)
        time.sleep(1.5)  # settle: a watcher that reacts does so well within this
        self.assertEqual(p.metric("marchproxy_config_reloads_total", result="ok"), 0,
                         "rewriting the same content must not count as a reload")
        self.assertFalse([ln for ln in p.log_lines_since(mark) if "config reloaded" in ln])
        p.write_config(self.config(2))
        self.wait_version(p, 2)

    def test_configmap_symlink_swap(self):
        # Kubernetes mounts: config.yaml -> ..data/config.yaml, ..data -> ..<timestamp>; an
        # update swaps ..data atomically and never touches config.yaml itself.
        d = os.path.join(self.tmpdir(), "configmap")
        os.makedirs(d)

        def publish(n, text):
            ts = os.path.join(d, f"..v{n}")
            os.makedirs(ts)
            with open(os.path.join(ts, "config.yaml"), "w") as f:
                f.write(text)
            tmp = os.path.join(d, "..data_tmp")
            os.symlink(f"..v{n}", tmp)
            os.replace(tmp, os.path.join(d, "..data"))
        publish(1, self.config(1))
        os.symlink("..data/config.yaml", os.path.join(d, "config.yaml"))
        p = self.start_proxy(None, watch=True, config_path=os.path.join(d, "config.yaml"))
        self.assertEqual(p.config_info().get("version"), 1)
        publish(2, self.config(2))
        self.wait_version(p, 2)
        publish(3, self.config(3))
        self.wait_version(p, 3)


DRAIN = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: s }
clusters:
  - name: s
    endpoints: [ "${S}" ]
    timeouts: { connect: 1s, response: 30s }
timeouts: { header_read: 2s, idle: 30s, drain: ${DRAIN} }
"""


class DrainTest(ProxyTestCase):
    def setUp(self):
        self.s = self.start_origin("S")

    def test_graceful_drain(self):
        p = self.start_proxy(render(DRAIN, S=self.s.address, DRAIN="10s"))
        self.assertStatus(p.admin("/ready"), 200)
        idle = Conn(p.port)
        self.addCleanup(idle.close)
        self.assertStatus(idle.request("GET", "/id"), 200)
        result = {}

        def slow():
            try:
                with Conn(p.port, timeout=20) as c:
                    r = c.request("GET", "/sleep/3000")
                    result["status"], result["body"] = r.status, r.body
                    result["connection"] = (r.header("connection") or "").lower()
            except Exception as e:  # noqa: BLE001
                result["error"] = repr(e)
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        wait_until(lambda: self.s.inflight == 1, 5, message="slow request at the origin")
        p.signal(signal.SIGTERM)
        wait_until(lambda: p.admin("/ready").status == 503, 2.5, interval=0.02,
                   message="/ready answering 503 while draining")
        wait_until(lambda: connect_refused(p.port), 2.5, interval=0.02,
                   message="new connections refused while draining")
        self.assertTrue(p.alive(), "exited before its in-flight request finished")
        self.assertTrue(idle.closed_by_peer(5), "idle keep-alive connection not closed on drain")
        t.join(20)
        self.assertEqual(result, {"status": 200, "body": b"S", "connection": "close"},
                         "the in-flight request completes, its response says Connection: close")
        self.assertEqual(p.wait_exit(15), 0, f"exit code after drain:\n{p.tail()}")

    def test_sigterm_right_after_listening(self):
        # A supervisor may stop the proxy at any moment, also between "listening:" and ready:
        # SIGTERM must never fall on the default action (death by signal, no drain).
        codes = []
        for _ in range(5):
            p = self.start_proxy(render(DRAIN, S=self.s.address, DRAIN="1s"), wait_ready=False)
            p.signal(signal.SIGTERM)
            codes.append(p.wait_exit(15))
        self.assertEqual(codes, [0] * 5, "exit codes (negative = killed by that signal)")

    def test_drain_deadline(self):
        p = self.start_proxy(render(DRAIN, S=self.s.address, DRAIN="1s"))
        result = {}

        def slow():
            try:
                with Conn(p.port, timeout=30) as c:
                    result["status"] = c.request("GET", "/sleep/20000").status
            except Exception as e:  # noqa: BLE001
                result["error"] = repr(e)
        t = threading.Thread(target=slow, daemon=True)
        t.start()
        wait_until(lambda: self.s.inflight == 1, 5, message="slow request at the origin")
        p.signal(signal.SIGTERM)
        rc = p.wait_exit(15)
        self.assertIsNotNone(rc, "still running 15 s after SIGTERM with timeouts.drain = 1s")
        self.assertEqual(rc, 0)
        t.join(5)
        self.assertNotEqual(result.get("status"), 200, result)


if __name__ == "__main__":
    unittest.main(verbosity=2)
