"""Global rate limits through Redis (docs/rate-limiting.md, "Global limits"): two proxies sharing one
real redis-server meet ONE limit; with Redis killed the local table still limits, the
marchproxy_ratelimit_redis_up gauge goes to 0 and comes back to 1 when Redis does; a server that
answers garbage or nothing does not crash the proxy and the local table decides; AUTH with a
password from a file, never logged. Counts only: the elapsed time only widens the upper bounds."""
import os
import signal
import socket
import subprocess
import threading
import time
import unittest

from harness import ProxyTestCase, find_binary, free_port, get, render, wait_until

REDIS_SERVER = "/usr/bin/redis-server"

CONFIG = """
schema: 1
version: 1
workers: 2
admin: { address: 127.0.0.1, port: 0 }
listeners:
  - { name: http, address: 127.0.0.1, port: 0 }
redis: { address: 127.0.0.1, port: ${R}, timeout: 300ms${EXTRA} }
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: shared
        match: { prefix: /shared }
        rate_limit: { requests_per_second: 1, burst: 10, scope: global }
        direct_response: { status: 200, body: "ok" }
      - name: keyed
        match: { prefix: /keyed }
        rate_limit: { requests_per_second: 1, burst: 2, key: header, header: x-api-key, scope: global }
        direct_response: { status: 200, body: "ok" }
      - name: open
        match: { prefix: / }
        direct_response: { status: 200, body: "open" }
timeouts: { header_read: 2s, idle: 30s, drain: 1s }
"""


def resp_command(*args):
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class RedisServer:
    """A real redis-server on a loopback port, in its own temporary directory, no persistence."""

    def __init__(self, workdir, port=None, password=None):
        self.workdir = workdir
        self.port = port or free_port()
        self.password = password
        self.proc = None
        self.start()

    def start(self):
        args = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.workdir,
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile",
                os.path.join(self.workdir, "redis.log")]
        if self.password:
            args += ["--requirepass", self.password]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self.ping, 10, message=f"redis-server on port {self.port}")

    def command(self, *args):
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            data = b""
            if self.password:
                s.sendall(resp_command("AUTH", self.password))
                while not data.endswith(b"\r\n"):
                    data += s.recv(4096)
                data = b""
            s.sendall(resp_command(*args))
            while not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data

    def ping(self):
        try:
            return self.command("PING") == b"+PONG\r\n"
        except OSError:
            return False

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()  # as a crash would: no goodbye to the clients
            self.proc.wait(10)
        self.proc = None


class FakeRedis:
    """Not Redis: a TCP server on loopback that answers every connection with `reply` (or nothing)."""

    def __init__(self, reply):
        self.reply = reply
        self.connections = 0
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        self.held = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            c.settimeout(30)
            while not self.closed:
                if not c.recv(65536):
                    break
                if self.reply is None:
                    continue  # silent: never answers
                c.sendall(self.reply)
        except OSError:
            pass
        finally:
            c.close()

    def close(self):
        self.closed = True
        self.sock.close()


@unittest.skipUnless(os.path.exists(REDIS_SERVER),
                     f"{REDIS_SERVER} is missing (scripts/setup.sh installs redis-server)")
class RedisRateLimitTest(ProxyTestCase):
    def start_redis(self, **kw):
        r = RedisServer(self.tmpdir(), **kw)
        self.addCleanup(r.stop)
        return r

    def proxy(self, port, extra=""):
        return self.start_proxy(render(CONFIG, R=port, EXTRA=extra))

    def redis_up(self, p):
        return p.metric("marchproxy_ratelimit_redis_up")

    def test_two_proxies_sharing_redis_meet_one_limit(self):
        r = self.start_redis()
        a, b = self.proxy(r.port), self.proxy(r.port)
        t0 = time.monotonic()
        got = {"a": [], "b": []}
        for i in range(40):  # alternating, one new connection each (both workers of both proxies)
            name, p = ("a", a) if i % 2 == 0 else ("b", b)
            got[name].append(get(p.port, "/shared/x").status)
        elapsed = time.monotonic() - t0
        ok = got["a"].count(200) + got["b"].count(200)
        self.assertEqual(got["a"].count(200) + got["a"].count(429) + got["b"].count(200) + got["b"].count(429), 40,
                         got)
        # One bucket of burst 10 refilled at 1/s, shared: each proxy alone would allow 10 + refill.
        self.assertGreaterEqual(ok, 10, got)
        self.assertLessEqual(ok, 10 + int(elapsed) + 1, (elapsed, got))
        # The first 10 alternate between the proxies: both took from the one bucket.
        self.assertEqual(got["a"][:5], [200] * 5, got)
        self.assertEqual(got["b"][:5], [200] * 5, got)
        for p in (a, b):
            self.assertEqual(self.redis_up(p), 1)
            self.assertEqual(p.metric("marchproxy_ratelimit_redis_errors_total"), 0)
            self.assertEqual(p.metric("marchproxy_rate_limited_total", route="shared"),
                             (got["a"] if p is a else got["b"]).count(429))
        # What Redis holds: a bucket key per route and hashed key, with an expiry.
        keys = r.command("KEYS", "marchproxy:rl:app/shared:*")
        self.assertTrue(keys.startswith(b"*1\r\n"), keys)
        self.assertNotIn(b"127.0.0.1", keys)  # keys are hashed, not in clear

    def test_header_rotation_is_bounded_by_the_per_ip_ceiling_across_proxies(self):
        r = self.start_redis()
        a, b = self.proxy(r.port), self.proxy(r.port)
        t0 = time.monotonic()
        statuses = [get((a, b)[i % 2].port, "/keyed", headers={"x-api-key": f"k{i}"}).status for i in range(40)]
        elapsed = time.monotonic() - t0
        ok = statuses.count(200)
        # Every key is new (a full bucket of 2), but the address's ceiling is 4 x (burst 2, 1/s).
        self.assertGreaterEqual(ok, 8, statuses)
        self.assertLessEqual(ok, 8 + int(4 * elapsed) + 1, (elapsed, statuses))

    def test_redis_down_limits_locally_then_recovers(self):
        r = self.start_redis()
        p = self.proxy(r.port)
        for _ in range(3):
            self.assertEqual(get(p.port, "/shared/warm").status, 200)
        wait_until(lambda: get(p.port, "/open") and self.redis_up(p) == 1, 10, message="redis up")
        mark = p.mark()
        r.stop()
        t0 = time.monotonic()
        statuses = [get(p.port, "/shared/x").status for _ in range(30)]
        elapsed = time.monotonic() - t0
        self.assertTrue(p.alive())
        self.assertEqual(statuses.count(200) + statuses.count(429), 30, statuses)
        # The local table decides: a fresh bucket of 10 at 1/s (Redis had charged the first 3).
        self.assertGreaterEqual(statuses.count(200), 10, statuses)
        self.assertLessEqual(statuses.count(200), 10 + int(elapsed) + 1, (elapsed, statuses))
        wait_until(lambda: get(p.port, "/shared/y") and self.redis_up(p) == 0, 10, message="redis_up 0")
        self.assertGreater(p.metric("marchproxy_ratelimit_redis_errors_total"), 0)
        # One line per state change and worker, not one per request.
        down = [ln for ln in p.log_lines_since(mark) if "redis" in ln and "is down" in ln]
        self.assertGreaterEqual(len(down), 1)
        self.assertLessEqual(len(down), 2, down)
        mark = p.mark()
        r.start()  # same port
        wait_until(lambda: get(p.port, "/shared/z") and self.redis_up(p) == 1, 20, message="redis_up back to 1")
        up = [ln for ln in p.log_lines_since(mark) if "redis" in ln and "is up" in ln]
        self.assertGreaterEqual(len(up), 1)
        self.assertLessEqual(len(up), 2, up)
        # Shared again: Redis's bucket (fresh after the restart) is what limits now.
        r.command("FLUSHALL")
        statuses = [get(p.port, "/shared/again").status for _ in range(15)]
        self.assertIn(429, statuses)
        self.assertTrue(r.command("KEYS", "marchproxy:rl:app/shared:*").startswith(b"*1\r\n"))

    def test_garbage_answering_server_does_not_crash_the_proxy(self):
        for reply in (b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n",
                      b"*2\r\n:1\r\n$999999999999\r\n",
                      b"$-7\r\n",
                      b"+OK\r\n+OK\r\n+OK\r\n:1\r\n" * 10,
                      bytes(range(256)) * 4):
            with self.subTest(reply=reply[:20]):
                fake = FakeRedis(reply)
                self.addCleanup(fake.close)
                p = self.proxy(fake.port)
                t0 = time.monotonic()
                statuses = [get(p.port, "/shared/g").status for _ in range(20)]
                elapsed = time.monotonic() - t0
                self.assertTrue(p.alive())
                # The local table decided: burst 10 at 1/s.
                self.assertGreaterEqual(statuses.count(200), 10, statuses)
                self.assertLessEqual(statuses.count(200), 10 + int(elapsed) + 1, (elapsed, statuses))
                self.assertIn(429, statuses)
                self.assertGreater(fake.connections, 0)
                self.assertEqual(self.redis_up(p), 0)
                self.assertGreater(p.metric("marchproxy_ratelimit_redis_errors_total"), 0)
                self.assertEqual(get(p.port, "/open").status, 200)
                p.stop()

    def test_silent_server_times_out_to_the_local_table(self):
        fake = FakeRedis(None)
        self.addCleanup(fake.close)
        p = self.proxy(fake.port)
        statuses = [get(p.port, "/shared/s").status for _ in range(14)]
        self.assertEqual(statuses.count(200) + statuses.count(429), 14, statuses)
        self.assertIn(429, statuses)
        self.assertEqual(self.redis_up(p), 0)
        self.assertGreater(p.metric("marchproxy_ratelimit_redis_errors_total"), 0)

    def test_auth_password_from_file_is_used_and_never_logged(self):
        secret = "s3cret-" + os.urandom(6).hex()
        r = self.start_redis(password=secret)
        path = os.path.join(self.tmpdir(), "redis.pass")
        with open(path, "w") as f:
            f.write(secret + "\n")
        p = self.proxy(r.port, extra=f", password_file: {path}")
        statuses = [get(p.port, "/shared/a").status for _ in range(12)]
        self.assertEqual(statuses[:10], [200] * 10, statuses)
        self.assertIn(429, statuses)
        self.assertEqual(self.redis_up(p), 1)
        self.assertTrue(r.command("KEYS", "marchproxy:rl:app/shared:*").startswith(b"*1\r\n"))
        # A wrong password: refused by Redis, the local table decides, the secret is not logged.
        os.environ["MP_TEST_REDIS_PASSWORD"] = "wrong-" + secret
        self.addCleanup(os.environ.pop, "MP_TEST_REDIS_PASSWORD", None)
        q = self.proxy(r.port, extra=", password_env: MP_TEST_REDIS_PASSWORD")
        statuses = [get(q.port, "/shared/b").status for _ in range(12)]
        self.assertIn(429, statuses)
        wait_until(lambda: get(q.port, "/open") and self.redis_up(q) == 0, 10, message="redis_up 0 on AUTH refused")
        self.assertTrue(any("AUTH refused" in ln for ln in q.lines), q.tail(20))
        for proxy in (p, q):
            self.assertFalse(any(secret in ln for ln in proxy.lines), "the password was logged")

    def test_unreadable_password_file_is_an_error_at_check_start_and_reload(self):
        secret = "s3cret-" + os.urandom(6).hex()
        r = self.start_redis(password=secret)
        d = self.tmpdir()
        # `marchproxy check` reads the file as the proxy would, and names the field.
        bad = os.path.join(d, "bad.yaml")
        with open(bad, "w") as f:
            f.write(render(CONFIG, R=r.port, EXTRA=", password_file: missing.pass"))
        res = subprocess.run([find_binary(), "check", bad], capture_output=True, text=True, timeout=30)
        self.assertEqual(res.returncode, 1, res.stdout + res.stderr)
        self.assertIn("redis.password_file: cannot read " + os.path.join(d, "missing.pass"), res.stdout)
        # An empty first line is refused too (AUTH with an empty password is never what was meant).
        with open(os.path.join(d, "empty.pass"), "w") as f:
            f.write("\n")
        with open(bad, "w") as f:
            f.write(render(CONFIG, R=r.port, EXTRA=", password_file: empty.pass"))
        res = subprocess.run([find_binary(), "check", bad], capture_output=True, text=True, timeout=30)
        self.assertEqual(res.returncode, 1, res.stdout)
        self.assertIn("redis.password_file: the first line of", res.stdout)
        # Start: the proxy refuses to start instead of connecting without a password.
        res = subprocess.run([find_binary(), "ingress", "--config", bad, "--no-watch"], capture_output=True,
                             text=True, timeout=30)
        self.assertNotEqual(res.returncode, 0)
        self.assertIn("redis.password_file", res.stdout + res.stderr)
        # Reload: refused, the running config (with its working password) keeps serving.
        path = os.path.join(self.tmpdir(), "redis.pass")
        with open(path, "w") as f:
            f.write(secret + "\n")
        p = self.proxy(r.port, extra=f", password_file: {path}")
        self.assertEqual(get(p.port, "/shared/a").status, 200)
        self.assertEqual(self.redis_up(p), 1)
        mark = p.mark()
        p.reload(render(CONFIG, R=r.port, EXTRA=", password_file: /nonexistent/redis.pass"))
        p.wait_log("config reload failed", since=mark)
        self.assertTrue(any("redis.password_file: cannot read /nonexistent/redis.pass" in ln
                            for ln in p.log_lines_since(mark)), p.tail(20))
        self.assertEqual(get(p.port, "/open").status, 200)
        self.assertEqual(self.redis_up(p), 1)


if __name__ == "__main__":
    unittest.main()
