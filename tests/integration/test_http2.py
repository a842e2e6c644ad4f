"""Downstream HTTP/2: TLS with ALPN h2 and h2c (prior knowledge) to HTTP/1.1 upstreams, with real
clients (curl, h2load) and a frame-level client (h2_client.py) for RFC 9113 rules and abuse:
rapid reset, CONTINUATION flood, PING flood, oversized header lists, bad fields. The proxy must stay
up, its memory bounded, and a well-behaved client in parallel must keep getting answers."""
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import unittest

from harness import ProxyTestCase, RawServer, render, wait_until, get, pattern_bytes
from tls_certs import Pki
import h2_client
from h2_client import RawH2, hf, ENHANCE_YOUR_CALM, PROTOCOL_ERROR

# Peak RSS bound (sanitizer builds raise it through the environment, as the streaming tests do).
RSS_LIMIT_KIB = int(os.environ.get("MARCHPROXY_ITEST_RSS_LIMIT_MIB", "150")) * 1024

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - name: https
    address: 127.0.0.1
    port: 0
    tls:
      certificates:
        - { cert: "${CERT}", key: "${KEY}" }
      alpn: [h2, http/1.1]
  - name: h2c
    address: 127.0.0.1
    port: 0
    h2c: true
http2:
  max_concurrent_streams: 16
  max_header_list_bytes: 16KiB
  max_resets_per_second: 50
  max_control_frames_per_second: 50
  max_continuation_frames: 8
access_log: { path: "${LOG}" }
virtual_hosts:
  - name: app
    domains: ["test.local", "localhost", "127.0.0.1"]
    response_headers: { add: [ { name: X-Vhost, value: app } ] }
    routes:
      - match: { prefix: /direct }
        direct_response: { status: 201, body: "made here" }
      - match: { prefix: /trailers }
        forward: { cluster: trailers }
      - match: { prefix: / }
        forward: { cluster: app }
clusters:
  - name: app
    endpoints: [ "${ORIGIN}" ]
    # Generous: the flood test starves the one worker on a loaded 2-core machine (ASan makes it
    # several times slower); it asserts that good requests are answered, not how fast.
    timeouts: { connect: 15s, response: 60s }
  - name: trailers
    endpoints: [ "${TRAILERS}" ]
"""


def trailer_origin(c):
    """An HTTP/1.1 upstream that answers every request with a chunked body and trailers."""
    f = c.makefile("rb")
    while True:
        line = f.readline()
        if not line:
            return
        while True:
            h = f.readline()
            if h in (b"\r\n", b"\n", b""):
                break
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n"
                  b"Trailer: x-checksum\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n"
                  b"X-Checksum: abc123\r\nX-Done: yes\r\n\r\n")


def curl(*args, timeout=60):
    r = subprocess.run(["curl", "-sS", *args], capture_output=True, timeout=timeout)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


@unittest.skipUnless(shutil.which("curl"), "curl is not installed")
class Http2(ProxyTestCase):
    def setUp(self):
        self.origin = self.start_origin("app")
        self.trailers = RawServer(trailer_origin)
        self.addCleanup(self.trailers.close)
        self.pki = Pki(self.tmpdir())
        self.cert, self.key = self.pki.issue("localhost", sans=["DNS:localhost", "IP:127.0.0.1"])
        self.log = os.path.join(self.tmpdir(), "access.log")
        self.proxy = self.start_proxy(render(CONFIG, CERT=self.cert, KEY=self.key, ORIGIN=self.origin.address,
                                             TRAILERS=self.trailers.address, LOG=self.log),
                                      expect_listeners=("https", "h2c"))
        self.tls_port = self.proxy.ports["https"]
        self.h2c_port = self.proxy.ports["h2c"]

    def tls_ctx(self):
        import ssl
        ctx = ssl.create_default_context(cafile=self.pki.cert)
        ctx.set_alpn_protocols(["h2"])
        return ctx

    def curl_h2(self, url, *extra):
        return curl("--cacert", self.pki.cert, "-w", "\n%{http_version} %{http_code}", *extra, url)

    def assert_healthy(self):
        """A well-behaved client still gets answers, over h2c and over HTTP/1.1."""
        with RawH2(self.h2c_port) as c:
            status, _, _, _, rst = c.response(c.request("/id"))
            self.assertEqual((status, rst), (200, None))
        self.assertEqual(get(self.h2c_port, "/id").status, 200)
        self.assertTrue(self.proxy.alive())

    # ------------------------------------------------------------------ basics

    def test_curl_over_tls_alpn_h2(self):
        rc, out, err = self.curl_h2(f"https://localhost:{self.tls_port}/echo?x=1", "--http2",
                                    "-H", "X-Custom: yes", "-H", "Cookie: a=1", "-H", "Cookie: b=2")
        self.assertEqual(rc, 0, err)
        body, _, tail = out.rpartition(b"\n")
        self.assertEqual(tail, b"2 200")
        echo = json.loads(body)
        got = {k.lower(): v for k, v in echo["headers"]}
        self.assertEqual(echo["version"], "HTTP/1.1")       # upstream hop is HTTP/1.1
        self.assertEqual(echo["target"], "/echo?x=1")
        self.assertEqual(got["host"], f"localhost:{self.tls_port}")  # :authority becomes Host
        self.assertEqual(got["x-forwarded-proto"], "https")
        self.assertEqual(got["x-forwarded-for"], "127.0.0.1")
        self.assertEqual(got["x-custom"], "yes")
        self.assertEqual(got["cookie"], "a=1; b=2")         # split cookies joined for HTTP/1.1
        self.assertIn("x-request-id", got)

    def test_h2c_prior_knowledge_and_http11_on_the_same_listener(self):
        rc, out, err = curl("--http2-prior-knowledge", "-D", "-", "-w", "\n%{http_version}",
                            f"http://127.0.0.1:{self.h2c_port}/id")
        self.assertEqual(rc, 0, err)
        self.assertTrue(out.startswith(b"HTTP/2 200"), out)
        self.assertIn(b"x-vhost: app", out)           # response rewrites apply
        self.assertIn(b"x-origin-name: app", out)     # upstream fields arrive lower-cased
        self.assertTrue(out.endswith(b"app\n2"), out)
        r = get(self.h2c_port, "/id")                 # HTTP/1.1 still served on an h2c listener
        self.assertEqual((r.status, r.body), (200, b"app"))

    def test_local_responses_and_404(self):
        with RawH2(self.h2c_port) as c:
            st, h, body, _, _ = c.response(c.request("/direct"))
            self.assertEqual((st, body), (201, b"made here"))
            self.assertEqual(h.get("x-vhost"), "app")
            st, _, body, _, _ = c.response(c.request("/", authority="nowhere.example"))
            self.assertEqual(st, 404)
            self.assertIn(b"no route", body)

    def test_grpc_client_gets_grpc_status_for_proxy_errors(self):
        with RawH2(self.h2c_port) as c:
            sid = c.request("/pkg.Svc/Method", authority="nowhere.example", method="POST",
                            extra=[("content-type", "application/grpc"), ("te", "trailers")], end_stream=False)
            c.data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
            st, h, body, _, _ = c.response(sid)
            self.assertEqual(st, 200)
            self.assertEqual(h.get("grpc-status"), "12")  # UNIMPLEMENTED: no route
            self.assertEqual(h.get("content-type"), "application/grpc")

    def test_large_download_and_upload_are_flow_controlled(self):
        n = 8 * 1024 * 1024
        rc, out, err = curl("--http2-prior-knowledge", "-o", "-", f"http://127.0.0.1:{self.h2c_port}/bytes/{n}")
        self.assertEqual(rc, 0, err)
        self.assertEqual(hashlib.sha256(out).hexdigest(), hashlib.sha256(pattern_bytes(n)).hexdigest())
        up = os.path.join(self.tmpdir(), "upload.bin")
        data = os.urandom(24 * 1024 * 1024)
        with open(up, "wb") as f:
            f.write(data)
        for url in (f"https://localhost:{self.tls_port}/sink", f"http://127.0.0.1:{self.h2c_port}/sink"):
            rc, out, err = self.curl_h2(url, "--http2-prior-knowledge" if url.startswith("http:") else "--http2",
                                        "--data-binary", f"@{up}")
            self.assertEqual(rc, 0, err)
            body, _, tail = out.rpartition(b"\n")
            self.assertEqual(tail, b"2 200")
            got = json.loads(body)
            self.assertEqual(got["length"], len(data))
            self.assertEqual(got["sha256"], hashlib.sha256(data).hexdigest())
        # A body of unknown length (no content-length) goes upstream chunked.
        with RawH2(self.h2c_port) as c:
            sid = c.request("/sink", method="POST", end_stream=False)
            for i in range(4):
                c.data(sid, b"x" * 10000)
            c.data(sid, b"", end_stream=True)
            st, _, body, _, _ = c.response(sid)
            self.assertEqual(st, 200)
            self.assertEqual(json.loads(body)["length"], 40000)
        self.assertLess(self.proxy.vm_hwm_kib(), RSS_LIMIT_KIB)

    def test_chunked_trailers_become_http2_trailers(self):
        with RawH2(self.h2c_port) as c:
            st, h, body, trailers, rst = c.response(c.request("/trailers"))
        self.assertEqual((st, body, rst), (200, b"hello world", None))
        self.assertEqual(trailers, {"x-checksum": "abc123", "x-done": "yes"})
        self.assertNotIn("transfer-encoding", h)
        self.assertNotIn("trailer", h)

    def test_access_log_says_http2(self):
        with RawH2(self.h2c_port) as c:
            c.response(c.request("/id"))
        wait_until(lambda: os.path.exists(self.log) and b"HTTP/2" in open(self.log, "rb").read(),
                   message="an HTTP/2 access log line")

    @unittest.skipUnless(shutil.which("h2load"), "h2load (nghttp2-client) is not installed")
    def test_h2load_many_streams_over_few_connections(self):
        r = subprocess.run(["h2load", "-n", "400", "-c", "4", "-m", "10", f"http://127.0.0.1:{self.h2c_port}/id"],
                           capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("400 succeeded, 0 failed, 0 errored", r.stdout, r.stdout)

    # ------------------------------------------------------------------ RFC 9113 field rules

    def test_malformed_requests_are_stream_errors(self):
        bad = {
            "upper-case name": [("X-Upper", "1")],
            "connection": [("connection", "keep-alive")],
            "keep-alive": [("keep-alive", "5")],
            "transfer-encoding": [("transfer-encoding", "chunked")],
            "upgrade": [("upgrade", "websocket")],
            "proxy-connection": [("proxy-connection", "close")],
            "te not trailers": [("te", "gzip")],
            "CR in value": [("x-a", "a\rb")],
            "LF in value": [("x-a", "a\nb")],
            "NUL in value": [("x-a", "a\x00b")],
            "leading space": [("x-a", " a")],
            "trailing space": [("x-a", "a ")],
            "space in name": [("x a", "1")],
        }
        with RawH2(self.h2c_port) as c:
            for what, extra in bad.items():
                st, _, _, _, rst = c.response(c.request("/echo", extra=extra))
                self.assertEqual((st, rst), (None, PROTOCOL_ERROR), what)
            # Bad pseudo-headers: missing :path, unknown pseudo-header, pseudo after regular.
            for what, hdrs in {
                "missing :path": [(":method", "GET"), (":scheme", "http"), (":authority", "test.local")],
                "unknown pseudo": [(":method", "GET"), (":scheme", "http"), (":authority", "test.local"),
                                   (":path", "/"), (":foo", "x")],
                "pseudo after field": [(":method", "GET"), (":scheme", "http"), ("x-a", "1"),
                                       (":authority", "test.local"), (":path", "/")],
            }.items():
                sid = c.new_stream()
                c.send(c.headers_frame(sid, hdrs))
                st, _, _, _, rst = c.response(sid)
                self.assertEqual((st, rst), (None, PROTOCOL_ERROR), what)
            st, _, _, _, rst = c.response(c.request("/id", extra=[("te", "trailers")]))
            self.assertEqual((st, rst), (200, None))  # same connection still serves good requests
        self.assertEqual(self.origin.count, 1)       # none of the bad ones reached the upstream

    def test_oversized_header_list_gets_431_and_connection_survives(self):
        with RawH2(self.h2c_port) as c:
            # 20 references to one 1000-byte field in the HPACK table: a small frame, 20 KB decoded.
            big = [("x-h", "v" * 1000)] * 20
            st, _, _, _, _ = c.response(c.request("/id", extra=big))
            self.assertEqual(st, 431)
            st, _, _, _, _ = c.response(c.request("/id"))
            self.assertEqual(st, 200)
        self.assertEqual(self.origin.count, 1)

    def test_hpack_bomb_is_bounded_by_the_decoded_size(self):
        """One large field in the dynamic table, then referenced many times: a few bytes on the wire
        per repetition, but the decoded list is what counts."""
        with RawH2(self.h2c_port) as c:
            sid = c.new_stream()
            hdrs = [(":method", "GET"), (":scheme", "http"), (":authority", "test.local"), (":path", "/id"),
                    ("x-bomb", "b" * 3000)] + [("x-bomb", "b" * 3000)] * 500
            c.send(c.headers_frame(sid, hdrs))
            st, _, _, _, rst = c.response(sid)
            self.assertTrue(st == 431 or rst is not None or c.goaway is not None, (st, rst))
        self.assertLess(self.proxy.vm_hwm_kib(), RSS_LIMIT_KIB)
        self.assert_healthy()

    def test_invalid_or_conflicting_authority_is_400(self):
        """:authority and a host field are checked like an HTTP/1.1 Host (docs/http1.md); when both
        are there they must name the same thing (RFC 9113 §8.3.1)."""
        with RawH2(self.h2c_port) as c:
            for what, authority, extra in (
                    ("userinfo in :authority", "user@test.local", ()),
                    ("port out of range", "test.local:99999", ()),
                    ("port not a number", "test.local:8x", ()),
                    ("empty port", "test.local:", ()),
                    ("invalid host field", "test.local", [("host", "test.local:x")]),
                    ("host differs from :authority", "test.local", [("host", "other.local")])):
                st, _, _, _, rst = c.response(c.request("/id", authority=authority, extra=extra))
                self.assertEqual((st, rst), (400, None), what)
            # Two host fields: nghttp2 may refuse them itself (stream error) before the proxy does.
            st, _, _, _, rst = c.response(c.request("/id", extra=[("host", "test.local"), ("host", "test.local")]))
            self.assertIn((st, rst), ((400, None), (None, PROTOCOL_ERROR)))
            st, _, body, _, _ = c.response(c.request("/id", authority="test.local",
                                                     extra=[("host", "TEST.local")]))
            self.assertEqual((st, body), (200, b"app"))  # same host, other case: fine
        self.assertEqual(self.origin.count, 1)

    def test_te_is_not_forwarded_to_an_http11_upstream(self):
        with RawH2(self.h2c_port) as c:
            st, _, body, _, _ = c.response(c.request("/echo", extra=[("te", "trailers"), ("x-keep", "1")]))
        self.assertEqual(st, 200)
        names = [n.lower() for n, _ in json.loads(body)["headers"]]
        self.assertIn("x-keep", names)
        self.assertNotIn("te", names)

    def test_limits_max_headers_counts_http2_fields(self):
        """limits.max_headers (default 100) as on HTTP/1.1: 431, the connection stays. Cookie
        crumbs count once, as the one Cookie line they become."""
        with RawH2(self.h2c_port) as c:
            st, _, _, _, _ = c.response(c.request("/id", extra=[(f"x-h{i}", "1") for i in range(101)]))
            self.assertEqual(st, 431)
            st, _, _, _, _ = c.response(c.request("/id", extra=[(f"x-h{i}", "1") for i in range(100)]))
            self.assertEqual(st, 200)
            st, _, _, _, _ = c.response(c.request("/id", extra=[("cookie", f"c{i}=1") for i in range(150)]))
            self.assertEqual(st, 200)
        self.assertEqual(self.origin.count, 2)

    # ------------------------------------------------------------------ floods

    def test_server_resets_provoked_by_the_client_count_as_rapid_reset(self):
        """MadeYouReset (CVE-2025-8671): DATA beyond the announced content-length makes the server
        reset the stream (stream error PROTOCOL_ERROR); those resets spend the max_resets_per_second budget, so
        the connection gets GOAWAY ENHANCE_YOUR_CALM. Another connection is served meanwhile."""
        good = RawH2(self.h2c_port)
        self.addCleanup(good.close)
        st, _, _, _, _ = good.response(good.request("/id"))
        self.assertEqual(st, 200)
        with RawH2(self.h2c_port) as c:
            resets = 0
            for _ in range(25):  # 8 at a time: below max_concurrent_streams (16)
                want = set()
                out = b""
                for _ in range(8):
                    sid = c.new_stream()
                    want.add(sid)
                    out += c.headers_frame(sid, [(":method", "POST"), (":scheme", "http"),
                                                 (":authority", "test.local"), (":path", "/direct"),
                                                 ("content-length", "1")],
                                           end_stream=False).serialize()
                    # DATA (END_STREAM) with 2 bytes where content-length said 1: a stream error.
                    out += struct.pack(">I", 2)[1:] + bytes([0x0, 0x1]) + struct.pack(">I", sid) + b"ab"
                if not c.send_raw(out):
                    break

                def until(f):
                    nonlocal resets
                    if isinstance(f, hf.RstStreamFrame) and f.stream_id in want:
                        self.assertEqual(f.error_code, PROTOCOL_ERROR)
                        want.discard(f.stream_id)
                        resets += 1
                    return not want or isinstance(f, hf.GoAwayFrame)
                c.pump(until, timeout=10)
                if c.goaway is not None or c.closed:
                    break
            self.assertIsNotNone(c.goaway, f"no GOAWAY after {resets} provoked resets")
            self.assertEqual(c.goaway.error_code, ENHANCE_YOUR_CALM)
            st, _, body, _, _ = good.response(good.request("/id"))
            self.assertEqual((st, body), (200, b"app"))
        self.assert_healthy()


    def test_rapid_reset_gets_goaway_enhance_your_calm(self):
        with RawH2(self.h2c_port) as c:
            for _ in range(300):
                sid = c.new_stream()
                if not c.send(c.headers_frame(sid, [(":method", "GET"), (":scheme", "http"),
                                                    (":authority", "test.local"), (":path", "/sleep/200")]),
                              hf.RstStreamFrame(sid, error_code=0x8)):
                    break
            c.pump(lambda f: isinstance(f, hf.GoAwayFrame), timeout=10)
            self.assertIsNotNone(c.goaway, "no GOAWAY after a rapid-reset flood")
            self.assertEqual(c.goaway.error_code, ENHANCE_YOUR_CALM)
        self.assertLess(self.origin.count, 300)
        self.assert_healthy()

    def test_continuation_flood_gets_goaway(self):
        with RawH2(self.h2c_port) as c:
            sid = c.new_stream()
            first = c.headers_frame(sid, [(":method", "GET"), (":scheme", "http"), (":authority", "test.local"),
                                          (":path", "/id")], end_headers=False)
            c.send(first)
            for i in range(200):
                if not c.send(hf.ContinuationFrame(sid, data=c.enc.encode([(f"x-c{i}", "y")]))):
                    break
            c.pump(lambda f: isinstance(f, hf.GoAwayFrame), timeout=10)
            self.assertIsNotNone(c.goaway, "no GOAWAY after a CONTINUATION flood")
            self.assertEqual(c.goaway.error_code, ENHANCE_YOUR_CALM)
        self.assert_healthy()

    def test_ping_and_settings_floods_get_goaway(self):
        for make in (lambda i: hf.PingFrame(0, opaque_data=i.to_bytes(8, "big")),
                     lambda i: hf.SettingsFrame(0, settings={}),
                     lambda i: hf.PriorityFrame(1 + 2 * i, depends_on=0, stream_weight=16)):
            with RawH2(self.h2c_port) as c:
                c.send(*[make(i) for i in range(500)])
                c.pump(lambda f: isinstance(f, hf.GoAwayFrame), timeout=10)
                self.assertIsNotNone(c.goaway)
                self.assertEqual(c.goaway.error_code, ENHANCE_YOUR_CALM)
        self.assert_healthy()

    def test_floods_in_parallel_with_a_good_client(self):
        """Abusive connections keep hammering while a good client makes requests; every good
        request succeeds and memory stays bounded."""
        stop = threading.Event()
        errors = []

        def abuser():
            while not stop.is_set():
                try:
                    with RawH2(self.h2c_port, timeout=5) as c:
                        for _ in range(200):
                            sid = c.new_stream()
                            if not c.send(c.headers_frame(sid, [(":method", "GET"), (":scheme", "http"),
                                                                (":authority", "test.local"), (":path", "/id")]),
                                          hf.RstStreamFrame(sid, error_code=0x8)):
                                break
                        c.pump(lambda f: isinstance(f, hf.GoAwayFrame), timeout=5)
                except (OSError, TimeoutError):
                    pass

        threads = [threading.Thread(target=abuser, daemon=True) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            for i in range(30):
                with RawH2(self.h2c_port) as c:
                    st, _, body, _, rst = c.response(c.request("/id"))
                    if (st, body) != (200, b"app"):
                        errors.append((i, st, rst))
        finally:
            stop.set()
            for t in threads:
                t.join(10)
        self.assertEqual(errors, [])
        self.assertLess(self.proxy.vm_hwm_kib(), RSS_LIMIT_KIB)
        self.assert_healthy()

    def test_max_concurrent_streams_is_advertised_and_enforced(self):
        def handshake(c):
            frames = c.pump(lambda f: isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags)
            settings = [f for f in frames if isinstance(f, hf.SettingsFrame)][0].settings
            c.pump(lambda f: isinstance(f, hf.SettingsFrame) and "ACK" in f.flags, timeout=5)
            return settings

        with RawH2(self.h2c_port) as c:
            self.assertEqual(handshake(c)[hf.SettingsFrame.MAX_CONCURRENT_STREAMS], 16)
            sids = [c.request("/sleep/200") for _ in range(16)]  # up to the limit: all served
            got = c.statuses(sids)
            self.assertEqual([got.get(s) for s in sids], [200] * 16)
        with RawH2(self.h2c_port) as c:
            handshake(c)
            for _ in range(17):  # one over the acknowledged limit: the connection is refused
                c.request("/sleep/200")
            c.pump(lambda f: isinstance(f, hf.GoAwayFrame), timeout=10)
            self.assertIsNotNone(c.goaway)
            self.assertEqual(c.goaway.error_code, PROTOCOL_ERROR)
        self.assert_healthy()

    def test_drain_sends_goaway_and_in_flight_streams_finish(self):
        c = RawH2(self.h2c_port)
        try:
            sid = c.request("/sleep/500")
            wait_until(lambda: self.origin.inflight == 1, message="the request reached the origin")
            self.proxy.signal(15)  # SIGTERM: drain
            st, _, body, _, rst = c.response(sid, timeout=15)
            self.assertEqual((st, body, rst), (200, b"app", None))
            c.pump(lambda f: isinstance(f, hf.GoAwayFrame), timeout=10)
            self.assertIsNotNone(c.goaway)
            self.assertEqual(c.goaway.error_code, 0)
        finally:
            c.close()


SHORT_TIMEOUTS = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: h2c, address: 127.0.0.1, port: 0, h2c: true }
http2:
  idle_timeout: 1s
  stream_idle_timeout: 1s
timeouts: { drain: 120s }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: app }
clusters:
  - name: app
    endpoints: [ "${ORIGIN}" ]
"""

CANCEL = 0x8


class Http2Timeouts(ProxyTestCase):
    """http2.idle_timeout and http2.stream_idle_timeout: what keeps a connection open."""

    def setUp(self):
        self.origin = self.start_origin("app")
        self.proxy = self.start_proxy(render(SHORT_TIMEOUTS, ORIGIN=self.origin.address), expect_listeners=("h2c",))
        self.port = self.proxy.ports["h2c"]

    def assert_closes(self, c):
        """The connection gets GOAWAY NO_ERROR, then is closed by the proxy."""
        c.pump(lambda f: isinstance(f, hf.GoAwayFrame), timeout=30)
        self.assertIsNotNone(c.goaway, "no GOAWAY")
        self.assertEqual(c.goaway.error_code, 0)
        c.pump(lambda f: False, timeout=30)  # returns once the proxy closed; TimeoutError otherwise
        self.assertTrue(c.closed)

    def test_pings_do_not_keep_an_idle_connection_open(self):
        with RawH2(self.port) as c:
            st, _, _, _, _ = c.response(c.request("/id"))
            self.assertEqual(st, 200)
            give_up = time.monotonic() + 30
            i = 0
            while c.goaway is None and not c.closed and time.monotonic() < give_up:
                i += 1
                c.send(hf.PingFrame(0, opaque_data=i.to_bytes(8, "big")))
                c.pump(lambda f: isinstance(f, hf.GoAwayFrame) or (isinstance(f, hf.PingFrame) and "ACK" in f.flags))
                time.sleep(0.3)
            self.assertIsNotNone(c.goaway, f"no GOAWAY after {i} PINGs over 30 s with idle_timeout 1s")
            self.assert_closes(c)

    def zero_window_stream(self):
        """A client that sets its initial window to 0 and never sends WINDOW_UPDATE: the response
        HEADERS come, its DATA never can."""
        c = RawH2(self.port, settings={hf.SettingsFrame.INITIAL_WINDOW_SIZE: 0})
        self.addCleanup(c.close)
        sid = c.request("/id")
        c.pump(lambda f: isinstance(f, hf.HeadersFrame) and f.stream_id == sid, timeout=10)
        wait_until(lambda: self.origin.count == 1, message="the request reached the origin")
        return c, sid

    def test_stream_stuck_on_a_zero_window_is_reset_and_the_idle_connection_closes(self):
        c, sid = self.zero_window_stream()
        frames = c.pump(lambda f: isinstance(f, hf.RstStreamFrame) and f.stream_id == sid, timeout=30)
        rst = [f for f in frames if isinstance(f, hf.RstStreamFrame) and f.stream_id == sid]
        self.assertEqual([f.error_code for f in rst], [CANCEL])
        self.assertFalse([f for f in frames if isinstance(f, hf.DataFrame) and f.stream_id == sid and f.data])
        self.assert_closes(c)

    def test_drain_is_not_held_by_a_zero_window_stream(self):
        c, sid = self.zero_window_stream()
        self.proxy.signal(15)  # drain: timeouts.drain is 120 s, the stream must not use it up
        self.assert_closes(c)
        self.assertEqual(self.proxy.wait_exit(60), 0)


# Mistakes the loader sees (syntax, names, ranges of single values) ...
BROKEN_SYNTAX = """schema: 1
listeners:
  - { name: http, address: 127.0.0.1, port: 0, h2c: maybe }
http2:
  max_frame_size: 1000
  max_header_list_bytes: 100
  max_concurent_streams: 5
virtual_hosts:
  - name: app
    domains: ["*"]
    routes: [ { match: { prefix: / }, forward: { cluster: a } } ]
clusters:
  - name: a
    protocol: http3
    endpoints: [ "127.0.0.1:1" ]
"""

# ... and the ones validation sees once the file reads.
BROKEN_RULES = """schema: 1
listeners:
  - name: https
    address: 127.0.0.1
    port: 0
    h2c: true
    tls:
      certificates: [ { cert: "${CERT}", key: "${KEY}" } ]
      alpn: [h2, spdy/3]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes: [ { match: { prefix: / }, forward: { cluster: a } } ]
clusters:
  - name: a
    protocol: http2
    send_proxy_protocol: v2
    endpoints: [ "127.0.0.1:1" ]
"""


class Http2Config(ProxyTestCase):
    """`marchproxy check` on the HTTP/2 fields: every mistake reported with its line and path."""

    def check(self, text):
        from harness import find_binary
        path = os.path.join(self.tmpdir(), "broken.yaml")
        with open(path, "w") as f:
            f.write(text)
        r = subprocess.run([find_binary(), "check", path], capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        out = (r.stdout + r.stderr).decode(errors="replace")
        self.assertEqual(r.returncode, 1, out)
        return out

    def expect(self, out, regexes):
        import re
        for regex in regexes:
            self.assertTrue(any(re.search(regex, ln) for ln in out.splitlines()),
                            f"no line matching {regex!r} in:\n{out}")

    def test_syntax_errors_name_the_line_and_the_field(self):
        self.expect(self.check(BROKEN_SYNTAX), [
            r"^line 3: listeners\[0\]\.h2c: ",
            r"^line 5: http2\.max_frame_size: must be between 16KiB",
            r"^line 6: http2\.max_header_list_bytes: must be between 1KiB and 16MiB",
            r"^line 7: http2: unknown field \"max_concurent_streams\" \(did you mean \"max_concurrent_streams\"\?\)",
            r"^line 14: clusters\[0\]\.protocol: unknown protocol \"http3\" \(did you mean \"http1\"\?\)",
        ])

    def test_rule_errors_name_the_line_and_the_field(self):
        pki = Pki(self.tmpdir())
        cert, key = pki.issue("localhost", sans=["DNS:localhost"])
        self.expect(self.check(render(BROKEN_RULES, CERT=cert, KEY=key)), [
            r"^line \d+: listeners\[0\]\.h2c: is for plain listeners only",
            r"^line \d+: listeners\[0\]\.tls\.alpn\[1\]: \"spdy/3\" is not supported \(only \"h2\" and \"http/1.1\"\)",
            r"^line \d+: clusters\[0\]\.send_proxy_protocol: cannot be used with protocol http2",
        ])


if __name__ == "__main__":
    unittest.main()
