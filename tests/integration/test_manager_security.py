"""Security review findings of the manager (docs/manager.md, "Security"), end to end on SQLite and on
a real PostgreSQL 15:
  M1  a second manager on the same database follows a signing-key rotation made by the first;
  M3  login throttling survives a restart and is shared by a second manager;
  M7  /audit/verify reports rows removed from the end of the audit log;
  M8  a password change, disabling, a role change or logging out ends the access tokens already
      issued, not only the refresh tokens."""
import base64
import json

from manager_harness import ADMIN_PASSWORD, ManagerTestCase, both_backends, run


def kid(jwt):
    h = jwt.split(".")[0]
    return json.loads(base64.urlsafe_b64decode(h + "=" * (-len(h) % 4)))["kid"]


class SecurityTests(ManagerTestCase):

    def test_m1_second_manager_follows_signing_key_rotation(self):
        b = self.start_manager()
        bc = b.client()
        before = bc.login()
        st, _, r = self.admin.post("/api/v1/auth/signing-keys/rotate", {})
        self.assertEqual(st, 200, r)
        # B never restarted: what it signs now uses the new key...
        after = bc.login()
        self.assertEqual(kid(after["access_token"]), r["kid"])
        self.assertNotEqual(kid(before["access_token"]), r["kid"])
        # ...and it accepts tokens A signs with the new key; the retired key still verifies on both.
        a2 = self.mgr.client()
        a2.login()
        self.assertEqual(kid(a2.token), r["kid"])
        self.assertEqual(bc.get("/api/v1/auth/me", token=a2.token)[0], 200)
        self.assertEqual(bc.get("/api/v1/auth/me", token=before["access_token"])[0], 200)
        self.assertEqual(self.admin.get("/api/v1/auth/me", token=before["access_token"])[0], 200)

    def test_m3_throttle_survives_restart_and_is_shared(self):
        anon = self.mgr.client()
        for _ in range(5):
            self.assertEqual(anon.post("/api/v1/auth/login", {"username": "admin", "password": "wrong"})[0], 401)
        right = {"username": "admin", "password": ADMIN_PASSWORD}
        self.assertProblem(anon.post("/api/v1/auth/login", right), 429)
        b = self.start_manager()
        self.assertProblem(b.client().post("/api/v1/auth/login", right), 429)
        self.mgr.stop()
        self.mgr.start()
        st, h, _ = self.mgr.client().post("/api/v1/auth/login", right)
        self.assertEqual(st, 429)
        self.assertGreater(int(h["retry-after"]), 0)
        # Another user from the same address is not affected by admin's (user, address) block.
        self.make_user_via(b, "vera")
        self.assertEqual(b.client().post("/api/v1/auth/login", {"username": "vera",
                                                               "password": "user-password-123"})[0], 200)

    def make_user_via(self, m, username):
        # The admin session of the first manager is still valid on the second (same keys).
        st, _, body = m.client(self.admin.token).post("/api/v1/users", {
            "username": username, "password": "user-password-123", "role": "viewer"})
        self.assertEqual(st, 201, body)

    def test_m7_verify_reports_a_removed_tail(self):
        c = self.make_cluster("prod")
        for i in range(3):
            self.make_service(c["id"], f"s{i}")
        v = self.admin.get("/api/v1/audit/verify")[2]
        self.assertTrue(v["ok"], v)
        ok, last = self.sql("SELECT MAX(id) FROM audit_log")
        self.assertTrue(ok, last)
        last = int([x for x in last.split() if x.isdigit()][0])
        if self.BACKEND == "postgres":
            ok, out = self.sql("ALTER TABLE audit_log DISABLE TRIGGER USER")
        else:
            ok, out = self.sql("DROP TRIGGER audit_log_no_delete")
        self.assertTrue(ok, out)
        ok, out = self.sql(f"DELETE FROM audit_log WHERE id >= {last - 1}")
        self.assertTrue(ok, out)
        v = self.admin.get("/api/v1/audit/verify")[2]
        self.assertFalse(v["ok"], v)
        self.assertEqual(v["first_broken_id"], last)
        self.assertIn("removed from the end", v["reason"])

    def sessions(self, username):
        """Two independent logins (two devices) of `username`."""
        one, two = self.mgr.client(), self.mgr.client()
        r1 = one.login(username, "user-password-123")
        r2 = two.login(username, "user-password-123")
        return one, two, r1, r2

    def test_m8_password_change_ends_access_tokens(self):
        u, _ = self.make_user("otto", "service-owner")
        one, two, r1, r2 = self.sessions("otto")
        st, _, b = one.post("/api/v1/auth/password", {"current_password": "user-password-123",
                                                     "new_password": "another-password-456"})
        self.assertEqual(st, 204, b)
        for c in (one, two):
            self.assertProblem(c.get("/api/v1/auth/me"), 401)
        self.assertProblem(two.post("/api/v1/auth/refresh", {"refresh_token": r2["refresh_token"]}, token=""), 401)
        fresh = self.mgr.client()
        fresh.login("otto", "another-password-456")
        self.assertEqual(fresh.get("/api/v1/auth/me")[0], 200)

    def test_m8_admin_disable_role_change_and_reset_end_access_tokens(self):
        u, _ = self.make_user("otto", "service-owner")
        for change, password in (({"role": "viewer"}, "user-password-123"),
                                 ({"password": "reset-by-admin-789"}, "user-password-123"),
                                 ({"disabled": True}, "reset-by-admin-789")):
            c = self.mgr.client()
            c.login("otto", password)
            self.assertEqual(c.get("/api/v1/auth/me")[0], 200)
            self.assertEqual(self.admin.patch(f"/api/v1/users/{u['id']}", change)[0], 200)
            self.assertProblem(c.get("/api/v1/auth/me"), 401)
        # An email change is not a security event: it ends nothing.
        self.assertEqual(self.admin.patch(f"/api/v1/users/{u['id']}", {"disabled": False})[0], 200)
        c = self.mgr.client()
        c.login("otto", "reset-by-admin-789")
        self.assertEqual(self.admin.patch(f"/api/v1/users/{u['id']}", {"email": "otto@example.com"})[0], 200)
        self.assertEqual(c.get("/api/v1/auth/me")[0], 200)

    def test_m8_logout_ends_the_session_access_token(self):
        self.make_user("otto", "viewer")
        one, two, r1, r2 = self.sessions("otto")
        # Logging out one session ends its access token; the other device keeps working.
        self.assertEqual(one.post("/api/v1/auth/logout", {"refresh_token": r1["refresh_token"]})[0], 204)
        self.assertProblem(one.get("/api/v1/auth/me"), 401)
        self.assertEqual(two.get("/api/v1/auth/me")[0], 200)
        # A refreshed session's new access token works; logging out everywhere ends every token.
        st, _, r3 = two.post("/api/v1/auth/refresh", {"refresh_token": r2["refresh_token"]}, token="")
        self.assertEqual(st, 200, r3)
        three = self.mgr.client(r3["access_token"])
        self.assertEqual(three.get("/api/v1/auth/me")[0], 200)
        four = self.mgr.client()
        four.login("otto", "user-password-123")
        self.assertEqual(four.post("/api/v1/auth/logout", {})[0], 204)
        for c in (two, three, four):
            self.assertProblem(c.get("/api/v1/auth/me"), 401)


both_backends(SecurityTests, globals())

if __name__ == "__main__":
    run()
