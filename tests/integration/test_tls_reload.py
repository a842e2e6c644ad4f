"""Certificate reload without dropping connections: a certificate replaced on disk is picked up by
new handshakes (file watch, and SIGHUP), connections already open keep working on the old one, and a
broken replacement is refused while the old certificate keeps serving."""
import os
import shutil
import signal
import unittest

from harness import ProxyTestCase, render, wait_until
from tls_certs import Pki, fingerprint
from tls_client import TlsConn, client_context, der_fingerprint

CONFIG = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - name: https
    address: 127.0.0.1
    port: 0
    tls:
      certificates: [ { cert: live/site.pem, key: live/site.key } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        forward: { cluster: app }
clusters:
  - name: app
    endpoints: [ "${ORIGIN}" ]
"""


class TlsReload(ProxyTestCase):
    def setUp(self):
        self.origin = self.start_origin("app")
        self.pki = Pki(self.tmpdir())
        self.certs = [self.pki.issue("site.example.com", sans=["DNS:site.example.com"]) for _ in range(3)]
        self.ctx = client_context(ca=self.pki.cert)

    def start(self, watch):
        # Relative paths resolve against the config file's directory: lay the files out there first.
        workdir = os.path.join(self.tmpdir(), "cfg")
        self.live = os.path.join(workdir, "live")
        os.makedirs(self.live)
        self.install(self.certs[0])
        path = os.path.join(workdir, "config.yaml")
        with open(path, "w") as f:
            f.write(render(CONFIG, ORIGIN=self.origin.address))
        return self.start_proxy(None, config_path=path, watch=watch, expect_listeners=("https",))

    def install(self, pair):
        """Replaces key and certificate the way certbot/cert-manager do: new files renamed in."""
        for src, name in ((pair[1], "site.key"), (pair[0], "site.pem")):
            tmp = os.path.join(self.live, name + ".tmp")
            shutil.copyfile(src, tmp)
            os.replace(tmp, os.path.join(self.live, name))

    def served(self, proxy):
        with TlsConn(proxy.port, self.ctx, sni="site.example.com") as c:
            self.assertEqual(c.request(path="/id")[0], 200)
            return der_fingerprint(c.peer_der())

    def test_file_change_reloads_and_open_connections_survive(self):
        proxy = self.start(watch=True)
        self.assertEqual(self.served(proxy), fingerprint(self.certs[0][0]))
        old = TlsConn(proxy.port, self.ctx, sni="site.example.com")
        self.addCleanup(old.close)
        self.assertEqual(old.request(path="/id")[0], 200)

        self.install(self.certs[1])
        wait_until(lambda: self.served(proxy) == fingerprint(self.certs[1][0]), timeout=15,
                   message="new handshakes see the new certificate")
        # The keep-alive connection opened before the change still works, on its original certificate.
        for _ in range(3):
            self.assertEqual(old.request(path="/id")[0], 200)
        self.assertEqual(der_fingerprint(old.peer_der()), fingerprint(self.certs[0][0]))
        self.assertGreaterEqual(proxy.metric("marchproxy_config_reloads_total", result="ok"), 1)

    def test_sighup_reloads_certificates_with_the_same_config(self):
        proxy = self.start(watch=False)
        self.assertEqual(self.served(proxy), fingerprint(self.certs[0][0]))
        self.install(self.certs[2])
        self.assertEqual(self.served(proxy), fingerprint(self.certs[0][0]))  # no watch: not yet
        proxy.signal(signal.SIGHUP)
        wait_until(lambda: self.served(proxy) == fingerprint(self.certs[2][0]), timeout=15,
                   message="SIGHUP picked up the new certificate")

    def test_broken_replacement_keeps_the_old_certificate(self):
        proxy = self.start(watch=True)
        mark = proxy.mark()
        other = self.pki.issue("other", sans=["DNS:site.example.com"])
        # A key that does not match the certificate: the reload must fail and name the field.
        for src, name in ((other[1], "site.key"),):
            shutil.copyfile(src, os.path.join(self.live, name + ".tmp"))
            os.replace(os.path.join(self.live, name + ".tmp"), os.path.join(self.live, name))
        proxy.wait_log(r"listeners\[0\]\.tls\.certificates\[0\]\.key: does not match the certificate", since=mark,
                       timeout=15)
        for _ in range(4):
            self.assertEqual(self.served(proxy), fingerprint(self.certs[0][0]))
        # Completing the pair (the certificate arrives) is picked up.
        shutil.copyfile(other[0], os.path.join(self.live, "site.pem.tmp"))
        os.replace(os.path.join(self.live, "site.pem.tmp"), os.path.join(self.live, "site.pem"))
        wait_until(lambda: self.served(proxy) == fingerprint(other[0]), timeout=15, message="fixed pair served")


if __name__ == "__main__":
    unittest.main()
