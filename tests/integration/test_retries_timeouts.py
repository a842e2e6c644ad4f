"""Retries (connect failure, 503, POST never retried, retry metric), upstream errors (502), upstream
timeouts (504, connect timeout), downstream timeouts (408 header read, idle keep-alive)."""
import threading
import time
import unittest

from harness import (ProxyTestCase, Conn, RawServer, get, request, render, free_port,
                     read_request_head)

RETRIES = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /retry-connect/ }
        forward: { cluster: deadpair, retries: { attempts: 2, on: [connect-failure] } }
      - match: { prefix: /retry-503/ }
        forward: { cluster: failpair, retries: { attempts: 2, on: ["503"] } }
      - match: { prefix: /no-retry-503/ }
        forward: { cluster: failpair }
      - match: { prefix: /retry-alldead/ }
        forward: { cluster: alldead, retries: { attempts: 2, on: [connect-failure] } }
      - match: { prefix: /per-try/ }
        forward: { cluster: heldpair, timeout: 5s, retries: { attempts: 1, on: ["504"], per_try_timeout: 300ms } }
clusters:
  - name: alldead
    endpoints: [ "${DEAD}", "${DEAD2}" ]
    outlier_detection: { enabled: false }
    timeouts: { connect: 1s, response: 5s }
  - name: heldpair
    lb: round_robin
    endpoints: [ "${H}", "${B}" ]
    outlier_detection: { enabled: false }
    timeouts: { connect: 1s, response: 5s }
  - name: deadpair
    lb: round_robin
    endpoints: [ "${DEAD}", "${B}" ]
    outlier_detection: { enabled: false }
    timeouts: { connect: 1s, response: 5s }
  - name: failpair
    lb: round_robin
    endpoints: [ "${F}", "${B}" ]
    outlier_detection: { enabled: false }
    timeouts: { connect: 1s, response: 5s }
timeouts: { header_read: 2s, idle: 10s, drain: 1s }
"""


class RetryTest(ProxyTestCase):
    def setUp(self):
        self.b = self.start_origin("B")
        self.f = self.start_origin("F")
        self.f.fail_status = 503
        self.h = self.start_origin("H")
        self.h.gate = threading.Event()  # H holds every request (until the test ends)
        self.p = self.start_proxy(render(RETRIES, DEAD=f"127.0.0.1:{free_port()}", B=self.b.address,
                                         F=self.f.address, DEAD2=f"127.0.0.1:{free_port()}",
                                         H=self.h.address))

    def retries(self, cluster):
        return self.p.metric("marchproxy_upstream_retries_total", cluster=cluster)

    def test_get_retried_on_connect_failure(self):
        before = self.retries("deadpair")
        for i in range(10):
            r = get(self.p.port, f"/retry-connect/id?i={i}")
            self.assertStatus(r, 200)
            self.assertEqual(r.text, "B")
        self.assertEqual(self.b.count, 10)
        self.assertGreaterEqual(self.retries("deadpair") - before, 1,
                                "round robin over a dead endpoint must have retried at least once")

    def test_post_with_body_not_retried(self):
        statuses = []
        for i in range(10):
            r = request(self.p.port, "POST", f"/retry-connect/sink?i={i}", body=b"x" * 1000)
            statuses.append(r.status)
        self.assertEqual(set(statuses) - {200, 502, 503}, set(), statuses)
        self.assertGreaterEqual(statuses.count(502) + statuses.count(503), 1,
                                f"POST must not be retried, so the dead endpoint shows: {statuses}")
        self.assertEqual(self.b.count, statuses.count(200))

    def test_503_retried_when_configured(self):
        before = self.retries("failpair")
        for i in range(10):
            r = get(self.p.port, f"/retry-503/id?i={i}")
            self.assertStatus(r, 200)
            self.assertEqual(r.text, "B")
        self.assertGreaterEqual(self.f.count, 1, "the failing endpoint was never tried")
        self.assertGreaterEqual(self.retries("failpair") - before, self.f.count)

    def test_retries_exhausted(self):
        before = self.retries("alldead")
        for i in range(3):
            r = get(self.p.port, f"/retry-alldead/id?i={i}")
            self.assertIn(r.status, (502, 503), r)
        self.assertGreaterEqual(self.retries("alldead") - before, 6, "2 retries for each of 3 requests")

    def test_per_try_timeout_retried_on_504(self):
        for i in range(6):
            r = get(self.p.port, f"/per-try/id?i={i}", timeout=10)
            self.assertStatus(r, 200)
            self.assertEqual(r.text, "B")
        self.assertGreaterEqual(self.h.count, 1, "the held endpoint was never tried")

    def test_503_surfaces_without_retry_policy(self):
        statuses = [get(self.p.port, f"/no-retry-503/id?i={i}").status for i in range(10)]
        self.assertIn(503, statuses)
        self.assertEqual(set(statuses), {200, 503}, statuses)
        self.assertEqual(statuses.count(503), self.f.count)


TIMEOUTS = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /route-timeout/ }
        forward: { cluster: patient, timeout: 300ms }
      - match: { prefix: /cluster-timeout/ }
        forward: { cluster: impatient }
      - match: { prefix: /blackhole/ }
        forward: { cluster: blackhole }
      - match: { prefix: /garbage/ }
        forward: { cluster: garbage }
      - match: { prefix: /hangup/ }
        forward: { cluster: hangup }
      - match: { prefix: /badlength/ }
        forward: { cluster: badlength }
      - match: { prefix: / }
        forward: { cluster: patient }
clusters:
  - name: patient
    endpoints: [ "${S}" ]
    timeouts: { connect: 1s, response: 20s }
  - name: impatient
    endpoints: [ "${S}" ]
    timeouts: { connect: 1s, response: 500ms }
  - name: blackhole
    endpoints: [ "${HOLE}" ]
    outlier_detection: { enabled: false }
    timeouts: { connect: 300ms, response: 30s }
  - name: garbage
    endpoints: [ "${GARBAGE}" ]
    outlier_detection: { enabled: false }
  - name: hangup
    endpoints: [ "${HANGUP}" ]
    outlier_detection: { enabled: false }
  - name: badlength
    endpoints: [ "${BADLEN}" ]
    outlier_detection: { enabled: false }
timeouts: { header_read: 500ms, idle: 1s, drain: 1s }
"""


def _garbage(sock):
    if read_request_head(sock):
        sock.sendall(b"this is not http\r\n\r\n")


def _hangup(sock):
    read_request_head(sock)


def _badlength(sock):
    if read_request_head(sock):
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\nhello")


class TimeoutTest(ProxyTestCase):
    def setUp(self):
        self.s = self.start_origin("S")
        self.hole = RawServer(None, backlog=0)
        self.addCleanup(self.hole.close)
        self.assertTrue(self.hole.fill_backlog(), "could not fill the blackhole's accept queue")
        servers = {}
        for name, fn in (("GARBAGE", _garbage), ("HANGUP", _hangup), ("BADLEN", _badlength)):
            srv = RawServer(fn)
            self.addCleanup(srv.close)
            servers[name] = srv.address
        self.p = self.start_proxy(render(TIMEOUTS, S=self.s.address, HOLE=self.hole.address,
                                         **servers))

    def test_cluster_response_timeout_504(self):
        r = get(self.p.port, "/cluster-timeout/sleep/5000", timeout=15)
        self.assertStatus(r, 504)
        self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r)
        self.assertServes(self.p, "/cluster-timeout/sleep/10")

    def test_route_timeout_504(self):
        # The cluster would wait 20 s; the route says 300 ms. A client giving up at 10 s would fail.
        r = get(self.p.port, "/route-timeout/sleep/15000", timeout=10)
        self.assertStatus(r, 504)

    def test_fast_response_within_timeouts(self):
        self.assertStatus(get(self.p.port, "/cluster-timeout/sleep/50"), 200)
        self.assertStatus(get(self.p.port, "/route-timeout/sleep/50"), 200)

    def test_connect_timeout(self):
        # The upstream's accept queue is full, so SYNs are dropped and the connect hangs; the
        # 300 ms connect timeout must end it long before the 30 s response timeout. The contract
        # does not fix the status of a connect timeout: any of 502/503/504 is accepted.
        r = get(self.p.port, "/blackhole/id", timeout=10)
        self.assertIsNotNone(r)
        self.assertIn(r.status, (502, 503, 504), r)

    def test_bad_upstream_response_502(self):
        for path in ("/garbage/id", "/hangup/id", "/badlength/id"):
            r = get(self.p.port, path)
            self.assertStatus(r, 502, path)
        self.assertServes(self.p)

    def test_partial_head_408_and_close(self):
        with Conn(self.p.port) as c:
            c.send(b"GET /id HTTP/1.1\r\nHost: test.local\r\n")
            r = c.read_response()
            self.assertStatus(r, 408)
            self.assertClosed(c)
        self.assertEqual(self.s.count, 0)
        self.assertServes(self.p)

    def test_trickled_head_408(self):
        # header_read bounds the whole head, not the gap between bytes.
        with Conn(self.p.port) as c:
            c.send(b"GET /id HTTP/1.1\r\nHost: test.local\r\n")
            stop = threading.Event()

            def trickle():
                for i in range(50):
                    if stop.wait(0.1):
                        return
                    try:
                        c.send(f"X-Slow-{i}: y\r\n".encode())
                    except OSError:
                        return
            t = threading.Thread(target=trickle, daemon=True)
            t.start()
            try:
                r = c.read_response()
            finally:
                stop.set()
                t.join()
            self.assertStatus(r, 408)
            self.assertClosed(c)
        self.assertEqual(self.s.count, 0)

    def test_idle_keepalive_closed(self):
        with Conn(self.p.port) as c:
            self.assertStatus(c.request("GET", "/id"), 200)
            self.assertClosed(c, timeout=10, msg="(idle keep-alive, timeouts.idle = 1s)")
            self.assertEqual(bytes(c.buf), b"", "nothing may be sent on an idle close")

    def test_silent_connection_closed(self):
        with Conn(self.p.port) as c:
            self.assertClosed(c, timeout=10, msg="(connection that never sends a byte)")


if __name__ == "__main__":
    unittest.main(verbosity=2)
