"""gRPC clients (Debian python3-grpcio) through an h2c listener: errors the proxy answers itself
reach the client as gRPC statuses (grpc-status / grpc-message), not as HTTP errors.

Forwarding gRPC to a gRPC server needs HTTP/2 to upstreams (clusters[].protocol: http2), which is
not implemented yet (docs/http2.md); these tests cover what the ingress does today."""
import sys
import unittest

try:
    import grpc
except ImportError:  # Debian's package under a non-Debian python3 (pyenv)
    sys.path.append("/usr/lib/python3/dist-packages")
    try:
        import grpc
    except ImportError:
        grpc = None

from harness import ProxyTestCase, render, free_port

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


if __name__ == "__main__":
    unittest.main()
