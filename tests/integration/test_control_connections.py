"""The control listener's connections, end to end: a real `marchproxy manager` (SQLite) and a real
`marchproxy ingress` under it (`--manager`, heartbeat every second).

  * the agent keeps its connections alive: many heartbeats and long-polls, one connection per loop
    (the manager counts its TLS handshakes; the agent counts its connections)
  * a new connection that offers the last TLS session resumes it (no full handshake), and the
    resumed session still authenticates the proxy by its client certificate
  * a proxy certificate revoked alone through the CA API (the proxy is not deleted): a call with it
    is refused (403 certificate-revoked); the agent registers again, gets a new certificate and
    keeps serving, and the old serial stays revoked
  * the control listener's own certificate re-issued (here: revoked through the CA API, which the
    listener replaces at once) is served to new connections without a manager restart, while the
    proxy keeps heartbeating
"""

import os
import socket
import ssl
import subprocess

import manager_harness as mh
from control_client import ControlClient
from harness import LOCALHOST, metric_sum, parse_metrics, wait_until
from test_control_loop import ControlLoopCase


def manager_metric(case, name, **labels):
    st, _, text = case.admin.get("/metrics")
    case.assertEqual(st, 200, text)
    return metric_sum(parse_metrics(text if isinstance(text, str) else text.decode()), name, **labels) or 0


def served_serial(port, ca_path):
    """The serial (upper-case hex, no leading zeros) of the certificate a NEW connection to the
    control listener is served, verified against the manager CA for 127.0.0.1."""
    ctx = ssl.create_default_context(cafile=ca_path)
    with socket.create_connection((LOCALHOST, port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=LOCALHOST) as s:
            der = s.getpeercert(binary_form=True)
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"], input=der,
                         capture_output=True, check=True).stdout.decode()
    return out.strip().split("=", 1)[1].upper().lstrip("0")


def norm(serial):
    return serial.replace(":", "").upper().lstrip("0")


class ControlConnectionsTest(ControlLoopCase):
    def certificates(self):
        st, _, b = self.admin.get("/api/v1/certificates?limit=1000")
        self.assertEqual(st, 200, b)
        return b["items"] if isinstance(b, dict) else b

    def certificate_by_serial(self, serial):
        return next((c for c in self.certificates() if norm(c.get("serial", "")) == norm(serial)), None)

    def test_agent_keeps_one_connection_per_loop(self):
        a, b = self.start_origin("A"), self.start_origin("B")
        route = self.make_route(a.address)
        p = self.start_ingress(os.path.join(self.tmp, "state"))
        self.wait_origin(p, "A")
        metric = lambda name, **kw: metric_sum(parse_metrics(p.metrics_text()), name, **kw)  # noqa: E731
        wait_until(lambda: (metric("marchproxy_manager_heartbeats_total") or 0) >= 6, timeout=30,
                   message="six heartbeats")
        # A route change wakes the long-poll: a 200 and a new poll, still on the same connection.
        version = self.config_version()
        self.set_backend(route, b.address)
        self.wait_origin(p, "B")
        wait_until(lambda: (self.proxy_row("ingress-1") or {}).get("applied_version", 0) > version, timeout=15,
                   message="the new version applied and reported")
        self.assertEqual(metric("marchproxy_manager_connections_total", loop="heartbeat"), 1)
        self.assertEqual(metric("marchproxy_manager_connections_total", loop="config"), 1)
        # The manager saw one handshake for the registration, one per loop; none per beat.
        self.assertLessEqual(manager_metric(self, "marchproxy_manager_control_tls_handshakes_total"), 3)

    def test_a_resumed_tls_session_still_authenticates_the_proxy(self):
        c = ControlClient(self.mgr.control_port, self.ca_path, self.tmp, "sim-1")
        st, _, b = c.register(self.cluster["api_key"])
        self.assertEqual(st, 201, b)
        st, _, b = c.heartbeat(0)
        self.assertEqual(st, 200, b)
        before = manager_metric(self, "marchproxy_manager_control_tls_handshakes_total", resumed="true")
        for _ in range(3):
            st, _, b = c.heartbeat(0, resume=True)  # a new connection each time, offering the session
            self.assertEqual(st, 200, b)
        self.assertEqual(manager_metric(self, "marchproxy_manager_control_tls_handshakes_total", resumed="true"),
                         before + 3)
        # Another proxy's id with this (resumed) identity is still refused: the session carries the
        # certificate it was made with.
        st, _, b = c.request("POST", f"/api/v1/proxies/{c.id + 1000}/heartbeat", {}, resume=True)
        self.assertEqual(st, 403, b)

    def test_revoked_proxy_certificate_alone_makes_the_agent_register_again(self):
        a = self.start_origin("A")
        self.make_route(a.address)
        p = self.start_ingress(os.path.join(self.tmp, "state"))
        self.wait_origin(p, "A")
        row = wait_until(lambda: self.proxy_row("ingress-1"), message="proxy listed")
        old_serial = row["certificate_serial"]
        cert = self.certificate_by_serial(old_serial)
        self.assertIsNotNone(cert, f"proxy certificate {old_serial} in GET /api/v1/certificates")
        self.assertEqual(cert["kind"], "proxy")

        # The protocol: a call with a revoked certificate (and the right token) is refused, on a kept
        # connection too. Shown with a simulated proxy, whose token does not change under us.
        sim = ControlClient(self.mgr.control_port, self.ca_path, self.tmp, "sim-1")
        st, _, b = sim.register(self.cluster["api_key"])
        self.assertEqual(st, 201, b)
        st, _, b = sim.config(keep=True)
        self.assertEqual(st, 200, b)
        sim_cert = self.certificate_by_serial(self.proxy_row("sim-1")["certificate_serial"])
        st, _, b = self.admin.post(f"/api/v1/certificates/{sim_cert['id']}/revoke", {"reason": "keyCompromise"})
        self.assertEqual(st, 200, b)
        st, _, b = sim.config(keep=True)
        self.assertEqual(st, 403, b)
        self.assertTrue(b["type"].endswith("/certificate-revoked"), b)
        st, _, b = sim.heartbeat(0)
        self.assertEqual(st, 403, b)

        # The agent: the same revocation of its certificate alone.
        mark = p.mark()
        st, _, b = self.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", {"reason": "keyCompromise"})
        self.assertEqual(st, 200, b)

        # The agent notices, registers again (same id, new certificate) and keeps serving.
        # The revocation wakes the long-poll (every CRL changed), whose next call is refused: seconds.
        p.wait_log(r"certificate was revoked .*registering ingress-1 again", since=mark, timeout=15)
        p.wait_log(rf"manager: registered as id {row['id']} ", since=mark, timeout=30)
        new = wait_until(lambda: (lambda r: r if r and norm(r["certificate_serial"]) != norm(old_serial) else None)(
            self.proxy_row("ingress-1")), timeout=15, message="a new certificate serial")
        self.assertEqual(new["id"], row["id"])
        wait_until(lambda: (self.proxy_row("ingress-1") or {}).get("status") == "online", timeout=15,
                   message="heartbeats with the new certificate")
        self.assertEqual(self.origin_name(p), "A")
        old = self.certificate_by_serial(old_serial)
        self.assertTrue(old.get("revoked"), old)
        wait_until(lambda: (self.proxy_row("ingress-1") or {}).get("applied_version") == self.config_version(),
                   timeout=20, message="heartbeats report the newest version again")

    def test_control_listener_serves_a_reissued_certificate_without_a_restart(self):
        a = self.start_origin("A")
        self.make_route(a.address)
        p = self.start_ingress(os.path.join(self.tmp, "state"))
        self.wait_origin(p, "A")
        before = served_serial(self.mgr.control_port, self.ca_path)
        cert = next(c for c in self.certificates() if c["name"] == "manager-control")
        self.assertEqual(norm(cert["serial"]), before)

        st, _, b = self.admin.post(f"/api/v1/certificates/{cert['id']}/revoke", {"reason": "superseded"})
        self.assertEqual(st, 200, b)
        after = wait_until(lambda: (lambda s: s if s != before else None)(
            served_serial(self.mgr.control_port, self.ca_path)), timeout=15, message="a new listener certificate")
        now = next(c for c in self.certificates() if c["name"] == "manager-control" and not c.get("revoked"))
        self.assertEqual(norm(now["serial"]), after)
        self.assertEqual(len(self.managers), 1)  # no restart
        self.assertIn("control listener: now serving certificate", self.mgr.output())
        # The proxy keeps its calls going (its kept connections, or new ones on the new certificate).
        beats = metric_sum(parse_metrics(p.metrics_text()), "marchproxy_manager_heartbeats_total")
        wait_until(lambda: metric_sum(parse_metrics(p.metrics_text()), "marchproxy_manager_heartbeats_total")
                   >= beats + 3, timeout=15, message="heartbeats after the switch")
        self.assertEqual(metric_sum(parse_metrics(p.metrics_text()), "marchproxy_manager_reachable"), 1)


if __name__ == "__main__":
    mh.run()
