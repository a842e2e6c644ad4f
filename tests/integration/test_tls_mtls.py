"""mTLS: client certificates required or optional, verified against a CA bundle and a CRL; the
verified identity forwarded upstream in X-Client-Cert-Subject / X-Client-Cert-San (which clients can
never set themselves); per-route allow-lists; refusals logged with the reason."""
import json
import ssl
import unittest

from harness import ProxyTestCase, render, wait_until, get
from tls_certs import Pki
from tls_client import TlsConn, client_context

CONFIG = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - name: require
    address: 127.0.0.1
    port: 0
    tls:
      certificates: [ { cert: "${CERT}", key: "${KEY}" } ]
      client_auth: { mode: require, ca: "${CA}", crl: "${CRL}" }
  - name: optional
    address: 127.0.0.1
    port: 0
    tls:
      certificates: [ { cert: "${CERT}", key: "${KEY}" } ]
      client_auth: { mode: optional, ca: "${CA}", crl: "${CRL}" }
  - name: http
    address: 127.0.0.1
    port: 0
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /admin }
        forward: { cluster: app }
        allowed_client_names: [ alice ]
      - match: { prefix: / }
        forward: { cluster: app }
clusters:
  - name: app
    endpoints: [ "${ORIGIN}" ]
"""

SPOOF = {"X-Client-Cert-Subject": "CN=root", "x-client-cert-san": "DNS:spoofed"}


def echo_headers(body):
    return {k.lower(): v for k, v in json.loads(body)["headers"]}


class Mtls(ProxyTestCase):
    def setUp(self):
        self.origin = self.start_origin("app")
        tmp = self.tmpdir()
        self.pki = Pki(tmp)
        self.server = self.pki.issue("mtls.example.com", sans=["DNS:mtls.example.com"])
        self.alice = self.pki.issue("alice", sans=["URI:spiffe://test/alice", "email:alice@example.com"],
                                    client=True)
        self.bob = self.pki.issue("bob", client=True)
        self.revoked = self.pki.issue("mallory", client=True)
        self.expired = self.pki.issue("old", client=True, start="200101000000Z", end="200201000000Z")
        self.pki.revoke(self.revoked[0])
        crl = self.pki.crl()
        self.other = Pki(tmp, name="other-ca")
        self.stranger = self.other.issue("alice", client=True)  # right name, wrong CA
        self.proxy = self.start_proxy(render(CONFIG, CERT=self.server[0], KEY=self.server[1], CA=self.pki.cert,
                                             CRL=crl, ORIGIN=self.origin.address),
                                      expect_listeners=("require", "optional", "http"))

    def ctx(self, who=None):
        cert, key = who if who else (None, None)
        return client_context(ca=self.pki.cert, cert=cert, key=key)

    def call(self, listener, who=None, path="/echo", headers=None):
        with TlsConn(self.proxy.ports[listener], self.ctx(who), sni="mtls.example.com") as c:
            return c.request(path=path, headers=headers)

    def refused(self, listener, who, reason):
        mark = self.proxy.mark()
        # With TLS 1.3 the client learns of the refusal on its first read, after its handshake.
        with self.assertRaises((ssl.SSLError, ConnectionError)):
            self.call(listener, who)
        self.proxy.wait_log(r"tls handshake refused: listener=%s .*reason=.*%s" % (listener, reason), since=mark)

    def test_verified_identity_is_forwarded_and_spoofed_headers_are_stripped(self):
        for listener in ("require", "optional"):
            status, _, body = self.call(listener, self.alice, headers=SPOOF)
            self.assertEqual(status, 200)
            h = echo_headers(body)
            self.assertEqual(h["x-client-cert-subject"], "CN=alice")
            self.assertEqual(h["x-client-cert-san"], "URI:spiffe://test/alice, email:alice@example.com")
            got = [k for k, _ in json.loads(body)["headers"] if k.lower().startswith("x-client-cert")]
            self.assertEqual(len(got), 2, got)  # exactly ours: the client's were dropped

    def test_clients_cannot_set_the_identity_headers(self):
        status, _, body = self.call("optional", None, headers=SPOOF)  # no certificate
        self.assertEqual(status, 200)
        self.assertFalse([k for k in echo_headers(body) if k.startswith("x-client-cert")])
        r = get(self.proxy.ports["http"], "/echo", headers=SPOOF)  # plain HTTP listener too
        self.assertEqual(r.status, 200)
        self.assertFalse([k for k in echo_headers(r.body) if k.startswith("x-client-cert")])

    def test_require_refuses_missing_revoked_expired_and_foreign_certificates(self):
        self.refused("require", None, "none was sent")
        self.refused("require", self.revoked, "certificate revoked")
        self.refused("require", self.expired, "certificate has expired")
        self.refused("require", self.stranger, "unable to get local issuer certificate")
        wait_until(lambda: self.proxy.metric("marchproxy_tls_handshakes_total", result="client_cert") >= 4,
                   message="client_cert failures counted")
        self.assertEqual(self.call("require", self.bob, path="/id")[0], 200)  # others still served

    def test_optional_still_refuses_a_bad_certificate(self):
        self.refused("optional", self.revoked, "certificate revoked")
        self.refused("optional", self.stranger, "unable to get local issuer certificate")

    def test_route_allow_list(self):
        self.assertEqual(self.call("optional", self.alice, path="/admin")[0], 200)
        mark = self.proxy.mark()
        self.assertEqual(self.call("optional", self.bob, path="/admin")[0], 403)
        self.proxy.wait_log(r'client certificate not allowed: .*subject="CN=bob"', since=mark)
        self.assertEqual(self.call("optional", None, path="/admin")[0], 403)
        self.assertEqual(get(self.proxy.ports["http"], "/admin").status, 403)
        self.assertEqual(self.call("optional", self.bob, path="/other")[0], 200)


if __name__ == "__main__":
    unittest.main()
