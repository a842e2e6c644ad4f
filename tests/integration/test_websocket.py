"""WebSocket through the ingress (docs/websocket.md) with a real client and a real echo server
(python3-websockets): messages both ways, large frames, server pushes, a reload in the middle, wss://
through a TLS listener, a route with websocket disabled (403), a non-101 answer passed through,
other upgrades (h2c) ignored, the idle timeout, and the websocket metrics."""
import asyncio
import http
import ssl
import threading
import unittest

from harness import ProxyTestCase, Conn, render, wait_until
from tls_certs import Pki

try:
    import websockets
    import websockets.exceptions
except ImportError:  # python3-websockets (scripts/setup.sh), for a python3 that is not Debian's own
    import sys
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import websockets
        import websockets.exceptions
    except ImportError:
        websockets = None

CONFIG = """
schema: 1
version: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: http, address: 127.0.0.1, port: 0 }
  - name: https
    address: 127.0.0.1
    port: 0
    tls: { certificates: [ { cert: "${CERT}", key: "${KEY}" } ] }
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
timeouts: { header_read: 2s, idle: 30s, drain: 1s }
"""


class EchoServer:
    """A websockets echo server on its own event loop thread. /refuse answers 404 (no upgrade);
    a text message "push N" makes the server send N messages on its own."""

    def __init__(self, subprotocols=None, ssl_ctx=None):
        self.subprotocols = subprotocols
        self.ssl_ctx = ssl_ctx  # serves wss:// (a cluster with tls)
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.connections = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait(10)

    async def _handler(self, ws, path=None):
        self.connections += 1
        try:
            async for msg in ws:
                if isinstance(msg, str) and msg.startswith("push "):
                    for i in range(int(msg.split()[1])):
                        await ws.send(f"pushed {i}")
                else:
                    await ws.send(msg)
        except websockets.exceptions.ConnectionClosed:
            pass  # the proxy closed it (idle timeout, drain): what those tests want

    async def _process(self, path, headers):
        if path.startswith("/refuse"):
            return (http.HTTPStatus.NOT_FOUND, [("X-Refused", "yes")], b"no websocket here\n")
        return None

    def _run(self):
        asyncio.set_event_loop(self.loop)

        async def main():
            self.server = await websockets.serve(self._handler, "127.0.0.1", 0, process_request=self._process,
                                                 max_size=None, subprotocols=self.subprotocols, ssl=self.ssl_ctx)
            self.port = self.server.sockets[0].getsockname()[1]
            self.ready.set()
            await self.server.wait_closed()

        try:
            self.loop.run_until_complete(main())
        except Exception:  # noqa: BLE001 - closing
            pass

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def close(self):
        def stop():
            self.server.close()
        self.loop.call_soon_threadsafe(stop)
        self.thread.join(5)


def run(coro):
    return asyncio.new_event_loop().run_until_complete(asyncio.wait_for(coro, 30))


@unittest.skipIf(websockets is None, "python3-websockets is not installed")
class WebSocketTest(ProxyTestCase):
    def setUp(self):
        self.ws = EchoServer()
        self.addCleanup(self.ws.close)
        self.origin = self.start_origin("origin")
        self.pki = Pki(self.tmpdir())
        self.cert, self.key = self.pki.issue("ws.example.com", sans=["DNS:ws.example.com"])
        self.values = dict(CERT=self.cert, KEY=self.key, WS=self.ws.address, ORIGIN=self.origin.address)
        self.p = self.start_proxy(render(CONFIG, **self.values), expect_listeners=("http", "https"))

    def url(self, path="/chat", scheme="ws"):
        port = self.p.ports["https" if scheme == "wss" else "http"]
        return f"{scheme}://127.0.0.1:{port}{path}"

    def test_messages_both_ways_large_frames_and_pushes(self):
        async def go():
            async with websockets.connect(self.url(), max_size=None) as c:
                await c.send("hello")
                self.assertEqual(await c.recv(), "hello")
                blob = bytes(range(256)) * 8192  # 2 MiB binary frame
                await c.send(blob)
                self.assertEqual(await c.recv(), blob)
                await c.send("push 50")
                got = [await c.recv() for _ in range(50)]
                self.assertEqual(got, [f"pushed {i}" for i in range(50)])
                for i in range(200):
                    await c.send(f"m{i}")
                self.assertEqual([await c.recv() for _ in range(200)], [f"m{i}" for i in range(200)])
        run(go())
        self.assertEqual(self.p.metric("marchproxy_websockets_total"), 1)
        wait_until(lambda: self.p.metric("marchproxy_websockets_active") == 0, 10, message="gauge back to 0")

    def test_active_gauge_while_open(self):
        async def go():
            async with websockets.connect(self.url()) as c:
                await c.send("x")
                await c.recv()
                self.assertEqual(self.p.metric("marchproxy_websockets_active"), 1)
        run(go())

    def test_reload_keeps_open_websocket(self):
        async def go():
            async with websockets.connect(self.url()) as c:
                await c.send("before")
                self.assertEqual(await c.recv(), "before")
                # A new config that no longer routes "/" to the websocket cluster at all.
                self.p.reload(render(CONFIG, **self.values).replace("version: 1", "version: 2")
                              .replace("forward: { cluster: ws }\nclusters", "direct_response: { status: 410 }\nclusters"))
                await asyncio.get_running_loop().run_in_executor(
                    None, lambda: wait_until(lambda: self.p.config_info().get("version") == 2, 10,
                                             message="reload applied"))
                await c.send("after")
                self.assertEqual(await c.recv(), "after")
        run(go())

    def test_wss_through_tls_listener(self):
        ctx = ssl.create_default_context(cafile=self.pki.cert)
        ctx.check_hostname = False

        async def go():
            async with websockets.connect(self.url(scheme="wss"), ssl=ctx, max_size=None) as c:
                blob = b"\x00\xff" * 300000
                await c.send(blob)
                self.assertEqual(await c.recv(), blob)
                await c.send("tls")
                self.assertEqual(await c.recv(), "tls")
        run(go())

    def test_disabled_route_refused_with_403(self):
        async def go():
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
                async with websockets.connect(self.url("/nows")):
                    pass
            self.assertEqual(cm.exception.status_code, 403)
        run(go())
        self.assertEqual(self.ws.connections, 0)

    def test_non_101_passed_through(self):
        with Conn(self.p.port) as c:
            r = c.request("GET", "/refuse", headers={"Connection": "Upgrade", "Upgrade": "websocket",
                                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                     "Sec-WebSocket-Version": "13"})
        self.assertStatus(r, 404)
        self.assertEqual(r.header("x-refused"), "yes")
        self.assertIn(b"no websocket here", r.body)

    def test_bad_upgrades(self):
        base = {"Connection": "Upgrade", "Upgrade": "websocket"}
        with Conn(self.p.port) as c:
            r = c.request("GET", "/chat", headers=dict(base, **{"Sec-WebSocket-Version": "13"}))
        self.assertStatus(r, 400)  # no key
        with Conn(self.p.port) as c:
            r = c.request("GET", "/chat", headers=dict(base, **{"Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                                "Sec-WebSocket-Version": "8"}))
        self.assertStatus(r, 400)
        self.assertEqual(self.ws.connections, 0)

    def test_h2c_upgrade_is_ignored(self):
        with Conn(self.p.port) as c:
            r = c.request("GET", "/plain/echo", headers={"Connection": "Upgrade, HTTP2-Settings", "Upgrade": "h2c",
                                                         "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA"})
            self.assertStatus(r, 200)
            names = [n.lower() for n, _ in r.json()["headers"]]
            self.assertNotIn("upgrade", names)
            # The connection stays plain HTTP/1.1.
            self.assertStatus(c.request("GET", "/plain/id"), 200)

    def test_idle_timeout_closes(self):
        async def go():
            async with websockets.connect(self.url("/idle"), ping_interval=None) as c:
                await c.send("x")
                self.assertEqual(await c.recv(), "x")
                with self.assertRaises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(c.recv(), 20)
        run(go())

    def test_drain_closes_websockets_at_the_deadline(self):
        import signal

        async def go():
            async with websockets.connect(self.url(), ping_interval=None) as c:
                await c.send("x")
                self.assertEqual(await c.recv(), "x")
                self.p.signal(signal.SIGTERM)
                # Still relaying while draining (drain: 1s) ...
                await c.send("during drain")
                self.assertEqual(await c.recv(), "during drain")
                # ... then closed at the deadline.
                with self.assertRaises(websockets.exceptions.ConnectionClosed):
                    await asyncio.wait_for(c.recv(), 20)
        run(go())
        self.assertEqual(self.p.wait_exit(20), 0, self.p.tail())


if __name__ == "__main__":
    unittest.main()
