"""testssl.sh (Debian's testssl 3.0) against a TLS listener with its defaults: only TLS 1.2 and 1.3,
no weak cipher class, forward secrecy everywhere, and no vulnerability that testssl knows of.

The summary (one line per finding) is written to $MARCHPROXY_TESTSSL_OUT (default: the test's temp
dir); bench/results/testssl-LATEST.md is a copy of one such run. Several minutes: testssl makes
thousands of handshakes from bash."""
import json
import os
import shutil
import subprocess
import unittest

from harness import ProxyTestCase, main, render
from tls_certs import Pki

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - name: https
    address: 127.0.0.1
    port: 0
    tls:
      certificates:
        - { cert: "${RSA_CERT}", key: "${RSA_KEY}" }
        - { cert: "${EC_CERT}", key: "${EC_KEY}" }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        direct_response: { status: 200, body: "hello\\n" }
"""

# Findings that must say "not offered" / "not vulnerable" (testssl ids).
NOT_OFFERED = ["SSLv2", "SSLv3", "TLS1", "TLS1_1", "cipherlist_NULL", "cipherlist_aNULL", "cipherlist_EXPORT",
               "cipherlist_LOW", "cipherlist_3DES_IDEA"]
OFFERED = ["TLS1_2", "TLS1_3"]
VULNERABILITIES = ["heartbleed", "CCS", "ticketbleed", "ROBOT", "secure_renego", "secure_client_renego", "CRIME_TLS",
                   "POODLE_SSL", "fallback_SCSV", "SWEET32", "FREAK", "DROWN", "LOGJAM", "BEAST", "LUCKY13", "RC4"]


@unittest.skipUnless(shutil.which("testssl"), "testssl is not installed (scripts/setup.sh installs testssl.sh)")
@unittest.skipIf(os.environ.get("MARCHPROXY_ITEST_SANITIZED"),
                 "audits the TLS configuration, which the release build's run covers; testssl's several minutes of "
                 "handshakes do not fit the sanitizer stage's time")
class TestSsl(ProxyTestCase):
    def test_defaults_pass_testssl(self):
        pki = Pki(self.tmpdir())
        rsa = pki.issue("localhost", sans=["DNS:localhost", "IP:127.0.0.1"], key="rsa")
        ec = pki.issue("ec.localhost", sans=["DNS:ec.localhost"], key="p384")
        proxy = self.start_proxy(render(CONFIG, RSA_CERT=rsa[0], RSA_KEY=rsa[1], EC_CERT=ec[0], EC_KEY=ec[1]),
                                 expect_listeners=("https",))
        out_dir = os.environ.get("MARCHPROXY_TESTSSL_OUT") or self.tmpdir()
        os.makedirs(out_dir, exist_ok=True)
        report = os.path.join(out_dir, "testssl.json")
        if os.path.exists(report):
            os.unlink(report)
        # -p protocols, -s cipher categories, -f forward secrecy, -U vulnerabilities. (-S, the server
        # defaults, mostly rates the certificate and adds minutes; bench/results/testssl-LATEST.md has it.)
        r = subprocess.run(["testssl", "--quiet", "--color", "0", "--warnings", "off", "--ip", "one",
                            "--openssl-timeout", "10", "--jsonfile", report, "-p", "-s", "-f", "-U",
                            f"127.0.0.1:{proxy.ports['https']}"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1100)
        self.assertTrue(os.path.exists(report), r.stdout[-3000:])
        with open(report) as f:
            findings = json.load(f)
        by_id = {}
        for x in findings:
            by_id.setdefault(x["id"], x)
        self.write_summary(out_dir, findings)
        # The proxy stayed up through all of it (testssl sends a lot of odd handshakes).
        self.assertTrue(proxy.alive(), proxy.tail())

        for i in NOT_OFFERED:
            self.assertIn(i, by_id, f"testssl reported no {i}")
            self.assertIn("not offered", by_id[i]["finding"], by_id[i])
        for i in OFFERED:
            self.assertIn(i, by_id, f"testssl reported no {i}")
            self.assertTrue(by_id[i]["finding"].startswith("offered"), by_id[i])
        for i in VULNERABILITIES:
            self.assertIn(i, by_id, f"testssl did not test {i}")
            self.assertIn(by_id[i]["severity"], ("OK", "INFO", "LOW"), by_id[i])
        fs = by_id.get("FS") or by_id.get("PFS")  # testssl 3.1 renamed PFS to FS
        self.assertIsNotNone(fs, "testssl reported nothing on forward secrecy")
        self.assertEqual(fs["severity"], "OK", fs)
        # cert_* findings rate the test's throwaway certificates (a 30-day CA testssl does not trust, no
        # CRL or OCSP URI in them), not the listener; everything else must be below MEDIUM.
        bad = [x for x in findings if x["severity"] in ("MEDIUM", "HIGH", "CRITICAL") and not x["id"].startswith("cert")]
        self.assertEqual(bad, [], "testssl findings of MEDIUM or worse")

    def write_summary(self, out_dir, findings):
        lines = ["# testssl.sh against a MarchProxy TLS listener (default settings)", "",
                 "`tests/integration/test_testssl.py`: testssl 3.0 `-p -s -f -U`, one RSA-2048 and one "
                 "ECDSA P-384 certificate, nothing configured beyond the certificates. The `cert_*` rows rate the "
                 "test's throwaway certificates (a 30-day test CA testssl does not trust, no CRL/OCSP URI), not the "
                 "listener; the test requires every other row to be below MEDIUM.", "",
                 "| id | severity | finding |", "|---|---|---|"]
        for x in findings:
            if x["id"] in ("scanTime", "engine_problem", "service", "pre_128cipher"):
                continue
            finding = x["finding"].replace("|", "\\|").replace("\n", " ")
            lines.append(f"| {x['id']} | {x['severity']} | {finding} |")
        with open(os.path.join(out_dir, "testssl-summary.md"), "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
