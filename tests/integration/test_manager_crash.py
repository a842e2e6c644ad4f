"""Crash safety: the manager is killed with SIGKILL in the middle of a burst of concurrent writes;
after a restart every write that was acknowledged with 2xx is present, each has its audit row, and
the audit chain verifies. Both backends (SQLite runs WAL with synchronous=FULL)."""
import threading

from manager_harness import ManagerTestCase, both_backends, run
from harness import wait_until


class CrashTests(ManagerTestCase):

    def test_sigkill_during_write_burst_loses_no_acknowledged_write(self):
        c = self.make_cluster("prod")
        acked, lock, stop = [], threading.Lock(), threading.Event()
        token = self.admin.token

        def writer(n):
            cl = self.mgr.client(token)
            cl.timeout = 10
            i = 0
            while not stop.is_set():
                name = f"w{n}-{i}"
                i += 1
                try:
                    st, _, b = cl.post("/api/v1/services", {"cluster_id": c["id"], "name": name,
                                                            "ip_fqdn": "10.0.0.1"})
                except Exception:  # noqa: BLE001 - the kill cuts requests off mid-way
                    return
                if st == 201:
                    with lock:
                        acked.append((b["id"], name))

        threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(acked) >= 60, timeout=120, message="60 acknowledged writes")
        self.mgr.kill9()
        stop.set()
        for t in threads:
            t.join(timeout=30)
        with lock:
            snapshot = list(acked)
        m2 = self.start_manager()
        cl = m2.client()
        cl.login()
        st, _, lst = cl.get(f"/api/v1/services?cluster_id={c['id']}&limit=1000")
        self.assertEqual(st, 200)
        stored = {(s["id"], s["name"]) for s in lst["items"]}
        missing = [a for a in snapshot if a not in stored]
        self.assertEqual(missing, [], f"{len(missing)} acknowledged writes lost of {len(snapshot)}")
        st, _, v = cl.get("/api/v1/audit/verify")
        self.assertTrue(v["ok"], v)
        created = cl.get("/api/v1/audit?action=service.create&limit=1000")[2]
        audited = {e["resource"] for e in created["items"]}
        for sid, _ in snapshot:
            self.assertIn(f"services/{sid}", audited)
        # Stored rows and their audit rows match one to one: no write without its audit entry.
        self.assertEqual(created["total"], lst["total"])
        # The config version counted every committed write.
        self.assertEqual(cl.get(f"/api/v1/clusters/{c['id']}")[2]["config_version"], 1 + lst["total"])


both_backends(CrashTests, globals())

if __name__ == "__main__":
    run()
