#!/usr/bin/env python3
"""Egress listeners over TLS (docs/egress.md, "TLS listeners and client certificates"): an HTTPS
proxy and SOCKS5 over TLS, where a verified client certificate's CN names the service.

Real curl (--proxy https://, --proxy-cert), a Python TLS client for SOCKS5, certificates from a
throw-away openssl CA (tls_certs.Pki)."""
import hashlib
import json
import os
import shutil
import socket
import ssl
import struct
import subprocess
import unittest

from harness import LOCALHOST, ProxyTestCase, find_binary, main, render, wait_until
from test_egress_proxy import EchoServer, recv_exact
from tls_certs import Pki
from tls_client import client_context

CURL = shutil.which("curl")
TOKEN = "s3cret-token"

CONFIG = """
schema: 1
kind: egress
workers: 1
listeners:
  - name: https
    address: 127.0.0.1
    port: 0
    tls: {cert: "${cert}", key: "${key}", client_ca: "${ca}"${extra_tls}}
  - name: socks-tls
    address: 127.0.0.1
    port: 0
    protocol: socks5
    tls: {cert: "${cert}", key: "${key}", client_ca: "${ca}"${extra_tls}}
admin: {address: 127.0.0.1, port: 0}
access_log: {enabled: true, path: "${log}"}
services:
  - name: billing
    tokens: ["sha256:${token_hash}"]
  - name: reports
    tokens: ["sha256:${token_hash}"]
dns:
  hosts:
    origin.test: [127.0.0.1]
mappings:
  - name: billing-origin
    sources: [billing]
    destinations: [origin.test, 127.0.0.1/32]
    protocols: [http, https, tcp]
    ports: ["${origin}", "${echo}"]
"""


@unittest.skipUnless(CURL, "curl not installed")
class TlsListenerTest(ProxyTestCase):
    def setUp(self):
        self.origin = self.start_origin("o1")
        self.echo = EchoServer()
        self.addCleanup(self.echo.close)
        tmp = self.tmpdir()
        self.pki = Pki(tmp)
        self.server = self.pki.issue("egress.test", sans=["DNS:egress.test", "IP:127.0.0.1"])
        self.billing = self.pki.issue("billing", client=True)
        self.ghost = self.pki.issue("ghost", client=True)
        self.stranger = Pki(tmp, name="other-ca").issue("billing", client=True)  # right CN, wrong CA
        self.log_path = os.path.join(tmp, "access.log")

    def start(self, extra_tls=""):
        self.p = self.start_proxy(self.config(extra_tls), command="egress", expect_listeners=("https", "socks-tls"))
        return self.p

    def config(self, extra_tls=""):
        return render(CONFIG, cert=self.server[0], key=self.server[1], ca=self.pki.cert, extra_tls=extra_tls,
                      log=self.log_path, token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(),
                      origin=self.origin.port, echo=self.echo.port)

    def curl(self, who=None, *extra, url=None):
        args = [CURL, "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10",
                "--proxy", f"https://127.0.0.1:{self.p.ports['https']}", "--proxy-cacert", self.pki.cert]
        if who:
            args += ["--proxy-cert", who[0], "--proxy-key", who[1]]
        args += list(extra) + [url or f"http://origin.test:{self.origin.port}/id"]
        r = subprocess.run(args, capture_output=True, timeout=30)
        body, _, code = r.stdout.rpartition(b"\n")
        return r.returncode, int(code or 0), body

    def entries(self, **match):
        if not os.path.exists(self.log_path):
            return []
        with open(self.log_path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return [e for e in entries if all(e.get(k) == v for k, v in match.items())]

    def test_client_certificate_names_the_service_for_requests_and_connect(self):
        self.start()
        rc, code, body = self.curl(self.billing)
        self.assertEqual((code, body), (200, b"o1"))
        rc, code, body = self.curl(self.billing, "-p")  # CONNECT through the TLS proxy connection
        self.assertEqual((code, body), (200, b"o1"))
        e = wait_until(lambda: self.entries(kind="connect", decision="allow"), message="connect entry")[0]
        self.assertEqual(e["service"], "billing")
        self.assertEqual(self.origin.count, 2)

    def test_without_a_certificate_credentials_still_work_and_nothing_is_407(self):
        self.start()
        rc, code, body = self.curl(None, "-U", f"billing:{TOKEN}")
        self.assertEqual((code, body), (200, b"o1"))
        rc, code, body = self.curl(None)
        self.assertEqual(code, 407)

    def test_credentials_beside_a_certificate_must_name_the_same_service(self):
        self.start()
        rc, code, body = self.curl(self.billing, "-U", f"billing:{TOKEN}")
        self.assertEqual(code, 200)
        rc, code, body = self.curl(self.billing, "-U", f"reports:{TOKEN}")
        self.assertEqual(code, 407)
        self.p.wait_log('the credentials name service "reports", the client certificate "billing"')

    def test_unknown_cn_and_wrong_ca_are_refused(self):
        self.start()
        rc, code, body = self.curl(self.ghost)
        self.assertEqual(code, 407)
        self.p.wait_log('the client certificate\'s CN "ghost" is not a service')
        wait_until(lambda: self.entries(reason="bad_client_cert"), message="bad_client_cert entry")
        rc, code, body = self.curl(self.stranger)
        self.assertNotEqual(rc, 0)  # the handshake fails: a certificate that does not verify
        self.assertEqual(self.origin.count, 0)
        wait_until(lambda: self.p.metric("marchproxy_egress_decisions_total", reason="tls_handshake_failed") >= 1,
                   message="handshake failure counted")

    def test_require_refuses_clients_without_a_certificate(self):
        self.start(extra_tls=", client_auth: require")
        rc, code, body = self.curl(None, "-U", f"billing:{TOKEN}")
        self.assertNotEqual(code, 200)
        rc, code, body = self.curl(self.billing)
        self.assertEqual((code, body), (200, b"o1"))

    def test_a_revoked_certificate_is_refused(self):
        renewed = self.pki.issue("billing", client=True)
        self.pki.revoke(self.billing[0])
        crl = self.pki.crl()
        self.start(extra_tls=f', crl: "{crl}"')
        rc, code, body = self.curl(self.billing)
        self.assertNotEqual(code, 200)
        self.assertEqual(self.origin.count, 0)
        rc, code, body = self.curl(renewed)  # the same service with a certificate the CRL does not name
        self.assertEqual((code, body), (200, b"o1"))

    def test_sighup_rotates_certificates_replaced_in_place(self):
        cert, key = os.path.join(self.tmpdir(), "live.pem"), os.path.join(self.tmpdir(), "live.key")
        shutil.copy(self.server[0], cert)
        shutil.copy(self.server[1], key)
        self.server = (cert, key)
        p = self.start()
        rotated = self.pki.issue("rotated.test", sans=["DNS:rotated.test", "IP:127.0.0.1"])

        def served_cn():
            raw = socket.create_connection((LOCALHOST, p.ports["https"]), timeout=5)
            with client_context(ca=self.pki.cert).wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return dict(x[0] for x in s.getpeercert()["subject"])["commonName"]

        self.assertEqual(served_cn(), "egress.test")
        shutil.copy(rotated[0], cert)
        shutil.copy(rotated[1], key)
        p.reload(self.config())  # the same text: only the files changed
        wait_until(lambda: served_cn() == "rotated.test", message="the rotated certificate is served")
        rc, code, body = self.curl(self.billing)
        self.assertEqual((code, body), (200, b"o1"))

    def socks(self, who, methods=b"\x00"):
        raw = socket.create_connection((LOCALHOST, self.p.ports["socks-tls"]), timeout=5)
        ctx = client_context(ca=self.pki.cert, cert=who[0] if who else None, key=who[1] if who else None)
        s = ctx.wrap_socket(raw, server_hostname="egress.test")
        self.addCleanup(s.close)
        s.sendall(b"\x05" + bytes([len(methods)]) + methods)
        return s, recv_exact(s, 2)

    def test_socks5_over_tls_with_a_certificate_needs_no_password(self):
        self.start()
        s, sel = self.socks(self.billing)
        self.assertEqual(sel, b"\x05\x00")  # "no authentication": the certificate said who
        host = b"origin.test"
        s.sendall(b"\x05\x01\x00\x03" + bytes([len(host)]) + host + struct.pack(">H", self.echo.port))
        reply = recv_exact(s, 10)
        self.assertEqual(reply[1], 0, reply)
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        # Without a certificate, "no authentication" is not acceptable.
        s2, sel2 = self.socks(None)
        self.assertEqual(sel2, b"\x05\xff")
        # A certificate whose CN is no service is refused too.
        s3, sel3 = self.socks(self.ghost)
        self.assertEqual(sel3, b"\x05\xff")


class TlsListenerCheckTest(ProxyTestCase):
    def test_check_reports_tls_errors_with_fields(self):
        path = os.path.join(self.tmpdir(), "egress.yaml")
        with open(path, "w") as f:
            f.write("""schema: 1
kind: egress
listeners:
  - name: https
    port: 0
    tls: {cert: missing.pem, key: missing.key, client_auth: require}
  - name: socks
    port: 0
    protocol: socks5
    tls: {cert: missing.pem, key: missing.key, client_auth: sometimes}
""")
        p = subprocess.run([find_binary(), "check", path], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout)
        self.assertIn("line 6: listeners[0].tls.cert: cannot read", p.stdout)
        self.assertIn('line 6: listeners[0].tls.client_auth: needs "client_ca"', p.stdout)
        self.assertIn('line 10: listeners[1].tls.client_auth: must be "optional" or "require"', p.stdout)


if __name__ == "__main__":
    main()
