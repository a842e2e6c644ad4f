"""HTTP/1.1 over raw sockets: pipelining, HTTP/1.0, Expect: 100-continue, chunked requests,
keep-alive, HEAD/204 framing, and the request-smuggling / malformed classes (each rejected with its
status, the connection closed, nothing forwarded, and the proxy still serving afterwards)."""
import hashlib
import time
import unittest

from harness import (ProxyTestCase, Conn, ConnectionClosed, get, render, build_request, chunked_encode,
                     pattern_sha256, wait_until)

H1 = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: o }
clusters:
  - name: o
    endpoints: [ "${O}" ]
    timeouts: { connect: 1s, response: 5s }
limits: { max_body_bytes: 1000, max_request_line: 1KiB, max_header_bytes: 4KiB, max_headers: 20 }
timeouts: { header_read: 2s, idle: 5s, body_read: 2s, drain: 1s }
"""

SMUGGLE = b"GET /smuggled HTTP/1.1\r\nHost: t\r\n\r\n"

# name -> (raw request bytes, expected status, connection must close)
BAD_REQUESTS = {
    "cl_and_te": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + SMUGGLE, 400, True),
    "te_and_cl": (b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Length: 40\r\n\r\n0\r\n\r\n" + SMUGGLE, 400, True),
    "duplicate_differing_cl": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                               b"Content-Length: 6\r\n\r\nhello!", 400, True),
    "cl_list": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 6\r\n\r\nhello!", 400, True),
    "cl_alpha": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: abc\r\n\r\n", 400, True),
    "cl_negative": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400, True),
    "cl_plus": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", 400, True),
    "cl_hex": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello", 400, True),
    "te_gzip_only": (b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n" + SMUGGLE,
                     400, True),
    "te_chunked_not_final": (b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip"
                             b"\r\n\r\n0\r\n\r\n" + SMUGGLE, 400, True),
    "te_obfuscated": (b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: xchunked\r\n\r\n"
                      b"0\r\n\r\n" + SMUGGLE, 400, True),
    "te_space_before_colon": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
                              b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + SMUGGLE, 400, True),
    "space_before_colon": (b"GET /id HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n", 400, True),
    "obs_fold": (b"GET /id HTTP/1.1\r\nHost: t\r\nX-A: a\r\n  folded\r\n\r\n", 400, True),
    "bare_lf_header": (b"GET /id HTTP/1.1\r\nHost: t\nX-A: b\r\n\r\n", 400, True),
    "bare_cr_in_value": (b"GET /id HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400, True),
    "nul_in_header": (b"GET /id HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n", 400, True),
    "ctl_in_header": (b"GET /id HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400, True),
    "bad_header_name": (b"GET /id HTTP/1.1\r\nHost: t\r\nX@A: b\r\n\r\n", 400, True),
    "empty_header_name": (b"GET /id HTTP/1.1\r\nHost: t\r\n: b\r\n\r\n", 400, True),
    "missing_host_1_1": (b"GET /id HTTP/1.1\r\nX-A: b\r\n\r\n", 400, True),
    "duplicate_host": (b"GET /id HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, True),
    "bad_method": (b"G(T /id HTTP/1.1\r\nHost: t\r\n\r\n", 400, True),
    "double_space_request_line": (b"GET  /id HTTP/1.1\r\nHost: t\r\n\r\n", 400, True),
    "bad_version_syntax": (b"GET /id HTPT/1.1\r\nHost: t\r\n\r\n", 400, True),
    "unsupported_version": (b"GET /id HTTP/3.0\r\nHost: t\r\n\r\n", 505, False),
    "bad_chunk_size": (b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"zz\r\nhello\r\n0\r\n\r\n", 400, True),
    "request_line_too_long": (b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414, True),
    "headers_too_big": (b"GET /id HTTP/1.1\r\nHost: t\r\nX-Big: " + b"b" * 5000 + b"\r\n\r\n", 431, True),
    "too_many_headers": (b"GET /id HTTP/1.1\r\nHost: t\r\n"
                         + b"".join(b"X-H%d: v\r\n" % i for i in range(30)) + b"\r\n", 431, True),
    "body_too_large_cl": (b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n"
                          + b"x" * 2000, 413, False),
}

# Checked only for "not forwarded" and for the status class, since a streamed chunked body can only
# be found too large (or malformed) once part of it may already have been sent upstream.
BAD_BODIES = {
    "body_too_large_chunked": (b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                               + chunked_encode([b"y" * 600, b"y" * 600]), (413,)),
    "chunk_size_overflow": (b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"fffffffffffffffffff1\r\nhello\r\n0\r\n\r\n", (400, 413)),
}


class Http1Test(ProxyTestCase):
    def setUp(self):
        self.o = self.start_origin("O")
        self.p = self.start_proxy(render(H1, O=self.o.address))

    # -- normal behaviour

    def test_pipelining_in_order(self):
        with Conn(self.p.port) as c:
            c.send(build_request("GET", "/echo?n=1") + build_request("POST", "/sink", body=b"abc")
                   + build_request("GET", "/echo?n=3"))
            r1, r2, r3 = c.read_response(), c.read_response(), c.read_response()
        self.assertEqual(r1.json()["query"], "n=1")
        self.assertEqual(r2.json()["length"], 3)
        self.assertEqual(r3.json()["query"], "n=3")

    def test_pipelining_stops_at_bad_request(self):
        with Conn(self.p.port) as c:
            c.send(build_request("GET", "/id") + b"GET /id HTTP/1.1\r\nHost: t\r\nX-A : b\r\n\r\n"
                   + build_request("GET", "/id?third"))
            self.assertStatus(c.read_response(), 200)
            self.assertStatus(c.read_response(), 400)
            self.assertClosed(c)
        self.assertEqual(self.o.log, [("GET", "/id")], "nothing after the bad request is processed")

    def test_http10_closes(self):
        with Conn(self.p.port) as c:
            c.send(b"GET /id HTTP/1.0\r\nHost: t\r\n\r\n")
            r = c.read_response()
            self.assertStatus(r, 200)
            self.assertEqual(r.body, b"O")
            self.assertClosed(c)

    def test_http10_without_host(self):
        with Conn(self.p.port) as c:
            c.send(b"GET /id HTTP/1.0\r\n\r\n")
            r = c.read_response()
        self.assertStatus(r, 200)

    def test_http10_keepalive(self):
        with Conn(self.p.port) as c:
            for _ in range(3):
                c.send(b"GET /id HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n")
                r = c.read_response()
                self.assertStatus(r, 200)
                self.assertEqual(r.body, b"O")
                self.assertIsNotNone(r.header("content-length"), r)

    def test_http10_never_gets_chunked(self):
        with Conn(self.p.port) as c:
            c.send(b"GET /chunked/100000 HTTP/1.0\r\nHost: t\r\n\r\n")
            r = c.read_response()
        self.assertStatus(r, 200)
        self.assertNotIn("chunked", (r.header("transfer-encoding") or "").lower(), r)
        self.assertEqual(len(r.body), 100000)

    def test_expect_100_continue(self):
        with Conn(self.p.port) as c:
            c.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n")
            interim = c.read_response(skip_interim=False)
            self.assertEqual(interim.status, 100, interim)
            c.send(b"0123456789")
            r = c.read_response()
            self.assertStatus(r, 200)
            self.assertEqual(r.json()["length"], 10)
            # and the connection is still usable
            self.assertStatus(c.request("GET", "/id"), 200)

    def test_chunked_request_forwarded(self):
        parts = [b"hello", b" ", b"chunked " * 50, b"world"]
        body = b"".join(parts)
        raw = bytearray(b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, ch in enumerate(parts):
            raw += b"%x;ext=%d\r\n" % (len(ch), i) + ch + b"\r\n"
        raw += b"0\r\nX-Trailer: t\r\n\r\n"
        with Conn(self.p.port) as c:
            c.send(bytes(raw))
            r = c.read_response()
            self.assertStatus(r, 200)
            self.assertEqual(r.json()["length"], len(body))
            self.assertEqual(r.json()["sha256"], hashlib.sha256(body).hexdigest())
            self.assertStatus(c.request("GET", "/id"), 200)

    def test_keepalive_reuse_both_sides(self):
        with Conn(self.p.port) as c:
            for i in range(10):
                r = c.request("GET", f"/id?{i}")
                self.assertStatus(r, 200)
                self.assertNotIn("close", (r.header("connection") or "").lower())
        self.assertEqual(self.o.count, 10)
        self.assertLessEqual(self.o.connections, 2, "upstream connections are pooled and reused")

    def test_head_and_204_framing(self):
        with Conn(self.p.port) as c:
            r = c.request("HEAD", "/bytes/1000")
            self.assertStatus(r, 200)
            self.assertEqual(r.header("content-length"), "1000")
            self.assertStatus(c.request("GET", "/status/204"), 204)
            r = c.request("GET", "/id")
            self.assertEqual(r.body, b"O", "framing out of step after HEAD/204")

    def test_requests_after_an_idle_pause(self):
        # The first upstream request a second or more after start, and one after the pooled
        # connection sat idle for a while (shorter than any configured timeout).
        time.sleep(1.5)
        self.assertStatus(get(self.p.port, "/id"), 200)
        time.sleep(1.5)
        self.assertStatus(get(self.p.port, "/id"), 200)
        self.assertEqual(self.o.count, 2)

    def test_origin_closing_after_response(self):
        # The origin answers with Connection: close; the proxy must not reuse that connection.
        with Conn(self.p.port) as c:
            for _ in range(5):
                self.assertStatus(c.request("GET", "/close"), 200)
                self.assertStatus(c.request("GET", "/id"), 200)

    def test_origin_idle_keepalive_timeout(self):
        # The origin silently closes pooled connections after 0.3 s idle (as nginx and others do);
        # a later request must not fail on the dead pooled connection.
        self.o.keepalive_timeout = 0.3
        for _ in range(3):
            self.assertStatus(get(self.p.port, "/id"), 200)
            time.sleep(1.0)
        self.assertStatus(get(self.p.port, "/id"), 200)
        self.assertGreaterEqual(self.o.idle_closes, 1, "the origin never closed an idle connection")

    def test_close_delimited_upstream_response(self):
        for version in ("HTTP/1.1", "HTTP/1.0"):
            with self.subTest(version=version), Conn(self.p.port) as c:
                c.send(f"GET /eof/100000 {version}\r\nHost: t\r\n\r\n".encode())
                r = c.read_response()
                self.assertStatus(r, 200)
                self.assertEqual(hashlib.sha256(r.body).hexdigest(), pattern_sha256(100000))

    def test_client_abort_mid_body(self):
        with Conn(self.p.port) as c:
            c.send(b"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 900\r\n\r\n" + b"x" * 100)
        self.assertServes(self.p)

    def test_max_headers_boundary_ok(self):
        hdrs = [(f"X-H{i}", "v") for i in range(15)]
        with Conn(self.p.port) as c:
            self.assertStatus(c.request("GET", "/id", headers=hdrs), 200)

    def test_body_at_limit_ok(self):
        with Conn(self.p.port) as c:
            r = c.request("POST", "/sink", body=b"z" * 1000)
            self.assertStatus(r, 200)
            self.assertEqual(r.json()["length"], 1000)

    # -- malformed requests

    def check_bad(self, name, raw, status, must_close):
        before = self.o.count
        with Conn(self.p.port) as c:
            try:
                c.send(raw)
            except OSError:
                pass  # the proxy may reject and close before reading all of it
            try:
                r = c.read_response()
            except ConnectionClosed:
                r = None
            self.assertIsNotNone(r, f"{name}: no response before close")
            self.assertEqual(r.status, status, f"{name}: {r!r}")
            if must_close:
                self.assertClosed(c, msg=f"({name})")
        self.assertEqual(self.o.count, before, f"{name}: forwarded to the origin: {self.o.log}")
        self.assertFalse(any("smuggled" in t for _, t in self.o.log), f"{name}: {self.o.log}")
        self.assertServes(self.p)

    def test_bad_requests(self):
        for name, (raw, status, must_close) in BAD_REQUESTS.items():
            with self.subTest(name):
                self.check_bad(name, raw, status, must_close)

    def test_bad_bodies(self):
        for name, (raw, statuses) in BAD_BODIES.items():
            with self.subTest(name):
                with Conn(self.p.port) as c:
                    try:
                        c.send(raw)
                    except OSError:
                        pass
                    try:
                        r = c.read_response()
                    except ConnectionClosed:
                        r = None
                    self.assertIsNotNone(r, f"{name}: no response")
                    self.assertIn(r.status, statuses, f"{name}: {r!r}")
                    self.assertClosed(c, msg=f"({name})")
                sinks = [q for q in self.o.requests if q.get("body_length", 0) > 1000]
                self.assertEqual(sinks, [], f"{name}: the origin got a complete over-limit body")
                self.assertServes(self.p)


LIMITED = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: o }
clusters:
  - name: o
    endpoints: [ "${O}" ]
limits: { max_connections: 3 }
timeouts: { header_read: 2s, idle: 30s, drain: 1s }
"""


class ConnectionLimitTest(ProxyTestCase):
    def test_max_connections(self):
        o = self.start_origin("O")
        p = self.start_proxy(render(LIMITED, O=o.address))
        conns = [Conn(p.port) for _ in range(3)]
        for c in conns:
            self.addCleanup(c.close)
            self.assertStatus(c.request("GET", "/id"), 200)
        with Conn(p.port) as extra:
            try:
                extra.send(build_request("GET", "/id?over-limit"))
                r = extra.read_response()
            except (ConnectionClosed, OSError):
                r = None
            self.assertTrue(r is None or r.status == 503, f"4th connection over max_connections: {r!r}")
        self.assertNotIn(("GET", "/id?over-limit"), o.log)
        for c in conns:  # the admitted ones still work
            self.assertStatus(c.request("GET", "/id"), 200)
        conns[0].close()
        wait_until(lambda: get(p.port, "/id").status == 200, 10,
                   message="a new connection admitted once one closed")


if __name__ == "__main__":
    unittest.main(verbosity=2)
