"""The audit log: writes, logins, failed logins and rotations are recorded with actor, source IP and
outcome; the database refuses UPDATE/DELETE on it; verify re-walks the SHA-256 chain and names the
first row an attacker with database access edited or removed. Every write an authenticated actor
attempts and the API refuses (403, and 400/404/409/412/422) is audited with the status and reason,
never the body; unauthenticated attempts write nothing. Both backends."""
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

    def test_refused_writes_are_audited_with_status_and_reason(self):
        c = self.make_cluster("prod")
        web = self.make_service(c["id"], "web")
        _, otto = self.make_user("otto", "service-owner")
        n = self.admin.get("/api/v1/audit/verify")[2]["rows_verified"]
        key = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END PRIVATE KEY-----\n"
        refusals = [
            # (response, status, action, resource, text the summary names)
            (self.admin.post("/api/v1/services", {"cluster_id": c["id"], "name": "bad name", "ip_fqdn": "10.0.0.1"}),
             422, "service.create", "services", "name:"),
            (self.admin.post("/api/v1/services", {"cluster_id": c["id"], "name": "web", "ip_fqdn": "10.0.0.2"}),
             409, "service.create", "services", "already exists"),
            (self.admin.patch(f"/api/v1/services/{web['id']}", {"description": "x"}, headers={"If-Match": '"99"'}),
             412, "service.update", f"services/{web['id']}", "changed since you read it"),
            (self.admin.delete("/api/v1/mappings/999999"), 404, "mapping.delete", "mappings/999999", "does not exist"),
            (self.admin.delete(f"/api/v1/clusters/{c['id']}"), 409, "cluster.delete", f"clusters/{c['id']}",
             "still has services"),
            (self.admin.post("/api/v1/certificates", {"name": "imp", "cert_pem": "not a pem", "key_pem": key}),
             422, "certificate.create", "certificates", "cert_pem:"),
            (self.admin.post("/api/v1/services", raw=b'{"name": "hunter2-in-a-broken-body"'),
             400, "service.create", "services", "not valid JSON"),
            (self.admin.post("/api/v1/users", {"username": "u2", "password": "pw-tiny7", "role": "viewer"}),
             422, "user.create", "users", "password: must be at least 12"),
            (self.admin.post(f"/api/v1/users/{999999}/clusters", {"cluster_id": c["id"]}),
             404, "user.assign", "users/999999", ""),
            (self.admin.post("/api/v1/certificates/999999/revoke"), 404, "certificate.revoke", "certificates/999999",
             ""),
            (otto.patch(f"/api/v1/services/{web['id']}", {"description": "mine"}), 403, "service.update",
             f"services/{web['id']}", "not assigned to you"),
        ]
        for (st, _, b), status, *_ in refusals:
            self.assertEqual(st, status, b)
        # Unauthenticated attempts are not attributable and write nothing (a flood cannot grow the log).
        anon = self.mgr.client()
        for _ in range(20):
            self.assertEqual(anon.post("/api/v1/clusters", {"name": "x"})[0], 401)
            self.assertEqual(anon.post("/api/v1/clusters", {"name": "x"}, token="forged.jwt.token")[0], 401)
        rows = self.admin.get("/api/v1/audit?limit=1000")[2]["items"]
        refused = [e for e in rows if e["outcome"] in ("refused", "denied")]
        self.assertEqual(len(refused), len(refusals), refused)
        for (_, _, b), status, action, resource, text in refusals:
            outcome = "denied" if status == 403 else "refused"
            prefix = "" if status == 403 else f"{status} {b['type'].rsplit('/', 1)[-1]}: "
            match = [e for e in refused if (e["action"], e["resource"], e["outcome"]) == (action, resource, outcome)
                     and e["summary"].startswith(prefix) and text in e["summary"]]
            self.assertEqual(len(match), 1, (status, action, resource, text, refused))
            self.assertEqual((match[0]["actor"], match[0]["source_ip"]),
                             ("otto" if status == 403 else "admin", "127.0.0.1"), match[0])
        # Bodies and secrets stay out: the key, the broken body, the short password.
        ok, dump = self.sql("SELECT actor, action, resource, summary FROM audit_log")
        self.assertTrue(ok, dump)
        for secret in ("c2VjcmV0LWtleS1tYXRlcmlhbA", "hunter2", "pw-tiny7"):
            self.assertNotIn(secret, dump)
        # The refusals are links of the same chain.
        v = self.admin.get("/api/v1/audit/verify")[2]
        self.assertEqual((v["ok"], v["rows_verified"]), (True, n + len(refusals)), v)


both_backends(AuditTests, globals())

if __name__ == "__main__":
    run()
