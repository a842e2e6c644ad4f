"""Per-route request rate limits (docs/rate-limiting.md): 429 with Retry-After before any upstream
work, token-bucket counts within the expected band across workers (by counts, with the elapsed
time only widening the band), keys by client IP / header, marchproxy_rate_limited_total."""
import shutil
import subprocess
import time
import unittest

from harness import ProxyTestCase, Conn, conn_from, get, render, wait_until

CONFIG = """
schema: 1
version: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: http, address: 127.0.0.1, port: 0 }
  - { name: h2, address: 127.0.0.1, port: 0, h2c: true }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: slow
        match: { prefix: /slow }
        rate_limit: { requests_per_second: 1, burst: 5 }
        forward: { cluster: a }
      - name: steady
        match: { prefix: /steady }
        rate_limit: { requests_per_second: 50, burst: 10 }
        direct_response: { status: 200, body: "ok" }
      - name: keyed
        match: { prefix: /keyed }
        rate_limit: { requests_per_second: 1, burst: 2, key: header, header: X-Api-Key }
        direct_response: { status: 200, body: "ok" }
      - name: open
        match: { prefix: / }
        forward: { cluster: a }
clusters:
  - name: a
    endpoints: [ "${A}" ]
timeouts: { header_read: 2s, idle: 30s, drain: 1s }
"""


def get_from(port, path, source_ip, headers=None):
    """One GET on a fresh connection from a chosen loopback source address."""
    with conn_from(source_ip, port) as c:
        return c.request("GET", path, headers)


class RateLimitTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.p = self.start_proxy(render(CONFIG, A=self.a.address), expect_listeners=("http", "h2"))

    def burst(self, path, n, **kw):
        t0 = time.monotonic()
        statuses = [get(self.p.port, path, **kw) for _ in range(n)]
        return statuses, time.monotonic() - t0

    def test_burst_then_429_with_retry_after_and_no_upstream_work(self):
        before = self.a.count
        rs, elapsed = self.burst("/slow/x", 20)
        ok = [r for r in rs if r.status == 200]
        refused = [r for r in rs if r.status == 429]
        self.assertEqual(len(ok) + len(refused), 20, [r.status for r in rs])
        # burst 5, plus at most one token per second that passed (each new connection may land on
        # either worker: the bucket is shared, so this holds across workers).
        self.assertGreaterEqual(len(ok), 5)
        self.assertLessEqual(len(ok), 5 + int(elapsed) + 1, elapsed)
        self.assertEqual(self.a.count - before, len(ok), "a refused request reached the upstream")
        r = refused[0]
        self.assertEqual(r.header("retry-after"), "1", r)
        self.assertIn(b"rate limit", r.body)
        self.assertLess(len(r.body), 100)
        self.assertEqual(self.p.metric("marchproxy_rate_limited_total", route="slow"), len(refused))
        # Other routes are not limited.
        for _ in range(10):
            self.assertStatus(get(self.p.port, "/other"), 200)

    @unittest.skipUnless(shutil.which("curl"), "curl is not installed")
    def test_http2_streams_are_limited_like_http1_requests(self):
        before = self.a.count
        t0 = time.monotonic()
        heads = []
        for _ in range(12):
            r = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-D", "-", "-o", "/dev/null",
                                f"http://127.0.0.1:{self.p.ports['h2']}/slow/h2"],
                               capture_output=True, text=True, timeout=30)
            self.assertEqual(r.returncode, 0, r.stderr)
            heads.append(r.stdout.lower())
        elapsed = time.monotonic() - t0
        self.assertTrue(all(h.startswith("http/2 ") for h in heads), heads[0])
        ok = [h for h in heads if h.startswith("http/2 200")]
        refused = [h for h in heads if h.startswith("http/2 429")]
        self.assertEqual(len(ok) + len(refused), 12, heads)
        self.assertGreaterEqual(len(ok), 5)
        self.assertLessEqual(len(ok), 5 + int(elapsed) + 1, elapsed)
        self.assertIn("retry-after: 1", refused[0])
        self.assertEqual(self.a.count - before, len(ok), "a refused stream reached the upstream")
        self.assertEqual(self.p.metric("marchproxy_rate_limited_total", route="slow"), len(refused))

    def test_steady_rate_band(self):
        # 300 requests as fast as one client can: burst + rate * elapsed pass, within one token.
        rs, elapsed = self.burst("/steady", 300)
        ok = sum(r.status == 200 for r in rs)
        refused = sum(r.status == 429 for r in rs)
        self.assertEqual(ok + refused, 300)
        high = 10 + int(50 * elapsed) + 1
        self.assertGreaterEqual(ok, 10)
        self.assertLessEqual(ok, high, f"elapsed {elapsed:.3f}s")
        self.assertEqual(self.p.metric("marchproxy_rate_limited_total", route="steady"), refused)

    def test_keep_alive_connection_is_limited_too(self):
        with Conn(self.p.port) as c:
            statuses = [c.request("GET", "/slow/k").status for _ in range(8)]
        self.assertEqual(statuses[:5], [200] * 5, statuses)
        self.assertIn(429, statuses[5:])

    def test_client_ip_keys_are_independent(self):
        for ip in ("127.0.0.2", "127.0.0.3"):
            got = [get_from(self.p.port, "/slow/ip", ip).status for _ in range(7)]
            self.assertEqual(got[:5], [200] * 5, (ip, got))
            self.assertIn(429, got[5:], (ip, got))

    def test_header_key(self):
        a = [get(self.p.port, "/keyed", headers={"X-Api-Key": "alpha"}).status for _ in range(4)]
        b = [get(self.p.port, "/keyed", headers={"x-api-key": "beta"}).status for _ in range(4)]
        self.assertEqual(a[:2], [200, 200], a)
        self.assertEqual(b[:2], [200, 200], b)
        self.assertIn(429, a[2:])
        self.assertIn(429, b[2:])
        # Without the header the client address is the key (its own bucket).
        c = [get(self.p.port, "/keyed").status for _ in range(4)]
        self.assertEqual(c[:2], [200, 200], c)
        self.assertIn(429, c[2:])

    def test_rotating_header_values_meets_the_per_ip_ceiling(self):
        # A new API key per request: each key's bucket is full, but the address's ceiling
        # (per_ip_ceiling 4 x burst 2, refilled at 4 x 1/s) bounds what one address gets.
        t0 = time.monotonic()
        statuses = [get(self.p.port, "/keyed", headers={"X-Api-Key": f"rotated-{i}"}).status for i in range(40)]
        elapsed = time.monotonic() - t0
        ok = statuses.count(200)
        self.assertEqual(ok + statuses.count(429), 40, statuses)
        self.assertGreaterEqual(ok, 8, statuses)
        self.assertLessEqual(ok, 8 + int(4 * elapsed) + 1, (elapsed, statuses))
        # Another address has its own ceiling.
        self.assertEqual(get_from(self.p.port, "/keyed", "127.0.0.4", {"X-Api-Key": "fresh"}).status, 200)

    def test_reload_keeps_limiting(self):
        rs, _ = self.burst("/slow/r", 8)
        self.assertIn(429, [r.status for r in rs])
        self.p.reload(render(CONFIG, A=self.a.address).replace("burst: 5", "burst: 6")
                      .replace("version: 1", "version: 2"))
        wait_until(lambda: self.p.config_info().get("version") == 2, 10, message="reload applied")
        rs, _ = self.burst("/slow/r", 8)
        self.assertIn(429, [r.status for r in rs])


if __name__ == "__main__":
    unittest.main()
