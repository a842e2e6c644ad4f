"""Licensing end to end, on SQLite and PostgreSQL: licences made with `marchproxy license keygen/issue`,
GET /api/v1/license in the four states (valid, grace, expired, bad signature) plus malformed, a
licence replaced while the manager runs, and an enterprise-only feature (the intermediate CA) that
answers 403 naming the feature until a licence includes it."""
import datetime
import json
import os
import subprocess

from harness import find_binary
from manager_harness import ManagerTestCase, both_backends, run


def day(offset):
    return (datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=offset)).isoformat()


class LicenseTests(ManagerTestCase):

    def setUp(self):
        super().setUp()
        self.priv, self.pub = os.path.join(self.tmp, "lic.key"), os.path.join(self.tmp, "lic.pub")
        r = self.cli("license", "keygen", "--out-private", self.priv, "--out-public", self.pub)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(os.stat(self.priv).st_mode & 0o777, 0o600)

    def cli(self, *args):
        return subprocess.run([find_binary(), *args], capture_output=True, text=True, timeout=60)

    def make_license(self, name, expires, key=None, features="intermediate-ca", max_proxies=25):
        out = os.path.join(self.tmp, name)
        r = self.cli("license", "issue", "--key", key or self.priv, "--customer", "Example Corp", "--max-proxies",
                     str(max_proxies), "--features", features, "--expires", expires, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        return out

    def restart_with(self, license_file, *extra):
        self.mgr.stop()
        self.mgr = self.start_manager(extra_args=["--license-file", license_file, "--license-public-key", self.pub,
                                                  *extra])
        self.admin = self.mgr.client()
        self.admin.login()

    def state(self):
        st, _, b = self.admin.get("/api/v1/license")
        self.assertEqual(st, 200, b)
        return b

    def test_a_test_build_says_it_accepts_another_key(self):
        # Production builds refuse --license-public-key (unit test OnlyTheBuiltInVendorKey...); the
        # tests run on builds with MP_LICENSE_TEST_KEYS=ON, which must say so loudly.
        self.restart_with(self.make_license("valid.json", day(365)))
        self.assertEqual(self.state()["status"], "valid")
        self.assertIn("license: TEST BUILD", self.mgr.output())

    def test_community_by_default_and_enterprise_feature_refused(self):
        s = self.state()
        self.assertEqual((s["edition"], s["status"], s["max_proxies"]), ("community", "valid", 3))
        b = self.assertProblem(self.admin.post("/api/v1/ca/intermediate", {}), 403, "feature")
        self.assertIn("intermediate-ca", b["detail"])
        self.assertTrue(b["type"].endswith("/feature-not-licensed"), b)
        self.assertEqual(self.admin.get("/api/v1/ca")[2]["intermediate"], None)
        # Any authenticated role may read the state; anonymous may not.
        _, viewer = self.make_user("vera", "viewer")
        self.assertEqual(viewer.get("/api/v1/license")[0], 200)
        self.assertProblem(self.mgr.client().get("/api/v1/license"), 401)

    def test_valid_licence_unlocks_the_intermediate_ca(self):
        self.restart_with(self.make_license("valid.json", day(365)))
        s = self.state()
        self.assertEqual((s["edition"], s["status"], s["customer"], s["max_proxies"]),
                         ("enterprise", "valid", "Example Corp", 25))
        self.assertEqual(s["features"], ["intermediate-ca"])
        self.assertEqual(s["problem"], "")
        _, viewer = self.make_user("vera", "viewer")
        self.assertProblem(viewer.post("/api/v1/ca/intermediate", {}), 403)  # still admin-only
        st, _, info = self.admin.post("/api/v1/ca/intermediate", {})
        self.assertEqual(st, 201, info)
        self.assertEqual(info["issuing"], "intermediate")
        self.assertEqual(self.admin.post("/api/v1/ca/intermediate", {})[0], 200)  # already there
        chain = self.admin.get("/api/v1/ca.pem")[2]
        self.assertEqual(chain.count("BEGIN CERTIFICATE"), 2)
        inter, root = (p + "-----END CERTIFICATE-----\n" for p in chain.split("-----END CERTIFICATE-----\n")[:2])
        paths = {}
        for n, t in (("inter.pem", inter), ("root.pem", root)):
            paths[n] = os.path.join(self.tmp, n)
            with open(paths[n], "w") as f:
                f.write(t)
        st, _, c = self.admin.post("/api/v1/certificates/issue", {"kind": "server", "name": "w", "sans": ["w.example.com"]})
        self.assertEqual(st, 201, c)
        leaf = os.path.join(self.tmp, "leaf.pem")
        with open(leaf, "w") as f:
            f.write(c["cert_pem"])
        v = subprocess.run(["openssl", "verify", "-CAfile", paths["root.pem"], "-untrusted", paths["inter.pem"], leaf],
                           capture_output=True, text=True)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        v = subprocess.run(["openssl", "verify", "-CAfile", paths["root.pem"], leaf], capture_output=True, text=True)
        self.assertNotEqual(v.returncode, 0)  # issued by the intermediate, not the root

    def test_ca_intermediate_flag_needs_the_feature(self):
        self.mgr.stop()
        self.mgr = self.start_manager(extra_args=["--ca-intermediate"])  # community: refused, but keeps running
        self.admin = self.mgr.client()
        self.admin.login()
        self.assertIsNone(self.admin.get("/api/v1/ca")[2]["intermediate"])
        self.assertIn("--ca-intermediate needs an enterprise licence", self.mgr.output())
        self.restart_with(self.make_license("valid.json", day(365)), "--ca-intermediate")
        info = self.admin.get("/api/v1/ca")[2]
        self.assertEqual(info["issuing"], "intermediate")
        self.assertEqual(info["intermediate"]["issuer"], info["root"]["subject"])
        self.assertEqual(self.admin.get("/api/v1/ca.pem")[2].count("BEGIN CERTIFICATE"), 2)

    def test_grace_expired_bad_signature_and_malformed(self):
        other_priv = os.path.join(self.tmp, "other.key")
        self.assertEqual(self.cli("license", "keygen", "--out-private", other_priv, "--out-public",
                                  os.path.join(self.tmp, "other.pub")).returncode, 0)
        path = os.path.join(self.tmp, "license.json")
        self.restart_with(path)  # the file does not exist yet
        s = self.state()
        self.assertEqual((s["status"], s["edition"], s["max_proxies"]), ("invalid", "community", 3))
        self.assertIn("cannot read", s["problem"])

        def install(src):  # replace the file under the running manager
            with open(src) as f:
                text = f.read()
            with open(path + ".tmp", "w") as f:
                f.write(text)
            os.replace(path + ".tmp", path)

        install(self.make_license("grace.json", day(-3)))
        s = self.state()
        self.assertEqual((s["status"], s["edition"], s["max_proxies"]), ("grace", "enterprise", 25))
        self.assertIn("expired", s["problem"])
        self.assertTrue(s["grace_ends_at"] > s["expires_at"])
        self.assertEqual(self.admin.post("/api/v1/ca/intermediate", {})[0], 201)  # features stay during grace

        install(self.make_license("expired.json", day(-30)))
        s = self.state()
        self.assertEqual((s["status"], s["edition"], s["max_proxies"]), ("expired", "community", 3))
        self.assertEqual(s["features"], [])
        self.assertIn("grace period ended", s["problem"])

        install(self.make_license("forged.json", day(365), key=other_priv))
        s = self.state()
        self.assertEqual((s["status"], s["edition"], s["max_proxies"]), ("invalid", "community", 3))
        self.assertIn("signature does not verify", s["problem"])

        # Raising the limit by editing the payload breaks the signature too.
        with open(self.make_license("good.json", day(365))) as f:
            doc = json.load(f)
        import base64
        payload = json.loads(base64.b64decode(doc["payload"]))
        payload["max_proxies"] = 100000
        doc["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
        with open(os.path.join(self.tmp, "edited.json"), "w") as f:
            json.dump(doc, f)
        install(os.path.join(self.tmp, "edited.json"))
        s = self.state()
        self.assertEqual((s["status"], s["max_proxies"]), ("invalid", 3))

        with open(os.path.join(self.tmp, "garbage.json"), "w") as f:
            f.write("{this is not a licence")
        install(os.path.join(self.tmp, "garbage.json"))
        s = self.state()
        self.assertEqual(s["status"], "invalid")
        self.assertIn("malformed", s["problem"])
        # The manager kept serving through all of it.
        self.assertEqual(self.admin.get("/healthz")[0], 200)

    def test_online_validation_is_optional_and_never_blocks(self):
        import http.server
        import threading
        seen = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                seen.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(403)  # the server refuses: logged only
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.addCleanup(srv.shutdown)
        lic = self.make_license("valid.json", day(365))
        self.mgr.stop()
        self.mgr = self.start_manager(extra_args=["--license-file", lic, "--license-public-key", self.pub,
                                                  "--license-server", f"http://127.0.0.1:{srv.server_port}/v1/check"])
        self.admin = self.mgr.client()
        self.admin.login()
        from harness import wait_until
        wait_until(lambda: "online validation" in self.mgr.output(), timeout=30, message="online check logged")
        self.assertEqual(seen[0]["customer"], "Example Corp")
        self.assertIn("answered 403", self.mgr.output())
        self.assertEqual(self.state()["status"], "valid")  # a refusal changes nothing
        # An unreachable server does not stop the manager either.
        self.mgr.stop()
        self.mgr = self.start_manager(extra_args=["--license-file", lic, "--license-public-key", self.pub,
                                                  "--license-server", "http://127.0.0.1:9/"])
        self.admin = self.mgr.client()
        self.admin.login()
        self.assertEqual(self.state()["edition"], "enterprise")
        self.assertProblem(self.mgr.client().get("/api/v1/license"), 401)

    def test_issue_command_names_bad_flags(self):
        r = self.cli("license", "issue", "--key", self.priv, "--customer", "C", "--max-proxies", "5",
                     "--expires", "2027-02-30")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--expires", r.stderr)
        r = self.cli("license", "issue", "--key", self.pub, "--customer", "C", "--max-proxies", "5",
                     "--expires", "2027-12-31")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("--key", r.stderr)
        r = self.cli("license", "keygen", "--out-private", self.priv, "--out-public", self.pub)
        self.assertNotEqual(r.returncode, 0)  # never overwrites a key
        self.assertIn("--out-private", r.stderr)
        # Without --out the licence goes to standard output.
        r = self.cli("license", "issue", "--key", self.priv, "--customer", "C", "--max-proxies", "5",
                     "--expires", "2027-12-31")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["format"], "marchproxy-license-v1")


both_backends(LicenseTests, globals())

if __name__ == "__main__":
    run()
