"""Health: active HTTP checks, the endpoint-health metric, no healthy upstream, passive outlier
detection (consecutive 5xx, connect failures) and un-ejection."""
import unittest

from harness import ProxyTestCase, Conn, get, render, wait_until, free_port

ACTIVE = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: c }
clusters:
  - name: c
    lb: round_robin
    endpoints: [ "${A}", "${B}" ]
    health_check: { type: http, path: /health, interval: 300ms, timeout: 250ms, healthy_threshold: 1, unhealthy_threshold: 2 }
    outlier_detection: { enabled: false }
    timeouts: { connect: 1s, response: 5s }
timeouts: { header_read: 2s, idle: 10s, drain: 1s }
"""

PASSIVE = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: c }
clusters:
  - name: c
    lb: round_robin
    endpoints: [ "${A}", "${B}" ]
    outlier_detection: { consecutive_5xx: 3, consecutive_connect_failures: 2, base_ejection_time: ${EJECT} }
    timeouts: { connect: 1s, response: 5s }
timeouts: { header_read: 2s, idle: 10s, drain: 1s }
"""


def port_of(address):
    return address.rsplit(":", 1)[1]


class ActiveHealthTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.b = self.start_origin("B")
        self.p = self.start_proxy(render(ACTIVE, A=self.a.address, B=self.b.address))

    def healthy_metric(self, origin):
        port = str(origin.port)
        samples = [(lb, v) for n, lb, v in self.p.metrics()
                   if n == "marchproxy_upstream_endpoint_healthy" and lb.get("cluster") == "c"
                   and lb.get("endpoint", "").rsplit(":", 1)[-1] == port]
        if not samples:
            raise AssertionError(f"no marchproxy_upstream_endpoint_healthy sample for {origin}")
        return max(v for _, v in samples)

    def next_ids(self, n):
        return [get(self.p.port, "/id").text for _ in range(n)]

    def test_health_checks_are_sent(self):
        wait_until(lambda: self.a.health_count >= 2 and self.b.health_count >= 2, 10,
                   message="health checks to both endpoints")
        wait_until(lambda: self.healthy_metric(self.a) == 1 and self.healthy_metric(self.b) == 1, 10,
                   message="both endpoints reported healthy")

    def test_unhealthy_endpoint_removed_then_restored(self):
        wait_until(lambda: set(self.next_ids(6)) == {"A", "B"}, 10, message="both endpoints serving")
        self.a.healthy = False
        wait_until(lambda: self.healthy_metric(self.a) == 0, 10, message="A reported unhealthy")
        self.assertEqual(self.healthy_metric(self.b), 1)
        self.a.reset_counters()
        ids = self.next_ids(20)
        self.assertEqual(ids, ["B"] * 20)
        self.assertEqual(self.a.count, 0)
        self.a.healthy = True
        wait_until(lambda: self.healthy_metric(self.a) == 1, 10, message="A reported healthy again")
        wait_until(lambda: "A" in self.next_ids(6), 10, message="A receiving traffic again")

    def test_all_unhealthy_is_503(self):
        wait_until(lambda: set(self.next_ids(6)) == {"A", "B"}, 10, message="both endpoints serving")
        self.a.healthy = False
        self.b.healthy = False
        wait_until(lambda: self.healthy_metric(self.a) == 0 and self.healthy_metric(self.b) == 0, 10,
                   message="both reported unhealthy")
        self.a.reset_counters()
        self.b.reset_counters()
        for _ in range(5):
            r = get(self.p.port, "/id")
            self.assertStatus(r, 503)
            self.assertIn(b"no healthy upstream", r.body)
            self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r)
        self.assertEqual(self.a.count + self.b.count, 0)
        self.b.healthy = True
        wait_until(lambda: get(self.p.port, "/id").status == 200, 10, message="B serving again")


TCP_CHECK = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: c }
clusters:
  - name: c
    endpoints: [ "${A}", "${DEAD}" ]
    health_check: { type: tcp, interval: 300ms, timeout: 250ms, healthy_threshold: 1, unhealthy_threshold: 1 }
    outlier_detection: { enabled: false }
    timeouts: { connect: 1s, response: 5s }
"""


class TcpHealthTest(ProxyTestCase):
    def test_tcp_check_marks_dead_endpoint(self):
        a = self.start_origin("A")
        dead_port = free_port()
        p = self.start_proxy(render(TCP_CHECK, A=a.address, DEAD=f"127.0.0.1:{dead_port}"))

        def healthy(port):
            return p.metric("marchproxy_upstream_endpoint_healthy", cluster="c",
                            endpoint=lambda e: e.rsplit(":", 1)[-1] == str(port))
        wait_until(lambda: healthy(dead_port) == 0 and healthy(a.port) == 1, 10,
                   message="dead endpoint unhealthy, live one healthy")
        statuses = [get(p.port, "/id").status for _ in range(20)]
        self.assertEqual(statuses, [200] * 20)
        self.assertEqual(a.count, 20)


class PassiveHealthTest(ProxyTestCase):
    def setUp(self):
        self.b = self.start_origin("B")

    def test_consecutive_5xx_ejects(self):
        a = self.start_origin("A")
        a.fail_status = 500
        p = self.start_proxy(render(PASSIVE, A=a.address, B=self.b.address, EJECT="30s"))
        statuses = []
        with Conn(p.port) as c:
            for _ in range(30):
                r = c.request("GET", "/id")
                statuses.append(r.status)
        n500 = statuses.count(500)
        self.assertGreaterEqual(n500, 3, statuses)
        self.assertLessEqual(n500, 5, f"A was not ejected after 3 consecutive 5xx: {statuses}")
        self.assertEqual(statuses[-15:], [200] * 15, statuses)
        self.assertEqual(a.count, n500)

    def test_ejected_endpoint_returns_after_ejection_time(self):
        a = self.start_origin("A")
        a.fail_status = 503
        p = self.start_proxy(render(PASSIVE, A=a.address, B=self.b.address, EJECT="1s"))
        for _ in range(10):
            get(p.port, "/id")
        self.assertGreaterEqual(a.count, 3)
        a.fail_status = None
        wait_until(lambda: get(p.port, "/id").text == "A", 15, interval=0.05,
                   message="A back in rotation after its ejection time")

    def test_dead_endpoint_502_then_ejected(self):
        dead = f"127.0.0.1:{free_port()}"
        p = self.start_proxy(render(PASSIVE, A=dead, B=self.b.address, EJECT="30s"))
        statuses = []
        bodies = []
        for _ in range(20):
            r = get(p.port, "/id")
            statuses.append(r.status)
            if r.status != 200:
                bodies.append(r)
        n502 = statuses.count(502)
        self.assertGreaterEqual(n502, 1, f"a refused connect must surface as 502: {statuses}")
        self.assertEqual(set(statuses) - {200, 502}, set(), statuses)
        self.assertLessEqual(n502, 3, f"dead endpoint not ejected after 2 connect failures: {statuses}")
        self.assertEqual(statuses[-10:], [200] * 10, statuses)
        for r in bodies:
            self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r)


if __name__ == "__main__":
    unittest.main(verbosity=2)
