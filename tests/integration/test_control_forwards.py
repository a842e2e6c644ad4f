"""L4 port forwards made through the manager's API, end to end: a real `marchproxy manager`, a real
`marchproxy egress --manager`, plain TCP and UDP clients on loopback, on SQLite and PostgreSQL.

  * a TCP forward whose source CIDR names the calling service reaches an echo server through the
    destination service's address; a caller from an unlisted address (127.0.0.2) is closed, logged
    and counted, and nothing reaches the destination
  * a UDP forward echoes
  * bad forwards are refused with 422 naming the field (409 for a port the cluster's listeners hold),
    and change no config version
  * deleting the forward through the API closes its port on the running proxy (no restart); a
    forward added afterwards starts listening
"""

import os
import socket

import manager_harness as mh
from harness import LOCALHOST, connection_refused as refused, free_port, wait_until
from test_control_loop import ControlLoopCase
from test_egress_forward import UdpEcho, tcp_client, udp_client
from test_egress_proxy import EchoServer, closed_by_peer, recv_exact


class ForwardsCase(ControlLoopCase):
    __test__ = False

    def test_forwards_from_the_api_relay_refuse_and_close(self):
        cid = self.cluster["id"]
        echo, udp = EchoServer(), UdpEcho()
        self.addCleanup(echo.close)
        self.addCleanup(udp.close)
        billing = self.make_service(cid, "billing")
        origin = self.make_service(cid, "origin", ip_fqdn=LOCALHOST)
        st, _, b = self.admin.post("/api/v1/mappings", {
            "cluster_id": cid, "name": "billing-to-origin", "source_services": [billing["id"]],
            "destination_services": [origin["id"]], "protocols": ["tcp", "udp"], "ports": [echo.port, udp.port]})
        self.assertEqual(st, 201, b)

        pg_port, dns_port = free_port(), free_port(socket.SOCK_DGRAM)
        version = self.config_version()
        # Refused with the field named: the cluster's SOCKS5 port, an unknown service, udp with mTLS.
        self.assertProblem(self.admin.post("/api/v1/forwards", {
            "cluster_id": cid, "name": "x", "listen_address": "127.0.0.1:1080", "destination": "db.test:5432",
            "sources": [{"cidr": "127.0.0.0/8", "service_id": billing["id"]}]}), 409, "listen_address")
        self.assertProblem(self.admin.post("/api/v1/forwards", {
            "cluster_id": cid, "name": "x", "listen_address": f"127.0.0.1:{pg_port}", "destination": "db.test:5432",
            "sources": [{"cidr": "127.0.0.0/8", "service_id": 999999}]}), 422, "sources[0].service_id")
        self.assertProblem(self.admin.post("/api/v1/forwards", {
            "cluster_id": cid, "name": "x", "protocol": "udp", "listen_address": f"127.0.0.1:{pg_port}",
            "destination": "db.test:53", "mtls": True}), 422, "mtls")
        self.assertEqual(self.config_version(), version)

        st, headers, pg = self.admin.post("/api/v1/forwards", {
            "cluster_id": cid, "name": "pg", "listen_address": f"{LOCALHOST}:{pg_port}",
            "destination_service_id": origin["id"], "destination_port": echo.port,
            "sources": [{"cidr": "127.0.0.1/32", "service_id": billing["id"]}]})
        self.assertEqual(st, 201, pg)
        st, _, dns = self.admin.post("/api/v1/forwards", {
            "cluster_id": cid, "name": "dns", "protocol": "udp", "listen_address": f"{LOCALHOST}:{dns_port}",
            "destination": f"{LOCALHOST}:{udp.port}", "idle_timeout_seconds": 60,
            "sources": [{"cidr": "127.0.0.0/8", "service_id": billing["id"]}]})
        self.assertEqual(st, 201, dns)
        self.assertEqual(self.config_version(), version + 2)

        state = os.path.join(self.tmp, "egress-state")
        p = self.start_proxy(None, command="egress", expect_listeners=("proxy", "pg", "dns"),
                             manager_args=self.manager_args(state, "egress-1",
                                                            binds=("proxy=127.0.0.1:0", "socks5=127.0.0.1:0")))
        self.assertEqual((p.ports["pg"], p.ports["dns"]), (pg_port, dns_port))

        s = tcp_client(pg_port)
        self.addCleanup(s.close)
        s.sendall(b"ping")
        self.assertEqual(recv_exact(s, 4), b"ping")
        s.close()

        other = tcp_client(pg_port, bind_host="127.0.0.2")  # pg names 127.0.0.1/32 only
        self.addCleanup(other.close)
        other.sendall(b"ping")
        self.assertTrue(closed_by_peer(other))
        p.wait_log(r'forward "pg" refused 127\.0\.0\.2:\d+: no source CIDR contains it')
        self.assertEqual(p.metric("marchproxy_egress_decisions_total", decision="deny", reason="unknown_source"), 1)
        self.assertEqual(echo.accepted, 1)  # only the allowed caller reached the destination

        u = udp_client()
        self.addCleanup(u.close)
        u.sendto(b"hi", (LOCALHOST, dns_port))
        self.assertEqual(u.recvfrom(65536)[0], b"echo:hi")

        # Deleted through the API: the running proxy stops accepting on its port; a new one starts.
        st, _, b = self.admin.delete(f"/api/v1/forwards/{pg['id']}")
        self.assertEqual(st, 204, b)
        wait_until(lambda: refused(pg_port), timeout=20, message="the deleted forward's port refuses connections")
        new_port = free_port()
        st, _, b = self.admin.post("/api/v1/forwards", {
            "cluster_id": cid, "name": "pg2", "listen_address": f"{LOCALHOST}:{new_port}",
            "destination": f"{LOCALHOST}:{echo.port}",
            "sources": [{"cidr": "127.0.0.0/8", "service_id": billing["id"]}]})
        self.assertEqual(st, 201, b)
        wait_until(lambda: p.ports.get("pg2") == new_port, timeout=20, message="the new forward listening")
        s = tcp_client(new_port)
        self.addCleanup(s.close)
        s.sendall(b"again")
        self.assertEqual(recv_exact(s, 5), b"again")
        # The UDP forward was never touched by the reloads.
        u.sendto(b"still", (LOCALHOST, dns_port))
        self.assertEqual(u.recvfrom(65536)[0], b"echo:still")


mh.both_backends(ForwardsCase, globals())

if __name__ == "__main__":
    mh.run()
