"""Routing: virtual hosts by Host, routes by path/method/header, the three actions, header rewrites,
forwarding headers and hop-by-hop stripping."""
import unittest

from harness import ProxyTestCase, Conn, get, request, render, header_pairs_get

ROUTING = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: exact
    domains: ["api.example.com"]
    routes:
      - match: { prefix: / }
        forward: { cluster: a }
  - name: wild
    domains: ["*.example.com"]
    routes:
      - match: { prefix: / }
        forward: { cluster: b }
  - name: deeper-wild
    domains: ["*.deep.example.com"]
    routes:
      - match: { prefix: / }
        direct_response: { status: 200, body: "deep" }
  - name: default
    domains: ["*"]
    routes:
      - match: { exact: /exact }
        direct_response: { status: 200, body: "exact" }
      - match: { regex: "/v[0-9]+/items" }
        direct_response: { status: 200, body: "regex" }
      - match: { prefix: /methods, methods: [POST, PUT] }
        direct_response: { status: 201, body: "post-or-put" }
      - match: { prefix: /methods }
        direct_response: { status: 200, body: "any-method" }
      - match: { prefix: /canary, headers: [ { name: x-canary, exact: "1" } ] }
        forward: { cluster: b }
      - match: { prefix: /canary }
        forward: { cluster: a }
      - match: { prefix: /rw/ }
        forward: { cluster: a, prefix_rewrite: / }
      - match: { exact: /old }
        redirect: { code: 301, path: /new }
      - match: { exact: /secure }
        redirect: { code: 308, scheme: https, host: secure.example.com }
      - match: { prefix: /hello }
        direct_response: { status: 200, body: "hi" }
      - match: { prefix: /rewrite }
        forward: { cluster: a }
        request_headers: { set: { x-env: test }, remove: [x-secret], add: { x-added: one } }
        response_headers: { add: { x-served-by: marchproxy }, remove: [x-origin-name] }
      - match: { prefix: /app/ }
        forward: { cluster: a }
clusters:
  - name: a
    endpoints: [ "${A}" ]
  - name: b
    endpoints: [ "${B}" ]
timeouts: { header_read: 2s, idle: 5s, drain: 1s }
"""


class RoutingTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.b = self.start_origin("B")
        self.proxy = self.start_proxy(render(ROUTING, A=self.a.address, B=self.b.address))
        self.port = self.proxy.port

    def body(self, path, host="test.local", method="GET", headers=None, body=None, status=200):
        r = request(self.port, method, path, headers=headers, body=body, host=host)
        self.assertStatus(r, status, f"{method} {host}{path}")
        return r.text

    # -- virtual hosts

    def test_exact_host_wins_over_wildcard(self):
        self.assertEqual(self.body("/id", host="api.example.com"), "A")

    def test_host_match_ignores_case_and_port(self):
        self.assertEqual(self.body("/id", host="API.Example.COM:8080"), "A")
        self.assertEqual(self.body("/id", host="Foo.EXAMPLE.com:81"), "B")

    def test_wildcard_host(self):
        self.assertEqual(self.body("/id", host="foo.example.com"), "B")
        self.assertEqual(self.body("/id", host="a.b.example.com"), "B")

    def test_longest_wildcard_first(self):
        self.assertEqual(self.body("/id", host="x.deep.example.com"), "deep")

    def test_wildcard_does_not_match_apex_and_falls_to_default(self):
        # example.com is not a sub-domain of example.com: default vhost, which has /hello.
        self.assertEqual(self.body("/hello", host="example.com"), "hi")
        self.body("/id", host="example.com", status=404)

    def test_default_host(self):
        self.assertEqual(self.body("/hello", host="whatever.test"), "hi")

    def test_no_route_is_404_text_plain(self):
        r = get(self.port, "/nothing/here")
        self.assertStatus(r, 404)
        self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r)
        self.assertTrue(r.body, "404 should have a short body")
        self.assertEqual(self.a.count + self.b.count, 0, "nothing may reach an origin")

    # -- paths

    def test_exact_path(self):
        self.assertEqual(self.body("/exact"), "exact")
        self.assertEqual(self.body("/exact?q=1"), "exact", "the query is not part of the path")
        self.body("/exact/", status=404)
        self.body("/exactly", status=404)

    def test_regex_path_full_match(self):
        self.assertEqual(self.body("/v1/items"), "regex")
        self.assertEqual(self.body("/v42/items"), "regex")
        self.body("/v1/items/7", status=404)
        self.body("/vx/items", status=404)
        self.body("/pre/v1/items", status=404)

    def test_prefix_path(self):
        r = request(self.port, "GET", "/app/some/thing?x=1")
        self.assertStatus(r, 200)
        self.assertEqual(r.json()["target"], "/app/some/thing?x=1")
        self.assertEqual(r.json()["name"], "A")

    def test_methods(self):
        self.assertEqual(self.body("/methods", method="POST", body=b"", status=201), "post-or-put")
        self.assertEqual(self.body("/methods/x", method="PUT", body=b"abc", status=201), "post-or-put")
        self.assertEqual(self.body("/methods"), "any-method")
        self.assertEqual(self.body("/methods", method="DELETE"), "any-method")

    def test_header_match(self):
        self.assertEqual(self.body("/canary/id", headers=[("x-canary", "1")]), "B")
        self.assertEqual(self.body("/canary/id", headers=[("X-Canary", "1")]), "B",
                         "header names match case-insensitively")
        self.assertEqual(self.body("/canary/id", headers=[("x-canary", "2")]), "A")
        self.assertEqual(self.body("/canary/id"), "A")

    def test_prefix_rewrite(self):
        r = request(self.port, "GET", "/rw/echo/deeper?q=1&r=2")
        self.assertStatus(r, 200)
        self.assertEqual(r.json()["target"], "/echo/deeper?q=1&r=2")

    # -- redirect and direct response

    def test_redirect(self):
        r = get(self.port, "/old")
        self.assertStatus(r, 301)
        self.assertIn(r.header("location"), ("/new", "http://test.local/new"), r)
        r = get(self.port, "/old?a=1")
        self.assertStatus(r, 301)
        self.assertIn(r.header("location"), ("/new?a=1", "http://test.local/new?a=1"),
                      "the query is kept unless strip_query")
        self.assertEqual(self.a.count + self.b.count, 0)

    def test_redirect_scheme_and_host(self):
        r = get(self.port, "/secure")
        self.assertStatus(r, 308)
        self.assertEqual(r.header("location"), "https://secure.example.com/secure")

    def test_direct_response(self):
        r = get(self.port, "/hello")
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b"hi")
        self.assertEqual(r.header("content-length"), "2")
        self.assertTrue((r.header("content-type") or "").startswith("text/plain"), r)
        self.assertEqual(self.a.count + self.b.count, 0)

    # -- header rewrites

    def test_request_and_response_header_rewrites(self):
        r = request(self.port, "GET", "/rewrite/echo",
                    headers=[("X-Env", "prod"), ("X-Secret", "hunter2"), ("X-Keep", "yes")])
        self.assertStatus(r, 200)
        seen = r.json()["headers"]
        self.assertEqual(header_pairs_get(seen, "x-env"), ["test"], seen)
        self.assertEqual(header_pairs_get(seen, "x-secret"), [], seen)
        self.assertEqual(header_pairs_get(seen, "x-added"), ["one"], seen)
        self.assertEqual(header_pairs_get(seen, "x-keep"), ["yes"], seen)
        self.assertEqual(r.header("x-served-by"), "marchproxy", r)
        self.assertIsNone(r.header("x-origin-name"), "response_headers.remove must drop it")

    # -- forwarding headers

    def test_forwarding_headers(self):
        r = request(self.port, "GET", "/app/echo", host="shop.test:8080")
        self.assertStatus(r, 200)
        seen = r.json()["headers"]
        self.assertEqual(header_pairs_get(seen, "x-forwarded-for"), ["127.0.0.1"], seen)
        self.assertEqual(header_pairs_get(seen, "x-forwarded-proto"), ["http"], seen)
        self.assertEqual(header_pairs_get(seen, "x-forwarded-host"), ["shop.test:8080"], seen)
        self.assertEqual(header_pairs_get(seen, "host"), ["shop.test:8080"], "Host passes unchanged")
        via = ", ".join(header_pairs_get(seen, "via"))
        self.assertIn("1.1 marchproxy", via, seen)
        rid = header_pairs_get(seen, "x-request-id")
        self.assertEqual(len(rid), 1, seen)
        self.assertTrue(rid[0].strip(), "generated X-Request-Id must not be empty")

    def test_request_ids_are_unique_and_client_id_kept(self):
        ids = set()
        for _ in range(5):
            seen = request(self.port, "GET", "/app/echo").json()["headers"]
            ids.update(header_pairs_get(seen, "x-request-id"))
        self.assertEqual(len(ids), 5, f"five requests, five distinct ids: {ids}")
        seen = request(self.port, "GET", "/app/echo", headers=[("X-Request-Id", "client-id-123")]).json()["headers"]
        self.assertEqual(header_pairs_get(seen, "x-request-id"), ["client-id-123"], seen)

    def test_spoofed_forwarded_headers_dropped(self):
        r = request(self.port, "GET", "/app/echo",
                    headers=[("X-Forwarded-For", "1.2.3.4"), ("X-Forwarded-Proto", "https"),
                             ("X-Forwarded-Host", "evil.test")])
        seen = r.json()["headers"]
        self.assertEqual(header_pairs_get(seen, "x-forwarded-for"), ["127.0.0.1"], seen)
        self.assertEqual(header_pairs_get(seen, "x-forwarded-proto"), ["http"], seen)
        self.assertEqual(header_pairs_get(seen, "x-forwarded-host"), ["test.local"], seen)

    # -- hop-by-hop

    def test_hop_by_hop_request_headers_not_forwarded(self):
        r = request(self.port, "GET", "/app/echo", headers=[
            ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"), ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"), ("Trailer", "X-T"), ("Upgrade", "foo/2"),
            ("Proxy-Connection", "keep-alive"), ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("X-End-To-End", "kept")])
        self.assertStatus(r, 200)
        seen = r.json()["headers"]
        for h in ("x-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-connection",
                  "proxy-authorization"):
            self.assertEqual(header_pairs_get(seen, h), [], f"{h} was forwarded: {seen}")
        for v in header_pairs_get(seen, "connection"):
            self.assertNotIn("x-hop", v.lower(), seen)
        self.assertEqual(header_pairs_get(seen, "x-end-to-end"), ["kept"], seen)

    def test_hop_by_hop_response_headers_not_forwarded(self):
        r = get(self.port, "/app/hop")
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b"A")
        for h in ("x-origin-hop", "proxy-connection", "trailer", "upgrade"):
            self.assertIsNone(r.header(h), f"{h} reached the client: {r!r}")
        self.assertNotIn("timeout=99", " ".join(r.header_all("keep-alive")), r)
        for v in r.header_all("connection"):
            self.assertNotIn("x-origin-hop", v.lower(), r)


NO_DEFAULT = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
forwarding: { trust_downstream: true }
virtual_hosts:
  - name: only
    domains: ["only.test"]
    routes:
      - match: { prefix: / }
        forward: { cluster: a }
clusters:
  - name: a
    endpoints: [ "${A}" ]
"""


class NoDefaultVhostTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.proxy = self.start_proxy(render(NO_DEFAULT, A=self.a.address))

    def test_unknown_host_is_404(self):
        self.assertStatus(get(self.proxy.port, "/id", host="other.test"), 404)
        self.assertStatus(get(self.proxy.port, "/id", host="only.test"), 200)
        self.assertEqual(self.a.count, 1)

    def test_trust_downstream_appends_to_forwarded_for(self):
        r = request(self.proxy.port, "GET", "/echo", host="only.test",
                    headers=[("X-Forwarded-For", "1.2.3.4")])
        seen = r.json()["headers"]
        xff = ", ".join(header_pairs_get(seen, "x-forwarded-for"))
        self.assertEqual([p.strip() for p in xff.split(",")], ["1.2.3.4", "127.0.0.1"], seen)


MORE = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    request_headers: { set: { x-layer: vhost, x-vhost: app } }
    response_headers: { add: { x-vhost-resp: app } }
    routes:
      - match: { prefix: /hm/prefix, headers: [ { name: x-tenant, prefix: "acme-" } ] }
        direct_response: { status: 200, body: "prefix" }
      - match: { prefix: /hm/regex, headers: [ { name: x-user, regex: "[a-z]+" } ] }
        direct_response: { status: 200, body: "regex" }
      - match: { prefix: /hm/present, headers: [ { name: x-debug, present: true } ] }
        direct_response: { status: 200, body: "present" }
      - match: { prefix: /hm/absent, headers: [ { name: cookie, present: false } ] }
        direct_response: { status: 200, body: "no-cookie" }
      - match: { prefix: /hm/invert, headers: [ { name: x-env, exact: prod, invert: true } ] }
        direct_response: { status: 200, body: "not-prod" }
      - match: { prefix: /hm/all, headers: [ { name: x-a, exact: "1" }, { name: x-b, exact: "2" } ] }
        direct_response: { status: 200, body: "all" }
      - match: { prefix: /hm }
        direct_response: { status: 200, body: "fallback" }
      - match: { prefix: /forbidden }
        direct_response: { status: 403, body: '{"error":"nope"}', content_type: application/json }
      - match: { prefix: /hostrw/ }
        forward: { cluster: a, host_rewrite: internal.svc }
      - match: { prefix: /redir-prefix/ }
        redirect: { code: 302, prefix_rewrite: /moved/ }
      - match: { prefix: /redir-strip }
        redirect: { code: 307, path: /stripped, strip_query: true }
      - match: { prefix: /layers/ }
        forward: { cluster: a }
        request_headers: { set: { x-layer: route } }
        response_headers: { add: { x-route-resp: r }, set: { content-type: text/x-replaced } }
      - match: { prefix: /segment }
        direct_response: { status: 200, body: "segment" }
      - match: { prefix: / }
        forward: { cluster: a }
clusters:
  - name: a
    endpoints: [ "${A}" ]
"""


class MoreRoutingTest(ProxyTestCase):
    def setUp(self):
        self.a = self.start_origin("A")
        self.p = self.start_proxy(render(MORE, A=self.a.address))

    def text(self, path, headers=None):
        r = request(self.p.port, "GET", path, headers=headers)
        return r.text if r.status == 200 else r.status

    def test_header_match_kinds(self):
        cases = [
            ("/hm/prefix", [("X-Tenant", "acme-eu")], "prefix"),
            ("/hm/prefix", [("X-Tenant", "eu-acme-")], "fallback"),
            ("/hm/regex", [("X-User", "alice")], "regex"),
            ("/hm/regex", [("X-User", "alice1")], "fallback"),  # the whole value must match
            ("/hm/present", [("X-Debug", "")], "present"),
            ("/hm/present", [], "fallback"),
            ("/hm/absent", [], "no-cookie"),
            ("/hm/absent", [("Cookie", "a=1")], "fallback"),
            ("/hm/invert", [("X-Env", "dev")], "not-prod"),
            ("/hm/invert", [], "not-prod"),
            ("/hm/invert", [("X-Env", "prod")], "fallback"),
            ("/hm/all", [("X-A", "1"), ("X-B", "2")], "all"),
            ("/hm/all", [("X-A", "1")], "fallback"),
        ]
        for path, headers, want in cases:
            with self.subTest(path=path, headers=headers):
                self.assertEqual(self.text(path, headers), want)

    def test_prefix_is_a_byte_prefix(self):
        # As in nginx and Envoy (docs/config-reference.md, match.prefix): "/segment" also covers
        # "/segmentx"; a trailing slash in the prefix is how a user asks for whole segments.
        self.assertEqual(self.text("/segment"), "segment")
        self.assertEqual(self.text("/segment/x"), "segment")
        self.assertEqual(self.text("/segmentx/echo"), "segment")

    def test_direct_response_status_and_type(self):
        r = get(self.p.port, "/forbidden")
        self.assertStatus(r, 403)
        self.assertEqual(r.body, b'{"error":"nope"}')
        self.assertEqual(r.header("content-type"), "application/json")

    def test_host_rewrite(self):
        seen = request(self.p.port, "GET", "/hostrw/echo", host="public.test").json()["headers"]
        self.assertEqual(header_pairs_get(seen, "host"), ["internal.svc"], seen)
        self.assertEqual(header_pairs_get(seen, "x-forwarded-host"), ["public.test"], seen)

    def test_redirect_prefix_rewrite_and_strip_query(self):
        r = get(self.p.port, "/redir-prefix/a/b?q=1")
        self.assertStatus(r, 302)
        self.assertIn(r.header("location"), ("/moved/a/b?q=1", "http://test.local/moved/a/b?q=1"), r)
        r = get(self.p.port, "/redir-strip?q=1")
        self.assertStatus(r, 307)
        self.assertIn(r.header("location"), ("/stripped", "http://test.local/stripped"), r)

    def test_vhost_then_route_rewrites(self):
        r = request(self.p.port, "GET", "/layers/echo", headers=[("X-Layer", "client")])
        self.assertStatus(r, 200)
        seen = r.json()["headers"]
        self.assertEqual(header_pairs_get(seen, "x-layer"), ["route"], "route rewrite applies after the vhost's")
        self.assertEqual(header_pairs_get(seen, "x-vhost"), ["app"], seen)
        self.assertEqual(r.header("x-vhost-resp"), "app", r)
        self.assertEqual(r.header("x-route-resp"), "r", r)
        self.assertEqual(r.header_all("content-type"), ["text/x-replaced"], r)
        seen = request(self.p.port, "GET", "/other/echo").json()["headers"]
        self.assertEqual(header_pairs_get(seen, "x-layer"), ["vhost"], seen)

    def test_target_passes_unchanged(self):
        # Already-normal targets pass byte for byte (reserved escapes such as %2F and the query
        # are never touched); see test_path_normalization.py for targets that are normalised.
        for target in ("/a%2Fb/echo?x=%20y&z", "/echo?q=a+b&q=c", "/echo/%2E%2Fx", "/echo?"):
            with self.subTest(target=target):
                r = request(self.p.port, "GET", target)
                self.assertStatus(r, 200)
                expected = target.replace("%2E", ".")  # an unreserved escape is decoded
                self.assertEqual(r.json()["target"], expected)


if __name__ == "__main__":
    unittest.main(verbosity=2)
