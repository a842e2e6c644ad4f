"""The XDP fast path end to end: a veth pair between this (the proxy's) network namespace and a
client namespace, the program attached to the proxy's end in native and in generic mode, a bounded
flood from one source while a second source's HTTP requests through a real proxy listener keep
succeeding, a deny-listed source getting nothing, counters in /metrics and `marchproxy xdp status`
that match, clean detach on stop, and the userspace fallback when attaching is made to fail.
Needs root (network namespaces, BPF); skips otherwise. The namespace and links are removed by the
test, also when it fails."""
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import unittest

from harness import ProxyTestCase, find_binary, render, wait_until

IP = shutil.which("ip") or "/usr/sbin/ip"
TAG = f"mpx{os.getpid() % 100000}"
NS = f"{TAG}c"
HOST_IF = f"{TAG}h"   # the proxy's end, in this namespace: the program is attached here
PEER_IF = f"{TAG}p"   # the client's end, in NS
NET = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
PROXY_IP, LEGIT_IP, FLOOD_IP, DENIED_IP = f"{NET}.1", f"{NET}.2", f"{NET}.3", f"{NET}.4"

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: ${PROXY_IP}, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - name: hello
        match: { prefix: / }
        direct_response: { status: 200, body: "hello" }
fast_path:
  interfaces: [ ${IF} ]
  mode: ${MODE}
  deny: [ ${DENIED_IP} ]
  per_source: { packets_per_second: 1000, burst: 1000 }
  port_filter: true
  extra_udp_ports: [ 9999 ]
"""

# Runs inside NS: sends `count` UDP datagrams from `src` to the proxy's address, as fast as it can.
FLOOD = textwrap.dedent("""
    import socket, sys
    src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    sent = 0
    payload = b"x" * 64
    while sent < count:
        try:
            s.sendto(payload, (dst, 9999))
            sent += 1
        except BlockingIOError:
            pass
    print(sent)
""")

# Runs inside NS: `n` HTTP/1.1 requests, each on a new connection from `src`; prints the statuses
# (or "error:<what>"; "error:closed" = closed without a response) one per line.
CLIENT = textwrap.dedent("""
    import socket, sys
    src, dst, port, n, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    for _ in range(n):
        try:
            c = socket.create_connection((dst, port), timeout=timeout, source_address=(src, 0))
            c.sendall(b"GET / HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n")
            data = b""
            while True:
                b = c.recv(65536)
                if not b:
                    break
                data += b
            c.close()
            print(data.split(b" ")[1].decode() if data.startswith(b"HTTP/1.1 ") else "error:closed")
        except ConnectionResetError:
            print("error:closed")  # closed with our request unread: a reset instead of a FIN
        except OSError as e:
            print("error:" + type(e).__name__)
""")


def run(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60, **kw)


def in_ns(*args, **kw):
    return run(IP, "netns", "exec", NS, *args, **kw)


def remove_topology():
    run(IP, "netns", "del", NS, check=False)
    run(IP, "link", "del", HOST_IF, check=False)


class FastPathTest(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root: network namespaces and BPF programs")
        remove_topology()
        try:
            run(IP, "netns", "add", NS)
            run(IP, "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF)
            run(IP, "link", "set", PEER_IF, "netns", NS)
            run(IP, "addr", "add", f"{PROXY_IP}/24", "dev", HOST_IF)
            run("sysctl", "-qw", f"net.ipv6.conf.{HOST_IF}.disable_ipv6=1")
            run(IP, "link", "set", HOST_IF, "up")
            in_ns("sysctl", "-qw", f"net.ipv6.conf.{PEER_IF}.disable_ipv6=1")
            for a in (LEGIT_IP, FLOOD_IP, DENIED_IP):
                in_ns(IP, "addr", "add", f"{a}/24", "dev", PEER_IF)
            in_ns(IP, "link", "set", PEER_IF, "up")
            in_ns(IP, "link", "set", "lo", "up")
            # Native XDP on veth copies every GSO packet first: send plain-sized frames.
            in_ns("ethtool", "-K", PEER_IF, "tso", "off", "gso", "off", check=False)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            remove_topology()
            raise unittest.SkipTest(f"cannot build the veth/netns topology here: {e}")

    @classmethod
    def tearDownClass(cls):
        remove_topology()
        leftover = run(IP, "link", "show", HOST_IF, check=False)
        assert leftover.returncode != 0, "the test's veth link is still there"

    def config(self, mode):
        return render(CONFIG, PROXY_IP=PROXY_IP, IF=HOST_IF, MODE=mode, DENIED_IP=DENIED_IP)

    def clients(self, src, port, n, timeout=5.0):
        out = in_ns(sys.executable, "-c", CLIENT, src, PROXY_IP, str(port), str(n), str(timeout)).stdout
        return out.split()

    def status(self):
        r = run(find_binary(), "xdp", "status")
        return r.stdout

    def xdp_metric(self, proxy, reason):
        return proxy.metric("marchproxy_fastpath_packets_total", reason=reason)

    def attached_mode(self):
        out = run(IP, "-d", "link", "show", HOST_IF).stdout
        for word, mode in (("xdpgeneric", "generic"), ("xdp ", "native"), ("xdpdrv", "native")):
            if word in out:
                return mode
        return None

    def check_mode(self, mode):
        proxy = self.start_proxy(self.config(mode))
        # The attach line is logged after the listeners are up: wait for it, don't race it.
        proxy.wait_log(re.escape(f"fast path: XDP attached to {HOST_IF} in {mode} mode"))
        self.assertEqual(self.attached_mode(), mode)
        st = self.status()
        self.assertIn(f"{HOST_IF}: XDP {mode} mode, program mp_xdp", st)

        # Legitimate traffic first, on its own.
        self.assertEqual(self.clients(LEGIT_IP, proxy.port, 5), ["200"] * 5)

        # A bounded flood from one source, while the second source keeps being served.
        sent = 20000
        before = {r: self.xdp_metric(proxy, r) for r in ("pass", "drop_source_rate")}
        flood = subprocess.Popen([IP, "netns", "exec", NS, sys.executable, "-c", FLOOD, FLOOD_IP, PROXY_IP,
                                  str(sent)], stdout=subprocess.PIPE, text=True)
        try:
            legit = self.clients(LEGIT_IP, proxy.port, 20)
        finally:
            out, _ = flood.communicate(timeout=60)
        self.assertEqual(int(out), sent)
        self.assertEqual(legit, ["200"] * 20, "the legitimate source must keep being served during the flood")
        dropped = self.xdp_metric(proxy, "drop_source_rate") - before["drop_source_rate"]
        passed = self.xdp_metric(proxy, "pass") - before["pass"]
        self.assertGreater(dropped, 0, "the flood must hit the per-source bucket")
        # Every flood packet was judged: what the bucket let through plus what it dropped is what was
        # sent, plus the legitimate requests' packets (about 10 per request).
        self.assertGreaterEqual(passed + dropped, sent)
        self.assertLessEqual(passed + dropped, sent + 20 * 20)

        # The deny-listed source gets nothing, not even a handshake.
        before_deny = self.xdp_metric(proxy, "drop_deny")
        self.assertEqual(self.clients(DENIED_IP, proxy.port, 1, timeout=1.0), ["error:TimeoutError"])
        self.assertGreater(self.xdp_metric(proxy, "drop_deny"), before_deny)

        # A SYN to a port nobody serves dies in the driver too.
        before_port = self.xdp_metric(proxy, "drop_port")
        self.assertEqual(self.clients(LEGIT_IP, 7, 1, timeout=1.0), ["error:TimeoutError"])
        self.assertGreater(self.xdp_metric(proxy, "drop_port"), before_port)

        # The status command reads the same counters from the kernel.
        st = self.status()
        line = next(l for l in st.splitlines() if l.strip().startswith("drop_source_rate"))
        self.assertGreaterEqual(int(line.split()[1]), dropped)
        self.assertEqual(proxy.metric("marchproxy_fastpath_userspace"), 0)

        # Clean detach on stop: nothing left on the link, nothing for status to show.
        proxy.signal(signal.SIGTERM)
        self.assertEqual(proxy.wait_exit(15), 0)
        self.assertIsNone(self.attached_mode())
        self.assertIn("no MarchProxy XDP or TC program is attached", self.status())
        # Legitimate and deny-listed sources alike reach the kernel again (the listener is gone, so
        # a refused connection is the proof the SYN got through).
        self.assertEqual(self.clients(DENIED_IP, proxy.port, 1, timeout=2.0), ["error:ConnectionRefusedError"])

    def test_native_mode(self):
        self.check_mode("native")

    def test_generic_mode(self):
        self.check_mode("generic")

    def test_attach_failure_falls_back_to_userspace(self):
        os.environ["MARCHPROXY_FASTPATH_FAIL_ATTACH"] = "1"
        try:
            proxy = self.start_proxy(self.config("auto"))
        finally:
            del os.environ["MARCHPROXY_FASTPATH_FAIL_ATTACH"]
        proxy.wait_log(re.escape(f"fast path: cannot attach XDP to {HOST_IF}"))
        proxy.wait_log(re.escape("enforcing the policy in userspace at accept"))
        self.assertIsNone(self.attached_mode())
        self.assertEqual(proxy.metric("marchproxy_fastpath_userspace"), 1)
        self.assertEqual(proxy.metric("marchproxy_fastpath_interface", interface=HOST_IF, mode="userspace"), 1)
        self.assertEqual(self.clients(LEGIT_IP, proxy.port, 3), ["200"] * 3)
        # The deny list still holds: the kernel completes the handshake, the proxy closes at accept
        # without a byte of response.
        self.assertEqual(self.clients(DENIED_IP, proxy.port, 2), ["error:closed"] * 2)
        wait_until(lambda: proxy.metric("marchproxy_fastpath_userspace_connections_total", reason="drop_deny") == 2,
                   message="two denied connections counted")
        self.assertEqual(proxy.metric("marchproxy_fastpath_userspace_connections_total", reason="pass"), 3)


if __name__ == "__main__":
    unittest.main()
