"""The control loop end to end: a real `marchproxy manager` (SQLite), real `marchproxy ingress` and
`marchproxy egress` processes under it (`--manager`), real origins.

  * a cluster, a route made through the API -> the ingress routes to the backend; a route change ->
    traffic follows; GET /api/v1/proxies shows the proxy with the applied version
  * manager stopped -> the proxy keeps serving; proxy restarted while the manager is down -> it
    serves from its cached snapshot; manager back -> the proxy reconnects
  * no cache and no manager -> /ready 503, no listener
  * a snapshot the proxy refuses -> the old config keeps serving, rejected/<v> is kept, and the
    heartbeat's error shows in GET /api/v1/proxies; the next good snapshot clears it
  * 100 route changes under continuous load -> zero failed requests
  * egress: a mapping made through the API -> CONNECT allowed; mapping deleted -> denied
"""

import base64
import os
import signal
import threading
import time

import manager_harness as mh
from harness import (LOCALHOST, ConnectionClosed, ProxyTestCase, connect_tunnel, free_port, get, metric_sum,
                     parse_metrics, read_to_eof, wait_until)


class FixedControlPort(mh.Manager):
    """A manager whose control listener keeps its port across restarts (the proxies' --manager URL)."""

    def __init__(self, *a, control_port, **kw):
        super().__init__(*a, **kw)
        self.fixed_control_port = control_port

    def argv(self):
        a = super().argv()
        a[a.index("--control-listen") + 1] = f"{LOCALHOST}:{self.fixed_control_port}"
        return a


class ControlLoopCase(mh.ManagerTestCase, ProxyTestCase):
    """A manager on a fixed control port, its CA in manager-ca.pem, a cluster "prod" and its key file;
    helpers to run proxies under it. No tests (other modules, e.g. test_control_cert_rotation.py,
    build on it)."""

    def start_manager(self, **kw):
        if not hasattr(self, "control_port"):
            self.control_port = free_port()
        kw["extra_args"] = list(kw.get("extra_args", ())) + ["--heartbeat-interval", "1"]
        m = FixedControlPort(self.tmp, self.db_url, control_port=self.control_port, **kw)
        m.start()
        self.managers.append(m)
        self.addCleanup(self._stop, m)
        return m

    def setUp(self):
        super().setUp()
        st, _, ca = self.admin.get("/api/v1/ca.pem")
        self.assertEqual(st, 200, ca)
        self.ca_path = os.path.join(self.tmp, "manager-ca.pem")
        with open(self.ca_path, "w") as f:
            f.write(ca if isinstance(ca, str) else ca.decode())
        self.cluster = self.make_cluster("prod")
        self.key_path = os.path.join(self.tmp, "cluster.key")
        with open(self.key_path, "w") as f:
            f.write(self.cluster["api_key"] + "\n")
        os.chmod(self.key_path, 0o600)

    # -- helpers

    def manager_args(self, state_dir, name, binds=("http=127.0.0.1:0", "https=127.0.0.1:0"), port=None):
        a = ["--manager", f"https://{LOCALHOST}:{port or self.control_port}", "--cluster-key-file", self.key_path,
             "--manager-ca", self.ca_path, "--state-dir", state_dir, "--name", name, "--admin", f"{LOCALHOST}:0"]
        for b in binds:
            a += ["--bind", b]
        return a

    def start_ingress(self, state_dir, name="ingress-1", **kw):
        return self.start_proxy(None, manager_args=self.manager_args(state_dir, name, **kw),
                                expect_listeners=("http",))

    def make_route(self, backend, name="web"):
        st, _, b = self.admin.post("/api/v1/routes", {
            "cluster_id": self.cluster["id"], "name": name, "hosts": ["test.local"], "paths": ["/"],
            "backends": [{"address": backend, "weight": 1}]})
        self.assertEqual(st, 201, b)
        return b

    def set_backend(self, route, backend):
        st, _, b = self.admin.patch(f"/api/v1/routes/{route['id']}", {"backends": [{"address": backend, "weight": 1}]})
        self.assertEqual(st, 200, b)
        return b

    def origin_name(self, proxy):
        r = get(proxy.port, "/id")
        return r.body.decode() if r is not None and r.status == 200 else None

    def wait_origin(self, proxy, name, timeout=15):
        wait_until(lambda: self.origin_name(proxy) == name, timeout=timeout, message=f"traffic on {name}")

    def proxies(self):
        st, _, b = self.admin.get("/api/v1/proxies")
        self.assertEqual(st, 200, b)
        return b["items"] if isinstance(b, dict) and "items" in b else b

    def proxy_row(self, name):
        return next((p for p in self.proxies() if p["name"] == name), None)

    def config_version(self):
        st, _, b = self.admin.get(f"/api/v1/clusters/{self.cluster['id']}")
        self.assertEqual(st, 200, b)
        return b["config_version"]

    def manager_metric(self, proxy, name):
        return metric_sum(parse_metrics(proxy.metrics_text()), name)


class ControlLoopTest(ControlLoopCase):
    # -- tests

    def test_route_follows_the_api_and_survives_the_manager(self):
        a, b = self.start_origin("A"), self.start_origin("B")
        route = self.make_route(a.address)
        state = os.path.join(self.tmp, "ingress-state")
        p = self.start_ingress(state)
        p.wait_log(r"manager: registered as id \d+")
        self.wait_origin(p, "A")

        # The manager lists the proxy with the version it applied.
        wait_until(lambda: (self.proxy_row("ingress-1") or {}).get("applied_version") == self.config_version(),
                   timeout=15, message="heartbeat with the applied version")
        row = self.proxy_row("ingress-1")
        self.assertEqual(row["kind"], "ingress")
        self.assertIsNone(row.get("error"))
        self.assertEqual(self.manager_metric(p, "marchproxy_manager_reachable"), 1)

        # A change follows.
        self.set_backend(route, b.address)
        self.wait_origin(p, "B")
        self.assertTrue(os.path.islink(os.path.join(state, "current")))
        self.assertEqual(os.stat(os.path.join(state, "identity", "key.pem")).st_mode & 0o777, 0o600)
        self.assertEqual(os.stat(os.path.join(state, "identity", "token")).st_mode & 0o777, 0o600)

        # Manager gone: the proxy keeps serving what it has.
        mark = p.mark()
        self.mgr.stop()
        p.wait_log(r"manager unreachable", since=mark, timeout=60)
        for _ in range(20):
            self.assertEqual(self.origin_name(p), "B")
        self.assertEqual(self.manager_metric(p, "marchproxy_manager_reachable"), 0)

        # Restarted while the manager is down: serves from the cache at once.
        p.signal(signal.SIGTERM)
        self.assertEqual(p.wait_exit(30), 0)
        p2 = self.start_ingress(state)
        p2.wait_log(r"serving cached snapshot version \d+")
        for _ in range(20):
            self.assertEqual(self.origin_name(p2), "B")
        self.assertEqual(p2.admin("/ready").status, 200)

        # Manager back: the proxy reconnects (same identity, no new registration) and follows changes again.
        self.mgr = self.start_manager()
        self.admin = self.mgr.client()
        self.admin.login()
        self.set_backend(route, a.address)
        self.wait_origin(p2, "A", timeout=60)
        self.assertEqual(len([x for x in self.proxies() if x["name"] == "ingress-1"]), 1)

    def test_a_rate_limit_set_through_the_api_is_enforced_by_the_ingress(self):
        a = self.start_origin("A")
        route = self.make_route(a.address)
        p = self.start_ingress(os.path.join(self.tmp, "ingress-state"))
        self.wait_origin(p, "A")
        st, _, b = self.admin.patch(f"/api/v1/routes/{route['id']}",
                                    {"rate_limit": {"requests_per_second": 1, "burst": 3}})
        self.assertEqual(st, 200, b)
        # Once the new snapshot is applied, a burst from one client gets 429s with Retry-After.
        def limited():
            return any(get(p.port, "/id").status == 429 for _ in range(8))
        wait_until(limited, timeout=15, message="429 from the managed ingress")
        r = next(r for r in (get(p.port, "/id") for _ in range(8)) if r.status == 429)
        self.assertEqual(r.header("retry-after"), "1")
        # Raising it through the API lets the same burst through.
        st, _, b = self.admin.patch(f"/api/v1/routes/{route['id']}",
                                    {"rate_limit": {"requests_per_second": 1000, "burst": 1000}})
        self.assertEqual(st, 200, b)
        wait_until(lambda: all(get(p.port, "/id").status == 200 for _ in range(8)), timeout=15,
                   message="limit raised")

    def test_without_cache_and_manager_it_is_not_ready(self):
        state = os.path.join(self.tmp, "lonely-state")
        dead = free_port()  # nothing listens there
        p = self.start_proxy(None, manager_args=self.manager_args(state, "lonely", port=dead),
                             expect_listeners=(), wait_ready=False)
        p.wait_log(r"manager unreachable \(register\).*retrying in", timeout=30)
        r = p.admin("/ready")
        self.assertEqual(r.status, 503)
        self.assertNotIn("http", p.ports)  # no data-plane listener before the first snapshot
        self.assertFalse(os.path.exists(os.path.join(state, "current")))

    def test_refused_snapshot_keeps_the_old_config_and_reports_the_error(self):
        a = self.start_origin("A")
        route = self.make_route(a.address)
        state = os.path.join(self.tmp, "ingress-state")
        p = self.start_ingress(state)
        self.wait_origin(p, "A")
        good = self.config_version()
        wait_until(lambda: (self.proxy_row("ingress-1") or {}).get("applied_version") == good, timeout=15,
                   message="first heartbeat")

        # The manager accepts a backend host name the proxy cannot resolve: the proxy refuses it.
        mark = p.mark()
        self.set_backend(route, "backend.invalid:80")
        bad = self.config_version()
        self.assertGreater(bad, good)
        p.wait_log(rf"manager: refused version {bad}: .*backend\.invalid", since=mark, timeout=30)
        for _ in range(10):
            self.assertEqual(self.origin_name(p), "A")
        self.assertTrue(os.path.isdir(os.path.join(state, "rejected", str(bad))))
        self.assertEqual(os.readlink(os.path.join(state, "current")), os.path.join("snapshots", str(good)))
        self.assertEqual(self.manager_metric(p, "marchproxy_manager_apply_failures_total"), 1)

        def reported():
            row = self.proxy_row("ingress-1") or {}
            err = row.get("error")
            return err and err.get("version") == bad and "backend.invalid" in err.get("message", "")
        wait_until(reported, timeout=15, message="the refusal in GET /api/v1/proxies")
        row = self.proxy_row("ingress-1")
        self.assertEqual(row["applied_version"], good)

        # A good snapshot again: applied, the error is gone.
        b = self.start_origin("B")
        self.set_backend(route, b.address)
        self.wait_origin(p, "B")
        wait_until(lambda: (self.proxy_row("ingress-1") or {}).get("error") is None, timeout=15,
                   message="error cleared")

    def test_hundred_route_changes_under_load_fail_no_request(self):
        a, b = self.start_origin("A"), self.start_origin("B")
        route = self.make_route(a.address)
        p = self.start_ingress(os.path.join(self.tmp, "ingress-state"))
        self.wait_origin(p, "A")

        stop = threading.Event()
        results = {"ok": 0, "failed": []}

        def load():
            while not stop.is_set():
                try:
                    r = get(p.port, "/id", timeout=10)
                    if r is not None and r.status == 200 and r.body in (b"A", b"B"):
                        results["ok"] += 1
                    else:
                        results["failed"].append(repr(r))
                except (OSError, ConnectionClosed) as e:
                    results["failed"].append(repr(e))
        t = threading.Thread(target=load, daemon=True)
        t.start()
        try:
            for i in range(100):
                self.set_backend(route, (b if i % 2 == 0 else a).address)
            final = self.config_version()
            wait_until(lambda: self.manager_metric(p, "marchproxy_manager_applied_version") == final, timeout=60,
                       message="the last change applied")
            self.wait_origin(p, "A")  # i = 99 set A
        finally:
            stop.set()
            t.join(15)
        self.assertEqual(results["failed"], [])
        self.assertGreater(results["ok"], 0)
        self.assertEqual(self.manager_metric(p, "marchproxy_manager_apply_failures_total"), 0)

    # -- egress

    def connect(self, proxy, host, port, user, secret):
        """CONNECT through the egress; returns (socket, status line)."""
        auth = "Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode()
        s, head = connect_tunnel(proxy.ports["proxy"], host, port, auth)
        return s, head.split(b"\r\n", 1)[0].decode()

    def connect_status(self, proxy, host, port, user, secret):
        s, line = self.connect(proxy, host, port, user, secret)
        s.close()
        return line

    def test_egress_mapping_allows_connect_and_its_deletion_denies_it(self):
        origin = self.start_origin("E")
        cid = self.cluster["id"]
        billing = self.make_service(cid, "billing", auth_type="base64")
        secret = billing.get("secret")
        self.assertTrue(secret, billing)
        dest = self.make_service(cid, "origin", ip_fqdn=LOCALHOST)
        state = os.path.join(self.tmp, "egress-state")
        p = self.start_proxy(None, command="egress", expect_listeners=("proxy",),
                             manager_args=self.manager_args(state, "egress-1",
                                                            binds=("proxy=127.0.0.1:0", "socks5=127.0.0.1:0")))
        p.wait_log(r"manager: applied version \d+")
        self.assertIn("403", self.connect_status(p, LOCALHOST, origin.port, "billing", secret))

        st, _, mapping = self.admin.post("/api/v1/mappings", {
            "cluster_id": cid, "name": "billing-to-origin", "source_services": [billing["id"]],
            "destination_services": [dest["id"]], "protocols": ["tcp"], "ports": [origin.port]})
        self.assertEqual(st, 201, mapping)
        wait_until(lambda: " 200" in self.connect_status(p, LOCALHOST, origin.port, "billing", secret), timeout=15,
                   message="CONNECT allowed after the mapping was created")
        s, line = self.connect(p, LOCALHOST, origin.port, "billing", secret)
        self.assertIn(" 200", line)
        s.sendall(b"GET /id HTTP/1.1\r\nHost: origin\r\nConnection: close\r\n\r\n")
        data = read_to_eof(s)
        s.close()
        self.assertTrue(data.endswith(b"E"), data)

        st, _, b = self.admin.delete(f"/api/v1/mappings/{mapping['id']}")
        self.assertIn(st, (200, 204), b)
        wait_until(lambda: "403" in self.connect_status(p, LOCALHOST, origin.port, "billing", secret), timeout=15,
                   message="CONNECT denied after the mapping was deleted")
        wait_until(lambda: (self.proxy_row("egress-1") or {}).get("applied_version") == self.config_version(),
                   timeout=15, message="egress heartbeat with the applied version")
        self.assertEqual(self.proxy_row("egress-1")["kind"], "egress")


if __name__ == "__main__":
    mh.run()
