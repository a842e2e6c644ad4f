"""`marchproxy check FILE`: examples and doc snippets pass; broken files fail with line numbers,
field paths and suggestions."""
import glob
import os
import re
import subprocess
import tempfile
import unittest

from harness import SOURCE_DIR, ProxyTestCase, find_binary, get

VALID = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /api/, methods: [GET], headers: [{name: x-canary, exact: "1"}] }
        forward: { cluster: a, prefix_rewrite: /, timeout: 2s, retries: { attempts: 2, on: [connect-failure, "503"] } }
      - match: { exact: /old }
        redirect: { code: 301, path: /new }
      - match: { prefix: /hello }
        direct_response: { status: 200, body: "hi" }
      - match: { prefix: / }
        forward: { cluster: a }
        request_headers: { set: { x-env: test }, remove: [x-secret] }
        response_headers: { add: { x-served-by: marchproxy } }
clusters:
  - name: a
    lb: ring_hash
    hash_on: "header:x-user"
    endpoints: [ "127.0.0.1:8081", { address: "127.0.0.1:8082", weight: 3 } ]
    health_check: { type: http, path: /health, interval: 200ms, timeout: 100ms, healthy_threshold: 1, unhealthy_threshold: 2 }
    outlier_detection: { consecutive_5xx: 3, consecutive_connect_failures: 2, base_ejection_time: 1s }
    timeouts: { connect: 500ms, response: 1s }
limits: { max_body_bytes: 0, max_request_line: 8KiB, max_header_bytes: 64KiB, max_headers: 100 }
timeouts: { header_read: 1s, idle: 5s, drain: 5s }
access_log: { enabled: true, path: /tmp/x.log }
"""

BROKEN = """schema: 1
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /a }
        forward: { cluster: a }
      - match: { prefix: /b }
        forward: { cluster: api }
clusters:
  - name: a
    endpoints: [ "127.0.0.1:1" ]
    timeouts: { conect: 1s }
  - name: b
    endpoints: [ "127.0.0.1:2" ]
    timeouts: { response: 5 parsecs }
  - name: a
    endpoints: [ "127.0.0.1:3" ]
"""


def line_of(text, needle, nth=1):
    for i, line in enumerate(text.split("\n"), 1):
        if needle in line:
            nth -= 1
            if nth == 0:
                return i
    raise ValueError(needle)


class CheckCliTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.binary = find_binary()

    def check(self, path):
        r = subprocess.run([self.binary, "check", path], capture_output=True, timeout=30,
                           stdin=subprocess.DEVNULL)
        return r.returncode, (r.stdout + r.stderr).decode(errors="replace")

    def check_text(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(text)
        self.addCleanup(os.unlink, f.name)
        return self.check(f.name)

    def assertValid(self, path_or_text, is_text=False):
        rc, out = self.check_text(path_or_text) if is_text else self.check(path_or_text)
        self.assertEqual(rc, 0, f"check failed:\n{out}")
        self.assertTrue(any(ln.startswith("OK") for ln in out.splitlines()),
                        f"no summary line starting with OK:\n{out}")

    def test_valid_file(self):
        self.assertValid(VALID, is_text=True)

    def test_examples_pass(self):
        files = sorted(glob.glob(os.path.join(SOURCE_DIR, "examples", "*.yaml"))
                       + glob.glob(os.path.join(SOURCE_DIR, "examples", "*.yml")))
        self.assertTrue(files, f"no examples/*.yaml under {SOURCE_DIR}")
        for f in files:
            with self.subTest(example=os.path.basename(f)):
                self.assertValid(f)

    def test_reference_doc_snippets_pass(self):
        doc = os.path.join(SOURCE_DIR, "docs", "config-reference.md")
        if not os.path.exists(doc):
            self.skipTest("docs/config-reference.md not written yet")
        with open(doc) as f:
            blocks = re.findall(r"```ya?ml\n(.*?)```", f.read(), re.S)
        # Complete configs only: a skeleton with "{ ... }" placeholders is not meant to load.
        full = [b for b in blocks if re.search(r"^schema:", b, re.M) and re.search(r"^listeners:", b, re.M)
                and "..." not in b]
        if not full:
            self.skipTest("no complete config in docs/config-reference.md")
        for i, b in enumerate(full):
            with self.subTest(snippet=i, head=b[:60]):
                self.assertValid(b, is_text=True)

    def test_broken_file_reports_every_error(self):
        rc, out = self.check_text(BROKEN)
        self.assertEqual(rc, 1, out)
        lines = out.splitlines()

        def expect(regex, what):
            self.assertTrue(any(re.search(regex, ln) for ln in lines), f"{what}: no line matching "
                            f"{regex!r} in:\n{out}")

        expect(rf'^line {line_of(BROKEN, "cluster: api")}: virtual_hosts\[0\]\.routes\[1\]\.forward\.cluster: '
               r'.*no cluster named "api"', "unknown cluster reference")
        expect(rf'^line {line_of(BROKEN, "conect")}: clusters\[0\]\.timeouts.*conect.*"?connect"?',
               "unknown field with a suggestion")
        expect(rf'^line {line_of(BROKEN, "parsecs")}: clusters\[1\]\.timeouts\.response: ',
               "bad duration")
        expect(rf'^line {line_of(BROKEN, "name: a", 3)}: clusters\[2\]\.name: .*"a"', "duplicate cluster name")
        self.assertFalse(any(ln.startswith("OK") for ln in lines), out)

    def test_unknown_top_level_field_suggestion(self):
        text = VALID.replace("virtual_hosts:", "virtual_host:")
        rc, out = self.check_text(text)
        self.assertEqual(rc, 1, out)
        n = line_of(text, "virtual_host:")
        self.assertRegex(out, rf'line {n}: .*virtual_host\b.*virtual_hosts')

    def test_yaml_syntax_error(self):
        rc, out = self.check_text("schema: 1\nlisteners: [ { name: http, port: 0 }\nclusters:\n  - name: a\n")
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, r"line \d+")

    def test_bad_schema_version(self):
        text = VALID.replace("schema: 1", "schema: 2")
        rc, out = self.check_text(text)
        self.assertEqual(rc, 1, out)
        self.assertRegex(out, rf"line {line_of(text, 'schema: 2')}: schema")

    def test_missing_file(self):
        rc, out = self.check("/nonexistent/marchproxy-itest.yaml")
        self.assertNotEqual(rc, 0, out)
        self.assertIn("marchproxy-itest.yaml", out)


MINIMAL = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        direct_response: { status: 200, body: "hi" }
"""


class IngressCliTest(ProxyTestCase):
    def test_log_level_after_subcommand(self):
        # Contract: marchproxy ingress --config FILE [--no-watch] [--log-level debug]
        p = self.start_proxy(MINIMAL, log_level="debug")
        self.assertStatus(get(p.port, "/"), 200)

    def test_ingress_missing_config_file(self):
        r = subprocess.run([find_binary(), "ingress", "--config", "/nonexistent/mp.yaml", "--no-watch"],
                           capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        out = (r.stdout + r.stderr).decode(errors="replace")
        self.assertNotEqual(r.returncode, 0, out)
        self.assertIn("mp.yaml", out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
