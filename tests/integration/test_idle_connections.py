"""Idle keep-alive client connections are cheap (issue 2): between requests an HTTP/1.1 connection
gives its read buffer back to the worker (gauge marchproxy_downstream_read_buffers), and still
serves its next request, pipelined bytes included; idle timeout and drain still close it."""
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

from harness import ProxyTestCase, Conn, build_request, render, wait_until

CONFIG = """
schema: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: api
        match: { prefix: /api/ }
        forward: { cluster: a }
      - name: hello
        match: { prefix: /hello }
        direct_response: { status: 200, body: "hi" }
clusters: [ { name: a, endpoints: [ "${A}" ] } ]
timeouts: { header_read: 5s, idle: ${IDLE}, drain: 5s }
"""

BUFFERS = "marchproxy_downstream_read_buffers"
ACTIVE = "marchproxy_downstream_connections_active"
ASLEEP = "marchproxy_downstream_connections_asleep"


class IdleConnectionsTest(ProxyTestCase):
    def start(self, idle="30s"):
        self.a = self.start_origin("A")
        self.p = self.start_proxy(render(CONFIG, A=self.a.address, IDLE=idle))

    def open_idle(self, n):
        conns = []
        for i in range(n):
            c = Conn(self.p.port)
            conns.append(c)
            path = "/api/id" if i % 2 else "/hello"
            self.assertStatus(c.request("GET", path), 200)
        wait_until(lambda: self.p.metric(ACTIVE) >= n, 10, message=f"{ACTIVE} >= {n}")
        return conns

    def test_idle_connections_hold_no_read_buffer(self):
        self.start()
        conns = self.open_idle(40)
        try:
            # Every connection answered its request and waits for the next one: none holds a buffer.
            wait_until(lambda: self.p.metric(BUFFERS) == 0, 10,
                       message=f"{BUFFERS} == 0 with 40 idle connections (was {self.p.metric(BUFFERS)})")
            # Each still serves a request (forwarded and local), then goes back to holding nothing.
            for i, c in enumerate(conns):
                r = c.request("GET", "/api/id" if i % 2 == 0 else "/hello")
                self.assertStatus(r, 200)
            wait_until(lambda: self.p.metric(BUFFERS) == 0, 10, message=f"{BUFFERS} back to 0")
        finally:
            for c in conns:
                c.close()

    def test_request_in_progress_holds_a_buffer(self):
        self.start()
        with Conn(self.p.port) as c:
            self.assertStatus(c.request("GET", "/hello"), 200)
            wait_until(lambda: self.p.metric(BUFFERS) == 0, 10, message=f"{BUFFERS} == 0 once idle")
            # Half a request head: the connection is reading a request now and keeps what it read.
            c.send(b"GET /hello HTTP/1.1\r\nHost: test.local\r\n")
            wait_until(lambda: self.p.metric(BUFFERS) == 1, 10, message=f"{BUFFERS} == 1 mid-head")
            c.send(b"\r\n")
            r = c.read_response()
            self.assertStatus(r, 200)
            self.assertEqual(r.body, b"hi")

    def test_pipelined_requests_after_idle(self):
        self.start()
        with Conn(self.p.port) as c:
            self.assertStatus(c.request("GET", "/api/id"), 200)
            wait_until(lambda: self.p.metric(BUFFERS) == 0, 10, message=f"{BUFFERS} == 0 once idle")
            # Three requests in one write on the idle connection: answered in order, none lost.
            c.send(build_request("GET", "/hello") + build_request("GET", "/api/id") +
                   build_request("POST", "/api/sink", body=b"x" * 300))
            bodies = []
            for method in ("GET", "GET", "POST"):
                r = c.read_response(method)
                self.assertStatus(r, 200)
                bodies.append(r.body)
            self.assertEqual(bodies[0], b"hi")
            wait_until(lambda: self.p.metric(BUFFERS) == 0, 10, message=f"{BUFFERS} == 0 after the pipeline")
            self.assertStatus(c.request("GET", "/hello"), 200)

    def test_asleep_connections_wake_for_requests(self):
        self.start()
        conns = self.open_idle(20)
        try:
            # Idle for a sweep or two, every connection is asleep (no coroutine, no buffer).
            wait_until(lambda: self.p.metric(ASLEEP) == 20, 10, message=f"{ASLEEP} == 20")
            self.assertEqual(self.p.metric(BUFFERS), 0)
            # A single request, a pipeline in one write, and a head in two writes each wake one.
            for c in conns[:10]:
                r = c.request("GET", "/api/id")
                self.assertStatus(r, 200)
            for c in conns[10:15]:
                c.send(build_request("GET", "/hello") + build_request("GET", "/api/id"))
                for _ in range(2):
                    self.assertStatus(c.read_response(), 200)
            for c in conns[15:]:
                c.send(b"GET /hello HTTP/1.1\r\n")
                wait_until(lambda: self.p.metric(BUFFERS) >= 1, 10, message="a buffer for the half head")
                c.send(b"Host: test.local\r\n\r\n")
                r = c.read_response()
                self.assertStatus(r, 200)
                self.assertEqual(r.body, b"hi")
            # ...and they all go back to sleep.
            wait_until(lambda: self.p.metric(ASLEEP) == 20, 10, message=f"{ASLEEP} back to 20")
        finally:
            for c in conns:
                c.close()
        wait_until(lambda: self.p.metric(ACTIVE) == 0, 10, message=f"{ACTIVE} == 0 once the clients closed")

    def test_waiting_and_sleeping_make_no_epoll_ctl(self):
        """Waiting for the next request, going to sleep and waking up cost no epoll_ctl: every
        readiness wait is queued on a socket known drained, so epoll is never re-armed for it."""
        strace = shutil.which("strace")
        if not strace:
            self.skipTest("strace is not installed")
        self.start()
        conns = self.open_idle(10)
        out = tempfile.NamedTemporaryFile(prefix="epoll_ctl-", suffix=".txt", delete=False)
        out.close()
        tracer = None
        try:
            wait_until(lambda: self.p.metric(ASLEEP) == 10, 10, message=f"{ASLEEP} == 10")
            tasks = [int(t) for t in os.listdir(f"/proc/{self.p.pid}/task")]
            workers = set()
            for t in tasks:
                with open(f"/proc/{self.p.pid}/task/{t}/comm") as f:
                    if f.read().startswith("worker"):
                        workers.add(t)
            self.assertTrue(workers, "no worker threads found")
            tracer = subprocess.Popen([strace, "-f", "-qq", "-e", "trace=epoll_ctl", "-o", out.name,
                                       "-p", str(self.p.pid)], stderr=subprocess.PIPE)

            def traced():
                for t in workers:
                    with open(f"/proc/{self.p.pid}/task/{t}/status") as f:
                        if "TracerPid:\t0\n" in f.read():
                            return False
                return True
            try:
                wait_until(lambda: tracer.poll() is None and traced(), 10, message="strace attached")
            except AssertionError:
                self.skipTest(f"strace cannot attach here: {tracer.stderr.read()[-300:] if tracer.poll() is not None else ''}")
            # Three rounds: every connection wakes for a request (forwarded or answered locally),
            # waits for the next one, and goes back to sleep.
            for _ in range(3):
                for i, c in enumerate(conns):
                    self.assertStatus(c.request("GET", "/api/id" if i % 2 else "/hello"), 200)
                wait_until(lambda: self.p.metric(ASLEEP) == 10, 10, message=f"{ASLEEP} back to 10")
            tracer.send_signal(signal.SIGINT)
            tracer.wait(10)
            with open(out.name) as f:
                calls = [line for line in f if "epoll_ctl(" in line and int(line.split()[0]) in workers]
            self.assertEqual(calls, [], "the workers called epoll_ctl for idle keep-alive connections")
        finally:
            if tracer is not None:
                if tracer.poll() is None:
                    tracer.kill()
                    tracer.wait()
                tracer.stderr.close()
            os.unlink(out.name)
            for c in conns:
                c.close()

    def test_idle_timeout_closes_idle_connection(self):
        self.start(idle="1s")
        with Conn(self.p.port) as c:
            self.assertStatus(c.request("GET", "/hello"), 200)
            self.assertTrue(c.closed_by_peer(10), "the idle timeout (1 s) did not close the connection")
            self.assertEqual(c.buf, b"", "an idle connection closes without a response")
        wait_until(lambda: self.p.metric(ACTIVE) == 0, 10, message=f"{ACTIVE} == 0")

    def test_drain_closes_idle_connections(self):
        self.start()
        conns = self.open_idle(10)
        try:
            wait_until(lambda: self.p.metric(BUFFERS) == 0, 10, message=f"{BUFFERS} == 0")
            self.p.signal(signal.SIGTERM)
            for c in conns:
                self.assertTrue(c.closed_by_peer(10), "drain left an idle keep-alive connection open")
        finally:
            for c in conns:
                c.close()


if __name__ == "__main__":
    unittest.main()
