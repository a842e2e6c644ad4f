"""`marchproxy manager`: the REST API on SQLite and on a real PostgreSQL 15 — login, CRUD of
clusters/services/mappings/routes/certificates, problem+json errors naming the field, pagination,
ETags, config versions, key rotation, throttling, tokens, 2FA, health, metrics, OpenAPI, HTTPS."""
import base64
import hashlib
import hmac
import os
import struct
import subprocess
import time

from manager_harness import (ADMIN_PASSWORD, Client, Manager, ManagerTestCase, both_backends, run)


def totp(secret_b32, t=None):
    key = base64.b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    step = int((t or time.time()) // 30)
    mac = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    off = mac[19] & 15
    return "%06d" % ((struct.unpack(">I", mac[off:off + 4])[0] & 0x7FFFFFFF) % 1000000)


class ApiTests(ManagerTestCase):

    def test_login_and_me(self):
        st, _, me = self.admin.get("/api/v1/auth/me")
        self.assertEqual(st, 200)
        self.assertEqual(me["username"], "admin")
        self.assertEqual(me["role"], "admin")
        anon = self.mgr.client()
        st, h, b = anon.get("/api/v1/clusters")
        self.assertProblem((st, h, b), 401)
        self.assertIn("Bearer", h.get("www-authenticate", ""))
        self.assertProblem(anon.get("/api/v1/clusters", token="garbage.token.here"), 401)
        self.assertProblem(anon.post("/api/v1/auth/login", {"username": "admin", "password": "wrong-password"}), 401)
        self.assertProblem(anon.post("/api/v1/auth/login", {"username": "admin"}), 422, "password")

    def test_cluster_and_service_crud(self):
        c = self.make_cluster("prod")
        self.assertTrue(c["api_key"].startswith("mpk_"))
        self.assertEqual(c["config_version"], 1)
        st, h, got = self.admin.get(f"/api/v1/clusters/{c['id']}")
        self.assertEqual(st, 200)
        self.assertNotIn("api_key", got)          # shown once only
        self.assertNotIn("api_key_hash", got)
        self.assertEqual(h["etag"], '"1"')
        s = self.make_service(c["id"], "web", auth_type="base64")
        self.assertTrue(s["secret"].startswith("mps_"))
        st, _, got = self.admin.get(f"/api/v1/services/{s['id']}")
        self.assertNotIn("secret", got)
        self.assertNotIn("secret_enc", got)
        self.assertTrue(got["has_secret"])
        # Every change to what proxies do bumps the cluster's config version.
        st, _, cl = self.admin.get(f"/api/v1/clusters/{c['id']}")
        self.assertEqual(cl["config_version"], 2)
        st, h, upd = self.admin.patch(f"/api/v1/services/{s['id']}", {"ip_fqdn": "10.1.2.3"},
                                      headers={"If-Match": '"1"'})
        self.assertEqual(st, 200, upd)
        self.assertEqual(upd["ip_fqdn"], "10.1.2.3")
        self.assertEqual(upd["version"], 2)
        self.assertEqual(h["etag"], '"2"')
        # A lost update is refused with 412 and changes nothing.
        self.assertProblem(self.admin.patch(f"/api/v1/services/{s['id']}", {"ip_fqdn": "10.9.9.9"},
                                            headers={"If-Match": '"1"'}), 412, "If-Match")
        self.assertEqual(self.admin.get(f"/api/v1/services/{s['id']}")[2]["ip_fqdn"], "10.1.2.3")
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{c['id']}")[2]["config_version"], 3)
        # Deleting a cluster that still has services is a conflict; after the service goes, it works.
        self.assertProblem(self.admin.delete(f"/api/v1/clusters/{c['id']}"), 409)
        self.assertEqual(self.admin.delete(f"/api/v1/services/{s['id']}")[0], 204)
        self.assertProblem(self.admin.get(f"/api/v1/services/{s['id']}"), 404)
        self.assertEqual(self.admin.delete(f"/api/v1/clusters/{c['id']}")[0], 204)

    def test_bad_input_is_precise_and_changes_nothing(self):
        c = self.make_cluster("prod")
        cid = c["id"]
        cases = [
            ({"name": "dup"}, None, None),  # created once, then a duplicate below
            ({"name": "dup"}, 409, "name"),
            ({"name": "x", "colour": "red"}, 422, "colour"),
            ({"name": 5}, 422, "name"),
            ({"name": "bad name"}, 422, "name"),
            ({"name": "x'; DROP TABLE clusters;--"}, 422, "name"),
            ({"name": "x", "syslog_endpoint": "10.0.0.1:99999"}, 422, "syslog_endpoint"),
            ({"name": "x", "log_auth": "yes"}, 422, "log_auth"),
        ]
        for body, status, field in cases:
            r = self.admin.post("/api/v1/clusters", body)
            if status is None:
                self.assertEqual(r[0], 201, r)
            else:
                self.assertProblem(r, status, field)
        svc_cases = [
            ({"cluster_id": cid, "name": "a", "ip_fqdn": "10.0.0.0/33"}, 422, "ip_fqdn"),
            ({"cluster_id": cid, "name": "a", "ip_fqdn": "-bad-.example"}, 422, "ip_fqdn"),
            ({"cluster_id": 999, "name": "a", "ip_fqdn": "a.example"}, 422, "cluster_id"),
            ({"cluster_id": cid, "name": "a", "ip_fqdn": "a.example", "auth_type": "md5"}, 422, "auth_type"),
            ({"cluster_id": cid, "ip_fqdn": "a.example"}, 422, "name"),
        ]
        for body, status, field in svc_cases:
            self.assertProblem(self.admin.post("/api/v1/services", body), status, field)
        # Transport-level problems.
        self.assertProblem(self.admin.request("POST", "/api/v1/clusters", raw=b'{"name": "x",'), 400)
        self.assertProblem(self.admin.request("POST", "/api/v1/clusters", raw=b'{"name":"x"}',
                                              headers={"Content-Type": "text/plain"}), 415)
        self.assertProblem(self.admin.request("POST", "/api/v1/clusters", raw=b'["x"]'), 422)
        big = b'{"name":"x","description":"' + b"a" * (2 << 20) + b'"}'
        self.assertProblem(self.admin.request("POST", "/api/v1/clusters", raw=big), 413)
        self.assertProblem(self.admin.get("/api/v1/clusters?limit=0"), 400, "limit")
        self.assertProblem(self.admin.get("/api/v1/clusters?sort=api_key_hash"), 400, "sort")
        self.assertProblem(self.admin.get("/api/v1/nope"), 404)
        self.assertProblem(self.admin.get("/api/v1/clusters?%FF%FE=1"), 400)  # not UTF-8: still a problem+json
        self.assertProblem(self.admin.get("/api/v1/clusters?a=%zz"), 400)
        self.assertProblem(self.admin.request("PUT", "/api/v1/clusters"), 405)
        # Nothing above was stored: prod and dup only.
        st, _, lst = self.admin.get("/api/v1/clusters")
        self.assertEqual(sorted(x["name"] for x in lst["items"]), ["dup", "prod"])
        self.assertEqual(self.admin.get("/api/v1/services")[2]["total"], 0)
        # SQL metacharacters in free-text fields are stored verbatim, never executed.
        evil = "'; DROP TABLE users; -- \" \\ % _ ?"
        st, _, b = self.admin.patch(f"/api/v1/clusters/{cid}", {"description": evil})
        self.assertEqual(st, 200, b)
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{cid}")[2]["description"], evil)
        self.assertEqual(self.admin.get("/api/v1/auth/me")[0], 200)

    def test_list_pagination_filter_sort(self):
        c1 = self.make_cluster("a-cluster")
        c2 = self.make_cluster("b-cluster")
        for i in range(7):
            self.make_service(c1["id"], f"svc{i}", collection="red" if i % 2 else "blue")
        self.make_service(c2["id"], "other")
        st, _, page = self.admin.get("/api/v1/services?limit=3&offset=0&sort=-name")
        self.assertEqual(st, 200)
        self.assertEqual(page["total"], 8)
        self.assertEqual([s["name"] for s in page["items"]], ["svc6", "svc5", "svc4"])
        st, _, page2 = self.admin.get("/api/v1/services?limit=3&offset=3&sort=-name")
        self.assertEqual([s["name"] for s in page2["items"]], ["svc3", "svc2", "svc1"])
        st, _, f = self.admin.get(f"/api/v1/services?cluster_id={c1['id']}&collection=red")
        self.assertEqual(sorted(s["name"] for s in f["items"]), ["svc1", "svc3", "svc5"])
        st, _, q = self.admin.get("/api/v1/services?q=oth")
        self.assertEqual([s["name"] for s in q["items"]], ["other"])
        st, _, q = self.admin.get("/api/v1/services?q=%25")  # a literal %, not a wildcard
        self.assertEqual(q["total"], 0)

    def test_mappings_routes_certificates(self):
        c = self.make_cluster("prod")
        other = self.make_cluster("other")
        a = self.make_service(c["id"], "a")
        b = self.make_service(c["id"], "b")
        foreign = self.make_service(other["id"], "f")
        m = {"cluster_id": c["id"], "name": "a-to-b", "source_services": [a["id"]],
             "destination_services": [b["id"]], "protocols": ["tcp", "https"], "ports": [443, "8000-8100"]}
        st, _, mb = self.admin.post("/api/v1/mappings", m)
        self.assertEqual(st, 201, mb)
        self.assertEqual(mb["ports"], [443, "8000-8100"])
        self.assertProblem(self.admin.post("/api/v1/mappings", {**m, "name": "x", "destination_services": [foreign["id"]]}),
                           422, "destination_services[0]")
        self.assertProblem(self.admin.post("/api/v1/mappings", {**m, "name": "x", "source_services": [424242]}),
                           422, "source_services[0]")
        self.assertProblem(self.admin.post("/api/v1/mappings", {**m, "name": "x", "ports": [0]}), 422, "ports[0]")
        self.assertProblem(self.admin.post("/api/v1/mappings", {**m, "name": "x", "ports": []}), 422, "ports")
        self.assertProblem(self.admin.post("/api/v1/mappings", {**m, "name": "x", "protocols": ["tcp", "tcp"]}),
                           422, "protocols[1]")
        # A service used by a mapping cannot be deleted.
        self.assertProblem(self.admin.delete(f"/api/v1/services/{b['id']}"), 409)
        # Certificates: parsed, key matched, key never returned.
        d = self.tmp
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=app.example.com",
                        "-days", "30", "-keyout", f"{d}/k.pem", "-out", f"{d}/c.pem"], check=True, capture_output=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=other",
                        "-days", "30", "-keyout", f"{d}/k2.pem", "-out", f"{d}/c2.pem"], check=True, capture_output=True)
        cert, key, key2 = (open(f"{d}/{n}").read() for n in ("c.pem", "k.pem", "k2.pem"))
        self.assertProblem(self.admin.post("/api/v1/certificates", {"name": "app", "cert_pem": cert, "key_pem": key2}),
                           422, "key_pem")
        self.assertProblem(self.admin.post("/api/v1/certificates", {"name": "app", "cert_pem": "nope", "key_pem": key}),
                           422, "cert_pem")
        st, _, cb = self.admin.post("/api/v1/certificates", {"name": "app", "cert_pem": cert, "key_pem": key})
        self.assertEqual(st, 201, cb)
        self.assertNotIn("key_pem", cb)
        self.assertTrue(cb["not_after"])
        ok, out = self.sql("SELECT key_enc FROM certificates")
        self.assertTrue(ok, out)
        self.assertNotIn("PRIVATE KEY", out)  # sealed at rest
        r = {"cluster_id": c["id"], "name": "web", "hosts": ["app.example.com", "*.app.example.com"],
             "paths": ["/"], "backends": [{"address": "10.0.0.1:8080", "weight": 3}, {"address": "backend.local:80"}],
             "lb_policy": "least_conn", "health_check": {"path": "/health", "interval_ms": 1000},
             "rate_limit": {"requests_per_second": 100, "burst": 20}, "certificate_id": cb["id"],
             "header_rewrites": [{"action": "set", "name": "X-Env", "value": "prod"}]}
        st, _, rb = self.admin.post("/api/v1/routes", r)
        self.assertEqual(st, 201, rb)
        self.assertProblem(self.admin.post("/api/v1/routes", {**r, "name": "r2", "backends": [{"address": "x:0"}]}),
                           422, "backends[0].address")
        self.assertProblem(self.admin.post("/api/v1/routes", {**r, "name": "r2", "health_check": {"pth": "/"}}),
                           422, "health_check.pth")
        self.assertProblem(self.admin.post("/api/v1/routes", {**r, "name": "r2", "certificate_id": 999}),
                           422, "certificate_id")
        self.assertProblem(self.admin.delete(f"/api/v1/certificates/{cb['id']}"), 409)
        v = self.admin.get(f"/api/v1/clusters/{c['id']}")[2]["config_version"]
        st, _, _ = self.admin.patch(f"/api/v1/routes/{rb['id']}", {"enabled": False})
        self.assertEqual(st, 200)
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{c['id']}")[2]["config_version"], v + 1)

    def test_cluster_key_rotation_with_grace(self):
        c = self.make_cluster("prod")
        anon = self.mgr.client()
        old = c["api_key"]
        st, _, who = anon.get("/api/v1/cluster/whoami", headers={"X-Cluster-API-Key": old})
        self.assertEqual((st, who["name"]), (200, "prod"))
        st, _, rot = self.admin.post(f"/api/v1/clusters/{c['id']}/rotate-key", {"grace_seconds": 300})
        self.assertEqual(st, 200, rot)
        self.assertEqual(anon.get("/api/v1/cluster/whoami", headers={"X-Cluster-API-Key": rot["api_key"]})[0], 200)
        self.assertEqual(anon.get("/api/v1/cluster/whoami", headers={"X-Cluster-API-Key": old})[0], 200)  # grace
        st, _, rot2 = self.admin.post(f"/api/v1/clusters/{c['id']}/rotate-key", {"grace_seconds": 0})
        self.assertEqual(st, 200)
        self.assertProblem(anon.get("/api/v1/cluster/whoami", headers={"X-Cluster-API-Key": rot["api_key"]}), 401)
        self.assertProblem(anon.get("/api/v1/cluster/whoami", headers={"X-Cluster-API-Key": old}), 401)
        self.assertEqual(anon.get("/api/v1/cluster/whoami", headers={"X-Cluster-API-Key": rot2["api_key"]})[0], 200)

    def test_login_throttling(self):
        anon = self.mgr.client()
        codes = [anon.post("/api/v1/auth/login", {"username": "admin", "password": "wrong-password"})[0]
                 for _ in range(6)]
        self.assertEqual(codes[:5], [401] * 5)
        st, h, b = anon.post("/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD})
        self.assertProblem((st, h, b), 429)  # even the right password waits out the block
        self.assertGreater(int(h["retry-after"]), 0)

    def test_refresh_rotation_reuse_and_logout(self):
        c = self.mgr.client()
        tokens = c.login()
        st, _, t2 = c.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}, token="")
        self.assertEqual(st, 200, t2)
        self.assertNotEqual(t2["refresh_token"], tokens["refresh_token"])
        # Re-using the rotated token revokes the whole session, including the new refresh token.
        self.assertProblem(c.post("/api/v1/auth/refresh", {"refresh_token": tokens["refresh_token"]}, token=""), 401)
        self.assertProblem(c.post("/api/v1/auth/refresh", {"refresh_token": t2["refresh_token"]}, token=""), 401)
        t3 = c.login()
        self.assertEqual(c.post("/api/v1/auth/logout", {"refresh_token": t3["refresh_token"]})[0], 204)
        self.assertProblem(c.post("/api/v1/auth/refresh", {"refresh_token": t3["refresh_token"]}, token=""), 401)

    def test_api_tokens(self):
        st, _, t = self.admin.post("/api/v1/auth/tokens", {"name": "ci"})
        self.assertEqual(st, 201, t)
        bot = self.mgr.client(t["token"])
        self.assertEqual(bot.get("/api/v1/auth/me")[2]["username"], "admin")
        self.assertEqual(bot.post("/api/v1/clusters", {"name": "by-bot"})[0], 201)
        ok, out = self.sql("SELECT token_hash FROM api_tokens")
        self.assertNotIn(t["token"], out)  # stored hashed
        listed = self.admin.get("/api/v1/auth/tokens")[2]["items"]
        self.assertNotIn("token", listed[0])
        self.assertEqual(self.admin.delete(f"/api/v1/auth/tokens/{t['id']}")[0], 204)
        self.assertProblem(bot.get("/api/v1/auth/me"), 401)

    def test_totp_two_factor(self):
        st, _, e = self.admin.post("/api/v1/auth/totp/enroll")
        self.assertEqual(st, 200, e)
        self.assertTrue(e["otpauth_uri"].startswith("otpauth://totp/MarchProxy:admin?secret="))
        self.assertProblem(self.admin.post("/api/v1/auth/totp/verify", {"code": "000000" if totp(e["secret"]) != "000000"
                                                                         else "111111"}), 422, "code")
        st, _, v = self.admin.post("/api/v1/auth/totp/verify", {"code": totp(e["secret"])})
        self.assertEqual(st, 200, v)
        self.assertEqual(len(v["backup_codes"]), 10)
        ok, out = self.sql("SELECT totp_secret_enc FROM users WHERE username = 'admin'")
        self.assertNotIn(e["secret"], out)
        c = self.mgr.client()
        st, _, b = c.post("/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD})
        self.assertEqual((st, b["type"].rsplit("/", 1)[1]), (401, "totp-required"))
        c.login(totp_code=totp(e["secret"]))
        code = v["backup_codes"][0]
        c.login(totp_code=code)
        self.assertProblem(c.post("/api/v1/auth/login", {"username": "admin", "password": ADMIN_PASSWORD,
                                                         "totp_code": code}, token=""), 401)  # single use
        self.assertEqual(self.admin.post("/api/v1/auth/totp/disable", {"password": ADMIN_PASSWORD})[0], 204)
        c.login()

    def test_health_metrics_openapi(self):
        anon = self.mgr.client()
        st, _, h = anon.get("/healthz")
        self.assertEqual((st, h["database"]), (200, "ok"))
        self.admin.get("/api/v1/clusters")
        anon.post("/api/v1/auth/login", {"username": "admin", "password": "wrong-password"})
        for i in range(3):  # invented methods from anonymous clients share one series
            anon.request(f"BREW{i}", "/api/v1/clusters")
        st, hd, text = anon.get("/metrics")
        self.assertNotIn('method="BREW', text)
        self.assertIn('method="other"', text)
        self.assertEqual(st, 200)
        self.assertIn('marchproxy_manager_requests_total{route="/api/v1/clusters",method="GET",status="200"}', text)
        self.assertIn('marchproxy_manager_logins_total{result="failed"} 1', text)
        self.assertIn('marchproxy_manager_logins_total{result="ok"} 1', text)
        self.assertIn("marchproxy_manager_db_pool_connections", text)
        self.assertIn("marchproxy_manager_request_duration_seconds_bucket", text)
        st, _, doc = anon.get("/api/v1/openapi.json")
        self.assertEqual(st, 200)
        self.assertEqual(doc["openapi"][:2], "3.")
        self.assertIn("/api/v1/clusters/{id}", doc["paths"])

    def test_settings_and_users(self):
        st, _, s = self.admin.put("/api/v1/settings/retention_days", {"value": 90})
        self.assertEqual(st, 200, s)
        self.assertEqual(self.admin.get("/api/v1/settings")[2]["settings"]["retention_days"], 90)
        self.assertProblem(self.admin.put("/api/v1/settings/x", {"valu": 1}), 422, "valu")
        u, _ = self.make_user("olivia", "service-owner")
        self.assertProblem(self.admin.post("/api/v1/users", {"username": "olivia", "password": "x" * 12,
                                                             "role": "viewer"}), 409, "username")
        self.assertProblem(self.admin.post("/api/v1/users", {"username": "p", "password": "short", "role": "viewer"}),
                           422, "password")
        self.assertProblem(self.admin.post("/api/v1/users", {"username": "p", "password": "x" * 12, "role": "root"}),
                           422, "role")
        ok, out = self.sql("SELECT password_hash FROM users WHERE username = 'olivia'")
        self.assertTrue(out.startswith("$2b$12$"), out)
        me = self.admin.get("/api/v1/auth/me")[2]
        self.assertProblem(self.admin.patch(f"/api/v1/users/{me['id']}", {"role": "viewer"}), 409, "role")
        self.assertEqual(self.admin.patch(f"/api/v1/users/{u['id']}", {"disabled": True})[0], 200)
        self.assertProblem(self.mgr.client().post("/api/v1/auth/login", {"username": "olivia",
                                                                           "password": "user-password-123"}), 401)

    def test_restart_keeps_data_and_refuses_newer_schema(self):
        c = self.make_cluster("prod")
        self.mgr.stop()
        m2 = self.start_manager()
        cl = m2.client()
        cl.login()
        self.assertEqual(cl.get(f"/api/v1/clusters/{c['id']}")[2]["name"], "prod")
        self.assertNotIn("created user", m2.output())  # the admin is created on first start only
        m2.stop()
        ok, out = self.sql("INSERT INTO schema_version (version, applied_at) VALUES (999, 'future')")
        self.assertTrue(ok, out)
        m3 = Manager(self.tmp, self.db_url)
        self.assertNotEqual(m3.start(expect_fail=True), 0)
        self.assertIn("newer than this binary knows", m3.output())


class ShutdownTests(ManagerTestCase):
    """SIGTERM with an idle keep-alive connection and a half-sent request still exits promptly and
    cleanly (exit 0), instead of waiting for the clients."""

    def test_sigterm_with_idle_and_partial_connections(self):
        import socket
        idle = socket.create_connection(("127.0.0.1", self.mgr.port))
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertIn(b"200 OK", idle.recv(4096))
        partial = socket.create_connection(("127.0.0.1", self.mgr.port))
        partial.sendall(b"POST /api/v1/clusters HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        time.sleep(0.2)
        proc = self.mgr.proc
        proc.send_signal(15)
        proc.wait(timeout=15)
        self.assertEqual(proc.returncode, 0, self.mgr.output())
        idle.close()
        partial.close()


class FirstStartTests(ManagerTestCase):
    """No MARCHPROXY_ADMIN_PASSWORD: a random password is printed once; HTTPS works."""

    def setUp(self):
        import shutil
        import tempfile
        self.tmp = tempfile.mkdtemp(prefix="mp-mgr-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_random_admin_password_and_https(self):
        d = self.tmp
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
                        "-days", "1", "-keyout", f"{d}/tls.key", "-out", f"{d}/tls.crt"], check=True,
                       capture_output=True)
        env = {"MARCHPROXY_ADMIN_PASSWORD": ""}
        m = Manager(d, None, env=env, tls=(f"{d}/tls.crt", f"{d}/tls.key"))
        m.start()
        self.addCleanup(m.stop)
        import re
        found = re.search(r'created user "admin" with password: (\S+)', m.output())
        self.assertTrue(found, m.output())
        c = m.client()
        c.login("admin", found.group(1))
        self.assertEqual(c.get("/api/v1/auth/me")[0], 200)
        self.assertTrue(os.path.exists(os.path.join(d, "master.key")))
        self.assertEqual(os.stat(os.path.join(d, "master.key")).st_mode & 0o777, 0o600)
        self.assertIn("generated a new master key", m.output())
        # Plain HTTP to the TLS port does not get an API answer.
        plain = Client(m.port, c.token)
        with self.assertRaises(Exception):
            st, _, _ = plain.get("/api/v1/auth/me")
            if st == 200:
                raise AssertionError("plain HTTP served")
            raise ConnectionError(st)


both_backends(ApiTests, globals())

if __name__ == "__main__":
    run()
