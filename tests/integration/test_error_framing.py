"""A request body must never be read as the next request when the proxy answers with an error
before forwarding it (no healthy endpoint, connect refused): either the body is dropped with its
request and the connection stays usable, or the connection closes. Anything else lets a client
smuggle a second request past routing through the body of the first."""
import unittest

from harness import Conn, ConnectionClosed, ProxyTestCase, free_port, render

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - { match: { exact: /smuggled }, direct_response: { status: 200, body: "SMUGGLED" } }
      - { match: { exact: /next }, direct_response: { status: 200, body: "next" } }
      - { match: { prefix: /dead }, forward: { cluster: dead } }
clusters:
  - name: dead
    endpoints: [ "127.0.0.1:${PORT}" ]
    outlier_detection: { enabled: false }
    timeouts: { connect: 500ms }
"""

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: test.local\r\n\r\n"


class ErrorFramingTest(ProxyTestCase):
    def check_no_smuggling(self, p):
        with Conn(p.port) as c:
            r = c.request("POST", "/dead/x", body=SMUGGLED)
            self.assertIn(r.status, (502, 503), r)
            try:
                nxt = c.request("GET", "/next")
            except ConnectionClosed:
                return  # closing the connection is a safe answer too
            self.assertEqual(nxt.status, 200, nxt)
            self.assertEqual(nxt.body, b"next", "the body of the failed POST was parsed as a request")

    def test_connect_refused_does_not_parse_body_as_request(self):
        p = self.start_proxy(render(CONFIG, PORT=free_port()))
        self.check_no_smuggling(p)

    def test_no_healthy_upstream_does_not_parse_body_as_request(self):
        # Eject the only endpoint first (connect failures with outlier detection on), then POST.
        config = render(CONFIG, PORT=free_port()).replace(
            "outlier_detection: { enabled: false }",
            "outlier_detection: { consecutive_connect_failures: 1, base_ejection_time: 30s, max_ejection_percent: 100 }")
        p = self.start_proxy(config)
        with Conn(p.port) as c:
            self.assertEqual(c.request("GET", "/dead/eject").status, 502)
        self.check_no_smuggling(p)


if __name__ == "__main__":
    unittest.main()
