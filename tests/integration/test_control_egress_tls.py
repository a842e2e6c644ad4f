"""The manager compiles a cluster's egress TLS certificate into its egress snapshots, end to end: a real
`marchproxy manager`, a real `marchproxy egress --manager`, real curl, on SQLite and PostgreSQL.

  * a client certificate issued through the CA API (CN = service) + the cluster's
    egress_tls_certificate_id set through the API -> `curl --proxy https://... --proxy-cert` reaches
    a mapped destination; an unmapped one gets 403
  * only admins choose the certificate (a service-owner of the cluster gets 403)
  * the client certificate revoked through the API -> once the CRL reaches the proxy, the handshake
    is refused
  * egress_socks_tls_address -> a SOCKS5-over-TLS listener where the client certificate names the
    service (method 0x00); moving the address through the API moves the listener on the running proxy
    (the old port refuses, an open tunnel keeps relaying)
"""

import os
import shutil
import socket
import struct
import subprocess
import unittest

import manager_harness as mh
from harness import LOCALHOST, connection_refused, free_port, wait_until
from test_control_loop import ControlLoopCase
from test_egress_proxy import EchoServer, recv_exact
from tls_client import client_context

CURL = shutil.which("curl")


@unittest.skipUnless(CURL, "curl not installed")
class EgressTlsCase(ControlLoopCase):
    __test__ = False

    def issue(self, body):
        st, _, b = self.admin.post("/api/v1/certificates/issue", body)
        self.assertEqual(st, 201, b)
        return b

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def curl(self, who, url):
        args = [CURL, "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "10",
                "--proxy", f"https://{LOCALHOST}:{self.p.ports['proxy-tls']}", "--proxy-cacert", self.ca_path,
                "--proxy-cert", who[0], "--proxy-key", who[1], url]
        r = subprocess.run(args, capture_output=True, timeout=30)
        body, _, code = r.stdout.rpartition(b"\n")
        return r.returncode, int(code or 0), body

    def test_ca_issued_client_certificate_through_the_managed_egress_tls_listener(self):
        cid = self.cluster["id"]
        allowed, unmapped = self.start_origin("E"), self.start_origin("U")
        billing = self.make_service(cid, "billing")
        dest = self.make_service(cid, "origin", ip_fqdn=LOCALHOST)
        st, _, b = self.admin.post("/api/v1/mappings", {
            "cluster_id": cid, "name": "billing-to-origin", "source_services": [billing["id"]],
            "destination_services": [dest["id"]], "protocols": ["http", "tcp"], "ports": [allowed.port]})
        self.assertEqual(st, 201, b)
        client = self.issue({"kind": "client", "name": "billing-id", "common_name": "billing"})
        who = (self.write("billing.pem", client["cert_pem"]), self.write("billing.key", client["key_pem"]))
        server = self.issue({"kind": "server", "name": "egress-tls", "sans": [LOCALHOST]})

        # A certificate that does not exist is refused with the field named; nothing changes.
        version = self.config_version()
        self.assertProblem(self.admin.patch(f"/api/v1/clusters/{cid}", {"egress_tls_certificate_id": 999999}),
                           422, "egress_tls_certificate_id")
        self.assertEqual(self.config_version(), version)
        st, _, b = self.admin.patch(f"/api/v1/clusters/{cid}", {"egress_tls_certificate_id": server["id"],
                                                                 "egress_tls_address": f"{LOCALHOST}:3129"})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["egress_tls_certificate_id"], server["id"])
        self.assertEqual(self.config_version(), version + 1)
        # The certificate's key goes to the proxies: a service-owner of the cluster may edit it but not
        # choose its certificate (sending the current one back, as the web form does, is fine).
        owner, oc = self.make_user("owner", "service-owner")
        st, _, b = self.admin.post(f"/api/v1/users/{owner['id']}/clusters", {"cluster_id": cid})
        self.assertIn(st, (200, 201, 204), b)
        self.assertProblem(oc.patch(f"/api/v1/clusters/{cid}", {"egress_tls_certificate_id": None}), 403)
        st, _, b = oc.patch(f"/api/v1/clusters/{cid}", {"egress_tls_certificate_id": server["id"], "log_debug": True})
        self.assertEqual(st, 200, b)
        self.assertEqual(b["egress_tls_certificate_id"], server["id"])

        state = os.path.join(self.tmp, "egress-state")
        self.p = self.start_proxy(None, command="egress", expect_listeners=("proxy", "proxy-tls"),
                                  manager_args=self.manager_args(state, "egress-1", binds=(
                                      "proxy=127.0.0.1:0", "socks5=127.0.0.1:0", "proxy-tls=127.0.0.1:0")))
        self.p.wait_log(r"manager: applied version \d+")

        rc, code, body = self.curl(who, f"http://{LOCALHOST}:{allowed.port}/id")
        self.assertEqual((rc, code, body), (0, 200, b"E"))
        rc, code, body = self.curl(who, f"http://{LOCALHOST}:{unmapped.port}/id")
        self.assertEqual((rc, code), (0, 403), body)

        st, _, b = self.admin.post(f"/api/v1/certificates/{client['id']}/revoke", {"reason": "keyCompromise"})
        self.assertEqual(st, 200, b)
        # The revocation bumps every cluster; the next snapshot carries the new CRL and the handshake fails.
        wait_until(lambda: self.curl(who, f"http://{LOCALHOST}:{allowed.port}/id")[1] == 0, timeout=20,
                   message="the revoked client certificate refused")
        rc, code, body = self.curl(who, f"http://{LOCALHOST}:{allowed.port}/id")
        self.assertNotEqual(rc, 0)
        self.assertEqual(code, 0)

    def socks_tls(self, port, who):
        """SOCKS5 over TLS with a client certificate: the method selection reply."""
        raw = socket.create_connection((LOCALHOST, port), timeout=5)
        s = client_context(ca=self.ca_path, cert=who[0], key=who[1]).wrap_socket(raw, server_hostname=LOCALHOST)
        self.addCleanup(s.close)
        s.sendall(b"\x05\x01\x00")
        return s, recv_exact(s, 2)

    def test_socks5_over_tls_from_the_api_moves_with_its_address(self):
        cid = self.cluster["id"]
        echo = EchoServer()
        self.addCleanup(echo.close)
        billing = self.make_service(cid, "billing")
        dest = self.make_service(cid, "origin", ip_fqdn=LOCALHOST)
        st, _, b = self.admin.post("/api/v1/mappings", {
            "cluster_id": cid, "name": "billing-to-origin", "source_services": [billing["id"]],
            "destination_services": [dest["id"]], "protocols": ["tcp"], "ports": [echo.port]})
        self.assertEqual(st, 201, b)
        client = self.issue({"kind": "client", "name": "billing-id", "common_name": "billing"})
        who = (self.write("billing.pem", client["cert_pem"]), self.write("billing.key", client["key_pem"]))
        server = self.issue({"kind": "server", "name": "egress-tls", "sans": [LOCALHOST]})
        first, second = free_port(), free_port()
        # It cannot take the HTTPS proxy's address.
        self.assertProblem(self.admin.patch(f"/api/v1/clusters/{cid}", {
            "egress_tls_certificate_id": server["id"], "egress_tls_address": f"{LOCALHOST}:{first}",
            "egress_socks_tls_address": f"{LOCALHOST}:{first}"}), 422, "egress_socks_tls_address")
        st, _, b = self.admin.patch(f"/api/v1/clusters/{cid}", {
            "egress_tls_certificate_id": server["id"], "egress_socks_tls_address": f"{LOCALHOST}:{first}"})
        self.assertEqual(st, 200, b)

        state = os.path.join(self.tmp, "egress-state")
        self.p = self.start_proxy(None, command="egress", expect_listeners=("proxy", "socks5-tls"),
                                  manager_args=self.manager_args(state, "egress-1", binds=(
                                      "proxy=127.0.0.1:0", "socks5=127.0.0.1:0", "proxy-tls=127.0.0.1:0")))
        self.assertEqual(self.p.ports["socks5-tls"], first)
        s, sel = self.socks_tls(first, who)
        self.assertEqual(sel, b"\x05\x00")  # the certificate named the service: no password
        s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(LOCALHOST) + struct.pack(">H", echo.port))
        self.assertEqual(recv_exact(s, 10)[1], 0)
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")

        st, _, b = self.admin.patch(f"/api/v1/clusters/{cid}", {"egress_socks_tls_address": f"{LOCALHOST}:{second}"})
        self.assertEqual(st, 200, b)
        wait_until(lambda: connection_refused(first), timeout=20, message="the old SOCKS5-over-TLS port refuses")
        s2, sel2 = self.socks_tls(second, who)
        self.assertEqual(sel2, b"\x05\x00")
        s.sendall(b"still")  # the tunnel opened on the old port is still allowed: it keeps relaying
        self.assertEqual(recv_exact(s, 5), b"still")


mh.both_backends(EgressTlsCase, globals())

if __name__ == "__main__":
    mh.run()
