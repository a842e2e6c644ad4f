"""Helpers for the manager integration tests (standard library only).

  * Manager      - one `marchproxy manager` process on a kernel-chosen port, with its own data
                   directory; start/stop/kill -9/restart; the admin password comes from
                   MARCHPROXY_ADMIN_PASSWORD so tests can log in.
  * Postgres     - a real PostgreSQL 15 (Debian's /usr/lib/postgresql/15/bin) initialised in a
                   temporary directory, listening on a free loopback port and a socket in that
                   directory, stopped at exit. When the tests run as root, initdb and postgres run as
                   the `postgres` system user (initdb refuses root).
  * ManagerTestCase - unittest.TestCase with BACKEND = "sqlite" | "postgres"; each test gets a fresh
                   database (a new SQLite file or a new PostgreSQL database) and a running manager.
                   A module makes both variants with both_backends(BaseClass).
  * Client       - JSON over http.client with a bearer token; returns (status, headers, body).
"""

import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import unittest

from harness import find_binary, wait_until, LOCALHOST

ADMIN_PASSWORD = "integration-admin-password"
PG_BIN = "/usr/lib/postgresql/15/bin"
_LISTEN_RE = re.compile(r"listening: listener=manager address=(\S+):(\d+)")
_CONTROL_RE = re.compile(r"listening: listener=control address=(\S+):(\d+)")


def _free_port():
    s = socket.socket()
    s.bind((LOCALHOST, 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Postgres:
    """A throwaway PostgreSQL 15 cluster for the whole test process."""

    _instance = None
    _lock = threading.Lock()

    @classmethod
    def shared(cls):
        with cls._lock:
            if cls._instance is None:
                if not os.path.exists(os.path.join(PG_BIN, "initdb")):
                    raise unittest.SkipTest(f"PostgreSQL 15 not installed ({PG_BIN}); run scripts/setup.sh")
                cls._instance = Postgres()
                atexit.register(cls._instance.stop)
            return cls._instance

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="mp-pg-")
        self.data = os.path.join(self.dir, "data")
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            # initdb refuses to run as root: hand the directory to the postgres system user.
            shutil.chown(self.dir, "postgres", "postgres")
        self._run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-A", "trust", "-U", "postgres",
                   "--no-sync", "-E", "UTF8"])
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses={LOCALHOST} -c max_connections=200"
        self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"),
                   "-w", "-t", "60", "-o", opts, "start"])
        self.counter = 0

    def _run(self, argv, **kw):
        if self.as_root:
            argv = ["runuser", "-u", "postgres", "--"] + argv
        r = subprocess.run(argv, capture_output=True, text=True, **kw)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}): {r.stdout}{r.stderr}")
        return r.stdout

    def psql(self, sql, db="postgres"):
        """Runs SQL as the superuser (tests use it to tamper behind the manager's back)."""
        return subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1", "-h", LOCALHOST, "-p",
                               str(self.port), "-U", "postgres", "-d", db, "-f", "-"],
                              input=sql, capture_output=True, text=True)

    def new_database(self):
        self.counter += 1
        name = f"mp_{os.getpid()}_{self.counter}"
        r = self.psql(f"CREATE DATABASE {name}")
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return name, f"postgres://postgres@{LOCALHOST}:{self.port}/{name}"

    def stop(self):
        try:
            self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"])
        except Exception as e:  # noqa: BLE001 - best effort at exit
            sys.stderr.write(f"[manager_harness] stopping PostgreSQL: {e}\n")
        shutil.rmtree(self.dir, ignore_errors=True)


class Manager:
    def __init__(self, data_dir, database_url=None, extra_args=(), env=None, tls=None):
        self.data_dir = data_dir
        self.database_url = database_url
        self.extra_args = list(extra_args)
        self.env = dict(env or {})
        self.tls = tls  # (cert, key) paths or None
        self.proc = None
        self.port = None
        self.log_path = os.path.join(data_dir, f"manager-{time.monotonic_ns()}.log")

    def argv(self):
        a = [find_binary(), "manager", "--listen", f"{LOCALHOST}:0", "--control-listen", f"{LOCALHOST}:0",
             "--data-dir", self.data_dir]
        if self.database_url:
            a += ["--database-url", self.database_url]
        if self.tls:
            a += ["--tls-cert", self.tls[0], "--tls-key", self.tls[1]]
        return a + self.extra_args

    def start(self, expect_fail=False):
        env = dict(os.environ)
        env.setdefault("MARCHPROXY_ADMIN_PASSWORD", ADMIN_PASSWORD)
        env.update(self.env)
        self.log_path = os.path.join(self.data_dir, f"manager-{time.monotonic_ns()}.log")
        self.log = open(self.log_path, "w+")
        self.proc = subprocess.Popen(self.argv(), stdout=self.log, stderr=subprocess.STDOUT, env=env)
        if expect_fail:
            self.proc.wait(timeout=30)
            return self.proc.returncode

        def listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"manager exited with {self.proc.returncode}:\n{self.output()}")
            m = _LISTEN_RE.search(self.output())
            return m and int(m.group(2))
        self.port = wait_until(listening, timeout=30, message="manager listening line")
        m = _CONTROL_RE.search(self.output())
        self.control_port = m and int(m.group(2))  # the control listener (docs/control-protocol.md)
        return self

    def output(self):
        with open(self.log_path) as f:
            return f.read()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def client(self, token=None):
        return Client(self.port, token, tls=bool(self.tls))


class Client:
    def __init__(self, port, token=None, tls=False, timeout=30):
        self.port = port
        self.token = token
        self.tls = tls
        self.timeout = timeout

    def request(self, method, path, body=None, headers=None, raw=None, token=None):
        if self.tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            conn = http.client.HTTPSConnection(LOCALHOST, self.port, timeout=self.timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(LOCALHOST, self.port, timeout=self.timeout)
        h = {}
        tok = token if token is not None else self.token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
        if data is not None:
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        try:
            conn.request(method, path, body=data, headers=h)
            r = conn.getresponse()
            payload = r.read()
            hdrs = {k.lower(): v for k, v in r.getheaders()}
        finally:
            conn.close()
        ctype = hdrs.get("content-type", "")
        parsed = json.loads(payload) if payload and "json" in ctype else payload.decode("utf-8", "replace")
        return r.status, hdrs, parsed

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, body=None, **kw):
        return self.request("POST", path, body=body, **kw)

    def patch(self, path, body=None, **kw):
        return self.request("PATCH", path, body=body, **kw)

    def put(self, path, body=None, **kw):
        return self.request("PUT", path, body=body, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def login(self, username="admin", password=ADMIN_PASSWORD, **extra):
        st, _, b = self.post("/api/v1/auth/login", {"username": username, "password": password, **extra}, token="")
        if st != 200:
            raise AssertionError(f"login {username}: {st} {b}")
        self.token = b["access_token"]
        return b


class ManagerTestCase(unittest.TestCase):
    """A fresh database and manager per test. Subclasses set BACKEND (see both_backends)."""

    BACKEND = "sqlite"

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="mp-mgr-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.db_name = None
        if self.BACKEND == "postgres":
            self.pg = Postgres.shared()
            self.db_name, self.db_url = self.pg.new_database()
        else:
            self.pg = None
            self.db_url = "sqlite://" + os.path.join(self.tmp, "manager.db")
        self.managers = []
        self.mgr = self.start_manager()
        self.admin = self.mgr.client()
        self.admin.login()

    def start_manager(self, **kw):
        m = Manager(self.tmp, self.db_url, **kw)
        m.start()
        self.managers.append(m)
        self.addCleanup(self._stop, m)
        return m

    def _stop(self, m):
        res = getattr(getattr(self, "_outcome", None), "result", None)
        failed = res is not None and any(t is self for t, _ in res.failures + res.errors)
        m.stop()
        if failed and os.path.exists(m.log_path):
            sys.stderr.write(f"\n--- manager log ({m.log_path}) ---\n{m.output()[-4000:]}\n")

    def sql(self, statement):
        """Runs SQL directly against the test database (behind the manager's back). Returns
        (ok, output)."""
        if self.BACKEND == "postgres":
            r = self.pg.psql(statement, db=self.db_name)
            return r.returncode == 0, (r.stdout + r.stderr).strip()
        import sqlite3
        con = sqlite3.connect(self.db_url[len("sqlite://"):], timeout=10)
        try:
            cur = con.execute(statement)
            rows = cur.fetchall()
            con.commit()
            return True, "\n".join("|".join(str(c) for c in r) for r in rows)
        except sqlite3.DatabaseError as e:
            return False, str(e)
        finally:
            con.close()

    # Shorthands used by many tests.
    def make_cluster(self, name="prod", client=None):
        st, _, b = (client or self.admin).post("/api/v1/clusters", {"name": name})
        self.assertEqual(st, 201, b)
        return b

    def make_service(self, cluster_id, name="web", client=None, **fields):
        body = {"cluster_id": cluster_id, "name": name, "ip_fqdn": f"{name}.example.com", **fields}
        st, _, b = (client or self.admin).post("/api/v1/services", body)
        self.assertEqual(st, 201, b)
        return b

    def make_user(self, username, role):
        st, _, b = self.admin.post("/api/v1/users", {"username": username, "password": "user-password-123",
                                                     "role": role})
        self.assertEqual(st, 201, b)
        c = self.mgr.client()
        c.login(username, "user-password-123")
        return b, c

    def assertProblem(self, resp, status, field=None):
        st, h, b = resp
        self.assertEqual(st, status, b)
        self.assertTrue(h.get("content-type", "").startswith("application/problem+json"), h)
        self.assertEqual(b["status"], status)
        self.assertTrue(b.get("detail"), b)
        if field is not None:
            self.assertEqual(b.get("field"), field, b)
        return b


def both_backends(base, module_globals):
    """Defines <Base>Sqlite and <Base>Postgres test classes in the calling module."""
    for backend in ("sqlite", "postgres"):
        name = base.__name__ + backend.capitalize()
        module_globals[name] = type(name, (base,), {"BACKEND": backend, "__test__": True})
    base.__test__ = False


def run():
    """unittest.main() that skips the abstract bases left in the module."""
    loader = unittest.TestLoader()
    main_mod = sys.modules["__main__"]
    suite = unittest.TestSuite()
    for name in dir(main_mod):
        obj = getattr(main_mod, name)
        if isinstance(obj, type) and issubclass(obj, unittest.TestCase) and obj.__dict__.get("__test__", True) is not False:
            if obj is ManagerTestCase:
                continue
            suite.addTests(loader.loadTestsFromTestCase(obj))
    filt = sys.argv[1:]
    if filt:
        suite = unittest.TestSuite(t for t in _flatten(suite) if any(f in t.id() for f in filt))
    r = unittest.TextTestRunner(verbosity=2).run(suite)
    sys.exit(0 if r.wasSuccessful() else 1)


def _flatten(s):
    for t in s:
        if isinstance(t, unittest.TestSuite):
            yield from _flatten(t)
        else:
            yield t
