"""The audit log: writes, logins, failed logins and rotations are recorded with actor, source IP and
outcome; the database refuses UPDATE/DELETE on it; verify re-walks the SHA-256 chain and names the
first row an attacker with database access edited or removed. Both backends."""
from manager_harness import ADMIN_PASSWORD, ManagerTestCase, both_backends, run


class AuditTests(ManagerTestCase):

    def disable_guard_sql(self):
        if self.BACKEND == "postgres":
            return "ALTER TABLE audit_log DISABLE TRIGGER USER"
        return "DROP TRIGGER audit_log_no_update"

    def test_events_are_recorded_and_filterable(self):
        c = self.make_cluster("prod")
        self.make_service(c["id"], "web", auth_type="base64")
        self.admin.post(f"/api/v1/clusters/{c['id']}/rotate-key")
        self.mgr.client().post("/api/v1/auth/login", {"username": "admin", "password": "wrong-password"})
        st, _, log = self.admin.get("/api/v1/audit?limit=1000")
        self.assertEqual(st, 200)
        actions = [e["action"] for e in log["items"]]
        for a in ("user.bootstrap", "auth.login", "cluster.create", "service.create", "cluster.rotate_key",
                  "auth.login_failed"):
            self.assertIn(a, actions)
        failed = self.admin.get("/api/v1/audit?action=auth.login_failed")[2]["items"]
        self.assertEqual(len(failed), 1)
        self.assertEqual((failed[0]["actor"], failed[0]["outcome"], failed[0]["source_ip"]),
                         ("admin", "failure", "127.0.0.1"))
        created = self.admin.get("/api/v1/audit?action=cluster.create&actor=admin")[2]["items"]
        self.assertEqual(created[0]["resource"], f"clusters/{c['id']}")
        self.assertProblem(self.admin.get("/api/v1/audit?colour=red"), 400, "colour")
        # Secrets never reach the log.
        ok, dump = self.sql("SELECT actor, action, resource, summary FROM audit_log")
        self.assertTrue(ok, dump)
        self.assertNotIn(c["api_key"], dump)
        self.assertNotIn(ADMIN_PASSWORD, dump)
        self.assertNotIn("wrong-password", dump)

    def test_database_refuses_edits_and_verify_names_the_tampered_row(self):
        c = self.make_cluster("prod")
        for i in range(5):
            self.make_service(c["id"], f"s{i}")
        st, _, v = self.admin.get("/api/v1/audit/verify")
        self.assertEqual((st, v["ok"]), (200, True))
        n = v["rows_verified"]
        self.assertGreaterEqual(n, 8)
        ok, out = self.sql("UPDATE audit_log SET actor = 'mallory' WHERE id = 4")
        self.assertFalse(ok)
        self.assertIn("append-only", out)
        ok, out = self.sql("DELETE FROM audit_log WHERE id = 4")
        self.assertFalse(ok)
        self.assertIn("append-only", out)
        self.assertTrue(self.admin.get("/api/v1/audit/verify")[2]["ok"])
        # An attacker who can drop the guard can edit a row, but the chain shows where.
        ok, out = self.sql(self.disable_guard_sql())
        self.assertTrue(ok, out)
        ok, out = self.sql("UPDATE audit_log SET summary = 'nothing happened' WHERE id = 5")
        self.assertTrue(ok, out)
        v = self.admin.get("/api/v1/audit/verify")[2]
        self.assertFalse(v["ok"])
        self.assertEqual(v["first_broken_id"], 5)
        self.assertIn("modified", v["reason"])

    def test_verify_detects_a_removed_row(self):
        c = self.make_cluster("prod")
        for i in range(3):
            self.make_service(c["id"], f"s{i}")
        if self.BACKEND == "postgres":
            ok, out = self.sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
        else:
            ok, out = self.sql("DROP TRIGGER audit_log_no_delete")
        self.assertTrue(ok, out)
        ok, out = self.sql("DELETE FROM audit_log WHERE id = 3")
        self.assertTrue(ok, out)
        v = self.admin.get("/api/v1/audit/verify")[2]
        self.assertFalse(v["ok"])
        self.assertEqual(v["first_broken_id"], 4)
        self.assertIn("removed", v["reason"])


both_backends(AuditTests, globals())

if __name__ == "__main__":
    run()
