"""The manager side of the control loop (docs/control-protocol.md) on SQLite and PostgreSQL:
registration with a CSR made by `openssl req`, the config long-poll over mTLS (200, 304, woken by an
API change), heartbeats and drift in GET /api/v1/proxies, stale proxies, the community licence limit,
re-registration, revocation by DELETE, certificate renewal, and the refusals (wrong cluster key, no
client certificate, another proxy's certificate, a revoked proxy)."""
import json
import os
import ssl
import threading

from control_client import ControlClient, make_csr
from harness import wait_until
from manager_harness import ManagerTestCase, both_backends, run


class ControlTests(ManagerTestCase):
    HEARTBEAT = 1  # seconds: proxies are stale after 3 missed beats

    def setUp(self):
        super().setUp()
        # The default manager of ManagerTestCase is replaced by one with a short heartbeat interval.
        self.mgr.stop()
        self.mgr = self.start_manager(extra_args=["--heartbeat-interval", str(self.HEARTBEAT)])
        self.admin = self.mgr.client()
        self.admin.login()
        st, _, ca = self.admin.get("/api/v1/ca.pem")
        self.assertEqual(st, 200)
        self.ca_file = os.path.join(self.tmp, "ca.pem")
        with open(self.ca_file, "w") as f:
            f.write(ca if isinstance(ca, str) else ca.decode())
        self.cluster = self.make_cluster("prod")
        self.key = self.cluster["api_key"]

    def proxy(self, name, kind="ingress"):
        return ControlClient(self.mgr.control_port, self.ca_file, self.tmp, name, kind)

    def make_route(self, name="api", path="/"):
        st, _, b = self.admin.post("/api/v1/routes", {"cluster_id": self.cluster["id"], "name": name,
                                                      "hosts": ["api.example.test"], "paths": [path],
                                                      "backends": [{"address": "127.0.0.1:9001"}]})
        self.assertEqual(st, 201, b)
        return b

    def registered(self, name, kind="ingress"):
        p = self.proxy(name, kind)
        st, _, b = p.register(self.key)
        self.assertEqual(st, 201, b)
        return p

    def test_register_config_and_long_poll(self):
        route = self.make_route()
        p = self.proxy("ingress-1")
        st, h, b = p.register(self.key)
        self.assertEqual(st, 201, b)
        self.assertTrue(b["token"].startswith("mpp_"))
        self.assertIn("BEGIN CERTIFICATE", b["certificate"])
        self.assertEqual(b["heartbeat_interval_s"], self.HEARTBEAT)
        # The token is stored only as a hash.
        ok, out = self.sql("SELECT token_hash FROM proxy_servers")
        self.assertTrue(ok, out)
        self.assertNotIn(b["token"], out)
        # First fetch: the current snapshot at once.
        st, _, snap = p.config()
        self.assertEqual(st, 200, snap)
        self.assertEqual(snap["kind"], "ingress")
        self.assertTrue(snap["hash"].startswith("sha256:"))
        self.assertIn("ca/crl.pem", snap["files"])
        self.assertEqual(snap["config"]["virtual_hosts"][0]["domains"], ["api.example.test"])
        v = snap["version"]
        # Up to date: 304 after the (short) wait.
        st, _, body = p.config(since=v, wait=1)
        self.assertEqual(st, 304)
        # A long-poll in flight returns the new version when a route changes through the API.
        got = {}

        def poll():
            got["resp"] = p.config(since=v, wait=30)
        t = threading.Thread(target=poll)
        t.start()
        wait_until(lambda: "marchproxy_manager_config_long_polls 1" in self.admin.get("/metrics")[2],
                   message="the long-poll waiting")
        st, _, b = self.admin.patch(f"/api/v1/routes/{route['id']}", {"paths": ["/v2/"]})
        self.assertEqual(st, 200, b)
        t.join(60)
        st, _, snap2 = got["resp"]
        self.assertEqual(st, 200)
        self.assertGreater(snap2["version"], v)
        self.assertEqual(snap2["config"]["virtual_hosts"][0]["routes"][0]["match"]["prefix"], "/v2/")
        # Egress proxies get the egress document of the same cluster.
        e = self.registered("egress-1", "egress")
        st, _, es = e.config()
        self.assertEqual(st, 200)
        self.assertEqual(es["config"]["kind"], "egress")

    def test_refusals(self):
        p = self.proxy("ingress-1")
        # Wrong cluster key: 401, no hint which cluster.
        self.assertProblem(p.register("mpk_not-a-key"), 401)
        # Bad fields and a broken CSR name the field.
        self.assertProblem(p.register(self.key, name="Bad Name"), 422, "name")
        self.assertProblem(p.register(self.key, csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"), 422, "csr")
        st, _, b = p.register(self.key)
        self.assertEqual(st, 201, b)
        # Without a client certificate the config call is refused.
        self.assertProblem(p.request("GET", f"/api/v1/proxies/{p.id}/config", client_cert=False), 401)
        # A wrong token is refused.
        self.assertProblem(p.request("GET", f"/api/v1/proxies/{p.id}/config", token="mpp_wrong"), 401)
        # Another proxy's certificate cannot fetch this proxy's config.
        q = self.registered("ingress-2")
        q.token = p.token
        self.assertProblem(q.request("GET", f"/api/v1/proxies/{p.id}/config"), 403)
        # A certificate the CA did not issue fails the TLS handshake.
        other_key, _ = make_csr(self.tmp, "self")
        self_signed = os.path.join(self.tmp, "self.pem")
        os.system(f"openssl req -x509 -key {other_key} -subj /CN=proxy:{p.id}:ingress-1 -days 1 -out {self_signed} "
                  "2>/dev/null")
        p.cert_file, p.key_file = self_signed, other_key
        with self.assertRaises((ssl.SSLError, ConnectionError, OSError)):
            p.config()

    def test_license_limit_reregistration_and_delete(self):
        proxies = [self.registered(f"p{i}") for i in range(3)]
        fourth = self.proxy("p3")
        b = self.assertProblem(fourth.register(self.key), 403)
        self.assertTrue(b["type"].endswith("/problems/license-limit"), b)
        self.assertIn("3", b["detail"])
        self.assertIn("community edition", b["detail"])
        # Re-registering an existing name keeps its id and uses no slot.
        again = self.proxy("p0")
        st, _, b = again.register(self.key)
        self.assertEqual(st, 201, b)
        self.assertEqual(b["id"], proxies[0].id)
        # ... and the old token stops working.
        self.assertProblem(proxies[0].request("GET", f"/api/v1/proxies/{again.id}/config"), 401)
        st, _, _ = again.config()
        self.assertEqual(st, 200)
        # Deleting a proxy revokes it (403 on config, with the reason) and frees its slot.
        st, _, _ = self.admin.delete(f"/api/v1/proxies/{proxies[1].id}")
        self.assertEqual(st, 204)
        b = self.assertProblem(proxies[1].config(), 403)
        self.assertIn("revoked", b["detail"])
        st, _, listing = self.admin.get("/api/v1/proxies")
        status = {x["name"]: x["status"] for x in listing["items"]}
        self.assertEqual(status["p1"], "revoked")
        st, _, b = fourth.register(self.key)
        self.assertEqual(st, 201, b)
        # Audit: registrations, the re-registration and the deletion.
        st, _, log = self.admin.get("/api/v1/audit?limit=100")
        actions = [e["action"] for e in log["items"]]
        for a in ("proxy.register", "proxy.reregister", "proxy.delete"):
            self.assertIn(a, actions)
        # Only admins delete proxies.
        _, viewer = self.make_user("viewer1", "viewer")
        self.assertProblem(viewer.delete(f"/api/v1/proxies/{proxies[2].id}"), 403)

    def test_heartbeat_drift_stale_and_renewal(self):
        self.make_route()
        p = self.registered("ingress-1")
        st, _, snap = p.config()
        self.assertEqual(st, 200)
        st, _, b = p.heartbeat(snap["version"], applied_hash=snap["hash"])
        self.assertEqual(st, 200, b)
        self.assertEqual(b["config_version"], snap["version"])
        st, _, item = self.admin.get(f"/api/v1/proxies/{p.id}")
        self.assertEqual(st, 200, item)
        self.assertFalse(item["drift"])
        self.assertEqual(item["applied_version"], snap["version"])
        self.assertEqual(item["counters"]["requests"], 2)
        # A change the proxy has not applied yet is drift; a refused snapshot shows its error.
        self.make_route("second", "/two/")
        err = {"version": snap["version"] + 1, "message": "routes[3].cluster: no cluster named \"x\""}
        st, _, b = p.heartbeat(snap["version"], error=err)
        self.assertEqual(st, 200)
        self.assertGreater(b["config_version"], snap["version"])
        st, _, listing = self.admin.get("/api/v1/proxies")
        item = listing["items"][0]
        self.assertTrue(item["drift"])
        self.assertEqual(item["error"]["message"], err["message"])
        self.assertProblem(p.heartbeat("x"), 422, "applied_version")
        # No beats for 3 intervals: stale.
        wait_until(lambda: self.admin.get(f"/api/v1/proxies/{p.id}")[2]["status"] == "stale", timeout=30,
                   message="proxy marked stale")
        p.heartbeat(snap["version"])
        self.assertEqual(self.admin.get(f"/api/v1/proxies/{p.id}")[2]["status"], "online")
        # Renewal: a new certificate for a new key, which then works; the superseded one is revoked
        # (a leftover copy of the old key cannot speak for the proxy any more).
        key2, csr2 = make_csr(self.tmp, "renew")
        st, _, b = p.request("POST", f"/api/v1/proxies/{p.id}/certificate", {"csr": csr2})
        self.assertEqual(st, 200, b)
        old_key, old_cert = p.key_file, p.cert_file
        p.key_file, p.cert_file = key2, os.path.join(self.tmp, "renewed.pem")
        with open(p.cert_file, "w") as f:
            f.write(b["certificate"])
        st, _, _ = p.config()
        self.assertEqual(st, 200)
        p.key_file, p.cert_file = old_key, old_cert
        st, _, b = p.heartbeat(snap["version"])
        self.assertEqual(st, 403, b)
        self.assertTrue(b["type"].endswith("/certificate-revoked"), b)
        st, _, audit = self.admin.get("/api/v1/audit?action=proxy.renew")
        self.assertEqual(st, 200, audit)
        self.assertIn("revoked the superseded serial", json.dumps(audit))


both_backends(ControlTests, globals())

if __name__ == "__main__":
    run()
