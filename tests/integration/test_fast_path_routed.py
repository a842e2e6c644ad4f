"""Routed (gateway) TCP/UDP rules end to end: three network namespaces — a client, a gateway that
forwards between two veth links and runs `marchproxy ingress` with the TC egress program on its
server-facing link, and a server. Forwarded connections leave only when a `fast_path.routed` rule
allows them (source, destination, protocol, port); a reload widens the rules; the counters in
`marchproxy xdp status` move; stopping the proxy detaches the program and forwarding is open again.
Needs root; skips otherwise. Namespaces are removed by the test, also when it fails."""
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

from harness import ProxyTestCase, find_binary, render, wait_until

IP = shutil.which("ip") or "/usr/sbin/ip"
TAG = f"mpr{os.getpid() % 100000}"
CLIENT_NS, GW_NS, SERVER_NS = f"{TAG}c", f"{TAG}g", f"{TAG}s"
NET = 100 + os.getpid() % 100
CLIENT_IP, OTHER_CLIENT_IP, GW_CLIENT_SIDE = f"10.{NET}.1.2", f"10.{NET}.1.3", f"10.{NET}.1.1"
SERVER_IP, GW_SERVER_SIDE = f"10.{NET}.2.2", f"10.{NET}.2.1"
GW_OUT_IF = f"{TAG}g1"  # the gateway's server-facing link: the TC egress program goes here

CONFIG = """
schema: 1
workers: 1
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes: [ { direct_response: { status: 200, body: "gw" } } ]
fast_path:
  egress_interfaces: [ ${IF} ]
  routed:
    - name: app
      sources: [ ${CLIENT_IP} ]
      destinations: [ ${SERVER_NET} ]
      protocols: [ tcp ]
      ports: [ ${PORTS} ]
    - name: dns
      destinations: [ ${SERVER_IP} ]
      protocols: [ udp ]
      ports: [ "5353" ]
"""

# In the server namespace: TCP servers on 8001 and 8002 that answer "ok <port>", a UDP echo on
# 5353 and 5354. Prints "ready" once listening.
SERVER = textwrap.dedent("""
    import socket, sys, threading
    host = sys.argv[1]
    def tcp(port):
        s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port)); s.listen(64)
        while True:
            c, _ = s.accept(); c.sendall(b"ok %d" % port); c.close()
    def udp(port):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((host, port))
        while True:
            d, a = s.recvfrom(2048); s.sendto(d, a)
    for p in (8001, 8002):
        threading.Thread(target=tcp, args=(p,), daemon=True).start()
    for p in (5353, 5354):
        threading.Thread(target=udp, args=(p,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()
""")

# In the client namespace: one TCP connection or UDP datagram from src; prints what came back
# or "blocked".
PROBE = textwrap.dedent("""
    import socket, sys
    kind, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    try:
        if kind == "tcp":
            c = socket.create_connection((dst, port), timeout=1.5, source_address=(src, 0))
            print(c.recv(100).decode() or "blocked")
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0)); s.settimeout(1.5)
            s.sendto(b"ping", (dst, port)); print(s.recv(100).decode())
    except OSError:
        print("blocked")
""")


def run(*args, check=True):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, timeout=60)


def ns(name, *args, check=True):
    return run(IP, "netns", "exec", name, *args, check=check)


def remove_topology():
    for n in (CLIENT_NS, GW_NS, SERVER_NS):
        run(IP, "netns", "del", n, check=False)


class RoutedRulesTest(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root: network namespaces and BPF programs")
        remove_topology()
        try:
            for n in (CLIENT_NS, GW_NS, SERVER_NS):
                run(IP, "netns", "add", n)
                ns(n, IP, "link", "set", "lo", "up")
            run(IP, "link", "add", f"{TAG}c0", "netns", CLIENT_NS, "type", "veth", "peer", "name", f"{TAG}g0",
                "netns", GW_NS)
            run(IP, "link", "add", GW_OUT_IF, "netns", GW_NS, "type", "veth", "peer", "name", f"{TAG}s0",
                "netns", SERVER_NS)
            ns(CLIENT_NS, IP, "addr", "add", f"{CLIENT_IP}/24", "dev", f"{TAG}c0")
            ns(CLIENT_NS, IP, "addr", "add", f"{OTHER_CLIENT_IP}/24", "dev", f"{TAG}c0")
            ns(GW_NS, IP, "addr", "add", f"{GW_CLIENT_SIDE}/24", "dev", f"{TAG}g0")
            ns(GW_NS, IP, "addr", "add", f"{GW_SERVER_SIDE}/24", "dev", GW_OUT_IF)
            ns(SERVER_NS, IP, "addr", "add", f"{SERVER_IP}/24", "dev", f"{TAG}s0")
            for n, link in ((CLIENT_NS, f"{TAG}c0"), (GW_NS, f"{TAG}g0"), (GW_NS, GW_OUT_IF), (SERVER_NS, f"{TAG}s0")):
                ns(n, IP, "link", "set", link, "up")
            ns(CLIENT_NS, IP, "route", "add", "default", "via", GW_CLIENT_SIDE)
            ns(SERVER_NS, IP, "route", "add", "default", "via", GW_SERVER_SIDE)
            ns(GW_NS, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            remove_topology()
            raise unittest.SkipTest(f"cannot build the three-namespace topology here: {e}")
        cls.server = subprocess.Popen([IP, "netns", "exec", SERVER_NS, sys.executable, "-c", SERVER, SERVER_IP],
                                      stdout=subprocess.PIPE, text=True)
        assert cls.server.stdout.readline().strip() == "ready"
        # The proxy runs in the gateway namespace: a wrapper that enters it, then execs the binary
        # (same PID, so the harness's signals reach marchproxy itself).
        cls.wrapdir = tempfile.mkdtemp(prefix="mp-routed-")
        cls.wrapper = os.path.join(cls.wrapdir, "marchproxy")
        with open(cls.wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {IP} netns exec {GW_NS} {find_binary()} \"$@\"\n")
        os.chmod(cls.wrapper, 0o755)

    @classmethod
    def tearDownClass(cls):
        cls.server.kill()
        cls.server.wait()
        shutil.rmtree(cls.wrapdir, ignore_errors=True)
        remove_topology()

    def probe(self, kind, src, port):
        return ns(CLIENT_NS, sys.executable, "-c", PROBE, kind, src, SERVER_IP, str(port)).stdout.strip()

    def config(self, ports):
        return render(CONFIG, IF=GW_OUT_IF, CLIENT_IP=CLIENT_IP, SERVER_NET=f"10.{NET}.2.0/24",
                      SERVER_IP=SERVER_IP, PORTS=ports)

    def counters(self):
        out = ns(GW_NS, find_binary(), "xdp", "status").stdout
        got = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] in ("pass_routed", "drop_routed"):
                got[parts[0]] = int(parts[1])
        return got, out

    def test_only_what_a_rule_allows_is_forwarded(self):
        # Before the proxy: the gateway forwards everything.
        self.assertEqual(self.probe("tcp", OTHER_CLIENT_IP, 8002), "ok 8002")
        os.environ["MARCHPROXY_BIN"], saved = self.wrapper, os.environ.get("MARCHPROXY_BIN")
        try:
            p = self.start_proxy(self.config('"8001"'), admin=False)
        finally:
            if saved is None:
                del os.environ["MARCHPROXY_BIN"]
            else:
                os.environ["MARCHPROXY_BIN"] = saved
        p.wait_log(r"fast path: egress rules generation \d+ active \(routed: 2 rule\(s\), default deny\)")
        self.assertEqual(self.probe("tcp", CLIENT_IP, 8001), "ok 8001")
        self.assertEqual(self.probe("tcp", CLIENT_IP, 8002), "blocked", "port not in the rule")
        self.assertEqual(self.probe("tcp", OTHER_CLIENT_IP, 8001), "blocked", "source not in the rule")
        self.assertEqual(self.probe("udp", OTHER_CLIENT_IP, 5353), "ping", "udp rule with any source")
        self.assertEqual(self.probe("udp", OTHER_CLIENT_IP, 5354), "blocked")
        got, status = self.counters()
        self.assertGreater(got.get("drop_routed", 0), 0, status)
        self.assertGreater(got.get("pass_routed", 0), 0, status)

        mark = p.mark()
        p.reload(self.config('"8001-8002"'))
        p.wait_log(r"egress rules generation \d+ active", since=mark)
        self.assertEqual(self.probe("tcp", CLIENT_IP, 8002), "ok 8002", "the reload widened the rule")
        self.assertEqual(self.probe("tcp", OTHER_CLIENT_IP, 8002), "blocked")

        p.stop()
        wait_until(lambda: self.probe("tcp", OTHER_CLIENT_IP, 8002) == "ok 8002", timeout=10,
                   message="forwarding open again once the proxy stopped and detached")


if __name__ == "__main__":
    unittest.main()
