"""Who may open which port with /api/v1/forwards, how many, and what two writers on one database
get. A real manager on SQLite and PostgreSQL (review of the L4 forwards API).

  * a service owner (one service assigned, not the cluster) may forward from their own service on
    one address and an unprivileged port; 0.0.0.0, [::] and ports below 1024 are refused with 403
    and audited as denied, as are edits and deletes of such a forward; the cluster's owner may
  * a non-admin's forward names only sources inside the cluster's forward_source_networks, which
    only admins set (none by default): 403 naming the entry, audited as denied; admins name any
  * a listen port the cluster's egress listeners or admin endpoint hold, or another forward's, is
    409 on listen_address naming the holder; moving a listener or the admin address onto a forward
    is 409 on that field
  * IPv6 listen addresses collide however they are spelt ([0::0] is the wildcard [::])
  * a service a forward sends to cannot be changed into a network (422 ip_fqdn)
  * a cluster holds at most 256 forwards: the next is 422 on cluster_id
  * PostgreSQL: a forward created while another writer's uncommitted transaction holds the same
    listen port waits for it and is refused with 409 on listen_address (not a duplicate port)
"""

import subprocess
import threading

import manager_harness as mh
from harness import LOCALHOST, wait_until


class ForwardPolicyCase(mh.ManagerTestCase):
    __test__ = False

    def setUp(self):
        super().setUp()
        self.c = self.make_cluster()
        self.web = self.make_service(self.c["id"], "web")

    def body(self, name, listen, service_id=None, **extra):
        return {"cluster_id": self.c["id"], "name": name, "listen_address": listen, "destination": "db.test:5432",
                "sources": [{"cidr": "10.0.0.0/8", "service_id": service_id or self.web["id"]}], **extra}

    def allow_sources(self, *cidrs):
        st, _, b = self.admin.patch(f"/api/v1/clusters/{self.c['id']}", {"forward_source_networks": list(cidrs)})
        self.assertEqual(st, 200, b)

    def test_service_owner_listens_on_one_address_and_an_unprivileged_port(self):
        self.allow_sources("10.0.0.0/8")
        owner_u, owner = self.make_user("otto", "service-owner")
        self.assertEqual(self.admin.post(f"/api/v1/users/{owner_u['id']}/services",
                                         {"service_id": self.web["id"]})[0], 201)
        for name, listen in (("all4", "0.0.0.0:15432"), ("all6", "[::]:15432"), ("low", "127.0.0.1:80"),
                             ("low6", "[::1]:443"), ("all6-long", "[0:0::0]:15432")):
            st, _, b = owner.post("/api/v1/forwards", self.body(name, listen))
            self.assertEqual(st, 403, (listen, b))
        st, _, mine = owner.post("/api/v1/forwards", self.body("mine", "127.0.0.1:15432"))
        self.assertEqual(st, 201, mine)
        st, _, mine6 = owner.post("/api/v1/forwards", self.body("mine6", "[::1]:15433"))
        self.assertEqual(st, 201, mine6)
        # Their own forward cannot be moved onto every address or a privileged port either.
        self.assertEqual(owner.patch(f"/api/v1/forwards/{mine['id']}", {"listen_address": "0.0.0.0:15432"})[0], 403)
        self.assertEqual(owner.patch(f"/api/v1/forwards/{mine['id']}", {"listen_address": "127.0.0.1:22"})[0], 403)
        self.assertEqual(self.admin.get(f"/api/v1/forwards/{mine['id']}")[2]["listen_address"], "127.0.0.1:15432")
        # The admin's forward on every address, from the owner's service, stays the admin's.
        st, _, wide = self.admin.post("/api/v1/forwards", self.body("wide", "0.0.0.0:25432"))
        self.assertEqual(st, 201, wide)
        self.assertEqual(owner.patch(f"/api/v1/forwards/{wide['id']}", {"comment": "mine now"})[0], 403)
        self.assertEqual(owner.delete(f"/api/v1/forwards/{wide['id']}")[0], 403)
        denied = [e for e in self.admin.get("/api/v1/audit?outcome=denied&actor=otto")[2]["items"]
                  if e["action"].startswith("forward.")]
        self.assertEqual(len(denied), 9, denied)
        self.assertTrue(any("every address (0.0.0.0:15432)" in e["summary"] for e in denied), denied)
        self.assertTrue(any("below 1024" in e["summary"] for e in denied), denied)
        # The cluster's owner hands out what a service owner may not.
        self.assertEqual(self.admin.post(f"/api/v1/users/{owner_u['id']}/clusters", {"cluster_id": self.c["id"]})[0],
                         201)
        st, _, b = owner.post("/api/v1/forwards", self.body("ssh", "0.0.0.0:2222"))
        self.assertEqual(st, 201, b)
        st, _, b = owner.post("/api/v1/forwards", self.body("dns", "127.0.0.1:53", protocol="udp"))
        self.assertEqual(st, 201, b)

    def test_ipv6_listen_addresses_collide_in_any_spelling(self):
        st, _, b = self.admin.post("/api/v1/forwards", self.body("v6", "[::1]:15500"))
        self.assertEqual(st, 201, b)
        self.assertProblem(self.admin.post("/api/v1/forwards", self.body("v6-again", "[0:0::0001]:15500")), 409,
                           "listen_address")
        st, _, b = self.admin.post("/api/v1/forwards", self.body("v6-all", "[0::0]:15501"))
        self.assertEqual(st, 201, b)
        self.assertProblem(self.admin.post("/api/v1/forwards", self.body("v6-under-all", "[::1]:15501")), 409,
                           "listen_address")
        # IPv6 sockets are v6-only: the same port on an IPv4 address is another socket.
        st, _, b = self.admin.post("/api/v1/forwards", self.body("v4", "127.0.0.1:15501"))
        self.assertEqual(st, 201, b)

    def test_a_forward_destination_service_cannot_become_a_network(self):
        db = self.make_service(self.c["id"], "db", ip_fqdn="10.0.0.5")
        st, _, f = self.admin.post("/api/v1/forwards", {
            "cluster_id": self.c["id"], "name": "pg", "listen_address": "127.0.0.1:15432",
            "destination_service_id": db["id"], "destination_port": 5432,
            "sources": [{"cidr": "10.0.0.0/8", "service_id": self.web["id"]}]})
        self.assertEqual(st, 201, f)
        version = self.admin.get(f"/api/v1/clusters/{self.c['id']}")[2]["config_version"]
        b = self.assertProblem(self.admin.patch(f"/api/v1/services/{db['id']}", {"ip_fqdn": "10.0.0.0/24"}), 422,
                               "ip_fqdn")
        self.assertIn('forward "pg"', b["detail"])
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{self.c['id']}")[2]["config_version"], version)
        self.assertEqual(self.admin.patch(f"/api/v1/services/{db['id']}", {"ip_fqdn": "10.0.0.6"})[0], 200)
        # A source service may be a network: the forward names it by CIDR, not by its address.
        self.assertEqual(self.admin.patch(f"/api/v1/services/{self.web['id']}", {"ip_fqdn": "10.1.0.0/16"})[0], 200)

    def test_a_cluster_holds_at_most_256_forwards(self):
        values = ", ".join(f"({self.c['id']}, 'f{i}', '127.0.0.1:{20000 + i}', 'db.test:5432', "
                           f"'[{{\"cidr\": \"10.0.0.0/8\", \"service_id\": {self.web['id']}}}]', 'now', 'now')"
                           for i in range(256))
        ok, out = self.sql("INSERT INTO forwards (cluster_id, name, listen_address, destination, sources, created_at, "
                           f"updated_at) VALUES {values}")
        self.assertTrue(ok, out)
        version = self.admin.get(f"/api/v1/clusters/{self.c['id']}")[2]["config_version"]
        b = self.assertProblem(self.admin.post("/api/v1/forwards", self.body("one-more", "127.0.0.1:30000")), 422,
                               "cluster_id")
        self.assertIn("256", b["detail"])
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{self.c['id']}")[2]["config_version"], version)
        # Editing one of the 256 is not adding one.
        st, _, f0 = self.admin.get("/api/v1/forwards?name=f0")
        fid = f0["items"][0]["id"]
        self.assertEqual(self.admin.patch(f"/api/v1/forwards/{fid}", {"comment": "still fits"})[0], 200)
        self.assertEqual(self.admin.delete(f"/api/v1/forwards/{fid}")[0], 204)
        st, _, b = self.admin.post("/api/v1/forwards", self.body("one-more", "127.0.0.1:30000"))
        self.assertEqual(st, 201, b)

    def test_owner_sources_stay_inside_the_networks_an_admin_allowed(self):
        owner_u, owner = self.make_user("otto", "service-owner")
        self.assertEqual(self.admin.post(f"/api/v1/users/{owner_u['id']}/services",
                                         {"service_id": self.web["id"]})[0], 201)
        cora_u, cora = self.make_user("cora", "service-owner")
        self.assertEqual(self.admin.post(f"/api/v1/users/{cora_u['id']}/clusters", {"cluster_id": self.c["id"]})[0],
                         201)
        src = lambda *cidrs: [{"cidr": c, "service_id": self.web["id"]} for c in cidrs]  # noqa: E731
        # None allowed until an admin says so.
        b = self.assertProblem(owner.post("/api/v1/forwards", self.body("f", "127.0.0.1:15432")), 403, "sources[0].cidr")
        self.assertIn("sources[0]: 10.0.0.0/8 is outside", b["detail"])
        self.assertIn("forward_source_networks: none", b["detail"])
        # Only admins set them, even the cluster's owner may not.
        b = self.assertProblem(cora.patch(f"/api/v1/clusters/{self.c['id']}",
                                          {"forward_source_networks": ["0.0.0.0/0"]}), 403)
        self.assertIn("only admins set forward_source_networks", b["detail"])
        self.assertProblem(cora.patch(f"/api/v1/clusters/{self.c['id']}", {"egress_admin_address": "127.0.0.1:1"}),
                           403)
        self.assertProblem(self.admin.patch(f"/api/v1/clusters/{self.c['id']}",
                                            {"forward_source_networks": ["10.1.2.3/16"]}), 422,
                           "forward_source_networks[0]")
        self.allow_sources("10.1.0.0/16", "fd00::/8")
        for owner_client, who in ((owner, "otto"), (cora, "cora")):
            for i, cidrs in enumerate((("10.1.2.0/24", "0.0.0.0/0"), ("10.1.2.0/24", "::/0"),
                                       ("10.1.2.0/24", "10.0.0.0/8"), ("10.1.2.0/24", "fe80::/64"))):
                b = self.assertProblem(owner_client.post("/api/v1/forwards", {
                    **self.body(f"{who}-wide{i}", "127.0.0.1:15432"), "sources": src(*cidrs)}), 403, "sources[1].cidr")
                self.assertIn(f"sources[1]: {cidrs[1]} is outside", b["detail"])
                self.assertIn("(forward_source_networks: 10.1.0.0/16, fd00::/8)", b["detail"])
        st, _, mine = owner.post("/api/v1/forwards", {**self.body("mine", "127.0.0.1:15432"),
                                                      "sources": src("10.1.2.0/24", "10.1.0.0/16", "fd00:1::/32")})
        self.assertEqual(st, 201, mine)
        # Edits are checked on what they add; the rest of the forward stays editable.
        self.assertEqual(owner.patch(f"/api/v1/forwards/{mine['id']}", {"comment": "db"})[0], 200)
        self.assertProblem(owner.patch(f"/api/v1/forwards/{mine['id']}",
                                       {"sources": src("10.1.2.0/24", "192.168.0.0/16")}), 403, "sources[1].cidr")
        # Admins name any network.
        st, _, b = self.admin.post("/api/v1/forwards", {**self.body("any", "127.0.0.1:15433"),
                                                        "sources": src("0.0.0.0/0", "::/0")})
        self.assertEqual(st, 201, b)
        denied = [e for e in self.admin.get("/api/v1/audit?outcome=denied&action=forward.create")[2]["items"]]
        self.assertEqual(len(denied), 9, denied)
        self.assertTrue(all("is outside" in e["summary"] for e in denied), denied)

    def test_listen_ports_the_egress_proxies_hold_are_409(self):
        # The defaults: proxy 127.0.0.1:3128, SOCKS5 127.0.0.1:1080, admin endpoint 127.0.0.1:9902.
        version = self.admin.get(f"/api/v1/clusters/{self.c['id']}")[2]["config_version"]
        for listen, holder in (("127.0.0.1:9902", "egress_admin_address"), ("0.0.0.0:9902", "egress_admin_address"),
                               ("127.0.0.1:3128", "egress_proxy_address"), ("0.0.0.0:1080", "egress_socks5_address")):
            b = self.assertProblem(self.admin.post("/api/v1/forwards", self.body("f", listen)), 409, "listen_address")
            self.assertIn(f"{listen} is already the cluster's {holder}", b["detail"])
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{self.c['id']}")[2]["config_version"], version)
        # UDP on those ports is another socket.
        st, _, b = self.admin.post("/api/v1/forwards", self.body("dns", "127.0.0.1:9902", protocol="udp"))
        self.assertEqual(st, 201, b)
        # Where the proxies run with --admin elsewhere, the admin says so and the port is free.
        st, _, cl = self.admin.patch(f"/api/v1/clusters/{self.c['id']}", {"egress_admin_address": "127.0.0.1:19902"})
        self.assertEqual((st, cl.get("egress_admin_address")), (200, "127.0.0.1:19902"), cl)
        st, _, f = self.admin.post("/api/v1/forwards", self.body("metricsish", "127.0.0.1:9902"))
        self.assertEqual(st, 201, f)
        # Moving the admin endpoint or a listener onto a forward is a conflict too, naming the forward.
        b = self.assertProblem(self.admin.patch(f"/api/v1/clusters/{self.c['id']}",
                                                {"egress_admin_address": "0.0.0.0:9902"}), 409, "egress_admin_address")
        self.assertIn('forward "metricsish"', b["detail"])
        self.assertProblem(self.admin.patch(f"/api/v1/clusters/{self.c['id']}",
                                            {"egress_proxy_address": "127.0.0.1:9902"}), 409, "egress_proxy_address")
        # The admin endpoint and a listener of the cluster itself: the body contradicts itself (422).
        self.assertProblem(self.admin.patch(f"/api/v1/clusters/{self.c['id']}",
                                            {"egress_admin_address": "127.0.0.1:3128"}), 422, "egress_admin_address")
        # Another forward's port.
        b = self.assertProblem(self.admin.post("/api/v1/forwards", self.body("again", "127.0.0.1:9902")), 409,
                               "listen_address")
        self.assertIn('forward "metricsish"', b["detail"])


    def activity(self, where):
        r = self.pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{self.db_name}' AND {where};",
                         db=self.db_name)
        return int(r.stdout.strip())

    def test_same_port_from_two_writers_is_409_not_a_duplicate(self):
        if self.BACKEND != "postgres":
            self.skipTest("PostgreSQL only: SQLite serialises writers (BEGIN IMMEDIATE)")
        # Another manager's transaction (psql here, on the same database) inserts a forward on a port
        # and holds it uncommitted, as a create does: insert, then bump the cluster (its row lock).
        other = subprocess.Popen(
            ["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", LOCALHOST, "-p", str(self.pg.port),
             "-U", "postgres", "-d", self.db_name, "-f", "-"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
        self.addCleanup(other.kill)
        other.stdin.write(
            "BEGIN;\n"
            "INSERT INTO forwards (cluster_id, name, listen_address, destination, sources, created_at, updated_at) "
            f"VALUES ({self.c['id']}, 'theirs', '127.0.0.1:15432', 'db.test:5432', "
            f"'[{{\"cidr\": \"10.0.0.0/8\", \"service_id\": {self.web['id']}}}]', 'now', 'now');\n"
            f"UPDATE clusters SET config_version = config_version + 1 WHERE id = {self.c['id']};\n")
        other.stdin.flush()
        wait_until(lambda: self.activity("state = 'idle in transaction'") == 1, timeout=20,
                   message="the other writer holding its transaction")
        result = {}
        t = threading.Thread(target=lambda: result.update(
            r=self.admin.post("/api/v1/forwards", self.body("mine", "127.0.0.1:15432"))))
        t.start()
        wait_until(lambda: self.activity("wait_event_type = 'Lock'") == 1, timeout=20,
                   message="this manager waiting for the other writer")
        other.stdin.write("COMMIT;\n")
        other.stdin.close()
        other.wait(20)
        t.join(30)
        st, h, b = result["r"]
        self.assertEqual(st, 409, b)
        self.assertEqual(b.get("field"), "listen_address", b)
        self.assertIn('forward "theirs"', b["detail"])
        names = [f["name"] for f in self.admin.get("/api/v1/forwards")[2]["items"]]
        self.assertEqual(names, ["theirs"])


mh.both_backends(ForwardPolicyCase, globals())

if __name__ == "__main__":
    mh.run()
