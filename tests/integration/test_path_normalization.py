"""Routing sees one spelling of a path: encoded unreserved characters and dot segments cannot be
used to dodge a route (e.g. a deny rule on /admin), and the upstream receives the path that was
routed. A broken percent-escape is a 400."""
import unittest

from harness import ProxyTestCase, get, render, request

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - { match: { prefix: /admin }, direct_response: { status: 403, body: "denied" } }
      - { match: { prefix: / }, forward: { cluster: a } }
clusters:
  - { name: a, endpoints: [ "${A}" ] }
"""


class PathNormalizationTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.p = self.start_proxy(render(CONFIG, A=self.a.address))

    def test_deny_rule_cannot_be_bypassed(self):
        for path in ["/admin", "/%61dmin", "/x/../admin", "/./admin/x", "/x/%2e%2e/admin"]:
            r = request(self.p.port, "GET", path)
            self.assertEqual((r.status, r.body), (403, b"denied"), f"{path} reached {r!r}")
        self.assertEqual(self.a.count, 0)

    def test_upstream_gets_the_routed_path(self):
        seen = get(self.p.port, "/a/./b/../%7Euser/echo?q=%2e").json()
        self.assertEqual(seen["path"], "/a/~user/echo", seen)
        self.assertEqual(seen["query"], "q=%2e", "the query is not rewritten")

    def test_broken_escape_is_400(self):
        r = get(self.p.port, "/bad%zzpath")
        self.assertEqual(r.status, 400, r)


if __name__ == "__main__":
    unittest.main()
