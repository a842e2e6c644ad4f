"""`marchproxy up`: the one-command system (manager + ingress + egress + demo upstream).

What a user relies on: after `up` prints its banner, the printed curl works through the ingress with
a route the manager compiled; the printed admin password logs in; both proxies are registered and
online; Ctrl-C stops every child process; a second `up` on the same data directory comes back with
the same admin and the same route, and prints no new password.
"""

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

from harness import find_binary, wait_until

BANNER_DEADLINE = float(os.environ.get("MARCHPROXY_UP_DEADLINE", "180"))


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def http(method, port, path, body=None, token=None, host=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None)
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    if host:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def children_of(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


class Up:
    def __init__(self, data_dir, start=True, ports=None):
        names = ["manager", "control", "ingress", "ingress-admin", "egress", "socks", "egress-admin", "demo"]
        self.ports = ports or dict(zip(names, free_ports(len(names))))
        args = [find_binary(), "up", "--data-dir", data_dir, "--host", "127.0.0.1"]
        for n in names:
            args += [f"--{n}-port", str(self.ports[n])]
        self.args = args
        self.out = tempfile.TemporaryFile(mode="w+")  # closed with the test process
        self.proc = None
        if start:
            self.start()

    def start(self):
        self.proc = subprocess.Popen(self.args, stdout=self.out, stderr=subprocess.STDOUT, text=True)

    def text(self):
        self.out.seek(0)
        return self.out.read()

    def wait_banner(self, test):
        deadline = time.time() + BANNER_DEADLINE
        while "Ctrl-C stops everything" not in self.text():
            if self.proc.poll() is not None:
                test.fail("up exited with %s before its banner:\n%s" % (self.proc.returncode, self.text()))
            if time.time() > deadline:
                test.fail("no banner after %ss:\n%s" % (BANNER_DEADLINE, self.text()))
            time.sleep(0.2)

    def stop(self, test):
        kids = children_of(self.proc.pid)
        self.proc.send_signal(signal.SIGINT)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            test.fail("up did not stop within 60 s of Ctrl-C:\n" + self.text())
        return rc, kids


class UpTest(unittest.TestCase):
    def test_first_run_then_reuse(self):
        with tempfile.TemporaryDirectory() as d:
            data = os.path.join(d, "data")
            up = Up(data)
            self.addCleanup(lambda: up.proc.poll() is None and up.proc.kill())
            up.wait_banner(self)
            text = up.text()
            m = re.search(r"user admin, password (\S+)", text)
            self.assertIsNotNone(m, text)
            password = m.group(1)

            # The printed curl works through the ingress, on the manager's route.
            status, body = http("GET", up.ports["ingress"], "/hello", host="localhost")
            self.assertEqual(status, 200, body)
            self.assertIn("hello from demo (GET /hello)", body)

            # The printed password logs in; both proxies registered to the demo cluster.
            status, body = http("POST", up.ports["manager"], "/api/v1/auth/login",
                                {"username": "admin", "password": password})
            self.assertEqual(status, 200, body)
            token = json.loads(body)["access_token"]

            def proxies_online():
                s, b = http("GET", up.ports["manager"], "/api/v1/proxies", token=token)
                if s != 200:
                    return False
                items = json.loads(b)
                items = items.get("items", items) if isinstance(items, dict) else items
                return sorted((p["name"], p["status"]) for p in items) == [
                    ("up-egress", "online"), ("up-ingress", "online")]
            self.assertTrue(wait_until(proxies_online, 60), "proxies not both online")

            # Secrets on disk are private to the user.
            for f in ("cluster.key",):
                self.assertEqual(os.stat(os.path.join(data, f)).st_mode & 0o077, 0, f)
            with open(os.path.join(data, "logs", "manager.log")) as log:
                self.assertNotIn(password, log.read())

            rc, kids = up.stop(self)
            self.assertEqual(rc, 0, up.text())
            self.assertGreaterEqual(len(kids), 4, "expected manager, ingress, egress, demo upstream")
            for k in kids:
                self.assertTrue(wait_until(lambda k=k: not alive(k), 10), f"child {k} still running")

            # Second run: same data, no new password, the route still answers.
            up2 = Up(data, ports=up.ports)  # the same command again
            self.addCleanup(lambda: up2.proc.poll() is None and up2.proc.kill())
            up2.wait_banner(self)
            self.assertNotIn(password, up2.text())
            self.assertIn("password as printed by the first `up`", up2.text())
            status, body = http("GET", up2.ports["ingress"], "/again", host="localhost")
            self.assertEqual(status, 200, body)
            status, _ = http("POST", up2.ports["manager"], "/api/v1/auth/login",
                             {"username": "admin", "password": password})
            self.assertEqual(status, 200)

            # A part that dies takes the system down with a clear message, and nothing is left running.
            kids = children_of(up2.proc.pid)
            ingress = [k for k in kids if open(f"/proc/{k}/cmdline").read().split("\0")[1:2] == ["ingress"]]
            self.assertEqual(len(ingress), 1, kids)
            os.kill(ingress[0], signal.SIGKILL)
            self.assertEqual(up2.proc.wait(timeout=60), 1, up2.text())
            self.assertIn("ingress was killed by signal 9", up2.text())
            for k in kids:
                self.assertTrue(wait_until(lambda k=k: not alive(k), 20), f"child {k} still running")

    def test_busy_port_is_refused_before_anything_starts(self):
        with tempfile.TemporaryDirectory() as d:
            up = Up(os.path.join(d, "data"), start=False)
            # Something else holds the ingress port: `up` must say so and start nothing.
            blocker = socket.socket()
            blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                blocker.bind(("127.0.0.1", up.ports["ingress"]))
                blocker.listen()
            except OSError:
                self.skipTest("ingress port taken before the test could hold it")
            self.addCleanup(blocker.close)
            up.start()
            self.addCleanup(lambda: up.proc.poll() is None and up.proc.kill())
            kids = []
            deadline = time.time() + BANNER_DEADLINE
            while up.proc.poll() is None and time.time() < deadline:
                kids = list(set(kids) | set(children_of(up.proc.pid)))
                time.sleep(0.2)
            self.assertEqual(up.proc.returncode, 1, up.text())
            self.assertIn(f"127.0.0.1:{up.ports['ingress']} (--ingress-port) cannot be used", up.text())
            self.assertFalse(os.path.exists(os.path.join(d, "data", "manager.db")), "started the manager anyway")
            for k in kids:
                self.assertTrue(wait_until(lambda k=k: not alive(k), 10), f"child {k} still running")


if __name__ == "__main__":
    unittest.main()
