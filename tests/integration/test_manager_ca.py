"""The manager's certificate authority through its API, on SQLite and PostgreSQL: issued certificates
verify with `openssl verify` against /api/v1/ca.pem, revocation shows in the CRL, imports are checked,
keys are admin-only and audited, the CA survives a restart and expiring certificates are renewed.
Revocations survive deleting the certificate and cover every serial a renewed certificate had; every
accepted reason revokes under `openssl verify -crl_check`."""
import json
import os
import re
import subprocess

from manager_harness import ManagerTestCase, both_backends, run


def openssl(*args, input=None):
    return subprocess.run(["openssl", *args], input=input, capture_output=True, text=True)


class CaTests(ManagerTestCase):

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def read(self, name):
        with open(os.path.join(self.tmp, name)) as f:
            return f.read()

    def issue(self, body, client=None):
        st, h, b = (client or self.admin).post("/api/v1/certificates/issue", body)
        self.assertEqual(st, 201, b)
        return b

    def test_issued_server_certificate_verifies_against_ca_pem(self):
        st, h, ca_pem = self.mgr.client().get("/api/v1/ca.pem")  # no login needed
        self.assertEqual(st, 200)
        self.assertEqual(h["content-type"], "application/x-pem-file")
        ca_file = self.write("ca.pem", ca_pem)
        text = openssl("x509", "-in", ca_file, "-noout", "-text").stdout
        self.assertIn("CA:TRUE", text)
        self.assertIn("ecdsa-with-SHA384", text)
        self.assertIn("NIST CURVE: P-384", text)
        self.assertIn("Certificate Sign, CRL Sign", text)

        b = self.issue({"kind": "server", "name": "web", "sans": ["web.example.com", "10.0.0.5"], "days": 90})
        self.assertEqual(b["kind"], "server")
        self.assertEqual(b["sans"], ["DNS:web.example.com", "IP:10.0.0.5"])
        self.assertIn("PRIVATE KEY", b["key_pem"])
        cert_file, key_file = self.write("web.pem", b["cert_pem"]), self.write("web.key", b["key_pem"])
        v = openssl("verify", "-CAfile", ca_file, "-purpose", "sslserver", cert_file)
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn(": OK", v.stdout)
        # The key belongs to the certificate.
        self.assertEqual(openssl("x509", "-in", cert_file, "-noout", "-pubkey").stdout,
                         openssl("pkey", "-in", key_file, "-pubout").stdout)
        # Never again in a response; sealed in the database.
        st, _, got = self.admin.get(f"/api/v1/certificates/{b['id']}")
        self.assertEqual(st, 200)
        self.assertNotIn("key_pem", got)
        self.assertTrue(got["has_key"])
        self.assertEqual(got["serial"], b["serial"])
        st, _, lst = self.admin.get("/api/v1/certificates?kind=server")
        # (manager-control is the control listener's own certificate, docs/control-plane.md.)
        self.assertEqual([c["name"] for c in lst["items"] if c["name"] != "manager-control"], ["web"])
        self.assertTrue(all("key_pem" not in c for c in lst["items"]))
        ok, out = self.sql("SELECT key_enc FROM certificates")
        self.assertTrue(ok, out)
        self.assertNotIn("PRIVATE KEY", out)
        # A client certificate carries the service name.
        c = self.issue({"kind": "client", "name": "billing-id", "common_name": "billing"})
        subj = openssl("x509", "-noout", "-subject", "-in", self.write("c.pem", c["cert_pem"])).stdout
        self.assertIn("CN = billing", subj)
        v = openssl("verify", "-CAfile", ca_file, "-purpose", "sslclient", os.path.join(self.tmp, "c.pem"))
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        # Bad requests name the field.
        self.assertProblem(self.admin.post("/api/v1/certificates/issue",
                                           {"kind": "server", "name": "x", "sans": ["ok.example.com", "not a host"]}),
                           422, "sans[1]")
        self.assertProblem(self.admin.post("/api/v1/certificates/issue", {"kind": "server", "name": "x"}), 422, "sans")
        self.assertProblem(self.admin.post("/api/v1/certificates/issue", {"kind": "ca", "name": "x"}), 422, "kind")
        self.assertProblem(self.admin.post("/api/v1/certificates/issue",
                                           {"kind": "client", "name": "x", "common_name": "a", "days": 5000}), 422, "days")
        self.assertProblem(self.admin.post("/api/v1/certificates/issue",
                                           {"kind": "client", "name": "web", "common_name": "a"}), 409, "name")
        # The control listener's proxy identities are reserved (review L6).
        for cn in ("proxy:1:ingress-1", "PROXY:2:x"):
            self.assertProblem(self.admin.post("/api/v1/certificates/issue",
                                               {"kind": "client", "name": "fake-proxy", "common_name": cn}),
                               422, "common_name")

    def test_revoked_certificate_is_in_the_crl(self):
        ca_file = self.write("ca.pem", self.admin.get("/api/v1/ca.pem")[2])
        a = self.issue({"kind": "client", "name": "a", "common_name": "svc-a"})
        b = self.issue({"kind": "client", "name": "b", "common_name": "svc-b"})
        cl = self.make_cluster("prod")
        st, _, r = self.admin.post(f"/api/v1/certificates/{a['id']}/revoke", {"reason": "keyCompromise"})
        self.assertEqual(st, 200, r)
        self.assertTrue(r["revoked"])
        self.assertEqual(r["revoke_reason"], "keyCompromise")
        # Every snapshot carries the CRL, so every cluster's version moved.
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{cl['id']}")[2]["config_version"], cl["config_version"] + 1)
        st, h, crl = self.mgr.client().get("/api/v1/ca/crl.pem")
        self.assertEqual(st, 200)
        crl_file = self.write("crl.pem", crl)
        text = openssl("crl", "-in", crl_file, "-noout", "-text").stdout
        self.assertIn("Serial Number: " + a["serial"], text)
        self.assertNotIn(b["serial"], text)
        self.assertIn("Key Compromise", text)
        self.assertIn("Next Update", text)
        self.assertEqual(openssl("crl", "-in", crl_file, "-noout", "-CAfile", ca_file).returncode, 0)
        # openssl verify with CRL checking refuses the revoked certificate and accepts the other.
        v = openssl("verify", "-crl_check", "-CAfile", ca_file, "-CRLfile", crl_file, self.write("a.pem", a["cert_pem"]))
        self.assertNotEqual(v.returncode, 0)
        self.assertIn("revoked", v.stdout + v.stderr)
        v = openssl("verify", "-crl_check", "-CAfile", ca_file, "-CRLfile", crl_file, self.write("b.pem", b["cert_pem"]))
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertProblem(self.admin.post(f"/api/v1/certificates/{a['id']}/revoke", {}), 409)
        self.assertProblem(self.admin.post(f"/api/v1/certificates/{b['id']}/revoke", {"reason": "because"}),
                           422, "reason")
        self.assertProblem(self.admin.post("/api/v1/certificates/424242/revoke", {}), 404)
        # The CA's own certificate is neither revocable nor deletable.
        st, _, info = self.admin.get("/api/v1/ca")
        self.assertEqual(st, 200)
        root_id = info["root"]["certificate_id"]
        self.assertProblem(self.admin.post(f"/api/v1/certificates/{root_id}/revoke", {}), 409)
        self.assertProblem(self.admin.delete(f"/api/v1/certificates/{root_id}"), 409)

    def crl_check(self, cert_pem, name):
        """`openssl verify -crl_check` of one certificate against ca.pem and the published CRL."""
        ca_file = self.write("ca.pem", self.mgr.client().get("/api/v1/ca.pem")[2])
        st, _, crl = self.mgr.client().get("/api/v1/ca/crl.pem")
        self.assertEqual(st, 200)
        crl_file = self.write("crl.pem", crl)
        return openssl("verify", "-crl_check", "-CAfile", ca_file, "-CRLfile", crl_file, self.write(name, cert_pem))

    def assertRevokedByCrl(self, cert_pem, name):
        v = self.crl_check(cert_pem, name)
        self.assertNotEqual(v.returncode, 0, v.stdout + v.stderr)
        self.assertIn("certificate revoked", v.stdout + v.stderr)

    def crl_text(self):
        crl_file = self.write("crl.pem", self.mgr.client().get("/api/v1/ca/crl.pem")[2])
        return openssl("crl", "-in", crl_file, "-noout", "-text").stdout

    def test_deleting_a_certificate_keeps_its_revocation(self):
        a = self.issue({"kind": "client", "name": "leaked", "common_name": "svc-a"})
        # A valid issued certificate cannot be deleted: it would stay trusted and become unrevocable.
        p = self.assertProblem(self.admin.delete(f"/api/v1/certificates/{a['id']}"), 409)
        self.assertIn(f"/api/v1/certificates/{a['id']}/revoke", p["detail"])
        self.assertEqual(self.admin.get(f"/api/v1/certificates/{a['id']}")[0], 200)
        st, _, r = self.admin.post(f"/api/v1/certificates/{a['id']}/revoke", {"reason": "keyCompromise"})
        self.assertEqual(st, 200, r)
        self.assertRevokedByCrl(a["cert_pem"], "a.pem")
        st, _, b = self.admin.delete(f"/api/v1/certificates/{a['id']}")
        self.assertEqual(st, 204, b)
        self.assertEqual(self.admin.get(f"/api/v1/certificates/{a['id']}")[0], 404)
        # The revocation outlives the row, also for a manager that builds the CRL from scratch.
        self.assertIn("Serial Number: " + a["serial"], self.crl_text())
        self.assertRevokedByCrl(a["cert_pem"], "a.pem")
        self.mgr.stop()
        self.mgr = self.start_manager()
        self.admin = self.mgr.client()
        self.admin.login()
        self.assertIn("Serial Number: " + a["serial"], self.crl_text())
        self.assertRevokedByCrl(a["cert_pem"], "a.pem")
        # Imported certificates stay deletable.
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-subj", "/CN=ext.example.com", "-days", "30", "-keyout", f"{self.tmp}/k.pem",
                        "-out", f"{self.tmp}/c.pem"], check=True, capture_output=True)
        st, _, imp = self.admin.post("/api/v1/certificates/import", {"name": "ext", "cert_pem": self.read("c.pem"),
                                                                     "key_pem": self.read("k.pem")})
        self.assertEqual(st, 201, imp)
        self.assertEqual(self.admin.delete(f"/api/v1/certificates/{imp['id']}")[0], 204)

    def test_every_accepted_reason_revokes(self):
        with open(os.path.join(os.path.dirname(__file__), "..", "..", "docs", "openapi.json")) as f:
            spec = json.load(f)
        body = spec["paths"]["/api/v1/certificates/{id}/revoke"]["post"]["requestBody"]
        reasons = body["content"]["application/json"]["schema"]["properties"]["reason"]["enum"]
        self.assertIn("keyCompromise", reasons)
        # Reasons that would not revoke (removeFromCRL) or promise a release that does not exist
        # (certificateHold) are refused, naming the field, and leave the certificate as it was.
        held = self.issue({"kind": "client", "name": "held", "common_name": "svc-held"})
        for refused in ("removeFromCRL", "certificateHold"):
            self.assertNotIn(refused, reasons)
            p = self.assertProblem(self.admin.post(f"/api/v1/certificates/{held['id']}/revoke", {"reason": refused}),
                                   422, "reason")
            self.assertIn(refused, p["detail"])
        self.assertFalse(self.admin.get(f"/api/v1/certificates/{held['id']}")[2]["revoked"])
        issued = {}
        for reason in reasons + [None]:  # None: no body, the default reason
            name = f"r-{reason or 'default'}"
            c = self.issue({"kind": "client", "name": name, "common_name": "svc"})
            st, _, r = self.admin.post(f"/api/v1/certificates/{c['id']}/revoke",
                                       {"reason": reason} if reason else None)
            self.assertEqual(st, 200, r)
            self.assertEqual(r["revoke_reason"], reason or "unspecified")
            issued[name] = c
        for name, c in issued.items():
            with self.subTest(reason=name):
                self.assertRevokedByCrl(c["cert_pem"], name + ".pem")
        v = self.crl_check(held["cert_pem"], "held.pem")
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)

    def test_revoking_a_renewed_certificate_revokes_its_earlier_serials(self):
        first = self.issue({"kind": "server", "name": "short", "sans": ["short.example.com"], "days": 1})
        self.mgr.stop()
        self.mgr = self.start_manager()  # renews at start-up: 1 day is within the default 30
        self.admin = self.mgr.client()
        self.admin.login()
        from harness import wait_until
        renewed = wait_until(lambda: (lambda r: r if r["serial"] != first["serial"] else None)(
            self.admin.get(f"/api/v1/certificates/{first['id']}")[2]), timeout=30, message="renewal")
        new_pem = self.admin.get(f"/api/v1/certificates/{first['id']}/download")[2]
        # Both are valid before the revocation (the earlier one until it expires).
        for pem, name in ((first["cert_pem"], "first.pem"), (new_pem, "renewed.pem")):
            v = self.crl_check(pem, name)
            self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        st, _, r = self.admin.post(f"/api/v1/certificates/{first['id']}/revoke", {"reason": "keyCompromise"})
        self.assertEqual(st, 200, r)
        text = self.crl_text()
        self.assertIn("Serial Number: " + first["serial"], text)
        self.assertIn("Serial Number: " + renewed["serial"], text)
        self.assertRevokedByCrl(first["cert_pem"], "first.pem")
        self.assertRevokedByCrl(new_pem, "renewed.pem")

    def test_import_checks_the_pair(self):
        d = self.tmp
        for n in ("1", "2"):
            subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                            "-subj", f"/CN=ext{n}.example.com", "-addext", f"subjectAltName=DNS:ext{n}.example.com",
                            "-days", "30", "-keyout", f"{d}/k{n}.pem", "-out", f"{d}/c{n}.pem"],
                           check=True, capture_output=True)
        cert, key, key2 = (self.read(n) for n in ("c1.pem", "k1.pem", "k2.pem"))
        self.assertProblem(self.admin.post("/api/v1/certificates/import",
                                           {"name": "ext", "cert_pem": cert, "key_pem": key2}), 422, "key_pem")
        self.assertProblem(self.admin.post("/api/v1/certificates/import",
                                           {"name": "ext", "cert_pem": "-----BEGIN CERTIFICATE-----\nAAAA\n",
                                            "key_pem": key}), 422, "cert_pem")
        self.assertProblem(self.admin.post("/api/v1/certificates/import",
                                           {"name": "ext", "cert_pem": cert, "key_pem": "not a key"}), 422, "key_pem")
        st, _, b = self.admin.post("/api/v1/certificates/import", {"name": "ext", "cert_pem": cert, "key_pem": key})
        self.assertEqual(st, 201, b)
        self.assertEqual(b["kind"], "imported")
        self.assertEqual(b["sans"], ["DNS:ext1.example.com"])
        serial = openssl("x509", "-in", f"{d}/c1.pem", "-noout", "-serial").stdout.strip().split("=")[1]
        self.assertEqual(b["serial"].lstrip("0"), serial.lstrip("0"))
        end = openssl("x509", "-in", f"{d}/c1.pem", "-noout", "-enddate").stdout
        self.assertEqual(b["not_after"][:4], re.search(r"(\d{4}) GMT", end).group(1))
        self.assertProblem(self.admin.post("/api/v1/certificates/import",
                                           {"name": "ext-again", "cert_pem": cert, "key_pem": key}), 422, "cert_pem")
        # Imported certificates are revoked by their own issuer, not here.
        self.assertProblem(self.admin.post(f"/api/v1/certificates/{b['id']}/revoke", {}), 409)

    def test_roles_and_key_downloads(self):
        _, viewer = self.make_user("vera", "viewer")
        _, owner = self.make_user("otto", "service-owner")
        for c in (viewer, owner):
            self.assertProblem(c.post("/api/v1/certificates/issue",
                                      {"kind": "client", "name": "x", "common_name": "x"}), 403)
        b = self.issue({"kind": "server", "name": "web", "sans": ["web.example.com"]})
        self.assertProblem(viewer.post(f"/api/v1/certificates/{b['id']}/revoke", {}), 403)
        # Everyone may read the certificate; only admins get the key, and that is audited.
        st, h, pem = viewer.get(f"/api/v1/certificates/{b['id']}/download")
        self.assertEqual(st, 200)
        self.assertEqual(pem, b["cert_pem"])
        self.assertProblem(viewer.get(f"/api/v1/certificates/{b['id']}/download?include_key=true"), 403)
        st, _, pem = self.admin.get(f"/api/v1/certificates/{b['id']}/download?include_key=true")
        self.assertEqual(st, 200)
        self.assertTrue(pem.startswith(b["cert_pem"]))
        self.assertIn(b["key_pem"], pem)
        st, _, root = self.admin.get("/api/v1/ca")
        self.assertProblem(self.admin.get(f"/api/v1/certificates/{root['root']['certificate_id']}/download"
                                          "?include_key=true"), 403, "include_key")
        st, _, audit = self.admin.get("/api/v1/audit?limit=200")
        self.assertEqual(st, 200, audit)
        actions = [(e["actor"], e["action"], e["outcome"]) for e in audit["items"]]
        self.assertIn(("admin", "certificate.issue", "success"), actions)
        self.assertIn(("admin", "certificate.download_key", "success"), actions)
        self.assertIn(("vera", "certificate.issue", "denied"), actions)
        self.assertIn(("vera", "certificate.download_key", "denied"), actions)
        # The CA endpoint needs a login; ca.pem and crl.pem do not.
        anon = self.mgr.client()
        self.assertProblem(anon.get("/api/v1/ca"), 401)
        self.assertEqual(anon.get("/api/v1/ca/crl.pem")[0], 200)

    def test_ca_survives_restart_and_expiring_certificates_are_renewed(self):
        ca_before = self.admin.get("/api/v1/ca.pem")[2]
        soon = self.issue({"kind": "server", "name": "soon", "sans": ["soon.example.com"], "days": 5})
        later = self.issue({"kind": "server", "name": "later", "sans": ["later.example.com"], "days": 365})
        c = self.make_cluster("prod")
        st, _, route = self.admin.post("/api/v1/routes", {"cluster_id": c["id"], "name": "web", "hosts": ["soon.example.com"],
                                                          "backends": [{"address": "10.0.0.1:80"}],
                                                          "certificate_id": soon["id"]})
        self.assertEqual(st, 201, route)
        version = self.admin.get(f"/api/v1/clusters/{c['id']}")[2]["config_version"]
        self.mgr.stop()
        self.mgr = self.start_manager(extra_args=["--cert-renew-days", "30"])
        self.admin = self.mgr.client()
        self.admin.login()
        self.assertEqual(self.admin.get("/api/v1/ca.pem")[2], ca_before)  # the same CA, loaded not regenerated
        # Renewal runs at start-up; wait for it through the API.
        from harness import wait_until
        renewed = wait_until(lambda: (lambda r: r if r["serial"] != soon["serial"] else None)(
            self.admin.get(f"/api/v1/certificates/{soon['id']}")[2]), timeout=30, message="renewal")
        self.assertTrue(renewed["renewed_at"])
        self.assertEqual(renewed["sans"], ["DNS:soon.example.com"])
        self.assertEqual(self.admin.get(f"/api/v1/certificates/{later['id']}")[2]["serial"], later["serial"])
        self.assertEqual(self.admin.get(f"/api/v1/clusters/{c['id']}")[2]["config_version"], version + 1)
        pem = self.admin.get(f"/api/v1/certificates/{soon['id']}/download")[2]
        v = openssl("verify", "-CAfile", self.write("ca.pem", ca_before), self.write("renewed.pem", pem))
        self.assertEqual(v.returncode, 0, v.stdout + v.stderr)
        st, _, audit = self.admin.get("/api/v1/audit?limit=200")
        self.assertIn("certificate.renew", [e["action"] for e in audit["items"]])
        # A manager with the wrong master key refuses to start and says why.
        from manager_harness import Manager
        wrong = Manager(self.tmp, self.db_url, env={"MARCHPROXY_MASTER_KEY": "11" * 32})
        self.assertNotEqual(wrong.start(expect_fail=True), 0)
        self.assertIn("does not decrypt", wrong.output())


both_backends(CaTests, globals())

if __name__ == "__main__":
    run()
