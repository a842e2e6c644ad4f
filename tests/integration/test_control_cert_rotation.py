"""Certificate rotation under load, end to end through the control loop (issue 5: "certificate
rotation under load with zero failed requests").

A real `marchproxy manager` (SQLite) issues a server certificate from its CA; a route on a cluster
uses it, so the ingress under that manager (`--manager`) gets an `https` listener with it. Then,
with HTTPS load running (new connections and keep-alive ones), the manager is restarted with
`--cert-renew-days 365`: at start-up it renews the certificate (same row, new key and serial) and
bumps the cluster's config_version; the ingress, which kept serving while the manager was down,
receives the new snapshot and switches certificates. Asserted:

  * a new TLS connection is eventually served the renewed certificate (verified against the
    manager's CA with SNI localhost), and its serial is the row's new serial
  * zero failed requests over the whole run, and requests were served both before and after the
    switch
  * a keep-alive connection opened before the switch keeps working after it (hitless)
"""

import os
import subprocess
import threading
import time

import manager_harness as mh
from harness import free_port, wait_until
from test_control_loop import ControlLoopCase
from tls_client import TlsConn, client_context


def der_serial(der):
    """The certificate's serial as lower-case hex without leading zeros (openssl x509 -serial)."""
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                         capture_output=True, check=True).stdout.decode()
    return normalize_serial(out.strip().split("=", 1)[1])


def normalize_serial(s):
    return s.replace(":", "").lower().lstrip("0") or "0"


class CertRotationTest(ControlLoopCase):
    def issue_server_cert(self, days):
        st, _, b = self.admin.post("/api/v1/certificates/issue", {
            "kind": "server", "name": "web-tls", "sans": ["localhost", "127.0.0.1"], "days": days})
        self.assertEqual(st, 201, b)
        return b

    def certificate(self, cid):
        st, _, b = self.admin.get(f"/api/v1/certificates/{cid}")
        self.assertEqual(st, 200, b)
        return b

    def tls_get(self, conn):
        st, _, body = conn.request("GET", "/id", host="localhost")
        return st, body

    def served_der(self):
        """The certificate a NEW connection is served (verified: CA + host name), or None."""
        try:
            with TlsConn(self.https_port, self.ctx, sni="localhost") as c:
                st, body = self.tls_get(c)
                return c.peer_der() if st == 200 and body == b"A" else None
        except OSError:
            return None

    def test_renewed_certificate_reaches_the_ingress_without_a_failed_request(self):
        origin = self.start_origin("A")
        cert = self.issue_server_cert(days=90)  # outside the default 30 renewal days: not renewed yet
        st, _, route = self.admin.post("/api/v1/routes", {
            "cluster_id": self.cluster["id"], "name": "web", "hosts": ["localhost"], "paths": ["/"],
            "backends": [{"address": origin.address, "weight": 1}], "certificate_id": cert["id"]})
        self.assertEqual(st, 201, route)

        self.https_port = free_port()
        p = self.start_ingress(os.path.join(self.tmp, "ingress-state"),
                               binds=(f"http=127.0.0.1:{free_port()}", f"https=127.0.0.1:{self.https_port}"))
        self.ctx = client_context(ca=self.ca_path)  # verifies the chain and the name "localhost"
        old_der = wait_until(self.served_der, timeout=30, message="HTTPS through the ingress")
        old_serial = der_serial(old_der)
        self.assertEqual(old_serial, normalize_serial(cert["serial"]))

        # Load: one thread opens a new connection per request, one reuses keep-alive connections
        # (reopened every 20 requests, or when the proxy closes one gracefully), and one keeps a
        # single connection opened before the switch for the whole run.
        stop = threading.Event()
        lock = threading.Lock()
        served = []  # (monotonic time, peer DER) per successful request
        failed = []

        def record(der):
            with lock:
                served.append((time.monotonic(), der))

        def fail(what):
            with lock:
                failed.append(what)

        def new_connections():
            while not stop.is_set():
                try:
                    with TlsConn(self.https_port, self.ctx, sni="localhost") as c:
                        st, body = self.tls_get(c)
                        if st == 200 and body == b"A":
                            record(c.peer_der())
                        else:
                            fail(f"new connection: {st} {body!r}")
                except Exception as e:  # noqa: BLE001 - every failure counts
                    fail(f"new connection: {e!r}")

        def keep_alive():
            while not stop.is_set():
                try:
                    with TlsConn(self.https_port, self.ctx, sni="localhost") as c:
                        for _ in range(20):
                            if stop.is_set():
                                break
                            st, body = self.tls_get(c)
                            if st != 200 or body != b"A":
                                fail(f"keep-alive: {st} {body!r}")
                                break
                            record(c.peer_der())
                except Exception as e:  # noqa: BLE001
                    fail(f"keep-alive: {e!r}")

        held = {"times": [], "der": None, "error": None}
        held_conn = TlsConn(self.https_port, self.ctx, sni="localhost")
        self.addCleanup(held_conn.close)
        held["der"] = held_conn.peer_der()

        def held_connection():
            try:
                while not stop.is_set():
                    st, body = self.tls_get(held_conn)
                    if st != 200 or body != b"A":
                        held["error"] = f"{st} {body!r}"
                        return
                    held["times"].append(time.monotonic())
                    time.sleep(0.05)
            except Exception as e:  # noqa: BLE001
                held["error"] = repr(e)

        threads = [threading.Thread(target=f, daemon=True) for f in (new_connections, keep_alive, held_connection)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(served) >= 50 and held["times"], timeout=30, message="load running")

            # Renewal: the manager comes back with a renewal window that covers the 90-day certificate.
            version_before = self.config_version()
            mark = p.mark()
            self.mgr.stop()
            p.wait_log(r"manager unreachable", since=mark, timeout=60)
            self.mgr = self.start_manager(extra_args=["--cert-renew-days", "365"])
            self.admin = self.mgr.client()
            self.admin.login()
            renewed = self.certificate(cert["id"])
            new_serial = normalize_serial(renewed["serial"])
            self.assertNotEqual(new_serial, old_serial, renewed)
            self.assertTrue(renewed.get("renewed_at"), renewed)
            self.assertGreater(self.config_version(), version_before)

            # A new connection gets the renewed certificate (the client verified it).
            new_der = wait_until(lambda: (lambda d: d if d is not None and d != old_der else None)(
                self.served_der()), timeout=90, message="the renewed certificate on a new connection")
            switched_at = time.monotonic()
            self.assertEqual(der_serial(new_der), new_serial)

            # Load keeps going on the new certificate for a while.
            wait_until(lambda: sum(1 for t, d in served if t > switched_at and d == new_der) >= 50
                       and len([t for t in held["times"] if t > switched_at]) >= 10,
                       timeout=60, message="load after the switch")
        finally:
            stop.set()
            for t in threads:
                t.join(30)

        self.assertEqual(failed, [])
        self.assertIsNone(held["error"])
        self.assertGreater(sum(1 for _, d in served if d == old_der), 0)
        self.assertGreater(sum(1 for _, d in served if d == new_der), 0)
        self.assertEqual({d for _, d in served} - {old_der, new_der}, set())
        # The connection opened before the switch still has the old certificate and kept serving.
        self.assertEqual(held["der"], old_der)
        self.assertGreater(len([t for t in held["times"] if t > switched_at]), 0)
        self.assertEqual(self.manager_metric(p, "marchproxy_manager_apply_failures_total"), 0)


if __name__ == "__main__":
    mh.run()
