"""Worker CPU pinning (`cpu_affinity`): each worker thread of a real ingress and egress process is
pinned where the config says (read back from /proc, the kernel's view), `marchproxy xdp status`
shows the layout, the pinned proxy serves traffic, and a CPU the process may not use is refused at
start with a message naming it. Uses whatever CPUs this process is allowed (a cpuset, taskset)."""
import os
import subprocess
import unittest

from harness import ProxyTestCase, find_binary, get, wait_until

INGRESS = """
schema: 1
workers: {workers}
cpu_affinity: {affinity}
admin: {{ address: 127.0.0.1, port: 0 }}
listeners: [ {{ name: http, address: 127.0.0.1, port: 0 }} ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - direct_response: {{ status: 200, body: "pinned" }}
"""

EGRESS = """
schema: 1
kind: egress
workers: 2
cpu_affinity: {affinity}
listeners: [ {{ name: http, address: 127.0.0.1, port: 0 }} ]
admin: {{ address: 127.0.0.1, port: 0 }}
"""


def allowed_cpus():
    return sorted(os.sched_getaffinity(0))


def node_of(cpu):
    base = "/sys/devices/system/node"
    if not os.path.isdir(base):
        return -1
    for name in os.listdir(base):
        if name.startswith("node") and name[4:].isdigit() and os.path.exists(f"{base}/{name}/cpu{cpu}"):
            return int(name[4:])
    return -1


def settled_cpus(pid, prefix, want):
    """worker_cpus() once it equals `want`, or what it last was after a deadline: a worker thread
    names itself and then pins itself as it starts, which may be just after "ready" is logged."""
    got = {}

    def check():
        nonlocal got
        got = worker_cpus(pid, prefix)
        return got == want
    try:
        wait_until(check, timeout=10, message=f"workers {prefix}* placed as {want}")
    except AssertionError:
        pass
    return got


def worker_cpus(pid, prefix):
    """{worker index: set of CPUs it may run on}, from /proc/PID/task/*/status."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
        except FileNotFoundError:
            continue
        if comm.startswith(prefix) and comm[len(prefix):].isdigit():  # not "egress-admin"
            out[int(comm[len(prefix):])] = os.sched_getaffinity(int(tid))
    return out


class CpuAffinityTest(ProxyTestCase):
    def test_auto_pins_worker_i_to_the_ith_allowed_cpu_node_by_node(self):
        cpus = sorted(allowed_cpus(), key=lambda c: (node_of(c), c))
        workers = len(cpus) + 1  # one more than CPUs: the plan wraps around
        p = self.start_proxy(INGRESS.format(workers=workers, affinity="auto"))
        want = {i: {cpus[i % len(cpus)]} for i in range(workers)}
        self.assertEqual(settled_cpus(p.pid, "worker-", want), want)
        self.assertEqual(get(p.port, "/").text, "pinned")
        self.assertTrue(any(f"worker-0 cpu {cpus[0]}" in ln for ln in p.lines), p.tail(20))
        status = subprocess.run([find_binary(), "xdp", "status"], capture_output=True, text=True, timeout=30)
        self.assertIn(f"marchproxy process {p.pid}: worker-0 cpus {cpus[0]}", status.stdout)

    def test_a_list_places_workers_in_order_and_repeats(self):
        last = allowed_cpus()[-1]
        p = self.start_proxy(INGRESS.format(workers=3, affinity=f"[{last}]"))
        want = {0: {last}, 1: {last}, 2: {last}}
        self.assertEqual(settled_cpus(p.pid, "worker-", want), want)
        self.assertEqual(get(p.port, "/").status, 200)

    def test_off_leaves_the_workers_to_the_scheduler(self):
        p = self.start_proxy(INGRESS.format(workers=2, affinity="off"))
        want = {0: set(allowed_cpus()), 1: set(allowed_cpus())}
        self.assertEqual(settled_cpus(p.pid, "worker-", want), want)
        self.assertTrue(any("workers: not pinned" in ln for ln in p.lines), p.tail(20))

    def test_a_cpu_this_process_may_not_use_is_refused_at_start(self):
        cfg = os.path.join(self.tmpdir(), "pin.yaml")
        with open(cfg, "w") as f:
            f.write(INGRESS.format(workers=1, affinity="[4095]"))
        check = subprocess.run([find_binary(), "check", cfg], capture_output=True, text=True, timeout=30)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)  # valid text: the CPU is judged where it runs
        run = subprocess.run([find_binary(), "ingress", "--config", cfg, "--no-watch"], capture_output=True,
                             text=True, timeout=30)
        self.assertEqual(run.returncode, 1)
        self.assertIn("cpu_affinity: CPU 4095 is not available to this process (allowed: ", run.stdout + run.stderr)

    def test_egress_workers_are_pinned_too(self):
        cpus = allowed_cpus()
        p = self.start_proxy(EGRESS.format(affinity=f"[{cpus[-1]}, {cpus[0]}]"), command="egress")
        want = {0: {cpus[-1]}, 1: {cpus[0]}}
        self.assertEqual(settled_cpus(p.pid, "egress-", want), want)


if __name__ == "__main__":
    unittest.main()
