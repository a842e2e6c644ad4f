"""Egress L4 port forwards end to end: plain TCP and UDP clients (no proxy protocol) on loopback.

A forward listens on its own port and relays to one destination. The caller is identified by its
source address (loopback has the whole 127.0.0.0/8: a client bound to 127.0.0.2 is "another host"),
then the destination is authorised by the mappings exactly as a CONNECT. Names resolve through the
config's `dns.hosts`.
"""

import json
import os
import socket
import ssl
import subprocess
import threading

from harness import LOCALHOST, ProxyTestCase, connection_refused, free_port, main, render, wait_until
from test_egress_proxy import EchoServer, closed_by_peer, recv_exact
from tls_certs import Pki
from tls_client import client_context

# Both test configs: two services, origin.test on loopback, an access log to read.
HEAD = """
schema: 1
kind: egress
workers: 1
admin: {address: 127.0.0.1, port: 0}
access_log: {enabled: true, path: "${log}"}
services: [{name: billing}, {name: reports}]
dns:
  hosts:
    origin.test: [127.0.0.1]
"""

BASE = HEAD + """
forwards:
  - name: pg
    listen: 127.0.0.1:0
    destination: origin.test:${echo}
    sources:
      - {cidr: 127.0.0.1/32, service: billing}
${extra_sources}
  - name: pg-other-port
    listen: 127.0.0.1:0
    destination: origin.test:${other}
    sources: [{cidr: 127.0.0.0/8, service: billing}]
  - name: pg-reports
    listen: 127.0.0.1:0
    destination: origin.test:${echo}
    sources: [{cidr: 127.0.0.0/8, service: reports}]
  - name: dns
    listen: 127.0.0.1:0
    protocol: udp
    destination: origin.test:${udp}
    idle_timeout: 1m
    sources: [{cidr: 127.0.0.0/8, service: billing}]
  - name: pg-idle
    listen: 127.0.0.1:0
    destination: origin.test:${echo}
    idle_timeout: 200ms
    sources: [{cidr: 127.0.0.0/8, service: billing}]
  - name: dns-idle
    listen: 127.0.0.1:0
    protocol: udp
    destination: origin.test:${udp}
    idle_timeout: 200ms
    sources: [{cidr: 127.0.0.0/8, service: billing}]
  - name: dns-one
    listen: 127.0.0.1:0
    protocol: udp
    destination: origin.test:${udp}
    max_sessions: 1
    sources: [{cidr: 127.0.0.0/8, service: billing}]
mappings:
  - name: billing-origin
    sources: [billing]
    destinations: [origin.test, 127.0.0.1/32]
    protocols: [tcp, udp]
    ports: [${allowed_ports}]
"""

LISTENERS = ("pg", "pg-other-port", "pg-reports", "pg-idle", "dns", "dns-idle", "dns-one")


class UdpEcho:
    """Answers every datagram with b"echo:" + payload, to the address it came from."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOCALHOST, 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                d, a = self.sock.recvfrom(65536)
                self.sock.sendto(b"echo:" + d, a)
            except OSError:
                return

    def close(self):
        self.sock.close()


def udp_client(bind_host=LOCALHOST, timeout=5.0):
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind((bind_host, 0))
    c.settimeout(timeout)
    return c


def refuses_datagrams(c):
    """A datagram to a closed loopback port comes back as ICMP port unreachable (c is connected)."""
    try:
        c.send(b"x")
        c.recv(65536)
    except ConnectionRefusedError:
        return True
    except socket.timeout:
        pass
    return False


def tcp_client(port, bind_host=None, timeout=5.0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if bind_host:
        s.bind((bind_host, 0))
    s.connect((LOCALHOST, port))
    return s


class ForwardTest(ProxyTestCase):
    def setUp(self):
        self.echo = EchoServer()
        self.addCleanup(self.echo.close)
        self.udp = UdpEcho()
        self.addCleanup(self.udp.close)
        self.log_path = os.path.join(self.tmpdir(), "access.log")
        self.p = self.start_proxy(self.config(), command="egress", expect_listeners=LISTENERS)

    def config(self, allowed_ports=None, extra_sources=""):
        ports = allowed_ports or f'"{self.echo.port}", "{self.udp.port}"'
        return render(BASE, log=self.log_path, echo=self.echo.port, udp=self.udp.port,
                      other=self.echo.port + 1 if self.echo.port + 1 != self.udp.port else self.echo.port + 2,
                      allowed_ports=ports, extra_sources=extra_sources)

    def tcp(self, port, bind_host=None):
        s = tcp_client(port, bind_host)
        self.addCleanup(s.close)
        return s

    def access_log(self, **match):
        with open(self.log_path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return [e for e in entries if all(e.get(k) == v for k, v in match.items())]

    def wait_entry(self, **match):
        return wait_until(lambda: self.access_log(**match), message=f"access log entry {match}")[0]

    # -- TCP

    def test_tcp_forward_relays_to_the_destination(self):
        s = self.tcp(self.p.ports["pg"])
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        s.sendall(b"x" * 100000)
        self.assertEqual(recv_exact(s, 100000), b"x" * 100000)
        wait_until(lambda: self.p.metric("marchproxy_egress_tunnels_open") == 1, message="one UDP flow open")
        s.shutdown(socket.SHUT_WR)
        self.assertTrue(closed_by_peer(s))  # the half-close reached the echo server and came back
        s.close()
        e = self.wait_entry(kind="forward", method="pg")
        self.assertEqual((e["service"], e["decision"], e["reason"], e["rule"]),
                         ("billing", "allow", "allowed", "billing-origin"))
        self.assertEqual((e["host"], e["port"], e["address"], e["protocol"]),
                         ("origin.test", self.echo.port, "127.0.0.1", "tcp"))
        self.assertEqual((e["bytes_up"], e["bytes_down"]), (100004, 100004))
        self.assertEqual(self.p.metric("marchproxy_egress_decisions_total", service="billing",
                                       mapping="billing-origin", decision="allow"), 1)
        self.assertEqual(self.p.metric("marchproxy_egress_bytes_total", service="billing", direction="up"), 100004)

    def test_unlisted_source_is_closed_and_logged(self):
        s = self.tcp(self.p.ports["pg"], bind_host="127.0.0.2")  # pg lists 127.0.0.1/32 only
        s.sendall(b"ping")
        self.assertTrue(closed_by_peer(s))
        e = self.wait_entry(kind="forward", method="pg", reason="unknown_source")
        self.assertEqual((e["decision"], e["service"]), ("deny", ""))
        self.assertTrue(e["client"].startswith("127.0.0.2:"), e)
        self.assertEqual(self.echo.accepted, 0)  # nothing reached the destination
        self.p.wait_log(r'forward "pg" refused 127\.0\.0\.2:\d+: no source CIDR contains it')
        self.assertEqual(self.p.metric("marchproxy_egress_decisions_total", decision="deny",
                                       reason="unknown_source"), 1)

    def test_destination_no_mapping_allows_is_closed(self):
        # The port is not in the mapping; and the service "reports" has no mapping at all.
        for name, service in (("pg-other-port", "billing"), ("pg-reports", "reports")):
            s = self.tcp(self.p.ports[name])
            s.sendall(b"ping")
            self.assertTrue(closed_by_peer(s), name)
            e = self.wait_entry(kind="forward", method=name)
            self.assertEqual((e["service"], e["decision"], e["reason"]), (service, "deny", "no_rule"))
        self.p.wait_log(r'forward "pg-reports" refused for service "reports" to origin\.test:\d+: no rule allows')
        self.assertEqual(self.echo.accepted, 0)

    def test_reload_revoking_the_mapping_closes_open_forwards(self):
        s = self.tcp(self.p.ports["pg"])
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        u = udp_client()
        self.addCleanup(u.close)
        u.sendto(b"hi", (LOCALHOST, self.p.ports["dns"]))
        self.assertEqual(u.recvfrom(65536)[0], b"echo:hi")
        wait_until(lambda: self.p.metric("marchproxy_egress_tunnels_open") == 2, message="two tunnels")
        mark = self.p.mark()
        self.p.reload(self.config(allowed_ports='"1"'))
        self.p.wait_log("egress config reloaded", since=mark)
        self.assertTrue(closed_by_peer(s), "forwarded TCP connection still open after its mapping was revoked")
        wait_until(lambda: self.p.metric("marchproxy_egress_tunnels_open") == 0, message="tunnels closed")
        self.assertEqual(self.p.metric("marchproxy_egress_tunnels_revoked_total"), 2)
        self.assertTrue(self.access_log(kind="forward", method="pg", reason="revoked"))
        self.assertTrue(self.access_log(kind="forward", method="dns", reason="revoked"))
        # A new datagram is authorised afresh, and refused.
        u.sendto(b"late", (LOCALHOST, self.p.ports["dns"]))
        self.wait_entry(kind="forward", method="dns", reason="no_rule")

    def test_reload_dropping_the_source_closes_open_forwards(self):
        self.p.reload(self.config(extra_sources="      - {cidr: 127.0.0.3/32, service: billing}"))
        self.p.wait_log("egress config reloaded")
        s = self.tcp(self.p.ports["pg"], bind_host="127.0.0.3")
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        self.p.reload(self.config())  # 127.0.0.3 is no longer a source
        self.assertTrue(closed_by_peer(s), "forward still open after its source was removed")

    # -- UDP

    def test_udp_round_trip_and_replies_go_to_their_own_client(self):
        a, b = udp_client(), udp_client()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        dest = (LOCALHOST, self.p.ports["dns"])
        for i in range(3):
            a.sendto(b"from-a-%d" % i, dest)
            b.sendto(b"from-b-%d" % i, dest)
        got_a = sorted(a.recvfrom(65536)[0] for _ in range(3))
        got_b = sorted(b.recvfrom(65536)[0] for _ in range(3))
        self.assertEqual(got_a, [b"echo:from-a-%d" % i for i in range(3)])
        self.assertEqual(got_b, [b"echo:from-b-%d" % i for i in range(3)])
        self.assertEqual(self.p.metric("marchproxy_egress_tunnels_open"), 2)  # one flow per client address
        self.assertEqual(self.p.metric("marchproxy_egress_decisions_total", service="billing",
                                       mapping="billing-origin", decision="allow"), 2)


    def test_udp_flows_are_bounded(self):
        a, b = udp_client(), udp_client()
        self.addCleanup(a.close)
        self.addCleanup(b.close)
        dest = (LOCALHOST, self.p.ports["dns-one"])
        a.sendto(b"a", dest)
        self.assertEqual(a.recvfrom(65536)[0], b"echo:a")
        b.sendto(b"b", dest)  # a second client address while the first flow is open: dropped
        e = self.wait_entry(kind="forward", method="dns-one", reason="session_limit")
        self.assertEqual((e["decision"], e["service"]), ("deny", "billing"))
        a.sendto(b"a2", dest)  # the open flow still works
        self.assertEqual(a.recvfrom(65536)[0], b"echo:a2")


    def test_idle_timeout_ends_connections_and_flows(self):
        s = self.tcp(self.p.ports["pg-idle"])
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        self.assertTrue(closed_by_peer(s), "an idle forwarded connection stays open")
        u = udp_client()
        self.addCleanup(u.close)
        dest = (LOCALHOST, self.p.ports["dns-idle"])
        u.sendto(b"one", dest)
        self.assertEqual(u.recvfrom(65536)[0], b"echo:one")
        e = self.wait_entry(kind="forward", method="dns-idle", decision="allow")  # written when the flow ends
        self.assertEqual((e["bytes_up"], e["bytes_down"]), (3, 8))
        u.sendto(b"two", dest)  # a new flow for the same client
        self.assertEqual(u.recvfrom(65536)[0], b"echo:two")


TLS_CONFIG = HEAD + """
forwards:
  - name: pg-tls
    listen: 127.0.0.1:0
    destination: origin.test:${echo}
    tls: {cert: "${cert}", key: "${key}", client_ca: "${ca}"}
  - name: pg-tls-sources      # the certificate names the service; the address must be one of its
    listen: 127.0.0.1:0
    destination: origin.test:${echo}
    tls: {cert: "${cert}", key: "${key}", client_ca: "${ca}"}
    sources: [{cidr: 127.0.0.2/32, service: billing}]
mappings:
  - name: billing-origin
    sources: [billing]
    destinations: [origin.test, 127.0.0.1/32]
    protocols: [tcp]
    ports: ["${echo}"]
"""


class ForwardMtlsTest(ProxyTestCase):
    def setUp(self):
        self.echo = EchoServer()
        self.addCleanup(self.echo.close)
        tmp = self.tmpdir()
        self.pki = Pki(tmp)
        server = self.pki.issue("forward.test", sans=["DNS:forward.test"])
        self.billing = self.pki.issue("billing", client=True)
        self.reports = self.pki.issue("reports", client=True)
        self.ghost = self.pki.issue("ghost", client=True)
        self.stranger = Pki(tmp, name="other-ca").issue("billing", client=True)  # right CN, wrong CA
        self.log_path = os.path.join(tmp, "access.log")
        self.p = self.start_proxy(render(TLS_CONFIG, log=self.log_path, echo=self.echo.port, cert=server[0],
                                         key=server[1], ca=self.pki.cert),
                                  command="egress", expect_listeners=("pg-tls", "pg-tls-sources"))

    def open(self, who, listener="pg-tls", bind_host=None):
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.settimeout(5)
        if bind_host:
            raw.bind((bind_host, 0))
        raw.connect((LOCALHOST, self.p.ports[listener]))
        ctx = client_context(ca=self.pki.cert, cert=who[0] if who else None, key=who[1] if who else None)
        s = ctx.wrap_socket(raw, server_hostname="forward.test")
        self.addCleanup(s.close)
        return s

    def echoes(self, who, **kw):
        """True when a ping comes back through the forward; False when the proxy refused."""
        try:
            s = self.open(who, **kw)
            s.sendall(b"ping")
            ok = recv_exact(s, 4) == b"ping"
            s.close()  # the access log line is written when the tunnel ends
            return ok
        except (ssl.SSLError, ConnectionError, OSError):
            return False

    def entries(self, **match):
        with open(self.log_path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return [e for e in entries if all(e.get(k) == v for k, v in match.items())]

    def test_client_certificate_names_the_service(self):
        self.assertTrue(self.echoes(self.billing))
        e = wait_until(lambda: self.entries(method="pg-tls", decision="allow"), message="allow entry")[0]
        self.assertEqual((e["service"], e["rule"], e["protocol"]), ("billing", "billing-origin", "tcp"))

    def test_wrong_ca_unknown_cn_and_no_certificate_are_refused(self):
        self.assertFalse(self.echoes(self.stranger))
        wait_until(lambda: self.entries(method="pg-tls", reason="bad_client_cert"), message="bad_client_cert")
        self.assertFalse(self.echoes(None))
        wait_until(lambda: len(self.entries(method="pg-tls", reason="bad_client_cert")) == 2, message="no cert")
        self.assertFalse(self.echoes(self.ghost))
        self.p.wait_log(r'forward "pg-tls" refused .*: the client certificate\'s CN "ghost" is not a service')
        self.assertTrue(self.entries(method="pg-tls", reason="unknown_service"))
        self.assertFalse(self.echoes(self.reports))  # a service, but no mapping allows it
        e = wait_until(lambda: self.entries(method="pg-tls", service="reports"), message="reports entry")[0]
        self.assertEqual((e["decision"], e["reason"]), ("deny", "no_rule"))
        self.assertEqual(self.echo.accepted, 0)

    def test_sources_restrict_certificate_callers_by_address(self):
        self.assertFalse(self.echoes(self.billing, listener="pg-tls-sources"))  # from 127.0.0.1
        self.assertTrue(self.entries(method="pg-tls-sources", reason="unknown_source", service="billing"))
        self.assertTrue(self.echoes(self.billing, listener="pg-tls-sources", bind_host="127.0.0.2"))


RELOAD_CONFIG = HEAD + """
forwards:
${forwards}
mappings:
  - name: billing-origin
    sources: [billing]
    destinations: [origin.test, 127.0.0.1/32]
    protocols: [tcp, udp]
    ports: ["${echo}", "${udp}"]
    revoke_grace: ${grace}
"""

FORWARD = """  - name: ${name}
    listen: 127.0.0.1:${port}
    destination: origin.test:${echo}
    sources: [{cidr: 127.0.0.0/8, service: billing}]
"""

UDP_FORWARD = """  - name: ${name}
    listen: 127.0.0.1:${port}
    protocol: udp
    destination: origin.test:${udp}
    sources: [{cidr: 127.0.0.0/8, service: billing}]
"""


class ForwardReloadTest(ProxyTestCase):
    """Forwards added and removed by a reload start and stop listening without a restart; what a
    removed forward already relays (TCP connections and UDP flows) keeps its grace period."""

    def setUp(self):
        self.echo = EchoServer()
        self.addCleanup(self.echo.close)
        self.udp = UdpEcho()
        self.addCleanup(self.udp.close)
        self.log_path = os.path.join(self.tmpdir(), "access.log")
        self.p = self.start_proxy(self.config(["a"]), command="egress", expect_listeners=("a",))

    def config(self, names, grace="0s", ports=None, udp_forwards=None):
        forwards = "".join(render(FORWARD, name=n, echo=self.echo.port, port=(ports or {}).get(n, 0)) for n in names)
        forwards += "".join(render(UDP_FORWARD, name=n, port=p, udp=self.udp.port) for n, p in (udp_forwards or {}).items())
        return render(RELOAD_CONFIG, log=self.log_path, echo=self.echo.port, udp=self.udp.port, forwards=forwards,
                      grace=grace)

    def access_log_has(self, **match):
        def entries():
            with open(self.log_path) as f:
                return [e for e in map(json.loads, filter(str.strip, f)) if all(e.get(k) == v for k, v in match.items())]
        return wait_until(entries, message=f"access log entry {match}")

    def test_removed_forward_stops_accepting_and_an_added_one_starts(self):
        old = self.p.ports["a"]
        s = tcp_client(old)
        self.addCleanup(s.close)
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")

        # "a" goes, "b" comes; the mapping gives open tunnels it no longer allows 3 s.
        mark = self.p.mark()
        self.p.reload(self.config(["b"], grace="3s"))
        self.p.wait_log(r"closed listener a\|", since=mark)
        # The tunnel "a" accepted is no longer identified (its forward is gone): revoked after the grace,
        # relaying until then.
        self.p.wait_log(r'revokes the tcp tunnel of service "billing" .* closing it in 3000 ms', since=mark)
        s.sendall(b"still")
        self.assertEqual(recv_exact(s, 5), b"still")
        wait_until(lambda: "b" in self.p.ports, message="b listening")
        wait_until(lambda: connection_refused(old), message="the removed forward's port refuses connections")
        b = tcp_client(self.p.ports["b"])
        self.addCleanup(b.close)
        b.sendall(b"new")
        self.assertEqual(recv_exact(b, 3), b"new")
        self.assertTrue(closed_by_peer(s, timeout=15), "the removed forward's tunnel outlived its grace period")
        self.assertTrue(self.access_log_has(method="a", reason="revoked"))
        self.assertEqual(self.p.port_conflicts, [])


    def fds(self):
        return sorted(os.readlink(f"/proc/{self.p.pid}/fd/{n}") for n in os.listdir(f"/proc/{self.p.pid}/fd"))

    def reloaded(self, result, count):
        wait_until(lambda: self.p.metric("marchproxy_egress_config_reloads_total", result=result) == count,
                   message=f"{count} reload(s) {result}")

    def echoes(self, port, data):
        s = tcp_client(port)
        try:
            s.sendall(data)
            return recv_exact(s, len(data)) == data
        finally:
            s.close()

    def test_fifty_reloads_leak_no_descriptor_and_a_taken_port_keeps_the_old_config(self):
        self.assertTrue(self.echoes(self.p.ports["a"], b"ping"))
        wait_until(lambda: self.p.metric("marchproxy_egress_tunnels_open") == 0, message="the tunnel closed")
        before = self.fds()
        b_port = free_port()
        # "b" added and removed 25 times, each reload right after the previous one applied.
        for i in range(25):
            self.p.reload(self.config(["a", "b"], ports={"b": b_port}))
            self.reloaded("ok", 2 * i + 1)
            self.p.reload(self.config(["a"]))
            self.reloaded("ok", 2 * i + 2)
        wait_until(lambda: connection_refused(b_port), message="the removed forward's port refuses connections")
        wait_until(lambda: len(self.fds()) <= len(before), message=f"descriptors back to {before}")
        self.assertTrue(self.echoes(self.p.ports["a"], b"after"))

        # A port another process holds: the reload fails, is counted, says which port, closes what it
        # had bound for it, and the running forwards keep serving.
        blocker = socket.socket()
        self.addCleanup(blocker.close)
        blocker.bind((LOCALHOST, 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        mark = self.p.mark()
        self.p.reload(self.config(["a", "b", "c"], ports={"b": b_port, "c": taken}))
        self.reloaded("failed", 1)
        self.p.wait_log(rf'listener "c": cannot listen on 127\.0\.0\.1:{taken}: .*in use', since=mark)
        self.assertTrue(self.echoes(self.p.ports["a"], b"still"))
        self.assertTrue(connection_refused(b_port), "a failed reload bound a forward of its config")
        wait_until(lambda: len(self.fds()) <= len(before), message=f"descriptors back to {before}")
        # Once the port is free the same config applies.
        blocker.close()
        self.p.reload(self.config(["a", "b", "c"], ports={"b": b_port, "c": taken}) + "\n")
        self.reloaded("ok", 51)
        self.assertTrue(self.echoes(taken, b"c"))
        self.assertTrue(self.echoes(b_port, b"b"))


    def test_removed_udp_forward_drains_its_flows_for_the_grace_then_closes(self):
        u_port = free_port(socket.SOCK_DGRAM)
        self.p.reload(self.config(["a"], grace="6s", udp_forwards={"u": u_port}))
        self.reloaded("ok", 1)
        c = udp_client(timeout=0.5)
        self.addCleanup(c.close)
        c.connect((LOCALHOST, u_port))
        c.send(b"hi")
        self.assertEqual(c.recv(65536), b"echo:hi")

        # "u" goes; the mapping gives the tunnels it no longer allows 6 s, as for a TCP forward.
        mark = self.p.mark()
        self.p.reload(self.config(["a"], grace="6s"))
        self.reloaded("ok", 2)
        self.p.wait_log(r'revokes the udp tunnel of service "billing" .* closing it in 6000 ms', since=mark)
        # The open flow is still relayed both ways until then...
        c.send(b"still")
        self.assertEqual(c.recv(65536), b"echo:still")
        # ...while a new client address gets no flow.
        n = udp_client(timeout=0.5)
        self.addCleanup(n.close)
        n.connect((LOCALHOST, u_port))
        n.send(b"new")
        with self.assertRaises((socket.timeout, ConnectionRefusedError)):
            n.recv(65536)
        self.assertEqual(self.p.metric("marchproxy_egress_tunnels_open"), 1)

        # After the grace the flow ends and the port closes.
        wait_until(lambda: self.p.metric("marchproxy_egress_tunnels_open") == 0, timeout=30,
                   message="the UDP flow ended after its grace")
        self.assertTrue(self.access_log_has(method="u", protocol="udp", reason="revoked"))
        wait_until(lambda: refuses_datagrams(c), message="the drained UDP forward's port refuses datagrams")

    def test_removed_udp_forward_ends_its_flows_and_closes_its_port(self):
        u_port = free_port(socket.SOCK_DGRAM)
        self.p.reload(self.config(["a"], udp_forwards={"u": u_port}))
        self.reloaded("ok", 1)
        c = udp_client(timeout=0.5)
        self.addCleanup(c.close)
        c.connect((LOCALHOST, u_port))
        c.send(b"hi")
        self.assertEqual(c.recv(65536), b"echo:hi")
        wait_until(lambda: self.p.metric("marchproxy_egress_tunnels_open") == 1, message="one UDP flow open")

        self.p.reload(self.config(["a"]))
        self.reloaded("ok", 2)
        wait_until(lambda: self.p.metric("marchproxy_egress_tunnels_open") == 0, message="the UDP flow ended")
        wait_until(lambda: refuses_datagrams(c), message="the removed UDP forward's port refuses datagrams")
        self.assertTrue(self.echoes(self.p.ports["a"], b"tcp"))


class ForwardCheckTest(ProxyTestCase):
    def test_check_reports_forward_errors(self):
        path = os.path.join(self.tmpdir(), "egress.yaml")
        with open(path, "w") as f:
            f.write("""kind: egress
services: [{name: billing}]
forwards:
  - name: pg
    listen: 127.0.0.1:15432
    destination: "db.example.com"
    sources: [{cidr: 10.1.2.3/16, service: billing}]
  - name: dns
    listen: 127.0.0.1:15353
    protocol: udp
    destination: 192.0.2.7:53
    sources: [{cidr: 10.0.0.0/8, service: billing}]
    tls: {cert: c.pem, key: k.pem, client_ca: ca.pem}
""")
        from harness import find_binary
        p = subprocess.run([find_binary(), "check", path], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn('line 6: forwards[0].destination: "db.example.com" must be one host', p.stdout)
        self.assertIn('line 7: forwards[0].sources[0].cidr: "10.1.2.3/16" has host bits set', p.stdout)
        self.assertIn("line 13: forwards[1].tls: TLS client certificates are for tcp forwards only", p.stdout)

        with open(path, "w") as f:
            f.write("""kind: egress
services: [{name: billing}]
forwards:
  - {name: a, listen: 127.0.0.1:15432, destination: db:5432, sources: [{cidr: 10.0.0.0/8, service: ghost}]}
  - {name: b, listen: 127.0.0.1:15432, destination: db:5432, sources: [{cidr: 10.0.0.0/8, service: billing}]}
""")
        p = subprocess.run([find_binary(), "check", path], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn('forwards[0].sources[0].service: unknown service "ghost"', p.stdout)
        self.assertIn('forwards[1].listen: 127.0.0.1:15432 (tcp) is already the listen address of forward "a"',
                      p.stdout)

        # TLS files: missing, and not PEM (the contexts are built by `check`, as at start).
        with open(os.path.join(self.tmpdir(), "junk.pem"), "w") as f:
            f.write("not a certificate\n")
        with open(path, "w") as f:
            f.write("""kind: egress
services: [{name: billing}]
forwards:
  - name: a
    listen: 127.0.0.1:15432
    destination: db:5432
    tls: {cert: junk.pem, key: junk.pem, client_ca: missing.pem}
  - name: b
    listen: 127.0.0.1:15433
    destination: db:5432
    tls: {cert: junk.pem, key: junk.pem, client_ca: junk.pem}
""")
        p = subprocess.run([find_binary(), "check", path], capture_output=True, text=True, timeout=30)
        self.assertEqual(p.returncode, 1, p.stdout + p.stderr)
        self.assertIn("line 7: forwards[0].tls.client_ca: cannot read", p.stdout)
        self.assertIn("line 11: forwards[1].tls.cert: not a PEM certificate chain", p.stdout)


if __name__ == "__main__":
    main()
