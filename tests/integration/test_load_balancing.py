"""Load-balancing policies: round robin, smooth weighted round robin, least request, ring hash, maglev."""
import threading
import time
import unittest

from harness import ProxyTestCase, Conn, get, request, render

LB = """
schema: 1
workers: ${WORKERS}
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
    lb: ${POLICY}
${EXTRA}
    endpoints: ${ENDPOINTS}
    timeouts: { connect: 1s, response: 40s }
timeouts: { header_read: 2s, idle: 10s, drain: 1s }
"""


class LoadBalancingTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.b = self.start_origin("B")

    def start(self, policy, workers=1, extra="", endpoints=None):
        endpoints = endpoints or f'[ "{self.a.address}", "{self.b.address}" ]'
        return self.start_proxy(render(LB, WORKERS=workers, POLICY=policy, EXTRA=extra,
                                       ENDPOINTS=endpoints))

    def test_round_robin_alternates_exactly(self):
        p = self.start("round_robin")
        seq = []
        with Conn(p.port) as c:  # one keep-alive connection
            for _ in range(20):
                r = c.request("GET", "/id")
                self.assertStatus(r, 200)
                seq.append(r.text)
        for _ in range(20):  # and one connection per request
            seq.append(get(p.port, "/id").text)
        for i in range(1, len(seq)):
            self.assertNotEqual(seq[i], seq[i - 1], f"not alternating at {i}: {''.join(seq)}")
        self.assertEqual(seq.count("A"), 20, "".join(seq))

    def test_round_robin_two_workers_balanced(self):
        p = self.start("round_robin", workers=2)
        seq = [get(p.port, "/id").text for _ in range(40)]
        self.assertLessEqual(abs(seq.count("A") - seq.count("B")), 2, "".join(seq))

    def test_weighted_round_robin_1_to_3(self):
        p = self.start("weighted_round_robin", workers=2,
                       endpoints=f'[ {{ address: "{self.a.address}", weight: 1 }}, '
                                 f'{{ address: "{self.b.address}", weight: 3 }} ]')
        counts = {"A": 0, "B": 0}
        conns = [Conn(p.port) for _ in range(4)]
        try:
            for i in range(400):
                r = conns[i % 4].request("GET", "/id")
                self.assertStatus(r, 200)
                counts[r.text] += 1
        finally:
            for c in conns:
                c.close()
        self.assertLessEqual(abs(counts["A"] - 100), 2, counts)
        self.assertLessEqual(abs(counts["B"] - 300), 2, counts)

    def test_weighted_round_robin_is_smooth(self):
        # Smooth WRR interleaves: with 1:3 there are never more than 3 B in a row (one worker).
        p = self.start("weighted_round_robin",
                       endpoints=f'[ {{ address: "{self.a.address}", weight: 1 }}, '
                                 f'{{ address: "{self.b.address}", weight: 3 }} ]')
        with Conn(p.port) as c:
            seq = "".join(c.request("GET", "/id").text for _ in range(40))
        self.assertNotIn("BBBB", seq)
        self.assertNotIn("AA", seq)
        self.assertEqual(seq.count("A"), 10, seq)

    def test_least_request_prefers_idle_endpoint(self):
        p = self.start("least_request")
        self.a.gate = threading.Event()  # A holds every request until released
        results, threads = [], []

        def fire():
            done = threading.Event()

            def run():
                try:
                    results.append(get(p.port, "/id", timeout=45).status)
                except Exception as e:  # noqa: BLE001
                    results.append(repr(e))
                done.set()
            t = threading.Thread(target=run, daemon=True)
            before = self.a.inflight
            t.start()
            threads.append(t)
            deadline = time.monotonic() + 10
            while not done.is_set() and self.a.inflight <= before:
                if time.monotonic() > deadline:
                    self.fail("a request neither completed nor reached A")
                time.sleep(0.005)
            # Let the proxy see the response head of a B request complete before the next one.
            done.wait(0.2 if self.a.inflight <= before else 0)

        try:
            for _ in range(40):  # make A busy with at least one outstanding request
                fire()
                if self.a.inflight >= 1:
                    break
            self.assertGreaterEqual(self.a.inflight, 1, "could not get a request held on A")
            a0, b0 = self.a.count, self.b.count
            for _ in range(100):
                fire()
            to_a, to_b = self.a.count - a0, self.b.count - b0
            self.assertEqual(to_a + to_b, 100)
            # Round robin or random would give ~50. Power-of-two-choices sampling with replacement
            # gives ~75; picking two distinct endpoints gives 100.
            self.assertGreaterEqual(to_b, 60, f"busy A got {to_a}, idle B got {to_b}")
        finally:
            self.a.gate.set()
            for t in threads:
                t.join(50)
        self.assertEqual([r for r in results if r != 200], [], "every request finally succeeds")

    def _hash_test(self, policy):
        p = self.start(policy, workers=2, extra='    hash_on: "header:x-user"')
        owner = {}
        for u in range(40):
            got = set()
            for _ in range(3):
                r = request(p.port, "GET", "/id", headers=[("X-User", f"user-{u}")])
                self.assertStatus(r, 200)
                got.add(r.text)
            self.assertEqual(len(got), 1, f"user-{u} went to {got}")
            owner[u] = got.pop()
        spread = set(owner.values())
        self.assertEqual(spread, {"A", "B"}, f"40 users all on one endpoint: {owner}")

    def test_ring_hash_header(self):
        self._hash_test("ring_hash")

    def test_maglev_header(self):
        self._hash_test("maglev")

    def test_ring_hash_source_ip(self):
        p = self.start("ring_hash", workers=2, extra="    hash_on: source_ip")
        got = {get(p.port, "/id").text for _ in range(20)}
        self.assertEqual(len(got), 1, f"one client address must map to one endpoint: {got}")


if __name__ == "__main__":
    unittest.main(verbosity=2)
