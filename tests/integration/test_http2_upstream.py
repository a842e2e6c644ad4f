"""HTTP/2 to upstreams (clusters[].protocol: http2, docs/http2.md "To upstreams"): a real HTTP/2
server (Debian python3-h2, h2c prior knowledge) behind the proxy, HTTP/1.1 clients (raw sockets)
and HTTP/2 clients (curl --http2-prior-knowledge) in front: what the upstream sees (no hop-by-hop
fields, :authority from Host, forwarding headers, te: trailers only when asked), response trailers
(HTTP/2 trailers; HTTP/1.1 chunked trailers only with TE: trailers), bodies both ways, many requests
sharing one upstream connection."""
import hashlib
import json
import socket
import subprocess
import sys
import threading
import unittest

try:
    import h2.config
    import h2.connection
    import h2.events
except ImportError:  # Debian's package under a non-Debian python3 (pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    import h2.config
    import h2.connection
    import h2.events

from harness import ProxyTestCase, Conn, render, chunked_encode, read_to_eof

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: http, address: 127.0.0.1, port: 0, h2c: true }
virtual_hosts:
  - name: app
    domains: ["app.test"]
    routes:
      - match: { prefix: / }
        forward: { cluster: up }
clusters:
  - name: up
    protocol: http2
    endpoints: [ "127.0.0.1:${UP}" ]
"""


class H2Origin:
    """An h2c server: GET /info answers JSON with the request's fields; /trailers answers a body
    and trailers; POST /sha answers the sha256 and length of the body; /big answers n bytes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.lock = threading.Lock()
        threading.Thread(target=self.accept, daemon=True).start()

    def close(self):
        self.sock.close()

    def accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        c.sendall(conn.data_to_send())
        reqs = {}
        pending = {}  # stream -> remaining response bytes waiting for window
        try:
            while True:
                data = c.recv(65536)
                if not data:
                    return
                for ev in conn.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        reqs[ev.stream_id] = {"headers": ev.headers, "body": b""}
                    elif isinstance(ev, h2.events.DataReceived):
                        reqs[ev.stream_id]["body"] += ev.data
                        conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        self.respond(conn, ev.stream_id, reqs.pop(ev.stream_id), pending)
                    elif isinstance(ev, h2.events.WindowUpdated):
                        pass
                self.flush(conn, pending)
                c.sendall(conn.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            return
        finally:
            c.close()

    def respond(self, conn, sid, req, pending):
        h = dict(req["headers"])
        path = h[":path"]
        if path.startswith("/info"):
            body = json.dumps({"headers": req["headers"]}).encode()
            conn.send_headers(sid, [(":status", "200"), ("content-type", "application/json"),
                                    ("content-length", str(len(body)))])
            pending[sid] = [body, None]
        elif path.startswith("/trailers"):
            conn.send_headers(sid, [(":status", "200"), ("content-type", "text/plain")])
            pending[sid] = [b"body-before-trailers", [("x-checksum", "abc123"), ("x-status", "done")]]
        elif path.startswith("/sha"):
            body = json.dumps({"sha": hashlib.sha256(req["body"]).hexdigest(), "len": len(req["body"])}).encode()
            conn.send_headers(sid, [(":status", "201"), ("content-length", str(len(body)))])
            pending[sid] = [body, None]
        elif path.startswith("/big"):
            n = int(path.split("=")[1])
            conn.send_headers(sid, [(":status", "200")])
            pending[sid] = [bytes(i % 251 for i in range(n)), None]
        else:
            conn.send_headers(sid, [(":status", "404"), ("content-length", "0")], end_stream=True)

    def flush(self, conn, pending):
        for sid in list(pending):
            body, trailers = pending[sid]
            while body:
                n = min(len(body), conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if n <= 0:
                    break
                conn.send_data(sid, body[:n])
                body = body[n:]
            pending[sid][0] = body
            if not body:
                if trailers:
                    conn.send_headers(sid, trailers, end_stream=True)
                else:
                    conn.end_stream(sid)
                del pending[sid]


class Http2Upstream(ProxyTestCase):
    def setUp(self):
        self.origin = H2Origin()
        self.addCleanup(self.origin.close)
        self.proxy = self.start_proxy(render(CONFIG, UP=str(self.origin.port)))
        self.port = self.proxy.ports["http"]

    def test_http1_request_fields_reach_the_upstream_as_http2(self):
        with Conn(self.port) as c:
            r = c.request("GET", "/info?q=1", host="app.test",
                          headers={"X-Custom": "v", "Connection": "keep-alive, x-hop", "X-Hop": "1",
                                   "Keep-Alive": "timeout=5", "TE": "gzip"})
        self.assertEqual(r.status, 200, r)
        got = dict((k, v) for k, v in r.json()["headers"])
        self.assertEqual(got[":authority"], "app.test")
        self.assertEqual(got[":path"], "/info?q=1")
        self.assertEqual(got[":scheme"], "http")
        self.assertEqual(got["x-custom"], "v")
        self.assertEqual(got["x-forwarded-for"], "127.0.0.1")
        for hop in ("connection", "keep-alive", "x-hop", "te", "host", "transfer-encoding"):
            self.assertNotIn(hop, got)

    def test_http1_trailers_only_when_asked(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"GET /trailers HTTP/1.1\r\nHost: app.test\r\nTE: trailers\r\nConnection: close\r\n\r\n")
            raw = read_to_eof(s)
        head, _, body = raw.partition(b"\r\n\r\n")
        self.assertIn(b"transfer-encoding: chunked", head.lower())
        self.assertIn(b"body-before-trailers", body)
        self.assertTrue(body.endswith(b"0\r\nx-checksum: abc123\r\nx-status: done\r\n\r\n"), body)
        # The upstream was told the client takes trailers.
        with Conn(self.port) as c:
            r = c.request("GET", "/info", host="app.test", headers={"TE": "trailers"})
        self.assertIn(["te", "trailers"], r.json()["headers"])
        # Without TE: trailers, the body arrives and the trailers are dropped.
        with Conn(self.port) as c:
            r = c.request("GET", "/trailers", host="app.test")
        self.assertEqual(r.body, b"body-before-trailers")
        self.assertIsNone(r.header("x-checksum"))

    def test_http1_bodies_both_ways(self):
        body = bytes(i % 256 for i in range(3 << 20))
        with Conn(self.port, timeout=30) as c:
            r = c.request("POST", "/sha", host="app.test", body=body)
            self.assertEqual(r.status, 201, r)
            self.assertEqual(r.json(), {"sha": hashlib.sha256(body).hexdigest(), "len": len(body)})
            # chunked request body, same connection
            c.send(b"POST /sha HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n" +
                   chunked_encode([body[:100000], body[100000:1000000]]))
            r = c.read_response()
            self.assertEqual(r.json(), {"sha": hashlib.sha256(body[:1000000]).hexdigest(), "len": 1000000})
            r = c.request("GET", "/big?n=5000000", host="app.test")
            self.assertEqual(r.body, bytes(i % 251 for i in range(5000000)))

    def test_many_requests_share_one_upstream_connection(self):
        for _ in range(20):
            with Conn(self.port) as c:
                self.assertEqual(c.request("GET", "/info", host="app.test").status, 200)
        self.assertEqual(self.origin.connections, 1)

    def test_http2_client_gets_trailers(self):
        r = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-v", "-H", "Host: app.test",
                            f"http://127.0.0.1:{self.port}/trailers"], capture_output=True, timeout=20)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stdout, b"body-before-trailers")
        err = r.stderr.decode(errors="replace").lower()
        self.assertIn("< x-checksum: abc123", err)  # curl -v shows trailers as received headers
        r = subprocess.run(["curl", "-s", "--http2-prior-knowledge", "-H", "Host: app.test", "--data-binary",
                            "@-", f"http://127.0.0.1:{self.port}/sha"], input=b"x" * 200000,
                           capture_output=True, timeout=20)
        self.assertEqual(json.loads(r.stdout), {"sha": hashlib.sha256(b"x" * 200000).hexdigest(), "len": 200000})


if __name__ == "__main__":
    unittest.main()
