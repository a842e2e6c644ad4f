"""The ingress's own TLS stream (src/proxy/tls/stream.cc) at its edges: a record split across TCP
segments, a peer that closes in the middle of a record, close_notify both ways, the TLS 1.3 ticket
the proxy holds back after the handshake (sent with the first response, or before it waits for an
idle client), a 1 MiB response through a slow reader, a reader that stops reading (the write timeout ends it, the worker keeps
serving), and KeyUpdate from the client (openssl s_client's K/k commands)."""
import queue
import shutil
import socket
import ssl
import subprocess
import threading
import time
import unittest

from harness import LOCALHOST, ProxyTestCase, pattern_bytes, render
from tls_certs import Pki
from tls_client import TlsConn, client_context

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
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /hello }
        direct_response: { status: 200, body: "hello\\n" }
      - match: { prefix: / }
        forward: { cluster: app }
clusters:
  - name: app
    endpoints: [ "${ORIGIN}" ]
timeouts: { header_read: 5s, idle: 30s, body_read: 1s, drain: 1s }
"""

HELLO = b"GET /hello HTTP/1.1\r\nHost: stream.test\r\n\r\n"


class RawTls:
    """TLS over memory BIOs, so that the test decides which ciphertext bytes go out and when."""

    def __init__(self, port, ctx, session=None):
        self.sock = socket.create_connection((LOCALHOST, port), timeout=10)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.inc, self.out, server_hostname="stream.test", session=session)
        while True:
            try:
                self.obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.flush()
                self.feed()
        self.flush()

    def flush(self):
        data = self.out.read()
        if data:
            self.sock.sendall(data)

    def feed(self):
        data = self.sock.recv(65536)
        if not data:
            self.inc.write_eof()
        self.inc.write(data)
        return data

    def seal(self, plain):
        self.obj.write(plain)
        return self.out.read()

    def read_plain(self, until):
        """Plaintext until `until` is in it (or close_notify / EOF): returns (bytes, how it ended)."""
        got = b""
        while until not in got:
            try:
                plain = self.obj.read(65536)
                if not plain:  # Python's answer to a close_notify it has not answered yet
                    return got, "close_notify"
                got += plain
                continue
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLZeroReturnError:
                return got, "close_notify"
            except ssl.SSLEOFError:
                return got, "eof"
            except ssl.SSLError:
                return got, "alert"  # e.g. decode_error for a record cut short
            if not self.feed():
                self.inc.write_eof()
        return got, "data"

    def close(self):
        self.sock.close()


class TlsStream(ProxyTestCase):
    def setUp(self):
        self.origin = self.start_origin("app")
        self.pki = Pki(self.tmpdir())
        cert, key = self.pki.issue("stream.test", sans=["DNS:stream.test"])
        self.proxy = self.start_proxy(render(CONFIG, CERT=cert, KEY=key, ORIGIN=self.origin.address),
                                      expect_listeners=("https",))
        self.port = self.proxy.ports["https"]
        self.ctx = client_context(ca=self.pki.cert, min_version=ssl.TLSVersion.TLSv1_3)

    def small_window_get(self, path):
        """A TLS connection with an 8 KiB receive buffer, a GET sent on it: the proxy's writes fill it fast."""
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        raw.settimeout(10)
        raw.connect((LOCALHOST, self.port))
        s = self.ctx.wrap_socket(raw, server_hostname="stream.test")
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: stream.test\r\n\r\n".encode())
        return s

    def assert_serves(self):
        with TlsConn(self.port, self.ctx, sni="stream.test") as c:
            self.assertEqual(c.request(path="/hello")[2], b"hello\n")

    def test_record_split_across_segments_and_two_records_in_one(self):
        t = RawTls(self.port, self.ctx)
        try:
            record = t.seal(HELLO)
            for piece in (record[:3], record[3:20], record[20:]):  # inside the header, then the body
                t.sock.sendall(piece)
                time.sleep(0.2)
            got, how = t.read_plain(b"hello\n")
            self.assertEqual(how, "data")
            self.assertTrue(got.startswith(b"HTTP/1.1 200"), got)
            # Two requests, two records, one segment: both answered.
            t.sock.sendall(t.seal(HELLO) + t.seal(HELLO))
            got, _ = t.read_plain(b"hello\n")
            if got.count(b"hello\n") < 2:
                more, _ = t.read_plain(b"hello\n")
                got += more
            self.assertEqual(got.count(b"HTTP/1.1 200"), 2, got)
        finally:
            t.close()

    def test_peer_closing_in_the_middle_of_a_record_is_closed_without_an_answer(self):
        t = RawTls(self.port, self.ctx)
        try:
            record = t.seal(HELLO)
            t.sock.sendall(record[: len(record) // 2])
            t.sock.shutdown(socket.SHUT_WR)
            got, how = t.read_plain(b"hello\n")
            self.assertEqual(got, b"")  # no response to half a request
            self.assertIn(how, ("eof", "close_notify", "alert"))
        finally:
            t.close()
        self.assert_serves()

    def test_close_notify_sent_on_close_and_answered(self):
        # The proxy closes (Connection: close): its close_notify ends the stream, not a bare FIN.
        t = RawTls(self.port, self.ctx)
        try:
            t.sock.sendall(t.seal(HELLO.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")))
            got, how = t.read_plain(b"never")
            self.assertIn(b"hello\n", got)
            self.assertEqual(how, "close_notify")
        finally:
            t.close()
        # The client closes an idle keep-alive connection with close_notify: the proxy answers with its own.
        t = RawTls(self.port, self.ctx)
        try:
            t.sock.sendall(t.seal(HELLO))
            t.read_plain(b"hello\n")
            try:
                t.obj.unwrap()
            except ssl.SSLWantReadError:
                pass
            t.flush()
            while True:  # unwrap() completes once the proxy's close_notify is in
                self.assertTrue(t.feed(), "the proxy closed without close_notify")
                try:
                    t.obj.unwrap()
                    break
                except ssl.SSLWantReadError:
                    pass
        finally:
            t.close()

    def test_connection_close_responses_end_with_close_notify_and_each_carries_a_ticket(self):
        # Each connection: one request with Connection: close, sent with the client's Finished (as
        # wrk does); the answer, a fresh ticket and close_notify come back, and the next connection
        # resumes with that ticket. Local (direct_response) and forwarded responses, TLS 1.3.
        session = None
        for i, path in enumerate(["/hello", "/echo", "/hello", "/echo", "/hello"]):
            t = RawTls(self.port, self.ctx, session=session)
            try:
                if i > 0:
                    self.assertTrue(t.obj.session_reused, f"connection {i + 1} did not resume")
                t.sock.sendall(t.seal(f"GET {path} HTTP/1.1\r\nHost: stream.test\r\nConnection: close\r\n\r\n".encode()))
                got, how = t.read_plain(b"never")
                self.assertTrue(got.startswith(b"HTTP/1.1 200"), got)
                self.assertIn(b"connection: close", got.lower())
                self.assertEqual(how, "close_notify")
                session = t.obj.session
                self.assertTrue(session.has_ticket, f"no ticket on connection {i + 1}")
                self.assertEqual(t.sock.recv(100), b"")  # the proxy closed after its close_notify
            finally:
                t.close()
        self.assert_serves()

    def test_ticket_reaches_a_client_that_sends_nothing(self):
        # The ticket is held back for the first response, but not across a wait for the client.
        t = RawTls(self.port, self.ctx)
        try:
            t.sock.settimeout(0.5)
            ticket_seen = False
            try:
                while not ticket_seen:
                    t.feed()
                    try:
                        t.obj.read(1)
                    except ssl.SSLWantReadError:
                        pass
                    ticket_seen = t.obj.session is not None and t.obj.session.has_ticket
            except socket.timeout:
                pass
            self.assertTrue(ticket_seen, "no session ticket while the connection was idle")
            session = t.obj.session
        finally:
            t.close()
        t = RawTls(self.port, self.ctx, session=session)
        try:
            self.assertTrue(t.obj.session_reused)
            t.sock.sendall(t.seal(HELLO))
            got, how = t.read_plain(b"hello\n")
            self.assertEqual(how, "data")
        finally:
            t.close()

    def test_one_mib_response_through_a_slow_reader(self):
        n = 1 << 20
        with self.small_window_get(f"/bytes/{n}") as s:
            data = b""
            while b"\r\n\r\n" not in data:
                data += s.recv(4096)
            head, body = data.split(b"\r\n\r\n", 1)
            self.assertTrue(head.startswith(b"HTTP/1.1 200"), head)
            reads = 0
            while len(body) < n:
                chunk = s.recv(4096)
                self.assertTrue(chunk, f"closed after {len(body)} bytes")
                body += chunk
                reads += 1
                if reads % 8 == 0:
                    time.sleep(0.01)  # slower than the proxy writes: its writes wait for room
            self.assertEqual(body, pattern_bytes(n))
            # Still usable afterwards (keep-alive).
            s.sendall(HELLO)
            rest = b""
            while b"hello\n" not in rest:
                rest += s.recv(4096)

    def test_reader_that_stops_reading_is_cut_off_by_the_write_timeout(self):
        n = 64 << 20
        with self.small_window_get(f"/bytes/{n}") as s:
            time.sleep(0.5)
            self.assert_serves()  # the one worker is not stuck in the blocked write
            time.sleep(2.5)       # well past timeouts.body_read (1s) between writes
            got = 0
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
            except (ssl.SSLError, ConnectionResetError):
                pass
            self.assertLess(got, n)  # the proxy gave up on this client
        self.assert_serves()

    @unittest.skipUnless(shutil.which("openssl"), "openssl CLI not installed")
    def test_key_update_from_the_client(self):
        p = subprocess.Popen(["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}", "-servername", "stream.test",
                              "-tls1_3", "-crlf", "-CAfile", self.pki.cert],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        lines = queue.Queue()
        threading.Thread(target=lambda: [lines.put(x) for x in iter(p.stdout.readline, b"")], daemon=True).start()

        def wait_hello(count):
            seen, deadline = 0, time.monotonic() + 10
            while seen < count:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
                if line.strip() == b"hello":
                    seen += 1

        try:
            request = b"GET /hello HTTP/1.1\nHost: stream.test\n\n"
            p.stdin.write(request)
            p.stdin.flush()
            wait_hello(1)
            for command in (b"K\n", b"k\n"):  # KeyUpdate, with and without asking for the proxy's
                p.stdin.write(command)
                p.stdin.flush()
                time.sleep(0.2)
                p.stdin.write(request)
                p.stdin.flush()
                wait_hello(1)
        finally:
            p.stdin.close()
            p.wait(timeout=10)
        self.assert_serves()


if __name__ == "__main__":
    unittest.main()
