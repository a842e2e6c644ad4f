"""Admin endpoint (/ready /live /config /metrics), Prometheus exposition checked by promtool,
request counters and gauges moving with traffic, and the JSON access log."""
import json
import os
import re
import shutil
import subprocess
import threading
import unittest

from harness import (ProxyTestCase, Conn, get, request, render, wait_until, metric_sum, parse_metrics)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

ADMIN = """
schema: 1
version: 7
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: api
        match: { prefix: /api/ }
        forward: { cluster: a }
      - name: hello
        match: { prefix: /hello }
        direct_response: { status: 200, body: "hi" }
clusters:
  - name: a
    endpoints: [ "${A}" ]
    health_check: { type: http, path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 1, unhealthy_threshold: 2 }
    timeouts: { connect: 1s, response: 5s }
timeouts: { header_read: 2s, idle: 30s, drain: 1s }
access_log: { enabled: true, path: ${LOG} }
"""

FAMILIES = {
    "marchproxy_requests_total": "counter",
    "marchproxy_request_duration_seconds": "histogram",
    "marchproxy_downstream_connections_active": "gauge",
    "marchproxy_upstream_connections_active": "gauge",
    "marchproxy_upstream_connections_idle": "gauge",
    "marchproxy_upstream_endpoint_healthy": "gauge",
    "marchproxy_upstream_retries_total": "counter",
    "marchproxy_config_reloads_total": "counter",
    "marchproxy_config_version": "gauge",
}

ACCESS_FIELDS = ("request_id", "client", "method", "host", "path", "status", "bytes_in", "bytes_out",
                 "duration_ms", "upstream", "route", "cluster")


class AdminTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.log_path = os.path.join(self.tmpdir(), "access.log")
        self.p = self.start_proxy(render(ADMIN, A=self.a.address, LOG=self.log_path))

    def promtool(self, text):
        r = subprocess.run([PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True,
                           timeout=30)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    def test_ready_live(self):
        self.assertStatus(self.p.admin("/ready"), 200)
        self.assertStatus(self.p.admin("/live"), 200)

    def test_config_endpoint(self):
        r = self.p.admin("/config")
        self.assertStatus(r, 200)
        self.assertIn("json", (r.header("content-type") or "").lower(), r)
        info = r.json()
        self.assertEqual(info.get("version"), 7, info)
        self.assertRegex(str(info.get("hash")), r"^[0-9a-f]{64}$", info)

    def test_unknown_admin_path_404(self):
        self.assertStatus(self.p.admin("/no-such-admin-page"), 404)

    def test_metrics_pass_promtool_idle(self):
        rc, out = self.promtool(self.p.metrics_text())
        self.assertEqual(rc, 0, f"promtool check metrics failed:\n{out}")

    def test_metrics_pass_promtool_after_traffic(self):
        for path in ("/api/id", "/api/status/500", "/api/status/404", "/hello", "/nothing"):
            get(self.p.port, path)
        text = self.p.metrics_text()
        rc, out = self.promtool(text)
        self.assertEqual(rc, 0, f"promtool check metrics failed:\n{out}\n--- body ---\n{text[:4000]}")
        types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
        for name, kind in FAMILIES.items():
            self.assertEqual(types.get(name), kind, f"metric family {name} ({kind}) missing or mistyped")
        samples = parse_metrics(text)
        count = metric_sum(samples, "marchproxy_request_duration_seconds_count")
        inf = metric_sum(samples, "marchproxy_request_duration_seconds_bucket", le="+Inf")
        self.assertEqual(count, inf, "histogram: +Inf bucket equals _count")
        self.assertGreaterEqual(count, 4)

    def test_request_counters_move(self):
        lbl = dict(vhost="app", route="api", cluster="a")
        base = {cc: self.p.metric("marchproxy_requests_total", code_class=cc, **lbl)
                for cc in ("2xx", "4xx", "5xx")}
        dur0 = self.p.metric("marchproxy_request_duration_seconds_count")
        with Conn(self.p.port) as c:
            for _ in range(5):
                self.assertStatus(c.request("GET", "/api/id"), 200)
            for _ in range(3):
                self.assertStatus(c.request("GET", "/api/status/404"), 404)
            for _ in range(2):
                self.assertStatus(c.request("GET", "/api/status/500"), 500)
        want = {"2xx": 5, "4xx": 3, "5xx": 2}

        def deltas():
            return {cc: self.p.metric("marchproxy_requests_total", code_class=cc, **lbl) - base[cc]
                    for cc in want}
        try:
            wait_until(lambda: deltas() == want, 5)
        except AssertionError:
            self.assertEqual(deltas(), want, "marchproxy_requests_total{vhost=app,route=api,cluster=a}")
        self.assertGreaterEqual(self.p.metric("marchproxy_request_duration_seconds_count") - dur0, 10)

    def test_connection_gauges(self):
        gauge = "marchproxy_downstream_connections_active"
        base = self.p.metric(gauge)
        conns = [Conn(self.p.port) for _ in range(3)]
        try:
            for c in conns:
                self.assertStatus(c.request("GET", "/api/id"), 200)
            wait_until(lambda: self.p.metric(gauge) >= base + 3, 5, message=f"{gauge} >= {base + 3}")
            wait_until(lambda: self.p.metric("marchproxy_upstream_connections_idle", cluster="a") >= 1, 5,
                       message="an idle pooled upstream connection for cluster a")
        finally:
            for c in conns:
                c.close()
        wait_until(lambda: self.p.metric(gauge) <= base, 5, message=f"{gauge} back to {base}")
        # a request held at the origin keeps one upstream connection active
        self.a.gate = threading.Event()
        t = threading.Thread(target=lambda: get(self.p.port, "/api/id", timeout=20), daemon=True)
        t.start()
        try:
            wait_until(lambda: self.a.inflight == 1, 5, message="request held at the origin")
            wait_until(lambda: self.p.metric("marchproxy_upstream_connections_active", cluster="a") >= 1, 5,
                       message="marchproxy_upstream_connections_active{cluster=a} >= 1 while a request is held")
        finally:
            self.a.gate.set()
            t.join(10)
        wait_until(lambda: self.p.metric("marchproxy_upstream_connections_active", cluster="a") == 0, 5,
                   message="no upstream connection in use once the requests are done")

    def test_endpoint_healthy_and_version_gauges(self):
        port = str(self.a.port)
        wait_until(lambda: self.p.metric("marchproxy_upstream_endpoint_healthy", cluster="a",
                                         endpoint=lambda e: e.rsplit(":", 1)[-1] == port) == 1, 10,
                   message="endpoint healthy gauge = 1")
        self.assertEqual(self.p.metric("marchproxy_config_version"), 7)

    def test_access_log(self):
        with Conn(self.p.port) as c:
            r1 = c.request("GET", "/api/echo", headers=[("X-Request-Id", "itest-1")])
            self.assertStatus(r1, 200)
            self.assertStatus(c.request("POST", "/api/sink", headers=[("X-Request-Id", "itest-2")],
                                        body=b"q" * 123), 200)
            self.assertStatus(c.request("GET", "/nothing", headers=[("X-Request-Id", "itest-3")]), 404)

        def entries():
            if not os.path.exists(self.log_path):
                return None
            with open(self.log_path) as f:
                lines = [ln for ln in f.read().split("\n") if ln.strip()]
            return lines if len(lines) >= 3 else None
        lines = wait_until(entries, 10, message="three access log lines")
        parsed = []
        for ln in lines:
            try:
                parsed.append(json.loads(ln))
            except ValueError:
                self.fail(f"access log line is not JSON: {ln!r}")
        ids = [e.get("request_id") for e in parsed]
        self.assertEqual(ids, ["itest-1", "itest-2", "itest-3"],
                         "request_id is the client's X-Request-Id (the one sent upstream)\n"
                         + "\n".join(lines))
        for e in parsed:
            missing = [f for f in ACCESS_FIELDS if f not in e]
            self.assertEqual(missing, [], f"access log entry lacks fields: {e}")
        by_id = {e["request_id"]: e for e in parsed}
        e1 = by_id["itest-1"]
        self.assertEqual((e1["method"], e1["path"], e1["status"]), ("GET", "/api/echo", 200), e1)
        self.assertEqual(e1["host"], "test.local", e1)
        self.assertEqual((e1["route"], e1["cluster"]), ("api", "a"), e1)
        self.assertIn(str(self.a.port), str(e1["upstream"]), e1)
        self.assertTrue(str(e1["client"]).startswith("127.0.0.1"), e1)
        self.assertGreaterEqual(int(e1["bytes_out"]), len(r1.body), e1)
        self.assertGreaterEqual(float(e1["duration_ms"]), 0, e1)
        e2 = by_id["itest-2"]
        self.assertEqual((e2["method"], e2["status"]), ("POST", 200), e2)
        self.assertGreaterEqual(int(e2["bytes_in"]), 123, e2)
        self.assertEqual(by_id["itest-3"]["status"], 404, by_id["itest-3"])


if __name__ == "__main__":
    unittest.main(verbosity=2)
