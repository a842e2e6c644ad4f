#!/usr/bin/env python3
"""The accept path: serving on when descriptors run out and recovering when they come back
(accept4 fails with EMFILE), and what a new connection costs in syscalls (no ioctl(FIONBIO), no
EPOLL_CTL_DEL before close, no setsockopt on the accepted socket: see src/common/net/accept.h)."""

import os
import re
import resource
import shutil
import signal
import subprocess
import time
import unittest

from harness import (Conn, ProxyTestCase, build_request, get, main, metric_sum, render, wait_until)

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
        forward: { cluster: o }
clusters:
  - name: o
    endpoints: [ "${O}" ]
timeouts: { header_read: 5s, idle: 30s, drain: 1s }
"""


def open_fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


class AcceptEmfileTest(ProxyTestCase):
    def test_out_of_descriptors_keeps_serving_and_recovers(self):
        o = self.start_origin("O")
        p = self.start_proxy(render(CONFIG, O=o.address))
        # One keep-alive client connection, admitted now, holding a pooled upstream connection.
        held = Conn(p.port)
        self.addCleanup(held.close)
        self.assertStatus(held.request("GET", "/id"), 200)
        soft, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
        self.addCleanup(lambda: p.alive() and resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard)))
        # Room for 3 more descriptors, then 10 clients: the rest wait in the listen backlog while
        # accept4() fails with EMFILE.
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (open_fds(p.pid) + 3, hard))
        crowd = [Conn(p.port) for _ in range(10)]
        for c in crowd:
            self.addCleanup(c.close)
        p.wait_log(r"accept failed: Too many open files", timeout=10)
        # Still serving what it admitted, on the pooled upstream connection.
        self.assertStatus(held.request("GET", "/id?while-out-of-descriptors"), 200)
        self.assertTrue(p.alive())
        # Descriptors come back: the clients in the backlog are accepted and served.
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (soft, hard))
        for i, c in enumerate(crowd):
            c.settimeout(15)
            self.assertStatus(c.request("GET", f"/id?queued-{i}"), 200)
        self.assertServes(p)
        errors = metric_sum(p.metrics(), "marchproxy_downstream_accept_errors_total")
        self.assertIsNotNone(errors, "marchproxy_downstream_accept_errors_total missing")
        self.assertGreater(errors, 0)

    def test_recovers_when_its_own_connections_close(self):
        o = self.start_origin("O")
        p = self.start_proxy(render(CONFIG, O=o.address))
        self.assertServes(p)
        _, hard = resource.prlimit(p.pid, resource.RLIMIT_NOFILE)
        resource.prlimit(p.pid, resource.RLIMIT_NOFILE, (open_fds(p.pid) + 3, hard))
        crowd = [Conn(p.port) for _ in range(10)]
        p.wait_log(r"accept failed: Too many open files", timeout=10)
        for c in crowd:  # frees the admitted ones' descriptors; the queued ones are accepted at EOF
            c.close()
        # The limit stays low: each connection is accepted, served and closed in turn.
        for i in range(5):
            wait_until(lambda: get(p.port, f"/id?after-{i}").status == 200, 15,
                       message="a new connection served once descriptors were free again")
        self.assertTrue(p.alive())


STRACE = shutil.which("strace")


@unittest.skipUnless(STRACE, "strace not installed")
class AcceptSyscallsTest(ProxyTestCase):
    def test_new_connection_syscalls(self):
        o = self.start_origin("O")
        p = self.start_proxy(render(CONFIG, O=o.address))
        self.assertServes(p)  # the upstream connection is pooled before tracing starts
        out = os.path.join(self.tmpdir(), "strace.out")
        tracer = subprocess.Popen([STRACE, "-f", "-yy", "-o", out, "-p", str(p.pid),
                                   "-e", "trace=accept,accept4,ioctl,fcntl,setsockopt,epoll_ctl,close"],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
        self.addCleanup(lambda: tracer.poll() is None and tracer.kill())
        attached = tracer.stderr.readline()
        if "attached" not in attached:
            tracer.kill()
            self.skipTest(f"strace cannot attach here: {attached.strip()}")
        time.sleep(0.5)  # the remaining threads' attach lines
        n = 20
        for i in range(n):
            with Conn(p.port) as c:
                c.send(build_request("GET", f"/id?{i}", headers=[("Connection", "close")]))
                self.assertEqual(c.read_response().status, 200)
                c.closed_by_peer()
        wait_until(lambda: p.metric("marchproxy_downstream_connections_active") == 0, 10,
                   message="the traced connections closed")
        tracer.send_signal(signal.SIGINT)
        tracer.wait(10)
        with open(out) as f:
            trace = f.read()
        # A client socket as strace -yy shows it: local address = the listener's.
        client = re.compile(r"TCP:\[127\.0\.0\.1:%d->" % p.port)
        accepted = [ln for ln in trace.splitlines() if re.search(r"\baccept4?\(", ln) and client.search(ln)]
        self.assertGreaterEqual(len(accepted), n, trace[-3000:])
        for ln in accepted:
            self.assertIn("SOCK_NONBLOCK", ln, "accepted non-blocking in the same call")
        per_conn = [ln for ln in trace.splitlines() if client.search(ln) and not re.search(r"\baccept4?\(", ln)]
        self.assertEqual([ln for ln in per_conn if "ioctl(" in ln and "FIONBIO" in ln], [])
        self.assertEqual([ln for ln in per_conn if "fcntl(" in ln], [])
        self.assertEqual([ln for ln in per_conn if "EPOLL_CTL_DEL" in ln], [],
                         "close() drops an accepted socket from the epoll set by itself")
        self.assertEqual([ln for ln in per_conn if "setsockopt(" in ln], [],
                         "TCP_NODELAY is inherited from the listening socket")
        self.assertGreaterEqual(len([ln for ln in per_conn if "close(" in ln]), n)


if __name__ == "__main__":
    main()
