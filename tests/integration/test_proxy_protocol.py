"""PROXY protocol v1/v2 on ingress listeners (docs/proxy-protocol.md): the header's client address
drives X-Forwarded-For, the access log and per-IP limits; untrusted peers, missing and malformed
headers close the connection (counted); v2 LOCAL uses the socket address; the header comes before
the ClientHello on TLS listeners; haproxy with send-proxy-v2 as a real peer; and
limits.max_connections_per_ip."""
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import unittest

from harness import ProxyTestCase, Conn, RawServer, build_request, conn_from, free_port, get, render, wait_until
from tls_certs import Pki

CONFIG = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: http, address: 127.0.0.1, port: 0 }
  - { name: pp, address: 127.0.0.1, port: 0, proxy_protocol: { accept: any } }
  - { name: pp1, address: 127.0.0.1, port: 0, proxy_protocol: { accept: v1 } }
  - { name: ppt, address: 127.0.0.1, port: 0, proxy_protocol: { accept: any, trusted: [10.0.0.0/8, "::1"] } }
  - name: pptls
    address: 127.0.0.1
    port: 0
    proxy_protocol: { accept: v2 }
    tls: { certificates: [ { cert: "${CERT}", key: "${KEY}" } ] }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: a }
clusters:
  - name: a
    endpoints: [ "${A}" ]
limits: { max_connections_per_ip: ${PER_IP} }
timeouts: { header_read: 1s, idle: 30s, drain: 1s }
access_log: { enabled: true, path: ${LOG} }
"""

LISTENERS = ("http", "pp", "pp1", "ppt", "pptls")
V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, dst="10.9.9.9", sport=40000, dport=80):
    fam = "TCP6" if ":" in src else "TCP4"
    return f"PROXY {fam} {src} {dst} {sport} {dport}\r\n".encode()


def v2(src, dst="10.9.9.9", sport=40000, dport=80, local=False):
    if local:
        return V2_SIG + b"\x20\x00\x00\x00"
    if ":" in src:
        body = socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
        fam = 0x21
    else:
        body = socket.inet_aton(src) + socket.inet_aton(dst)
        fam = 0x11
    body += struct.pack("!HH", sport, dport) + b"\x04\x00\x02hi"  # plus a NOOP TLV
    return V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


def xff(resp):
    return [v for n, v in resp.json()["headers"] if n.lower() == "x-forwarded-for"]


class Base(ProxyTestCase):
    per_ip = 0

    def setUp(self):
        self.a = self.start_origin("A")
        self.log = os.path.join(self.tmpdir(), "access.log")
        pki = Pki(self.tmpdir())
        self.ca = pki.cert
        cert, key = pki.issue("pp.example.com", sans=["DNS:pp.example.com"])
        self.p = self.start_proxy(render(CONFIG, A=self.a.address, CERT=cert, KEY=key, LOG=self.log,
                                         PER_IP=str(self.per_ip)), expect_listeners=LISTENERS)

    def send(self, listener, header, path="/echo", split=False):
        c = Conn(self.p.ports[listener])
        if split:  # the header in pieces: the parser must wait for the rest
            for i in range(0, len(header), 5):
                c.send(header[i:i + 5])
        else:
            c.send(header)
        c.send(build_request("GET", path))
        return c

    def refused(self, listener, data, reason):
        before = self.p.metric("marchproxy_proxy_protocol_errors_total", reason=reason)
        c = Conn(self.p.ports[listener])
        try:
            if data:
                c.send(data)
            self.assertClosed(c, msg=repr(data))
        finally:
            c.close()
        wait_until(lambda: self.p.metric("marchproxy_proxy_protocol_errors_total", reason=reason) == before + 1, 10,
                   message=f"errors_total{{reason={reason}}} + 1")


class ProxyProtocolTest(Base):

    def test_v1_and_v2_set_the_client_address(self):
        for header, ip in ((v1("203.0.113.5"), "203.0.113.5"), (v2("198.51.100.7"), "198.51.100.7"),
                           (v2("2001:db8::42", "2001:db8::1"), "2001:db8::42"),
                           (v1("192.0.2.33"), "192.0.2.33")):
            for split in (False, True):
                with self.send("pp", header, split=split) as c:
                    r = c.read_response()
                    self.assertStatus(r, 200)
                    self.assertEqual(xff(r), [ip], header)
                    # Keep-alive: the next request on the connection has the same client.
                    r2 = c.request("GET", "/echo")
                    self.assertEqual(xff(r2), [ip])
        # The access log has the header's address.
        def log_text():
            if not os.path.exists(self.log):
                return ""
            with open(self.log) as f:
                return f.read()
        wait_until(lambda: "2001:db8::42" in log_text(), 10, message="access log line")
        clients = {json.loads(line)["client"] for line in log_text().splitlines() if line.strip()}
        self.assertIn("203.0.113.5", clients)

    def test_v2_local_uses_the_socket_address(self):
        with self.send("pp", v2(None, local=True)) as c:
            self.assertEqual(xff(c.read_response()), ["127.0.0.1"])
        with self.send("pp", b"PROXY UNKNOWN\r\n") as c:
            self.assertEqual(xff(c.read_response()), ["127.0.0.1"])

    def test_missing_or_bad_header_closes(self):
        self.refused("pp", build_request("GET", "/echo"), "bad_header")
        self.refused("pp", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "bad_header")
        self.refused("pp", b"PROXY TCP4 1.2.3.999 5.6.7.8 1 2\r\n", "bad_header")
        self.refused("pp", V2_SIG + b"\x21\x11\x00\x04abcd", "bad_header")
        self.refused("pp1", v2("198.51.100.7"), "bad_header")  # v2 on a v1-only listener
        self.refused("pp", b"PROXY TCP4 1.2.3.4", "timeout")    # never completed
        self.refused("pp", b"", "timeout")                      # silent client
        self.assertEqual(self.a.count, 0)
        # A plain listener is unaffected; a header there is just a bad request.
        self.assertStatus(get(self.p.ports["http"], "/id"), 200)

    def test_untrusted_peer_closed(self):
        self.refused("ppt", v1("203.0.113.5"), "untrusted")
        self.assertEqual(self.a.count, 0)

    def test_tls_listener_header_before_client_hello(self):
        ctx = ssl.create_default_context(cafile=self.ca)
        raw = socket.create_connection(("127.0.0.1", self.p.ports["pptls"]), timeout=10)
        raw.sendall(v2("198.51.100.99"))
        with ctx.wrap_socket(raw, server_hostname="pp.example.com") as s:
            s.sendall(build_request("GET", "/echo"))
            data = b""
            while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        self.assertIn(b"198.51.100.99", data)

    @unittest.skipIf(shutil.which("haproxy") is None, "haproxy is not installed")
    def test_haproxy_send_proxy_v2_as_a_real_peer(self):
        port = free_port()
        cfg = os.path.join(self.tmpdir(), "haproxy.cfg")
        with open(cfg, "w") as f:
            f.write(f"""
global
  log stderr format raw local0 emerg
defaults
  mode tcp
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend fe
  bind 127.0.0.1:{port}
  default_backend be
backend be
  server mp 127.0.0.1:{self.p.ports['pp']} send-proxy-v2
""")
        hp = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: (hp.terminate(), hp.wait(10)))

        def through():
            try:
                return get(port, "/echo")
            except OSError:
                return None
        wait_until(lambda: through() is not None, 10, message="haproxy up")
        # haproxy's client is 127.0.0.1 as well; from 127.0.0.2 the header is what tells them apart.
        with conn_from("127.0.0.2", port) as c:
            r = c.request("GET", "/echo")
        self.assertStatus(r, 200)
        self.assertEqual(xff(r), ["127.0.0.2"])


SENDER = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: a
    domains: ["*"]
    routes:
      - { match: { prefix: /v1/ }, forward: { cluster: b1 } }
      - { match: { prefix: / }, forward: { cluster: b2 } }
clusters:
  - { name: b1, endpoints: [ "127.0.0.1:${PP}" ], send_proxy_protocol: v1 }
  - { name: b2, endpoints: [ "127.0.0.1:${PP}" ], send_proxy_protocol: v2 }
"""


SENDER_H2 = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0, h2c: true } ]
virtual_hosts:
  - name: a
    domains: ["*"]
    routes:
      - { match: { prefix: / }, forward: { cluster: pp } }
clusters:
  - { name: pp, endpoints: [ "${UP}" ], send_proxy_protocol: v1 }
"""


def pp_recorder(c):
    """An HTTP/1.1 upstream that expects a PROXY v1 line first and answers each request with the
    line its connection started with; a second request on the same connection gets "reused"."""
    f = c.makefile("rb")
    line = f.readline().rstrip(b"\r\n")
    first = True
    while True:
        head = f.readline()
        if not head:
            return
        while True:
            h = f.readline()
            if h in (b"\r\n", b"\n", b""):
                break
        body = line if first else b"reused"
        first = False
        c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


class SendProxyProtocolTest(Base):
    def test_sender_writes_the_client_address_per_connection(self):
        # A marchproxy sending the header to this test's proxy ("pp" listener, which requires one).
        sender = self.start_proxy(render(SENDER, PP=str(self.p.ports["pp"])))
        for path in ("/v1/echo", "/echo"):
            for ip in ("127.0.0.2", "127.0.0.3", "127.0.0.2"):
                with conn_from(ip, sender.port) as c:
                    for _ in range(2):  # keep-alive: the second request needs the same client again
                        r = c.request("GET", path)
                        self.assertStatus(r, 200)
                        self.assertEqual(xff(r), [ip], (path, ip))
        self.assertEqual(self.p.metric("marchproxy_proxy_protocol_errors_total"), 0)

    def test_sender_over_http2_writes_the_header_per_stream(self):
        """HTTP/2 streams are forwarded like HTTP/1.1 requests: each gets its own upstream
        connection that starts with the header of its client (address and port)."""
        from h2_client import RawH2
        up = RawServer(pp_recorder)
        self.addCleanup(up.close)
        sender = self.start_proxy(render(SENDER_H2, UP=up.address))
        for ip in ("127.0.0.2", "127.0.0.3"):
            with RawH2(sender.port, source=ip) as c:
                sport = c.sock.getsockname()[1]
                want = f"PROXY TCP4 {ip} 127.0.0.1 {sport} {sender.port}".encode()
                for _ in range(2):  # two streams, one after the other, on one client connection
                    status, _, body, _, rst = c.response(c.request("/x"))
                    self.assertEqual((status, body, rst), (200, want, None))
        self.assertEqual(up.accepted, 4)  # no upstream connection served two streams


class PerIpLimitTest(Base):
    per_ip = 2

    def test_third_connection_from_one_address_is_closed(self):
        c1, c2 = Conn(self.p.port), Conn(self.p.port)
        self.assertStatus(c1.request("GET", "/id"), 200)
        self.assertStatus(c2.request("GET", "/id"), 200)
        c3 = Conn(self.p.port)
        self.assertClosed(c3)
        c3.close()
        self.assertEqual(self.p.metric("marchproxy_connections_refused_total", reason="per_ip"), 1)
        # Another address is not affected; closing one frees a slot.
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        s.connect(("127.0.0.1", self.p.port))
        s.close()
        c1.close()
        wait_until(lambda: self.p.metric("marchproxy_downstream_connections_active") <= 1, 10, message="c1 gone")
        with Conn(self.p.port) as c4:
            self.assertStatus(c4.request("GET", "/id"), 200)
        c2.close()

    def test_proxy_protocol_address_is_what_counts(self):
        held = [self.send("pp", v1("203.0.113.1")) for _ in range(2)]
        for c in held:
            self.assertStatus(c.read_response(), 200)
        extra = self.send("pp", v1("203.0.113.1"))
        self.assertClosed(extra)
        extra.close()
        with self.send("pp", v1("203.0.113.2")) as other:  # same socket peer, another client
            self.assertStatus(other.read_response(), 200)
        for c in held:
            c.close()


if __name__ == "__main__":
    unittest.main()
