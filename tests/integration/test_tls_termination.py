"""TLS termination on a listener: versions, SNI certificate selection (exact, wildcard, default),
session resumption, ALPN, handshake timeout, and that garbage or plain HTTP never wedges a worker."""
import json
import os
import socket
import ssl
import time
import unittest

from harness import ProxyTestCase, render, wait_until, get
from tls_certs import Pki, fingerprint
from tls_client import TlsConn, client_context, der_fingerprint

CONFIG = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - name: https
    address: 127.0.0.1
    port: 0
    tls:
      certificates:
        - { cert: "${DEF_CERT}", key: "${DEF_KEY}" }
        - { cert: "${EXACT_CERT}", key: "${EXACT_KEY}" }
        - { cert: "${WILD_CERT}", key: "${WILD_KEY}" }
      handshake_timeout: 1s
  - name: http
    address: 127.0.0.1
    port: 0
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: app }
  - name: secure
    domains: ["secure.example.com"]
    redirect_to_https: 308
    routes:
      - match: { prefix: / }
        forward: { cluster: app }
clusters:
  - name: app
    endpoints: [ "${ORIGIN}" ]
"""


class TlsTermination(ProxyTestCase):
    def setUp(self):
        self.origin = self.start_origin("app")
        self.pki = Pki(self.tmpdir())
        self.defc = self.pki.issue("default.example.net", sans=["DNS:default.example.net"])
        self.exact = self.pki.issue("api.example.com", sans=["DNS:api.example.com"], key="p384")
        self.wild = self.pki.issue("wild", sans=["DNS:*.example.com"], key="rsa")
        self.proxy = self.start_proxy(render(CONFIG, DEF_CERT=self.defc[0], DEF_KEY=self.defc[1],
                                             EXACT_CERT=self.exact[0], EXACT_KEY=self.exact[1],
                                             WILD_CERT=self.wild[0], WILD_KEY=self.wild[1],
                                             ORIGIN=self.origin.address),
                                      expect_listeners=("https", "http"))
        self.port = self.proxy.ports["https"]
        self.ctx = client_context(ca=self.pki.cert)

    def served_cert(self, sni, ctx=None):
        ctx = ctx or client_context()  # no verification: we look at which certificate came back
        with TlsConn(self.port, ctx, sni=sni) as c:
            return der_fingerprint(c.peer_der())

    def test_request_over_tls_reaches_the_origin_with_https_scheme(self):
        with TlsConn(self.port, self.ctx, sni="api.example.com") as c:
            for _ in range(3):  # keep-alive: several requests on one TLS connection
                status, headers, body = c.request(path="/echo")
                self.assertEqual(status, 200)
                echo = json.loads(body)
                got = {k.lower(): v for k, v in echo["headers"]}
                self.assertEqual(got["x-forwarded-proto"], "https")
        big = 3 * 1024 * 1024
        with TlsConn(self.port, self.ctx, sni="api.example.com") as c:
            status, _, body = c.request(path=f"/bytes/{big}")
            self.assertEqual(status, 200)
            self.assertEqual(len(body), big)

    def test_tls12_and_tls13_accepted_tls11_refused(self):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(ca=self.pki.cert, min_version=version, max_version=version)
            with TlsConn(self.port, ctx, sni="api.example.com") as c:
                self.assertEqual(c.sock.version(), {ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                                                    ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version])
                self.assertEqual(c.request(path="/id")[0], 200)
        old = client_context(min_version=ssl.TLSVersion.TLSv1_1, max_version=ssl.TLSVersion.TLSv1_1)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")  # let the client offer 1.1: the server must refuse it
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            TlsConn(self.port, old, sni="api.example.com").close()
        wait_until(lambda: self.proxy.metric("marchproxy_tls_handshakes_total", result="protocol_version") >= 1,
                   message="protocol_version failure counted")
        self.assertGreaterEqual(self.proxy.metric("marchproxy_tls_connections_total", version="1.2"), 1)
        self.assertGreaterEqual(self.proxy.metric("marchproxy_tls_connections_total", version="1.3"), 1)

    def test_sni_selects_exact_then_wildcard_then_default(self):
        self.assertEqual(self.served_cert("api.example.com"), fingerprint(self.exact[0]))
        self.assertEqual(self.served_cert("API.Example.COM"), fingerprint(self.exact[0]))
        self.assertEqual(self.served_cert("shop.example.com"), fingerprint(self.wild[0]))
        # A wildcard covers one label: neither the apex nor a deeper name.
        self.assertEqual(self.served_cert("example.com"), fingerprint(self.defc[0]))
        self.assertEqual(self.served_cert("a.b.example.com"), fingerprint(self.defc[0]))
        self.assertEqual(self.served_cert("unknown.test"), fingerprint(self.defc[0]))
        # And a verifying client accepts each (the chain and names are right).
        for name in ("api.example.com", "shop.example.com", "default.example.net"):
            with TlsConn(self.port, self.ctx, sni=name) as c:
                self.assertEqual(c.request(path="/id")[0], 200)

    def test_no_sni_gets_the_default_certificate(self):
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        with client_context().wrap_socket(raw, server_hostname=None) as s:
            self.assertEqual(der_fingerprint(s.getpeercert(binary_form=True)), fingerprint(self.defc[0]))

    def test_session_resumption_with_tickets(self):
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client_context(ca=self.pki.cert, min_version=version, max_version=version)
            with TlsConn(self.port, ctx, sni="api.example.com") as c:
                c.request(path="/id")  # TLS 1.3 tickets arrive after the handshake
                session = c.sock.session
                self.assertFalse(c.sock.session_reused)
            with TlsConn(self.port, ctx, sni="api.example.com", session=session) as c:
                self.assertTrue(c.sock.session_reused, version)
                self.assertEqual(c.request(path="/id")[0], 200)
        self.assertGreaterEqual(self.proxy.metric("marchproxy_tls_resumptions_total"), 2)

    def test_tls13_resumed_connection_gets_a_fresh_ticket(self):
        # A client that keeps reconnecting (wrk, a browser) resumes with the newest ticket it holds:
        # each resumed TLS 1.3 connection must hand out a new one, or every other connection of
        # that client is a full handshake (a certificate signature each: costly with P-384).
        ctx = client_context(ca=self.pki.cert, min_version=ssl.TLSVersion.TLSv1_3)
        with TlsConn(self.port, ctx, sni="api.example.com") as c:
            c.request(path="/id")
            session = c.sock.session
        seen = {session.id}
        before = self.proxy.metric("marchproxy_tls_resumptions_total")
        for i in range(3):
            with TlsConn(self.port, ctx, sni="api.example.com", session=session) as c:
                self.assertTrue(c.sock.session_reused, f"resumption {i + 1}")
                self.assertEqual(c.request(path="/id")[0], 200)  # the new ticket arrives before this
                session = c.sock.session
            self.assertNotIn(session.id, seen, f"no new ticket on resumed connection {i + 1}")
            seen.add(session.id)
        self.assertEqual(self.proxy.metric("marchproxy_tls_resumptions_total") - before, 3)

    def test_alpn_http11(self):
        ctx = client_context(ca=self.pki.cert)
        ctx.set_alpn_protocols(["h2", "http/1.1"])
        with TlsConn(self.port, ctx, sni="api.example.com") as c:
            self.assertEqual(c.sock.selected_alpn_protocol(), "http/1.1")

    def test_handshake_timeout_closes_a_silent_connection(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.settimeout(10)
            self.assertEqual(s.recv(100), b"")  # closed by the proxy after handshake_timeout (1s)
        wait_until(lambda: self.proxy.metric("marchproxy_tls_handshakes_total", result="timeout") >= 1,
                   message="timeout counted")

    def test_garbage_and_plain_http_do_not_wedge_workers(self):
        for payload in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(4096), b"\x16\x03\x01\x00\x05hello",
                        b"\x16\x03\x03" + b"\xff" * 2000):
            for _ in range(4):  # both workers see each
                with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
                    try:
                        s.sendall(payload)
                        s.settimeout(10)
                        while s.recv(4096):
                            pass
                    except (ConnectionResetError, BrokenPipeError):
                        pass
        self.assertGreaterEqual(self.proxy.metric("marchproxy_tls_handshakes_total", result="plain_http"), 1)
        for _ in range(8):
            with TlsConn(self.port, self.ctx, sni="api.example.com") as c:
                self.assertEqual(c.request(path="/id")[0], 200)
        self.assertTrue(self.proxy.alive())

    def test_plain_listener_redirects_to_https_per_virtual_host(self):
        r = get(self.proxy.ports["http"], "/a/b?x=1", host="secure.example.com:8080")
        self.assertEqual(r.status, 308)
        self.assertEqual(r.header("location"), "https://secure.example.com/a/b?x=1")
        r = get(self.proxy.ports["http"], "/id", host="other.example.org")
        self.assertEqual(r.status, 200)  # other virtual hosts are served over plain HTTP


if __name__ == "__main__":
    unittest.main()
