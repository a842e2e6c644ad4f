"""Streaming: big bodies both ways (Content-Length and chunked) keep their bytes and the proxy's
peak RSS stays bounded, also when one side stops reading for a while (back-pressure).

MARCHPROXY_ITEST_BIG sets the big size in bytes (default 1 GiB);
MARCHPROXY_ITEST_RSS_LIMIT_MIB the peak-RSS bound (default 100; raise it for sanitizer builds)."""
import hashlib
import os
import threading
import time
import unittest

from harness import ProxyTestCase, Conn, render, pattern_bytes, pattern_chunks, pattern_sha256

BIG = int(os.environ.get("MARCHPROXY_ITEST_BIG", str(1 << 30)))
RSS_LIMIT_KIB = int(os.environ.get("MARCHPROXY_ITEST_RSS_LIMIT_MIB", "100")) * 1024

STREAM = """
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
    timeouts: { connect: 1s, response: 60s }
limits: { max_body_bytes: 0 }
timeouts: { header_read: 5s, idle: 30s, body_read: 30s, drain: 1s }
"""


class StreamingTest(ProxyTestCase):
    def setUp(self):
        self.o = self.start_origin("O")
        self.p = self.start_proxy(render(STREAM, O=self.o.address))
        pattern_sha256(BIG)  # warm the cache outside the transfers

    def assertRssBounded(self, what):
        hwm = self.p.vm_hwm_kib()
        self.assertLess(hwm, RSS_LIMIT_KIB,
                        f"proxy peak RSS {hwm // 1024} MiB after {what} (limit {RSS_LIMIT_KIB // 1024} MiB)")

    def upload(self, path, chunked, size=BIG, stall_after=None):
        with Conn(self.p.port, timeout=60) as c:
            if chunked:
                c.send(f"POST {path} HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n")
                for ch in pattern_chunks(size, chunk=(1 << 20) - 3):
                    c.sock.sendall(b"%x\r\n" % len(ch))
                    c.sock.sendall(ch)
                    c.sock.sendall(b"\r\n")
                c.sock.sendall(b"0\r\n\r\n")
            else:
                c.send(f"POST {path} HTTP/1.1\r\nHost: test.local\r\nContent-Length: {size}\r\n\r\n")
                for ch in pattern_chunks(size):
                    c.sock.sendall(ch)
            r = c.read_response()
        self.assertStatus(r, 200)
        got = r.json()
        self.assertEqual(got["length"], size)
        self.assertEqual(got["sha256"], pattern_sha256(size))

    def download(self, path, size=BIG, pause_after=None):
        h = hashlib.sha256()
        n = [0]
        paused = [False]

        def sink(d):
            h.update(d)
            n[0] += len(d)
            if pause_after is not None and not paused[0] and n[0] >= pause_after:
                paused[0] = True
                time.sleep(3)  # the origin keeps writing; the proxy must stop reading it
                self.assertRssBounded("a stalled download")

        with Conn(self.p.port, timeout=60) as c:
            c.send(f"GET {path} HTTP/1.1\r\nHost: test.local\r\n\r\n")
            r = c.read_response(sink=sink)
        self.assertStatus(r, 200)
        self.assertEqual(n[0], size)
        self.assertEqual(h.hexdigest(), pattern_sha256(size))
        return r

    def test_upload_content_length(self):
        self.upload("/sink", chunked=False)
        self.assertRssBounded(f"a {BIG >> 20} MiB Content-Length upload")

    def test_upload_chunked(self):
        self.upload("/sink", chunked=True)
        self.assertRssBounded(f"a {BIG >> 20} MiB chunked upload")

    def test_download_content_length(self):
        r = self.download(f"/bytes/{BIG}")
        self.assertEqual(r.header("content-length"), str(BIG))
        self.assertRssBounded(f"a {BIG >> 20} MiB download")

    def test_download_chunked(self):
        size = min(BIG, 256 << 20)
        self.download(f"/chunked/{size}", size=size)
        self.assertRssBounded(f"a {size >> 20} MiB chunked download")

    def test_slow_reader_backpressure(self):
        size = min(BIG, 512 << 20)
        self.download(f"/bytes/{size}", size=size, pause_after=1 << 20)

    def test_slow_origin_reader_backpressure(self):
        # The origin waits 3 s before reading the body: the proxy must not buffer the upload.
        size = min(BIG, 512 << 20)
        result = {}

        def check_midway():
            time.sleep(2.5)
            result["hwm"] = self.p.vm_hwm_kib()
        t = threading.Thread(target=check_midway, daemon=True)
        t.start()
        self.upload("/sink?pause_ms=3000", chunked=False, size=size)
        t.join()
        self.assertLess(result["hwm"], RSS_LIMIT_KIB,
                        f"proxy peak RSS {result['hwm'] // 1024} MiB while the origin was not reading")
        self.assertRssBounded("an upload to a slow reader")

    def test_body_in_same_write_as_head(self):
        # Head and a body bigger than one read buffer arriving together (the usual case for a
        # client that writes a whole request at once), then sent separately.
        for size in (8 << 10, 64 << 10, 1 << 20):
            body = bytes(range(256)) * (size // 256)
            for together in (True, False):
                with self.subTest(size=size, together=together), Conn(self.p.port) as c:
                    head = f"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode()
                    if together:
                        c.send(head + body)
                    else:
                        c.send(head)
                        c.send(body)
                    r = c.read_response()
                    self.assertStatus(r, 200)
                    self.assertEqual(r.json()["sha256"], hashlib.sha256(body).hexdigest())

    def test_pipelined_responses_to_a_stalled_reader(self):
        # 64 pipelined GETs while the client reads nothing for a second: the proxy's sends to the
        # client stop part-way once the socket buffers are full (a partial or refused non-blocking
        # send, finished by an asynchronous write) and every response still arrives whole, in order.
        n, size = 64, 48 << 10
        body = pattern_bytes(size)
        with Conn(self.p.port, timeout=30) as c:
            c.send("".join(f"GET /bytes/{size}?i={i} HTTP/1.1\r\nHost: t\r\n\r\n" for i in range(n)))
            time.sleep(1)
            for i in range(n):
                r = c.read_response()
                self.assertStatus(r, 200)
                self.assertEqual(r.header("content-length"), str(size))
                self.assertEqual(len(r.body), size, f"response {i}")
                self.assertTrue(r.body == body, f"response {i}: body differs")

    def test_many_medium_bodies_keepalive(self):
        # 64 x 1 MiB both ways on one client connection: framing stays in step across requests.
        with Conn(self.p.port, timeout=30) as c:
            for i in range(32):
                size = (1 << 20) + i * 7
                body = b"".join(pattern_chunks(size, offset=i))
                c.send(f"POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode() + body)
                r = c.read_response()
                self.assertStatus(r, 200)
                self.assertEqual(r.json()["sha256"], hashlib.sha256(body).hexdigest())
                r = c.request("GET", f"/bytes/{size}")
                self.assertStatus(r, 200)
                self.assertEqual(hashlib.sha256(r.body).hexdigest(), pattern_sha256(size))
        self.assertRssBounded("64 medium bodies")


if __name__ == "__main__":
    unittest.main(verbosity=2)
