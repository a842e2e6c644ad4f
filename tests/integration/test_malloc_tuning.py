"""glibc allocator tuning of the proxies (src/cli/main.cc): `marchproxy ingress` re-executes itself
once with GLIBC_TUNABLES=glibc.malloc.tcache_count=128 (a larger per-thread cache of free blocks:
fewer trips through glibc's slow path with many requests in flight). It keeps its pid and serves as
usual; an operator's own GLIBC_TUNABLES is left as it is; MARCHPROXY_MALLOC_TUNING=off opts out."""
import os
import unittest

from harness import ProxyTestCase, get, main

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: / }
        direct_response: { status: 200, body: "tuned" }
"""


def environ(pid):
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(e.split(b"=", 1) for e in f.read().split(b"\0") if b"=" in e)


@unittest.skipIf(os.environ.get("MARCHPROXY_ITEST_SANITIZED"), "sanitizer builds keep their own allocator")
class MallocTuning(ProxyTestCase):
    def start_with(self, **env):
        saved = {k: os.environ.get(k) for k in ("GLIBC_TUNABLES", "MARCHPROXY_MALLOC_TUNING")}
        for k in saved:
            os.environ.pop(k, None)
        os.environ.update(env)
        try:
            p = self.start_proxy(CONFIG)
        finally:
            for k, v in saved.items():
                os.environ.pop(k, None)
                if v is not None:
                    os.environ[k] = v
        r = get(p.port, "/")
        self.assertStatus(r, 200)
        self.assertEqual(r.body, b"tuned")
        return environ(p.pid)

    def test_proxy_runs_with_a_larger_tcache(self):
        env = self.start_with()
        self.assertEqual(env.get(b"GLIBC_TUNABLES"), b"glibc.malloc.tcache_count=128")
        self.assertEqual(env.get(b"MARCHPROXY_MALLOC_TUNING"), b"done")  # the re-executed image does not exec again

    def test_operator_tunables_are_kept(self):
        env = self.start_with(GLIBC_TUNABLES="glibc.malloc.tcache_count=9")
        self.assertEqual(env.get(b"GLIBC_TUNABLES"), b"glibc.malloc.tcache_count=9")

    def test_opt_out_keeps_glibc_defaults(self):
        env = self.start_with(MARCHPROXY_MALLOC_TUNING="off")
        self.assertNotIn(b"GLIBC_TUNABLES", env)


if __name__ == "__main__":
    main()
