"""gRPC clients (Debian python3-grpcio) through an h2c listener: errors the proxy answers itself
reach the client as gRPC statuses (grpc-status / grpc-message), not as HTTP errors; and real gRPC
servers (grpcio, generic handlers over raw bytes: no protoc) behind a `protocol: http2` cluster,
over h2c and over TLS (ALPN h2): every call shape, statuses and trailing metadata passed through,
deadlines, large messages."""
import os
import sys
import threading
import time
import unittest
from concurrent import futures

try:
    import grpc
except ImportError:  # Debian's package under a non-Debian python3 (pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import grpc
    except ImportError:
        grpc = None

from harness import ProxyTestCase, render, free_port
from tls_certs import Pki

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: h2c, address: 127.0.0.1, port: 0, h2c: true }
virtual_hosts:
  - name: grpc
    domains: ["grpc.test"]
    routes:
      - match: { prefix: /down. }
        forward: { cluster: down }
clusters:
  - name: down
    endpoints: [ "127.0.0.1:${DEAD_PORT}" ]
    timeouts: { connect: 500ms }
"""


def identity(b):
    return b


@unittest.skipIf(grpc is None, "python3-grpcio is not installed")
class GrpcErrors(ProxyTestCase):
    def setUp(self):
        self.proxy = self.start_proxy(render(CONFIG, DEAD_PORT=str(free_port())), expect_listeners=("h2c",))
        self.port = self.proxy.ports["h2c"]

    def call(self, method, authority="grpc.test"):
        opts = [("grpc.default_authority", authority), ("grpc.enable_retries", 0)]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}", options=opts) as ch:
            rpc = ch.unary_unary(method, request_serializer=identity, response_deserializer=identity)
            with self.assertRaises(grpc.RpcError) as cm:
                rpc(b"\x01\x02", timeout=10)
            return cm.exception

    def test_no_route_is_unimplemented(self):
        e = self.call("/nowhere.Svc/Call")
        self.assertEqual(e.code(), grpc.StatusCode.UNIMPLEMENTED, e)
        self.assertIn("no route", e.details())
        e = self.call("/down.Svc/Call", authority="other.test")  # unknown host: no route either
        self.assertEqual(e.code(), grpc.StatusCode.UNIMPLEMENTED, e)

    def test_unreachable_upstream_is_unavailable(self):
        e = self.call("/down.Svc/Call")
        self.assertEqual(e.code(), grpc.StatusCode.UNAVAILABLE, e)
        self.assertIn("upstream connect failed", e.details())

    def test_streaming_call_gets_the_status_too(self):
        opts = [("grpc.default_authority", "grpc.test")]
        with grpc.insecure_channel(f"127.0.0.1:{self.port}", options=opts) as ch:
            rpc = ch.unary_stream("/nowhere.Svc/Stream", request_serializer=identity, response_deserializer=identity)
            with self.assertRaises(grpc.RpcError) as cm:
                list(rpc(b"x", timeout=10))
            self.assertEqual(cm.exception.code(), grpc.StatusCode.UNIMPLEMENTED)


UPSTREAM_CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: h2c, address: 127.0.0.1, port: 0, h2c: true }
virtual_hosts:
  - name: grpc
    domains: ["grpc.test"]
    routes:
      - match: { prefix: /echo. }
        forward: { cluster: up }
clusters:
  - name: up
    protocol: http2
    endpoints: [ "127.0.0.1:${UP}" ]
    ${TLS}
"""

BIG = 3 * 1024 * 1024  # under grpc's default 4 MiB receive limit on both sides


def echo_service(seen):
    """The upstream: raw-bytes handlers; `seen` collects (method, metadata) of every call."""

    def note(ctx, name):
        seen.append((name, dict(ctx.invocation_metadata())))

    def unary(req, ctx):
        note(ctx, "Unary")
        ctx.set_trailing_metadata((("x-upstream-trailer", "t-" + str(len(req))),))
        return b"echo:" + req

    def fail(req, ctx):
        note(ctx, "Fail")
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode())

    def slow(req, ctx):
        note(ctx, "Slow")
        time.sleep(3)
        return b"late"

    def big(req, ctx):
        note(ctx, "Big")
        return bytes(reversed(req))

    def server_stream(req, ctx):
        note(ctx, "ServerStream")
        for i in range(int(req)):
            yield b"item-%d" % i

    def client_stream(it, ctx):
        note(ctx, "ClientStream")
        parts = [m for m in it]
        return b"%d:%d" % (len(parts), sum(len(p) for p in parts))

    def bidi(it, ctx):
        note(ctx, "Bidi")
        for m in it:
            yield m.upper()

    return grpc.method_handlers_generic_handler("echo.Svc", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Big": grpc.unary_unary_rpc_method_handler(big),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
    })


class _GrpcThroughProxy:
    """Shared cases; subclasses choose the upstream transport (h2c or TLS)."""
    tls = False

    def setUp(self):
        self.seen = []
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((echo_service(self.seen),))
        up = free_port()
        tls = ""
        if self.tls:
            pki = Pki(self.tmpdir())
            cert, key = pki.issue("up.example.com", sans=["DNS:up.example.com"])
            with open(cert, "rb") as c, open(key, "rb") as k:
                creds = grpc.ssl_server_credentials([(k.read(), c.read())])
            self.server.add_secure_port(f"127.0.0.1:{up}", creds)
            tls = f'tls: {{ sni: up.example.com, ca: "{pki.cert}" }}'
        else:
            self.server.add_insecure_port(f"127.0.0.1:{up}")
        self.server.start()
        self.addCleanup(self.server.stop, None)
        self.proxy = self.start_proxy(render(UPSTREAM_CONFIG, UP=str(up), TLS=tls), expect_listeners=("h2c",))
        opts = [("grpc.default_authority", "grpc.test"), ("grpc.enable_retries", 0)]
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.proxy.ports['h2c']}", options=opts)
        self.addCleanup(self.channel.close)

    def rpc(self, kind, name):
        return getattr(self.channel, kind)("/echo.Svc/" + name, request_serializer=identity,
                                           response_deserializer=identity)

    def test_unary_with_trailing_metadata(self):
        resp, call = self.rpc("unary_unary", "Unary").with_call(b"hello", timeout=10,
                                                                metadata=(("x-client-md", "m1"),))
        self.assertEqual(resp, b"echo:hello")
        self.assertEqual(call.code(), grpc.StatusCode.OK)
        self.assertIn(("x-upstream-trailer", "t-5"), tuple(call.trailing_metadata()))
        name, md = self.seen[-1]
        self.assertEqual(md.get("x-client-md"), "m1")  # request metadata reaches the upstream
        self.assertEqual(md.get("x-forwarded-for"), "127.0.0.1")  # with the proxy's forwarding headers
        self.assertIn("x-request-id", md)

    def test_status_and_message_pass_through(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.rpc("unary_unary", "Fail")(b"thing-7", timeout=10)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.NOT_FOUND)
        self.assertEqual(cm.exception.details(), "no such thing: thing-7")

    def test_server_streaming(self):
        got = list(self.rpc("unary_stream", "ServerStream")(b"50", timeout=10))
        self.assertEqual(got, [b"item-%d" % i for i in range(50)])

    def test_client_streaming(self):
        msgs = [os.urandom(1000 + i) for i in range(40)]
        resp = self.rpc("stream_unary", "ClientStream")(iter(msgs), timeout=10)
        self.assertEqual(resp, b"%d:%d" % (len(msgs), sum(len(m) for m in msgs)))

    def test_bidi_streaming_interleaves(self):
        # Each reply must come back before the next request is sent: the proxy relays as it goes.
        cv = threading.Condition()
        replies = []

        def requests():
            for i in range(10):
                yield b"msg-%d" % i
                with cv:
                    if not cv.wait_for(lambda: len(replies) > i, timeout=10):
                        return
        for r in self.rpc("stream_stream", "Bidi")(requests(), timeout=20):
            with cv:
                replies.append(r)
                cv.notify_all()
        self.assertEqual(replies, [b"MSG-%d" % i for i in range(10)])

    def test_deadline_exceeded(self):
        with self.assertRaises(grpc.RpcError) as cm:
            self.rpc("unary_unary", "Slow")(b"x", timeout=0.5)
        self.assertEqual(cm.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        # The connection to the upstream is still good for the next call.
        self.assertEqual(self.rpc("unary_unary", "Unary")(b"after", timeout=10), b"echo:after")

    def test_large_message_both_ways(self):
        msg = os.urandom(BIG)
        self.assertEqual(self.rpc("unary_unary", "Big")(msg, timeout=30), bytes(reversed(msg)))

    def test_concurrent_calls_share_the_upstream(self):
        with futures.ThreadPoolExecutor(max_workers=16) as ex:
            res = list(ex.map(lambda i: self.rpc("unary_unary", "Unary")(b"c%d" % i, timeout=20), range(64)))
        self.assertEqual(res, [b"echo:c%d" % i for i in range(64)])


@unittest.skipIf(grpc is None, "python3-grpcio is not installed")
class GrpcToH2cUpstream(_GrpcThroughProxy, ProxyTestCase):
    tls = False


@unittest.skipIf(grpc is None, "python3-grpcio is not installed")
class GrpcToTlsUpstream(_GrpcThroughProxy, ProxyTestCase):
    tls = True


if __name__ == "__main__":
    unittest.main()
