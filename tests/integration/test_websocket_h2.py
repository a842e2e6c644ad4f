"""WebSocket over HTTP/2 (RFC 8441 extended CONNECT) through the ingress, docs/websocket.md: a
frame-level HTTP/2 client (h2_client.py) opens `:method CONNECT` + `:protocol websocket` streams
against a real python3-websockets echo server behind the proxy (which sees an HTTP/1.1 upgrade).
Checks SETTINGS_ENABLE_CONNECT_PROTOCOL, the 200, masked frames echoed both ways with flow control,
the route rules (403), an upstream refusal relayed, close from either side, concurrency with normal
requests on one connection, the idle timeout, other :protocol values, and TLS with ALPN h2."""
import base64
import os
import ssl
import threading
import time
import unittest

from harness import ProxyTestCase, RawServer, render, wait_until
from h2_client import RawH2, hf
from tls_certs import Pki
import test_websocket as tw

SETTINGS_ENABLE_CONNECT_PROTOCOL = 0x8
NO_ERROR, CANCEL = 0x0, 0x8

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: h2c, address: 127.0.0.1, port: 0, h2c: true }
  - name: https
    address: 127.0.0.1
    port: 0
    tls:
      certificates: [ { cert: "${CERT}", key: "${KEY}" } ]
      alpn: [h2, http/1.1]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: nows
        match: { prefix: /nows }
        websocket: false
        forward: { cluster: ws }
      - name: idle
        match: { prefix: /idle }
        websocket_idle_timeout: 300ms
        forward: { cluster: ws }
      - name: tlsup
        match: { prefix: /tlsup }
        forward: { cluster: wss }
      - name: raw
        match: { prefix: /raw }
        forward: { cluster: raw }
      - name: plain
        match: { prefix: /plain }
        forward: { cluster: origin }
      - name: ws
        match: { prefix: / }
        forward: { cluster: ws }
clusters:
  - name: ws
    endpoints: [ "${WS}" ]
  - name: origin
    endpoints: [ "${ORIGIN}" ]
  - name: raw
    endpoints: [ "${RAW}" ]
  - name: wss
    endpoints: [ "${WSS}" ]
    tls: { ca: "${CA}" }
timeouts: { drain: 1s }
"""


FLOOD = bytes(range(256)) * 4096 * 32  # 32 MiB


def raw_upgrade_upstream(heads, state):
    """An HTTP/1.1 upstream at the byte level: records each request head; /raw/other switches to
    another protocol; /raw/flood sends FLOOD as fast as it is taken (counting in state["sent"]) and
    closes; /raw/sink never reads (state["release"] ends it); otherwise 101 websocket with bytes
    right behind the head ("early"), then echoes whatever comes until the proxy closes its side."""
    def handler(c):
        got = b""
        while b"\r\n\r\n" not in got:
            d = c.recv(4096)
            if not d:
                return
            got += d
        head, rest = got.split(b"\r\n\r\n", 1)
        heads.append(head.decode())
        if head.split(b" ")[1].startswith(b"/raw/other"):
            c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n")
            return
        ok = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        if head.split(b" ")[1].startswith(b"/raw/flood"):
            c.sendall(ok)
            view = memoryview(FLOOD)
            while state["sent"] < len(FLOOD):
                state["sent"] += c.send(view[state["sent"]:state["sent"] + 65536])
            c.close()
            return
        if head.split(b" ")[1].startswith(b"/raw/sink"):
            c.sendall(ok)
            state["release"].wait(60)
            return
        c.sendall(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                  b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                  b"Sec-WebSocket-Extensions: permessage-deflate\r\n\r\nearly")
        if rest:
            c.sendall(rest)
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.close()
    return handler


def ws_frame(payload, opcode=0x1):
    """One masked client frame (RFC 6455 §5.2)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i & 3] for i, b in enumerate(payload))


def parse_frames(buf):
    """Complete unmasked server frames in buf: ([(opcode, payload)], rest)."""
    out = []
    while len(buf) >= 2:
        n, off = buf[1] & 0x7F, 2
        if n == 126:
            if len(buf) < 4:
                break
            n, off = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, off = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < off + n:
            break
        out.append((buf[0] & 0x0F, buf[off:off + n]))
        buf = buf[off + n:]
    return out, buf


class H2WebSockets:
    """WebSocket streams on one RawH2 connection: per-stream state, DATA sent within the peer's
    flow-control windows, WINDOW_UPDATE for everything received."""

    def __init__(self, conn, scheme="http", frames=True):
        self.c = conn
        self.parse = frames  # False: the upstream is not speaking WebSocket, keep the raw bytes
        self.scheme = scheme
        self.server_settings = None
        self.conn_window = 65535
        self.initial_window = 65535
        self.windows = {}
        self.sent = {}
        self.st = {}

    def _stream(self, sid):
        return self.st.setdefault(sid, {"status": None, "headers": {}, "data": bytearray(), "end": False, "rst": None,
                                        "frames": []})

    def _on(self, f):
        sid = getattr(f, "stream_id", 0)
        if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
            self.server_settings = dict(f.settings)
            if hf.SettingsFrame.INITIAL_WINDOW_SIZE in f.settings:
                new = f.settings[hf.SettingsFrame.INITIAL_WINDOW_SIZE]
                for k in self.windows:
                    self.windows[k] += new - self.initial_window
                self.initial_window = new
        elif isinstance(f, hf.WindowUpdateFrame):
            if sid == 0:
                self.conn_window += f.window_increment
            elif sid in self.windows:
                self.windows[sid] += f.window_increment
        elif sid in self.st:
            s = self.st[sid]
            if isinstance(f, hf.HeadersFrame) and s["status"] is None:
                fields = dict(f.fields)
                s["status"] = int(fields.pop(":status"))
                s["headers"] = fields
            elif isinstance(f, hf.DataFrame):
                s["data"] += f.data
                frames, s["data"] = parse_frames(s["data"]) if s["status"] == 200 and self.parse else ([], s["data"])
                s["frames"] += frames
                if f.flow_controlled_length:
                    self.c.send(hf.WindowUpdateFrame(0, window_increment=f.flow_controlled_length),
                                hf.WindowUpdateFrame(sid, window_increment=f.flow_controlled_length))
            elif isinstance(f, hf.RstStreamFrame):
                s["rst"] = f.error_code
            if "END_STREAM" in getattr(f, "flags", ()):
                s["end"] = True

    def wait(self, cond, timeout=15.0, what="condition"):
        if cond():
            return
        self.c.pump(lambda f: self._on(f) or cond(), timeout)
        if not cond():
            raise AssertionError(f"timed out waiting for {what}: {self.st}")

    def open(self, path, extra=(), protocol="websocket"):
        sid = self.c.new_stream()
        self._stream(sid)
        self.windows[sid] = self.initial_window
        hdrs = [(":method", "CONNECT"), (":protocol", protocol), (":scheme", self.scheme),
                (":authority", "test.local"), (":path", path), ("sec-websocket-version", "13")] + list(extra)
        self.c.send(self.c.headers_frame(sid, hdrs, end_stream=False))
        return sid

    def get(self, path):
        sid = self.c.request(path)
        self._stream(sid)
        return sid

    def response(self, sid):
        s = self.st[sid]
        self.wait(lambda: s["status"] is not None or s["rst"] is not None, what=f"a response on {sid}")
        return s

    def send(self, sid, data, end_stream=False, window_timeout=15.0):
        while data:
            self.wait(lambda: self.conn_window > 0 and self.windows[sid] > 0, timeout=window_timeout,
                      what="send window")
            n = min(len(data), 16384, self.conn_window, self.windows[sid])
            self.c.data(sid, data[:n])
            self.sent[sid] = self.sent.get(sid, 0) + n
            self.conn_window -= n
            self.windows[sid] -= n
            data = data[n:]
        if end_stream:
            self.c.data(sid, b"", end_stream=True)

    def message(self, sid, count=1):
        s = self.st[sid]
        self.wait(lambda: len(s["frames"]) >= count, what=f"{count} frame(s) on stream {sid}")
        got, s["frames"] = s["frames"][:count], s["frames"][count:]
        return got


@unittest.skipIf(tw.websockets is None, "python3-websockets is not installed")
class WebSocketOverHttp2(ProxyTestCase):
    def setUp(self):
        self.ws = tw.EchoServer(subprotocols=["chat"])
        self.addCleanup(self.ws.close)
        self.origin = self.start_origin("origin")
        self.heads = []
        self.state = {"sent": 0, "release": threading.Event()}
        self.addCleanup(self.state["release"].set)
        self.raw = RawServer(raw_upgrade_upstream(self.heads, self.state))
        self.addCleanup(self.raw.close)
        self.pki = Pki(self.tmpdir())
        self.cert, self.key = self.pki.issue("localhost", sans=["DNS:localhost", "IP:127.0.0.1"])
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(self.cert, self.key)
        self.wss = tw.EchoServer(ssl_ctx=server_ctx)
        self.addCleanup(self.wss.close)
        self.p = self.start_proxy(render(CONFIG, CERT=self.cert, KEY=self.key, WS=self.ws.address,
                                         ORIGIN=self.origin.address, RAW=self.raw.address, WSS=self.wss.address,
                                         CA=self.pki.cert), expect_listeners=("h2c", "https"))

    def client(self, tls=False):
        if not tls:
            c = RawH2(self.p.ports["h2c"])
            self.addCleanup(c.close)
            return H2WebSockets(c)
        ctx = ssl.create_default_context(cafile=self.pki.cert)
        ctx.set_alpn_protocols(["h2"])
        c = RawH2(self.p.ports["https"], tls_ctx=ctx)
        self.addCleanup(c.close)
        return H2WebSockets(c, scheme="https")

    def echo(self, w, sid, payload, opcode=0x1):
        w.send(sid, ws_frame(payload, opcode))
        self.assertEqual(w.message(sid), [(opcode, payload)])

    def upgraded(self, path="/chat", tls=False):
        """A client with one WebSocket stream the upstream accepted: (client, stream id)."""
        w = self.client(tls)
        sid = w.open(path)
        self.assertEqual(w.response(sid)["status"], 200)
        return w, sid

    def assert_ended(self, w, sid):
        """The stream ends with END_STREAM (a reset may follow, never replace it)."""
        s = w.st[sid]
        w.wait(lambda: s["end"] or s["rst"] is not None, what="the end of the stream")
        self.assertTrue(s["end"], s)
        return s

    def test_settings_200_and_messages_echoed(self):
        w = self.client()
        w.wait(lambda: w.server_settings is not None, what="server SETTINGS")
        self.assertEqual(w.server_settings.get(SETTINGS_ENABLE_CONNECT_PROTOCOL), 1)
        sid = w.open("/chat", extra=[("sec-websocket-protocol", "chat")])
        r = w.response(sid)
        self.assertEqual(r["status"], 200, r)
        self.assertEqual(r["headers"].get("sec-websocket-protocol"), "chat")
        self.assertNotIn("sec-websocket-accept", r["headers"])
        self.assertNotIn("upgrade", r["headers"])
        self.echo(w, sid, b"hello")
        self.assertEqual(self.p.metric("marchproxy_websockets_active"), 1)
        # Larger than the stream window both ways: moves only as windows open (flow control).
        blob = bytes(range(256)) * 1024  # 256 KiB binary frame
        self.echo(w, sid, blob, opcode=0x2)
        w.send(sid, ws_frame(b"push 30"))
        self.assertEqual(w.message(sid, 30), [(1, f"pushed {i}".encode()) for i in range(30)])
        self.assertEqual(self.p.metric("marchproxy_websockets_total"), 1)
        self.assertEqual(self.ws.connections, 1)

    def test_close_from_the_client_ends_stream_and_upstream(self):
        w, sid = self.upgraded()
        self.echo(w, sid, b"before close")
        # A Close frame: the upstream answers it and closes its TCP connection; that FIN ends the stream.
        w.send(sid, ws_frame((1000).to_bytes(2, "big") + b"bye", opcode=0x8))
        self.assertEqual(w.message(sid)[0][0], 0x8)
        s = self.assert_ended(w, sid)  # END_STREAM, never a reset alone ...
        w.wait(lambda: s["rst"] is not None, what="RST_STREAM")
        self.assertEqual(s["rst"], NO_ERROR)  # ... then, as this client did not end its side: stop sending
        wait_until(lambda: self.p.metric("marchproxy_websockets_active") == 0, 10, message="gauge back to 0")

    def test_end_stream_from_the_client_closes_the_upstream(self):
        w, sid = self.upgraded()
        self.echo(w, sid, b"x")
        w.send(sid, b"", end_stream=True)  # FIN to the upstream: it closes, the stream ends
        s = self.assert_ended(w, sid)
        wait_until(lambda: self.p.metric("marchproxy_websockets_active") == 0, 10, message="gauge back to 0")

    def test_disabled_route_refused_with_403(self):
        w = self.client()
        sid = w.open("/nows")
        r = w.response(sid)
        self.assertEqual(r["status"], 403)
        w.wait(lambda: r["end"], what="the body")
        self.assertIn(b"WebSocket is disabled on this route", r["data"])
        w.wait(lambda: r["rst"] is not None, what="RST_STREAM")
        self.assertEqual(r["rst"], NO_ERROR)  # the client's side is closed for it too
        self.assertEqual(self.ws.connections, 0)

    def test_upstream_refusal_relayed(self):
        w = self.client()
        sid = w.open("/refuse")
        r = w.response(sid)
        self.assertEqual(r["status"], 404)
        self.assertEqual(r["headers"].get("x-refused"), "yes")
        w.wait(lambda: r["end"], what="the body")
        self.assertIn(b"no websocket here", r["data"])
        self.assertEqual(self.p.metric("marchproxy_websockets_total"), 0)

    def test_other_protocol_and_plain_connect(self):
        w = self.client()
        sid = w.open("/chat", protocol="connect-udp")
        r = w.response(sid)
        self.assertEqual(r["status"], 501)
        w.wait(lambda: r["end"], what="the body")
        self.assertIn(b"extended CONNECT is served only for :protocol websocket", r["data"])
        sid = w.c.new_stream()
        w._stream(sid)
        w.c.send(w.c.headers_frame(sid, [(":method", "CONNECT"), (":authority", "example.com:443")],
                                   end_stream=False))
        self.assertEqual(w.response(sid)["status"], 405)
        sid = w.open("/chat", extra=[("sec-websocket-version", "8")])
        self.assertEqual(w.response(sid)["status"], 400)
        self.assertEqual(self.ws.connections, 0)

    def test_two_websockets_and_a_get_on_one_connection(self):
        w = self.client()
        a, b = w.open("/one"), w.open("/two")
        self.assertEqual(w.response(a)["status"], 200)
        self.assertEqual(w.response(b)["status"], 200)
        w.send(a, ws_frame(b"to a"))
        w.send(b, ws_frame(b"to b"))
        g = w.get("/plain/id")
        self.assertEqual(w.message(b), [(1, b"to b")])
        self.assertEqual(w.message(a), [(1, b"to a")])
        self.assertEqual(w.response(g)["status"], 200)
        w.wait(lambda: w.st[g]["end"], what="the GET body")
        self.echo(w, a, b"again a")
        self.echo(w, b, b"again b")
        self.assertEqual(self.p.metric("marchproxy_websockets_active"), 2)
        self.assertEqual(self.ws.connections, 2)

    def test_idle_timeout_resets_the_stream(self):
        w, sid = self.upgraded("/idle")
        self.echo(w, sid, b"x")
        s = w.st[sid]
        w.wait(lambda: s["rst"] is not None or s["end"], timeout=20, what="the idle timeout")
        self.assertEqual(s["rst"], CANCEL, s)
        wait_until(lambda: self.p.metric("marchproxy_websockets_active") == 0, 10, message="gauge back to 0")

    def test_what_the_upstream_sees_and_what_comes_back(self):
        w = H2WebSockets(RawH2(self.p.ports["h2c"]), frames=False)
        self.addCleanup(w.c.close)
        sid = w.open("/raw/path?q=1", extra=[("sec-websocket-protocol", "chat, superchat"),
                                             ("sec-websocket-extensions", "permessage-deflate"),
                                             ("origin", "https://app.example"), ("cookie", "a=1"), ("cookie", "b=2")])
        w.send(sid, b"pre")  # before the 200: held, then relayed after the upgrade
        r = w.response(sid)
        self.assertEqual(r["status"], 200, r)
        self.assertEqual(r["headers"].get("sec-websocket-extensions"), "permessage-deflate")
        self.assertNotIn("sec-websocket-accept", r["headers"])
        self.assertNotIn("connection", r["headers"])
        w.wait(lambda: r["data"] == b"earlypre", what="the bytes that came with the 101, then the echo")
        w.send(sid, b"\x00binary\xff")
        w.wait(lambda: r["data"] == b"earlypre\x00binary\xff", what="the echo")
        head = self.heads[0].split("\r\n")
        self.assertEqual(head[0], "GET /raw/path?q=1 HTTP/1.1")
        fields = {}
        for line in head[1:]:
            n, v = line.split(":", 1)
            fields.setdefault(n.strip().lower(), []).append(v.strip())
        self.assertEqual(fields["upgrade"], ["websocket"])
        self.assertEqual([v.lower() for v in fields["connection"]], ["upgrade"])
        self.assertEqual(fields["sec-websocket-version"], ["13"])
        self.assertEqual(len(base64.b64decode(fields["sec-websocket-key"][0], validate=True)), 16)
        self.assertEqual(fields["sec-websocket-protocol"], ["chat, superchat"])
        self.assertEqual(fields["sec-websocket-extensions"], ["permessage-deflate"])
        self.assertEqual(fields["origin"], ["https://app.example"])
        self.assertEqual(fields["cookie"], ["a=1; b=2"])
        self.assertEqual(fields["host"], ["test.local"])
        self.assertEqual(fields["x-forwarded-for"], ["127.0.0.1"])
        self.assertNotIn("content-length", fields)
        self.assertNotIn("transfer-encoding", fields)
        # Our END_STREAM is a FIN to the upstream, which closes: the stream ends cleanly.
        w.send(sid, b"", end_stream=True)
        w.wait(lambda: r["end"] or r["rst"] is not None, what="the end of the stream")
        self.assertTrue(r["end"], r)
        self.assertIsNone(r["rst"])
        # Two keys are not the same.
        sid2 = w.open("/raw/again")
        self.assertEqual(w.response(sid2)["status"], 200)
        key2 = [ln for ln in self.heads[1].split("\r\n") if ln.lower().startswith("sec-websocket-key:")]
        self.assertNotEqual(key2[0].split(":", 1)[1].strip(), fields["sec-websocket-key"][0])

    def test_upstream_switching_to_another_protocol_is_502(self):
        w = self.client()
        sid = w.open("/raw/other")
        r = w.response(sid)
        self.assertEqual(r["status"], 502)
        w.wait(lambda: r["end"], what="the body")
        self.assertIn(b"upstream switched to a protocol other than websocket", r["data"])

    def test_drain_keeps_relaying_then_closes(self):
        import signal
        w, sid = self.upgraded()
        self.echo(w, sid, b"before")
        self.p.signal(signal.SIGTERM)
        w.wait(lambda: w.c.goaway is not None, what="GOAWAY")
        self.assertEqual(w.c.goaway.error_code, NO_ERROR)
        self.echo(w, sid, b"during drain")  # the open WebSocket goes on until timeouts.drain ...
        w.c.pump(lambda f: False, timeout=20)  # ... then the connection closes
        self.assertTrue(w.c.closed)
        self.assertEqual(self.p.wait_exit(20), 0, self.p.tail())

    def stalled(self, value):
        """Waits until value() stops growing (the sender is blocked), returns it."""
        last, since = -1, time.monotonic()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            v = value()
            if v != last:
                last, since = v, time.monotonic()
            elif time.monotonic() - since > 1.5:
                return v
            time.sleep(0.1)
        return value()

    def test_upstream_to_slow_client_is_flow_controlled(self):
        w = H2WebSockets(RawH2(self.p.ports["h2c"]), frames=False)
        self.addCleanup(w.c.close)
        sid = w.open("/raw/flood")
        r = w.response(sid)
        self.assertEqual(r["status"], 200)
        # The client reads nothing more: the proxy stops reading the upstream once a stream window
        # and its 64 KiB buffer are full, so the upstream blocks (kernel socket buffers aside).
        sent = self.stalled(lambda: self.state["sent"])
        self.assertLess(sent, len(FLOOD) // 2, "the proxy kept reading from the upstream")
        w.wait(lambda: r["end"] or r["rst"] is not None, timeout=60, what="the whole flood")
        self.assertTrue(r["end"], r["rst"])
        self.assertEqual(len(r["data"]), len(FLOOD))
        self.assertTrue(r["data"] == FLOOD)

    def test_client_to_slow_upstream_is_flow_controlled(self):
        w = H2WebSockets(RawH2(self.p.ports["h2c"]), frames=False)
        self.addCleanup(w.c.close)
        sid = w.open("/raw/sink")
        self.assertEqual(w.response(sid)["status"], 200)
        # The upstream reads nothing: windows stop being given back, the client cannot send more.
        with self.assertRaises((AssertionError, TimeoutError)):
            w.send(sid, FLOOD, window_timeout=3)
        self.assertLess(w.sent[sid], len(FLOOD) // 2, "the proxy kept taking bytes the upstream did not")
        # The stream and the connection still work.
        self.assertEqual(w.response(w.get("/plain/id"))["status"], 200)

    def test_tls_upstream(self):
        w, sid = self.upgraded("/tlsup")
        self.echo(w, sid, b"to a wss upstream")
        self.echo(w, sid, os.urandom(100000), opcode=0x2)
        self.assertEqual(self.wss.connections, 1)
        # END_STREAM from the client: a TLS upstream is closed and the stream ends.
        w.send(sid, b"", end_stream=True)
        s = self.assert_ended(w, sid)
        wait_until(lambda: self.p.metric("marchproxy_websockets_active") == 0, 10, message="gauge back to 0")

    def test_tls_alpn_h2(self):
        w, sid = self.upgraded("/chat", tls=True)
        self.echo(w, sid, b"over tls")
        self.echo(w, sid, os.urandom(70000), opcode=0x2)


if __name__ == "__main__":
    unittest.main()
