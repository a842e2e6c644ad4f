"""Egress forward proxy end to end: real curl and Python clients, real origins on loopback.

Each test writes its own `kind: egress` config, starts `marchproxy egress`, and drives it with
`curl -x` / `curl --socks5-hostname`, http.client CONNECT tunnels, a small SOCKS5 client and raw
TLS ClientHellos. Names are resolved through the config's `dns.hosts` (no /etc/hosts, no root).
"""

import base64
import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
import unittest

from harness import (LOCALHOST, ProxyTestCase, RawServer, connect_tunnel, free_port, main, render, wait_until)

TOKEN = "s3cret-token"
JWT_SECRET = "an-hs256-secret-of-at-least-32-bytes!"
CURL = shutil.which("curl")

BASE = """
schema: 1
kind: egress
workers: 1
listeners:
  - {name: http, address: 127.0.0.1, port: 0}
  - {name: socks, address: 127.0.0.1, port: 0, protocol: socks5}
admin: {address: 127.0.0.1, port: 0}
access_log: {enabled: true, path: "${log}"}
services:
  - name: billing
    tokens: ["sha256:${token_hash}"]
  - name: reports
    tokens: ["sha256:${token_hash}"]
jwt:
  issuer: manager
  keys:
    - {id: k1, alg: HS256, secret: "${jwt_secret}"}
    - {id: reports-key, alg: HS256, secret: "${jwt_secret}-reports", service: reports}
dns:
  hosts:
    origin.test: [127.0.0.1]
    evil.test: [127.0.0.1]
    tls.test: [127.0.0.1]
mappings:
${mappings}
"""

ORIGIN_RULE = """
  - name: billing-origin
    sources: [billing]
    destinations: [origin.test, 127.0.0.1/32]
    protocols: [http, https, tcp, udp]
    ports: ["${port}"]
"""

EVIL_RULE = """
  - name: billing-evil
    sources: [billing]
    destinations: [evil.test]
    protocols: [http, https, tcp]
    ports: ["1-65535"]
"""


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jwt(claims, secret=JWT_SECRET, alg="HS256", kid="k1"):
    header = {"alg": alg, "typ": "JWT"}
    if kid:
        header["kid"] = kid
    signing = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    if alg == "none":
        return signing + "."
    sig = hmac.new(secret.encode(), signing.encode(), hashlib.sha256).digest()
    return signing + "." + b64url(sig)


def claims(service="billing", exp_in=600, **extra):
    c = {"service_id": service, "iss": "manager", "exp": int(time.time()) + exp_in}
    c.update(extra)
    return c


def basic(user="billing", password=TOKEN):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def curl(*args, timeout=20):
    """Runs curl; returns (exit code, http status or 0, body bytes)."""
    p = subprocess.run([CURL, "-sS", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10", *args],
                       capture_output=True, timeout=timeout)
    out = p.stdout
    body, _, code = out.rpartition(b"\n")
    return p.returncode, int(code or 0), body


class EchoServer(RawServer):
    """A TCP server that echoes every byte and records what it received first."""

    def __init__(self):
        self.first = []
        super().__init__(handler=self._echo)

    def _echo(self, c):
        first = True
        while True:
            d = c.recv(65536)
            if not d:
                return
            if first:
                self.first.append(d)
                first = False
            c.sendall(d)


def socks5_handshake(port, user, password, timeout=5.0):
    s = socket.create_connection((LOCALHOST, port), timeout=timeout)
    s.sendall(b"\x05\x01\x02")
    assert s.recv(2) == b"\x05\x02"
    u, p = user.encode(), password.encode()
    s.sendall(b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
    return s, s.recv(2)


def socks5_request(s, cmd, host, port):
    """Sends a request (host as a name, or an IPv4 literal); returns (reply code, bound host, port)."""
    try:
        packed = socket.inet_aton(host)
        addr = b"\x01" + packed
    except OSError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05" + bytes([cmd]) + b"\x00" + addr + struct.pack(">H", port))
    head = recv_exact(s, 4)
    if head[3] == 1:
        bnd = socket.inet_ntoa(recv_exact(s, 4))
    elif head[3] == 4:
        bnd = socket.inet_ntop(socket.AF_INET6, recv_exact(s, 16))
    else:
        bnd = recv_exact(s, recv_exact(s, 1)[0]).decode()
    bport = struct.unpack(">H", recv_exact(s, 2))[0]
    return head[1], bnd, bport


def recv_exact(s, n):
    out = b""
    while len(out) < n:
        d = s.recv(n - len(out))
        if not d:
            raise ConnectionError(f"closed after {len(out)} of {n} bytes")
        out += d
    return out


def client_hello(server_name):
    """The first flight of a real TLS client (Python's ssl), without any network."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def closed_by_peer(s, timeout=5.0):
    s.settimeout(timeout)
    try:
        while True:
            d = s.recv(65536)
            if not d:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


class EgressTestCase(ProxyTestCase):
    def config(self, mappings, **values):
        self.log_path = os.path.join(self.tmpdir(), "access.log")
        return render(BASE, log=self.log_path, token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
                      jwt_secret=JWT_SECRET, mappings=render(mappings, **values))

    def start_egress(self, mappings, **values):
        p = self.start_proxy(self.config(mappings, **values), command="egress",
                             expect_listeners=("http", "socks"))
        self.http_port = p.ports["http"]
        self.socks_port = p.ports["socks"]
        return p

    def access_log(self):
        with open(self.log_path) as f:
            return [json.loads(line) for line in f if line.strip()]


@unittest.skipUnless(CURL, "curl not installed")
class HttpForwardTest(EgressTestCase):
    def setUp(self):
        self.origin = self.start_origin("o1")
        self.p = self.start_egress(ORIGIN_RULE + EVIL_RULE, port=self.origin.port)
        self.proxy = f"http://127.0.0.1:{self.http_port}"

    def test_forwards_with_basic_credentials_and_strips_them(self):
        rc, code, body = curl("-x", self.proxy, "-U", f"billing:{TOKEN}",
                              f"http://origin.test:{self.origin.port}/echo?x=1")
        self.assertEqual((rc, code), (0, 200), body)
        echo = json.loads(body)
        self.assertEqual(echo["path"], "/echo")
        names = [h[0].lower() for h in echo["headers"]]
        self.assertNotIn("proxy-authorization", names)  # the caller's credentials stay with the proxy
        self.assertIn(["Host", f"origin.test:{self.origin.port}"], echo["headers"])

    def test_keep_alive_and_a_body(self):
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)
        for i in range(3):
            body = b"x" * (1000 * (i + 1))
            conn.request("POST", f"http://origin.test:{self.origin.port}/sink", body=body,
                         headers={"Proxy-Authorization": basic()})
            r = conn.getresponse()
            self.assertEqual(r.status, 200)
            self.assertEqual(json.loads(r.read())["length"], len(body))
        conn.close()

    def test_destination_connections_are_pooled_and_a_closed_one_is_replaced(self):
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)
        for _ in range(5):
            conn.request("GET", f"http://origin.test:{self.origin.port}/id", headers={"Proxy-Authorization": basic()})
            r = conn.getresponse()
            self.assertEqual((r.status, r.read()), (200, b"o1"))
        self.assertEqual(self.origin.connections, 1)  # one pooled keep-alive connection served all five
        # The origin closes its idle connection; the proxy notices and dials again.
        self.origin.keepalive_timeout = 0.2
        conn.request("GET", f"http://origin.test:{self.origin.port}/id", headers={"Proxy-Authorization": basic()})
        self.assertEqual(conn.getresponse().read(), b"o1")
        wait_until(lambda: self.origin.idle_closes >= 1, message="the origin closing the idle connection")
        conn.request("GET", f"http://origin.test:{self.origin.port}/id", headers={"Proxy-Authorization": basic()})
        r = conn.getresponse()
        self.assertEqual((r.status, r.read()), (200, b"o1"))
        self.assertEqual(self.origin.connections, 2)
        conn.close()

    def test_no_or_wrong_credentials_get_407(self):
        rc, code, body = curl("-x", self.proxy, f"http://origin.test:{self.origin.port}/id")
        self.assertEqual(code, 407)
        rc, code, body = curl("-x", self.proxy, "-U", "billing:wrong", f"http://origin.test:{self.origin.port}/id")
        self.assertEqual(code, 407)
        rc, code, body = curl("-x", self.proxy, "-U", f"nobody:{TOKEN}", f"http://origin.test:{self.origin.port}/id")
        self.assertEqual(code, 407)
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)
        conn.request("GET", f"http://origin.test:{self.origin.port}/id")
        r = conn.getresponse()
        self.assertEqual(r.status, 407)
        self.assertIn("Basic", r.getheader("Proxy-Authenticate"))
        self.assertEqual(self.origin.count, 0)  # nothing reached the origin

    def test_a_rotated_token_stops_working_at_the_reload_even_when_cached(self):
        # One keep-alive client connection: every request lands on the same worker, whose cache
        # of verified credentials serves the repeats.
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)

        def get(auth):
            conn.request("GET", f"http://origin.test:{self.origin.port}/id", headers={"Proxy-Authorization": auth})
            r = conn.getresponse()
            return r.status, r.read()

        for _ in range(3):
            self.assertEqual(get(basic()), (200, b"o1"))
        self.assertEqual(self.p.metric("marchproxy_egress_credential_cache_lookups_total", result="miss"), 1)
        self.assertEqual(self.p.metric("marchproxy_egress_credential_cache_lookups_total", result="hit"), 2)
        self.assertEqual(self.p.metric("marchproxy_egress_credential_cache_entries"), 1)
        # A wrong token is never cached: refused every time.
        for _ in range(2):
            self.assertEqual(get(basic(password="s3cret-tokeN"))[0], 407)
        self.assertEqual(self.p.metric("marchproxy_egress_credential_cache_entries"), 1)

        old_hash, new_token = hashlib.sha256(TOKEN.encode()).hexdigest(), "rotated-token"
        rotated = self.config(ORIGIN_RULE, port=self.origin.port).replace(
            old_hash, hashlib.sha256(new_token.encode()).hexdigest())
        self.p.reload(rotated)
        self.p.wait_log("egress config reloaded")
        self.assertEqual(get(basic())[0], 407)  # the cached old token is gone with the old config
        self.assertEqual(get(basic(password=new_token)), (200, b"o1"))
        self.assertEqual(self.p.metric("marchproxy_egress_credential_cache_entries"), 1)
        conn.close()

    def test_unmapped_destination_and_wrong_port_get_403_with_the_reason(self):
        rc, code, body = curl("-x", self.proxy, "-U", f"billing:{TOKEN}", "http://other.test:80/")
        self.assertEqual(code, 403)
        self.assertIn(b'no rule allows other.test:80 (http) for service "billing"', body)
        rc, code, body = curl("-x", self.proxy, "-U", f"billing:{TOKEN}",
                              f"http://origin.test:{self.origin.port + 1}/")
        self.assertEqual(code, 403)
        # Another service with valid credentials but no mapping.
        rc, code, body = curl("-x", self.proxy, "-U", f"reports:{TOKEN}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertEqual(code, 403)
        self.assertIn(b'for service "reports"', body)
        self.assertEqual(self.origin.count, 0)

    def test_a_permitted_name_resolving_into_a_forbidden_network_is_refused(self):
        # evil.test is allowed by name, but resolves to 127.0.0.1, which no rule of it names.
        rc, code, body = curl("-x", self.proxy, "-U", f"billing:{TOKEN}",
                              f"http://evil.test:{self.origin.port}/id")
        self.assertEqual(code, 403)
        self.assertIn(b"evil.test resolves to 127.0.0.1, a forbidden network", body)
        self.assertEqual(self.origin.count, 0)

    def test_unknown_name_is_502(self):
        rc, code, body = curl("-x", self.proxy, "-U", f"billing:{TOKEN}",
                              f"http://127.0.0.1:{self.origin.port}/id")
        self.assertEqual(code, 200)  # an IP literal matches the CIDR destination
        self.p.reload(self.config(ORIGIN_RULE.replace("[origin.test, 127.0.0.1/32]",
                                                      "[origin.test, missing.invalid, 127.0.0.1/32]"),
                                  port=self.origin.port))
        self.p.wait_log("egress config reloaded")
        rc, code, body = curl("-x", self.proxy, "-U", f"billing:{TOKEN}",
                              f"http://missing.invalid:{self.origin.port}/id")
        self.assertEqual(code, 502)
        self.assertIn(b"cannot resolve missing.invalid", body)

    def test_bearer_jwt(self):
        ok = jwt(claims())
        rc, code, body = curl("-x", self.proxy, "--proxy-header", f"Proxy-Authorization: Bearer {ok}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertEqual((code, body), (200, b"o1"))
        for bad in (jwt(claims(exp_in=-3600)),                      # expired
                    jwt(claims(), alg="none"),                       # alg none
                    jwt(claims(), secret="x" * 40),                  # wrong key
                    jwt(claims(), kid="unknown"),                    # unknown key id
                    jwt(claims(service="ghost")),                    # unknown service
                    jwt(claims(iss="someone-else"))):                # wrong issuer
            rc, code, body = curl("-x", self.proxy, "--proxy-header", f"Proxy-Authorization: Bearer {bad}",
                                  f"http://origin.test:{self.origin.port}/id")
            self.assertEqual(code, 407, bad)
        self.assertEqual(self.origin.count, 1)
        # reports' own key signs for reports only: a token it signs naming billing is refused...
        forged = jwt(claims(service="billing"), secret=JWT_SECRET + "-reports", kid="reports-key")
        rc, code, body = curl("-x", self.proxy, "--proxy-header", f"Proxy-Authorization: Bearer {forged}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertEqual(code, 407)
        # ...while one naming reports authenticates (and reports has no mapping to the origin).
        own = jwt(claims(service="reports"), secret=JWT_SECRET + "-reports", kid="reports-key")
        rc, code, body = curl("-x", self.proxy, "--proxy-header", f"Proxy-Authorization: Bearer {own}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertEqual(code, 403, body)
        self.assertEqual(self.origin.count, 1)

    def test_access_log_and_metrics(self):
        curl("-x", self.proxy, "-U", f"billing:{TOKEN}", f"http://origin.test:{self.origin.port}/bytes/1000")
        curl("-x", self.proxy, "-U", f"billing:{TOKEN}", "http://other.test/")
        curl("-x", self.proxy, f"http://origin.test:{self.origin.port}/id")
        entries = wait_until(lambda: len(self.access_log()) >= 3 and self.access_log(), message="3 log lines")
        allow = [e for e in entries if e["decision"] == "allow"][0]
        self.assertEqual(allow["service"], "billing")
        self.assertEqual(allow["rule"], "billing-origin")
        self.assertEqual(allow["address"], "127.0.0.1")
        self.assertEqual(allow["status"], 200)
        self.assertEqual(allow["method"], "GET")
        self.assertGreaterEqual(allow["bytes_down"], 1000)
        reasons = sorted(e["reason"] for e in entries if e["decision"] == "deny")
        self.assertEqual(reasons, ["no_credentials", "no_rule"])
        self.assertEqual(self.p.metric("marchproxy_egress_decisions_total", service="billing",
                                       decision="deny", reason="no_rule"), 1)
        self.assertEqual(self.p.metric("marchproxy_egress_decisions_total", mapping="billing-origin",
                                       decision="allow"), 1)
        self.assertGreaterEqual(self.p.metric("marchproxy_egress_bytes_total", service="billing",
                                              direction="down"), 1000)


class DigestServer(RawServer):
    """Reads until the client half-closes, then answers the SHA-256 of what it got followed by
    `reply` bytes of a pattern, and closes: a tunnel must carry both directions in full and pass
    each end of stream on."""

    def __init__(self, reply):
        self.reply = reply
        super().__init__(handler=self._serve)

    def _serve(self, c):
        h, n = hashlib.sha256(), 0
        while True:
            d = c.recv(1 << 18)
            if not d:
                break
            h.update(d)
            n += len(d)
        c.sendall(h.digest() + n.to_bytes(8, "big") + pattern(self.reply))


def pattern(n):
    block = hashlib.sha256(b"marchproxy").digest() * 2048  # 64 KiB
    return (block * (n // len(block) + 1))[:n]


class TunnelForwarder:
    """A local TCP port whose every connection is carried through the egress (CONNECT or SOCKS5) to
    one destination: how a client without proxy support (iperf3) is tested through a tunnel."""

    def __init__(self, open_tunnel):
        self.open_tunnel = open_tunnel
        self.sock = socket.socket()
        self.sock.bind((LOCALHOST, 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.errors = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            try:
                t = self.open_tunnel()
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.errors.append(repr(e))
                c.close()
                continue
            for a, b in ((c, t), (t, c)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a, b):
        try:
            while True:
                d = a.recv(1 << 18)
                if not d:
                    b.shutdown(socket.SHUT_WR)
                    return
                b.sendall(d)
        except OSError:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def close(self):
        self.sock.close()


IPERF3 = shutil.which("iperf3")


def listening(port):
    """A TCP socket listens on the port (read from /proc: connecting would disturb iperf3)."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    return True
    return False


class TunnelBulkTest(EgressTestCase):
    """Bulk data both ways through CONNECT and SOCKS5 tunnels (relayed with splice(2)): every byte
    arrives, each side's end of stream reaches the other (half-close), and the byte counters match."""

    def run_digest_exchange(self, sock, sent_bytes, reply_bytes):
        data = pattern(sent_bytes)
        sock.settimeout(30)
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)  # the server answers only once it sees our end of stream
        got = b""
        while True:
            d = sock.recv(1 << 18)
            if not d:
                break
            got += d
        sock.close()
        self.assertEqual(got[:32], hashlib.sha256(data).digest(), "the server got different bytes")
        self.assertEqual(int.from_bytes(got[32:40], "big"), sent_bytes)
        self.assertEqual(len(got) - 40, reply_bytes)
        self.assertTrue(got[40:] == pattern(reply_bytes), "the reply arrived different")

    def test_connect_and_socks5_carry_bulk_data_both_ways_with_half_close(self):
        server = DigestServer(reply=24 << 20)
        self.addCleanup(server.close)
        p = self.start_egress(ORIGIN_RULE, port=server.port)
        s, head = connect_tunnel(self.http_port, "origin.test", server.port, basic(), timeout=30)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        self.run_digest_exchange(s, 32 << 20, 24 << 20)
        s, auth = socks5_handshake(self.socks_port, "billing", TOKEN)
        self.assertEqual(auth, b"\x01\x00")
        code, _, _ = socks5_request(s, 1, "origin.test", server.port)
        self.assertEqual(code, 0)
        server.reply = 40 << 20
        self.run_digest_exchange(s, 8 << 20, 40 << 20)
        # Both tunnels counted every byte each way (the pattern plus the 40-byte digest header).
        up = wait_until(lambda: (lambda v: v if v >= (40 << 20) else None)(
            p.metric("marchproxy_egress_bytes_total", service="billing", direction="up")),
            message="upstream bytes counted")
        self.assertEqual(up, (32 << 20) + (8 << 20))
        self.assertEqual(p.metric("marchproxy_egress_bytes_total", service="billing", direction="down"),
                         (24 << 20) + (40 << 20) + 2 * 40)
        self.assertEqual(p.metric("marchproxy_egress_tunnels_open"), 0)

    @unittest.skipUnless(IPERF3, "iperf3 not installed (scripts/setup.sh installs it)")
    def test_iperf3_through_connect_and_socks5(self):
        iperf_port = free_port()
        p = self.start_egress(ORIGIN_RULE, port=iperf_port)
        server = subprocess.Popen([IPERF3, "-s", "-B", LOCALHOST, "-p", str(iperf_port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(server.kill)
        wait_until(lambda: listening(iperf_port), message="iperf3 server listening")

        def via_connect():
            s, head = connect_tunnel(self.http_port, "origin.test", iperf_port, basic(), timeout=30)
            if not head.startswith(b"HTTP/1.1 200"):
                raise ConnectionError(head)
            s.settimeout(None)
            return s

        def via_socks():
            s, auth = socks5_handshake(self.socks_port, "billing", TOKEN, timeout=30)
            code, _, _ = socks5_request(s, 1, "origin.test", iperf_port)
            if auth != b"\x01\x00" or code != 0:
                raise ConnectionError(f"socks5 auth {auth!r} reply {code}")
            s.settimeout(None)
            return s

        for name, opener in (("CONNECT", via_connect), ("SOCKS5", via_socks)):
            for reverse in (False, True):
                fwd = TunnelForwarder(opener)
                self.addCleanup(fwd.close)
                args = [IPERF3, "-c", LOCALHOST, "-p", str(fwd.port), "-t", "2", "-J"] + (["-R"] if reverse else [])
                # The server may still be closing the previous test (its control connection's end
                # travels back through the tunnel): it then answers "busy", and we ask again.
                for _ in range(50):
                    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
                    result = json.loads(r.stdout)
                    if "busy" not in result.get("error", ""):
                        break
                    time.sleep(0.2)
                self.assertEqual(fwd.errors, [], name)
                self.assertNotIn("error", result, f"{name} reverse={reverse}: {result.get('error')}")
                received = result["end"]["sum_received"]["bytes"]
                self.assertGreater(received, 1 << 20, f"{name} reverse={reverse}: {received} bytes")
        wait_until(lambda: p.metric("marchproxy_egress_tunnels_open") == 0, message="every tunnel closed")


class FramingOrigin(RawServer):
    """A keep-alive HTTP/1.1 origin written byte by byte: each path answers with one response shape
    (a body that arrives after its head, no body, HEAD, an interim 100, chunked)."""

    RESPONSES = {
        "/split": [b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello", b"world"],
        "/empty": [b"HTTP/1.1 204 No Content\r\nX-Kind: empty\r\n\r\n"],
        "/head": [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"],
        "/interim": [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
        "/chunked": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n", b"0\r\n\r\n"],
    }

    def __init__(self):
        super().__init__(handler=self._serve)

    def _serve(self, c):
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                d = c.recv(65536)
                if not d:
                    return
                buf += d
            head, _, buf = buf.partition(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            for i, part in enumerate(self.RESPONSES[path]):
                if i:
                    time.sleep(0.2)  # the rest comes in a later read of the proxy's
                c.sendall(part)


class ResponseFramingTest(EgressTestCase):
    """Every response shape over one client connection and one pooled origin connection."""

    def setUp(self):
        self.origin = FramingOrigin()
        self.addCleanup(self.origin.close)
        self.start_egress(ORIGIN_RULE, port=self.origin.port)

    def test_each_response_shape_keeps_both_connections(self):
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)
        url = f"http://origin.test:{self.origin.port}"
        for _ in range(2):
            for method, path, status, body in (("GET", "/split", 200, b"helloworld"), ("GET", "/empty", 204, b""),
                                               ("HEAD", "/head", 200, b""), ("GET", "/interim", 200, b"ok"),
                                               ("GET", "/chunked", 200, b"abc")):
                conn.request(method, url + path, headers={"Proxy-Authorization": basic()})
                r = conn.getresponse()
                self.assertEqual((r.status, r.read()), (status, body), path)
                if path == "/head":
                    self.assertEqual(r.getheader("Content-Length"), "100")
                if path == "/empty":
                    self.assertEqual(r.getheader("X-Kind"), "empty")
        conn.close()
        self.assertEqual(self.origin.accepted, 1)  # every response left the origin connection reusable

    def test_pipelined_requests_are_answered_in_order(self):
        s = socket.create_connection((LOCALHOST, self.http_port), timeout=10)
        req = "GET http://origin.test:{}{} HTTP/1.1\r\nHost: origin.test\r\nProxy-Authorization: {}\r\n\r\n"
        s.sendall("".join(req.format(self.origin.port, p, basic()) for p in ("/empty", "/split", "/empty")).encode())
        got = b""
        while got.count(b"HTTP/1.1 ") < 3 or not got.endswith(b"\r\n\r\n"):
            d = s.recv(65536)
            self.assertTrue(d, f"closed after {got!r}")
            got += d
        s.close()
        self.assertRegex(got, rb"(?s)^HTTP/1.1 204 .*?\r\n\r\nHTTP/1.1 200 .*?\r\n\r\nhelloworldHTTP/1.1 204 ")


@unittest.skipUnless(CURL, "curl not installed")
class ConnectTest(EgressTestCase):
    def setUp(self):
        self.origin = self.start_origin("o1")
        self.echo = EchoServer()
        self.addCleanup(self.echo.close)

    def test_connect_tunnel_with_http_client_and_curl(self):
        self.start_egress(ORIGIN_RULE, port=self.origin.port)
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)
        conn.set_tunnel("origin.test", self.origin.port, headers={"Proxy-Authorization": basic()})
        conn.request("GET", "/id")
        r = conn.getresponse()
        self.assertEqual((r.status, r.read()), (200, b"o1"))
        conn.close()
        rc, code, body = curl("-p", "-x", f"http://127.0.0.1:{self.http_port}", "-U", f"billing:{TOKEN}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertEqual((code, body), (200, b"o1"))
        conn = http.client.HTTPConnection(LOCALHOST, self.http_port, timeout=10)
        conn.set_tunnel("other.test", 443, headers={"Proxy-Authorization": basic()})
        with self.assertRaises(OSError) as cm:
            conn.request("GET", "/")
        self.assertIn("403", str(cm.exception))

    def connect(self, host, port, auth=None):
        return connect_tunnel(self.http_port, host, port, auth or basic())

    def test_sni_must_match_the_connect_host(self):
        mappings = """
  - name: tls-only
    sources: [billing]
    destinations: [tls.test, 127.0.0.1/32]
    protocols: [https]
    ports: ["${port}"]
    sni_check: true
"""
        self.start_egress(mappings, port=self.echo.port)
        s, head = self.connect("tls.test", self.echo.port)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        hello = client_hello("tls.test")
        s.sendall(hello)
        self.assertEqual(recv_exact(s, len(hello)), hello)  # echoed back through the tunnel
        s.close()
        # Domain fronting: CONNECT to an allowed name, TLS for another.
        s, head = self.connect("tls.test", self.echo.port)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        s.sendall(client_hello("blocked.example"))
        self.assertTrue(closed_by_peer(s), "tunnel with a mismatching SNI stayed open")
        # An https-only mapping refuses a tunnel that does not start with TLS.
        s, head = self.connect("tls.test", self.echo.port)
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(closed_by_peer(s))
        self.assertEqual(len(self.echo.first), 1)  # only the first tunnel's bytes reached the server

    def test_revoked_mapping_closes_open_tunnels(self):
        p = self.start_egress(ORIGIN_RULE, port=self.echo.port)
        s, head = self.connect("origin.test", self.echo.port)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        ks, _ = socks5_handshake(self.socks_port, "billing", TOKEN)
        code, _, _ = socks5_request(ks, 1, "origin.test", self.echo.port)
        self.assertEqual(code, 0)
        ks.sendall(b"pong")
        self.assertEqual(recv_exact(ks, 4), b"pong")
        self.assertEqual(p.metric("marchproxy_egress_tunnels_open"), 2)
        # Same services, the mapping now allows another port only.
        p.reload(self.config(ORIGIN_RULE, port=self.echo.port + 1))
        p.wait_log("egress config reloaded")
        self.assertTrue(closed_by_peer(s), "CONNECT tunnel still open after its mapping was revoked")
        self.assertTrue(closed_by_peer(ks), "SOCKS5 tunnel still open after its mapping was revoked")
        wait_until(lambda: p.metric("marchproxy_egress_tunnels_open") == 0, message="tunnels closed")
        self.assertEqual(p.metric("marchproxy_egress_tunnels_revoked_total"), 2)

    def test_revoke_grace_per_mapping_and_a_reload_that_allows_again(self):
        rule = ORIGIN_RULE + "    revoke_grace: ${grace}\n"
        p = self.start_egress(rule, port=self.echo.port, grace="1h")
        s, head = self.connect("origin.test", self.echo.port)
        self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
        s.sendall(b"one")
        self.assertEqual(recv_exact(s, 3), b"one")
        # Revoked with the mapping's hour of grace: the tunnel keeps working meanwhile.
        p.reload(self.config(rule, port=self.echo.port + 1, grace="1h"))
        p.wait_log("closing it in 3600000 ms")
        s.sendall(b"two")
        self.assertEqual(recv_exact(s, 3), b"two")
        # Allowed again before the grace ran out: it stays open, and its old deadline is void.
        p.reload(self.config(rule, port=self.echo.port, grace="1h"))
        p.wait_log("again; it stays open")
        s.sendall(b"three")
        self.assertEqual(recv_exact(s, 5), b"three")
        # Revoked once more, now with no grace on the mapping: closed at once.
        p.reload(self.config(rule, port=self.echo.port + 1, grace="0s"))
        self.assertTrue(closed_by_peer(s), "tunnel still open after a revocation without grace")
        wait_until(lambda: p.metric("marchproxy_egress_tunnels_open") == 0, message="tunnel closed")


@unittest.skipUnless(CURL, "curl not installed")
class CollectionTest(EgressTestCase):
    RULE = """
  - name: payments-origin
    source_collections: [payments]
    destinations: [origin.test, 127.0.0.1/32]
    protocols: [http]
    ports: ["${port}"]
"""

    def test_a_mapping_from_a_collection_allows_its_members_only(self):
        origin = self.start_origin("o1")
        text = self.config(self.RULE, port=origin.port).replace(
            "  - name: billing\n", "  - name: billing\n    collection: payments\n")
        p = self.start_proxy(text, command="egress", expect_listeners=("http", "socks"))
        proxy = f"http://127.0.0.1:{p.ports['http']}"
        url = f"http://origin.test:{origin.port}/id"
        for _ in range(2):
            rc, code, body = curl("-x", proxy, "-U", f"billing:{TOKEN}", url)
            self.assertEqual((code, body), (200, b"o1"))
        rc, code, body = curl("-x", proxy, "-U", f"reports:{TOKEN}", url)
        self.assertEqual(code, 403, body)
        self.assertIn(b'for service "reports"', body)
        # The second identical request was decided from the worker's cache.
        self.assertGreaterEqual(p.metric("marchproxy_egress_decision_cache_lookups_total", result="hit"), 1)
        self.assertGreaterEqual(p.metric("marchproxy_egress_decision_cache_entries"), 2)


class Socks5Test(EgressTestCase):
    def setUp(self):
        self.origin = self.start_origin("o1")
        self.start_egress(ORIGIN_RULE + EVIL_RULE, port=self.origin.port)

    @unittest.skipUnless(CURL, "curl not installed")
    def test_curl_socks5_hostname(self):
        rc, code, body = curl("--socks5-hostname", f"billing:{TOKEN}@127.0.0.1:{self.socks_port}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertEqual((rc, code, body), (0, 200, b"o1"))
        token = jwt(claims())
        rc, code, body = curl("--socks5-hostname", f"billing:{token}@127.0.0.1:{self.socks_port}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertEqual((rc, code, body), (0, 200, b"o1"))
        rc, code, body = curl("--socks5-hostname", f"billing:wrong@127.0.0.1:{self.socks_port}",
                              f"http://origin.test:{self.origin.port}/id")
        self.assertNotEqual(rc, 0)
        self.assertEqual(self.origin.count, 2)

    def test_reply_codes(self):
        s, auth = socks5_handshake(self.socks_port, "billing", "wrong")
        self.assertEqual(auth, b"\x01\x01")
        s.close()
        # No username/password offered: "no acceptable methods".
        s = socket.create_connection((LOCALHOST, self.socks_port), timeout=5)
        s.sendall(b"\x05\x01\x00")
        self.assertEqual(s.recv(2), b"\x05\xff")
        s.close()
        s, auth = socks5_handshake(self.socks_port, "billing", TOKEN)
        self.assertEqual(auth, b"\x01\x00")
        code, _, _ = socks5_request(s, 1, "other.test", 443)
        self.assertEqual(code, 2)  # not allowed by ruleset
        s.close()
        s, _ = socks5_handshake(self.socks_port, "billing", TOKEN)
        code, _, _ = socks5_request(s, 1, "evil.test", 443)
        self.assertEqual(code, 2)  # resolves into a forbidden network
        s.close()
        s, _ = socks5_handshake(self.socks_port, "billing", TOKEN)
        code, _, _ = socks5_request(s, 2, "origin.test", self.origin.port)
        self.assertEqual(code, 7)  # BIND: command not supported
        s.close()
        s, _ = socks5_handshake(self.socks_port, "billing", TOKEN)
        code, _, _ = socks5_request(s, 1, "127.0.0.1", self.origin.port)
        self.assertEqual(code, 0)  # IPv4 address type, allowed by the CIDR
        s.sendall(b"GET /id HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        self.assertTrue(data.startswith(b"HTTP/1.1 200") and data.endswith(b"o1"), data)

    def test_udp_associate_echo(self):
        udp_echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp_echo.bind((LOCALHOST, self.origin.port))  # the mapping's port; TCP and UDP ports are separate
        self.addCleanup(udp_echo.close)

        def serve():
            while True:
                try:
                    d, a = udp_echo.recvfrom(65536)
                except OSError:
                    return
                udp_echo.sendto(b"echo:" + d, a)
        threading.Thread(target=serve, daemon=True).start()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.bind((LOCALHOST, 0))
        client.settimeout(5)
        self.addCleanup(client.close)
        s, _ = socks5_handshake(self.socks_port, "billing", TOKEN)
        code, bhost, bport = socks5_request(s, 3, "0.0.0.0", 0)
        self.assertEqual(code, 0)
        header = b"\x00\x00\x00\x03" + bytes([len("origin.test")]) + b"origin.test" + struct.pack(">H", self.origin.port)
        client.sendto(header + b"hello", (bhost, bport))
        data, _ = client.recvfrom(65536)
        self.assertTrue(data.endswith(b"echo:hello"), data)
        self.assertEqual(data[3], 1)  # the reply says where it came from (IPv4)
        # A destination no rule allows: dropped.
        bad = b"\x00\x00\x00\x03" + bytes([len("other.test")]) + b"other.test" + struct.pack(">H", 53)
        client.sendto(bad + b"x", (bhost, bport))
        client.sendto(header + b"again", (bhost, bport))
        data, _ = client.recvfrom(65536)
        self.assertTrue(data.endswith(b"echo:again"), data)
        # Closing the control connection tears the association down.
        s.close()
        time.sleep(0.3)  # let the proxy see the close; the assertion below does not depend on timing
        client.settimeout(1)
        client.sendto(header + b"late", (bhost, bport))
        with self.assertRaises((socket.timeout, ConnectionRefusedError)):
            client.recvfrom(65536)


class CheckTest(ProxyTestCase):
    def run_check(self, text):
        path = os.path.join(self.tmpdir(), "egress.yaml")
        with open(path, "w") as f:
            f.write(text)
        from harness import find_binary
        p = subprocess.run([find_binary(), "check", path], capture_output=True, text=True, timeout=30)
        return p.returncode, p.stdout

    def test_example_passes(self):
        from harness import SOURCE_DIR, find_binary
        p = subprocess.run([find_binary(), "check", os.path.join(SOURCE_DIR, "examples", "egress.yaml")],
                           capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn("egress config", p.stdout)

    def test_errors_have_lines_and_fields(self):
        rc, out = self.run_check("""schema: 1
kind: egress
listeners:
  - {name: http, port: 0}
mappings:
  - name: m
    sources: [ghost]
    destinations: ["10.1.2.3/8"]
    protocols: [htp]
    ports: ["0"]
""")
        self.assertEqual(rc, 1, out)
        self.assertIn("line 8: mappings[0].destinations[0]", out)
        self.assertIn("did you mean 10.0.0.0/8", out)
        self.assertIn("line 9: mappings[0].protocols[0]", out)
        self.assertIn("line 10: mappings[0].ports[0]", out)

    def test_unknown_collection_and_missing_sources(self):
        rc, out = self.run_check("""schema: 1
kind: egress
listeners:
  - {name: http, port: 0}
services:
  - {name: billing, collection: payments}
mappings:
  - name: m
    source_collections: [payment]
    destinations: [api.example.com]
    protocols: [https]
    ports: ["443"]
""")
        self.assertEqual(rc, 1, out)
        self.assertIn('line 9: mappings[0].source_collections[0]: no service is in collection "payment"', out)
        rc, out = self.run_check("""schema: 1
kind: egress
listeners:
  - {name: http, port: 0}
mappings:
  - name: n
    destinations: [api.example.com]
    protocols: [https]
    ports: ["443"]
""")
        self.assertEqual(rc, 1, out)
        self.assertIn('line 6: mappings[0]: missing required field "sources"', out)


if __name__ == "__main__":
    main()
