"""Two managers on one PostgreSQL database (review M3): manager A creates the intermediate CA; manager
B, which loaded the CA before that, picks the intermediate up without a restart: its CA chain names
it, its control listener trusts it, and what B issues from then on chains to it (not to the root
directly)."""
import datetime
import os
import shutil
import subprocess
import tempfile

import manager_harness as mh
from harness import find_binary, wait_until


def openssl_verify(ca_file, cert_file, untrusted=None):
    argv = ["openssl", "verify", "-CAfile", ca_file]
    if untrusted:
        argv += ["-untrusted", untrusted]
    return subprocess.run(argv + [cert_file], capture_output=True, text=True).returncode == 0


class SharedCaTest(mh.ManagerTestCase):
    BACKEND = "postgres"

    def setUp(self):
        self.keys = tempfile.mkdtemp(prefix="mp-lic-")
        self.addCleanup(shutil.rmtree, self.keys, True)
        priv, pub = os.path.join(self.keys, "lic.key"), os.path.join(self.keys, "lic.pub")
        lic = os.path.join(self.keys, "license.json")
        subprocess.run([find_binary(), "license", "keygen", "--out-private", priv, "--out-public", pub], check=True,
                       capture_output=True)
        expires = (datetime.date.today() + datetime.timedelta(days=30)).isoformat()
        subprocess.run([find_binary(), "license", "issue", "--key", priv, "--customer", "shared", "--max-proxies", "10",
                        "--features", "intermediate-ca", "--expires", expires, "--out", lic], check=True,
                       capture_output=True)
        # A test build accepts --license-public-key (MP_LICENSE_TEST_KEYS); see docs/licensing.md.
        self.lic_args = ["--license-file", lic, "--license-public-key", pub]
        super().setUp()

    def start_manager(self, **kw):
        # Same data directory = same master key: both managers can open the CA's sealed keys.
        kw["extra_args"] = list(kw.get("extra_args", ())) + self.lic_args
        return super().start_manager(**kw)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text if isinstance(text, str) else text.decode())
        return path

    def test_second_manager_picks_up_an_intermediate_the_first_created(self):
        b = self.start_manager()
        bc = b.client()
        bc.login()
        self.assertIsNone(bc.get("/api/v1/ca")[2]["intermediate"])
        root = self.write("root.pem", bc.get("/api/v1/ca.pem")[2])

        st, _, info = self.admin.post("/api/v1/ca/intermediate", {})
        self.assertEqual(st, 201, info)
        wait_until(lambda: bc.get("/api/v1/ca")[2]["issuing"] == "intermediate", timeout=15,
                   message="manager B issuing from the intermediate")
        text = lambda b: b if isinstance(b, str) else b.decode()  # noqa: E731
        chain_a, chain_b = text(self.admin.get("/api/v1/ca.pem")[2]), text(bc.get("/api/v1/ca.pem")[2])
        self.assertEqual(chain_a, chain_b)
        self.assertEqual(chain_b.count("BEGIN CERTIFICATE"), 2)

        st, _, cert = bc.post("/api/v1/certificates/issue", {"kind": "client", "name": "svc", "common_name": "svc"})
        self.assertEqual(st, 201, cert)
        leaf = self.write("leaf.pem", cert["cert_pem"])
        inter = self.write("inter.pem", chain_b.split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n")
        self.assertTrue(openssl_verify(root, leaf, untrusted=inter), "B's certificate chains to the intermediate")
        self.assertFalse(openssl_verify(root, leaf), "B no longer signs with the root directly")
        self.assertIn("loaded the intermediate CA another manager created", b.output())


if __name__ == "__main__":
    mh.run()
