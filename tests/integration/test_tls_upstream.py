"""TLS towards upstreams (re-encryption): certificate and name verification, SNI, an optional client
certificate, pooled TLS connections reused, and a 502 (with the reason logged) when verification fails."""
import http.server
import json
import ssl
import threading
import unittest

from harness import ProxyTestCase, render, get
from tls_certs import Pki

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /bad-ca/ }
        forward: { cluster: bad_ca }
      - match: { prefix: /bad-name/ }
        forward: { cluster: bad_name }
      - match: { prefix: / }
        forward: { cluster: secure }
clusters:
  - name: secure
    endpoints: [ "${ORIGIN}" ]
    tls: { sni: up.example.com, ca: "${CA}", client_cert: "${CCERT}", client_key: "${CKEY}" }
  - name: bad_ca
    endpoints: [ "${ORIGIN}" ]
    tls: { sni: up.example.com, ca: "${OTHER_CA}" }
  - name: bad_name
    endpoints: [ "${ORIGIN}" ]
    tls: { sni: wrong.example.com, ca: "${CA}" }
"""


class TlsOrigin:
    """An HTTPS/1.1 origin (keep-alive) answering JSON: the SNI it saw and the client certificate CN."""

    def __init__(self, cert, key, ca):
        self.snis = []
        self.connections = 0
        origin = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                peer = self.connection.getpeercert() or {}
                cn = [v for rdn in peer.get("subject", ()) for k, v in rdn if k == "commonName"]
                body = json.dumps({"path": self.path, "client_cn": cn[0] if cn else None,
                                   "sni": origin.snis[-1] if origin.snis else None}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.sni_callback = lambda sock, name, c: self.snis.append(name)

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = self.socket.accept()
                origin.connections += 1
                return ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def finish_request(self, request, client_address):
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError):
                    return
                super().finish_request(request, client_address)

        self.server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


class UpstreamTls(ProxyTestCase):
    def setUp(self):
        tmp = self.tmpdir()
        self.pki = Pki(tmp)
        other = Pki(tmp, name="other")
        server = self.pki.issue("up.example.com", sans=["DNS:up.example.com"])
        self.client = self.pki.issue("proxy", client=True)
        self.origin = TlsOrigin(server[0], server[1], self.pki.cert)
        self.addCleanup(self.origin.close)
        self.proxy = self.start_proxy(render(CONFIG, ORIGIN=self.origin.address, CA=self.pki.cert,
                                             OTHER_CA=other.cert, CCERT=self.client[0], CKEY=self.client[1]))

    def test_verified_tls_with_sni_and_client_certificate_and_reuse(self):
        for i in range(3):
            r = get(self.proxy.port, f"/x/{i}")
            self.assertEqual(r.status, 200, r.body)
            body = json.loads(r.body)
            self.assertEqual(body["path"], f"/x/{i}")
            self.assertEqual(body["sni"], "up.example.com")
            self.assertEqual(body["client_cn"], "proxy")
        self.assertEqual(self.origin.connections, 1)  # one pooled TLS connection carried all three

    def test_wrong_ca_is_refused_with_502_and_a_reason(self):
        mark = self.proxy.mark()
        r = get(self.proxy.port, "/bad-ca/")
        self.assertEqual(r.status, 502)
        self.proxy.wait_log(r"upstream tls handshake failed: cluster=bad_ca .*reason=certificate: "
                            r"(unable to get local issuer certificate|self-signed certificate in certificate chain)",
                            since=mark)

    def test_name_mismatch_is_refused(self):
        mark = self.proxy.mark()
        r = get(self.proxy.port, "/bad-name/")
        self.assertEqual(r.status, 502)
        self.proxy.wait_log(r"upstream tls handshake failed: cluster=bad_name .*hostname mismatch", since=mark)


if __name__ == "__main__":
    unittest.main()
