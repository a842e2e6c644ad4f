"""Routed (gateway) TCP/UDP rules end to end: three network namespaces — a client, a gateway that
forwards between two veth links and runs `marchproxy ingress` with the TC egress program on its
server-facing link, and a server. Forwarded connections leave only when a `fast_path.routed` rule
allows them (source, destination, protocol, port); a reload widens the rules; the counters in
`marchproxy xdp status` move; stopping the proxy detaches the program and forwarding is open again.
Other IP protocols (GRE, ESP, IPIP, SCTP) are refused, ICMP, ARP and the fragments of an allowed
datagram pass (VLAN-tagged frames: mp_fastpath_test and the fuzzer; this kernel has no tc vlan
action to put a tag into a forwarded frame); a non-Ethernet egress interface (tun) is refused with a clear
error while the proxy keeps running. What reaches the server is observed by a packet socket there.
Needs root; skips otherwise. Namespaces are removed by the test, also when it fails."""
import itertools
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
OTHER_SERVER_IP = f"10.{NET}.2.3"  # no udp rule names it
GW_OUT_IF = f"{TAG}g1"  # the gateway's server-facing link: the TC egress program goes here
GW_TUN = f"{TAG}t"  # a tun device in the gateway: no Ethernet header, refused for TC
SENTINEL_SPORT = 45998

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


# In the server namespace: a packet socket on the server's link that appends one line per frame
# carrying a probe marker ("MPRB" + 8-character id) to a file: "<id> <IPv4 fragment offset> <IP
# protocol>". Prints "ready" once bound.
SNIFFER = textwrap.dedent("""
    import socket, sys
    ifname, path = sys.argv[1], sys.argv[2]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    s.bind((ifname, 0))
    out = open(path, "a", buffering=1)
    print("ready", flush=True)
    while True:
        f, where = s.recvfrom(65535)
        if where[2] == socket.PACKET_OUTGOING:  # the server's own answers (ICMP errors quote the probe)
            continue
        i = f.find(b"MPRB")
        if i < 0:
            continue
        p, et = 14, int.from_bytes(f[12:14], "big")
        while et in (0x8100, 0x88a8) and len(f) >= p + 4:
            et, p = int.from_bytes(f[p + 2:p + 4], "big"), p + 4
        off = int.from_bytes(f[p + 6:p + 8], "big") & 0x1fff if et == 0x0800 else -1
        proto = f[p + 9] if et == 0x0800 else -1
        out.write("%s %d %d\\n" % (f[i + 4:i + 12].decode(errors="replace"), off, proto))
""")

# In the client namespace (pinned to one CPU, so that what it sends stays in order through the
# veth backlogs): one IP packet of protocol N ("raw"), an ICMP echo request ("ping"), or a UDP
# datagram of SIZE bytes ("udp", optionally from a given source port), its payload the marker repeated.
SEND = textwrap.dedent("""
    import os, socket, sys
    os.sched_setaffinity(0, {0})
    kind, src, dst, ident, arg = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    marker = b"MPRB" + ident.encode() + b"----"
    if kind == "raw":
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, arg); s.bind((src, 0))
        s.sendto(marker * 4, (dst, 0))
    elif kind == "ping":
        body = b"\\x08\\x00\\x00\\x00\\x12\\x34\\x00\\x01" + marker * 4
        c = sum(int.from_bytes(body[i:i + 2], "big") for i in range(0, len(body), 2))
        while c >> 16:
            c = (c & 0xffff) + (c >> 16)
        body = body[:2] + (~c & 0xffff).to_bytes(2, "big") + body[4:]
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP); s.bind((src, 0))
        s.sendto(body, (dst, 0))
    else:
        port = int(sys.argv[6]) if len(sys.argv) > 6 else 0
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, port))
        s.sendto(marker * (arg // 16), (dst, 5353 if kind == "udp" else int(kind[3:])))
""")

_ids = itertools.count(1)


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
            ns(SERVER_NS, IP, "addr", "add", f"{OTHER_SERVER_IP}/24", "dev", f"{TAG}s0")
            ns(GW_NS, IP, "tuntap", "add", "dev", GW_TUN, "mode", "tun")
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
        cls.wrapdir = tempfile.mkdtemp(prefix="mp-routed-")
        cls.seen_path = os.path.join(cls.wrapdir, "seen")
        cls.sniffer = subprocess.Popen([IP, "netns", "exec", SERVER_NS, sys.executable, "-c", SNIFFER, f"{TAG}s0",
                                        cls.seen_path], stdout=subprocess.PIPE, text=True)
        assert cls.sniffer.stdout.readline().strip() == "ready"
        # The proxy runs in the gateway namespace: a wrapper that enters it, then execs the binary
        # (same PID, so the harness's signals reach marchproxy itself).
        cls.wrapper = os.path.join(cls.wrapdir, "marchproxy")
        with open(cls.wrapper, "w") as f:
            f.write(f"#!/bin/sh\nexec {IP} netns exec {GW_NS} {find_binary()} \"$@\"\n")
        os.chmod(cls.wrapper, 0o755)

    @classmethod
    def tearDownClass(cls):
        for p in (cls.server, cls.sniffer):
            p.kill()
            p.wait()
        shutil.rmtree(cls.wrapdir, ignore_errors=True)
        remove_topology()

    def probe(self, kind, src, port):
        return ns(CLIENT_NS, sys.executable, "-c", PROBE, kind, src, SERVER_IP, str(port)).stdout.strip()

    def config(self, ports, interfaces=GW_OUT_IF):
        return render(CONFIG, IF=interfaces, CLIENT_IP=CLIENT_IP, SERVER_NET=f"10.{NET}.2.0/24",
                      SERVER_IP=SERVER_IP, PORTS=ports)

    def start_gateway_proxy(self, config):
        os.environ["MARCHPROXY_BIN"], saved = self.wrapper, os.environ.get("MARCHPROXY_BIN")
        try:
            return self.start_proxy(config, admin=False)
        finally:
            if saved is None:
                del os.environ["MARCHPROXY_BIN"]
            else:
                os.environ["MARCHPROXY_BIN"] = saved

    def seen(self, ident):
        """(IPv4 fragment offset, IP protocol) of every frame with this probe's marker the server got."""
        with open(self.seen_path) as f:
            return [(int(o), int(p)) for i, o, p in (line.split() for line in f if line.strip()) if i == ident]

    def arrives(self, kind, dst, arg, *extra):
        """Sends one probe from the client, then an allowed UDP datagram (a rule allows udp/5353 to the
        server from any source) on the same path; once that one is seen at the server, the probe's
        frames that got through have been seen too. Returns them."""
        ident, sentinel = f"{next(_ids):08d}", f"{next(_ids):08d}"
        ns(CLIENT_NS, sys.executable, "-c", SEND, kind, OTHER_CLIENT_IP, dst, ident, str(arg), *map(str, extra))
        ns(CLIENT_NS, sys.executable, "-c", SEND, "udp", OTHER_CLIENT_IP, SERVER_IP, sentinel, "64", str(SENTINEL_SPORT))
        wait_until(lambda: self.seen(sentinel), timeout=10, message="the allowed UDP datagram after the probe")
        return self.seen(ident)

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
        p = self.start_gateway_proxy(self.config('"8001"'))
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

    def test_other_protocols_icmp_fragments_and_arp(self):
        protocols = {"GRE": 47, "ESP": 50, "IPIP": 4, "SCTP": 132}
        # Before the proxy, the gateway forwards all of it (so a refusal below is the program's).
        for name, number in protocols.items():
            self.assertEqual(self.arrives("raw", SERVER_IP, number), [(0, number)], name)
        self.assertTrue(self.arrives("udp", OTHER_SERVER_IP, 3000), "a fragmented datagram, no proxy")

        p = self.start_gateway_proxy(self.config('"8001"'))
        p.wait_log(r"fast path: egress rules generation \d+ active \(routed: 2 rule\(s\), default deny\)")
        for name, number in protocols.items():
            self.assertEqual(self.arrives("raw", SERVER_IP, number), [], f"{name} is refused")
        # ICMP passes (path MTU discovery and errors need it; icmp_echo governs echo).
        self.assertEqual(self.arrives("ping", SERVER_IP, 0), [(0, 1)], "an ICMP echo request")
        # A 3000-byte datagram leaves the client in three fragments; only the first carries the port.
        # To the allowed udp/5353: every fragment arrives (the later ones through the dns rule,
        # which allows udp to the server on some port). To a destination no udp rule names: none.
        frames = self.arrives("udp", SERVER_IP, 3000)
        self.assertIn((0, 17), frames, "the first fragment")
        self.assertTrue([f for f in frames if f[0] != 0], f"the later fragments: {frames}")
        self.assertEqual(self.arrives("udp", OTHER_SERVER_IP, 3000), [], "no fragment to the other host")
        # ARP still works: with the gateway's neighbour entries gone, an allowed connection needs
        # the gateway to resolve the server's address on the enforcing link again.
        ns(GW_NS, IP, "neigh", "flush", "dev", GW_OUT_IF)
        self.assertEqual(self.probe("tcp", CLIENT_IP, 8001), "ok 8001")
        got, status = self.counters()
        self.assertGreater(got.get("drop_routed", 0), 0, status)

    def test_a_non_ethernet_egress_interface_is_refused(self):
        p = self.start_gateway_proxy(self.config('"8001"', interfaces=f"{GW_TUN}, {GW_OUT_IF}"))
        line = p.wait_log(r"cannot attach the TC egress program to " + GW_TUN)
        self.assertIn(f"interface {GW_TUN} is not an Ethernet interface (link type 65534)", line)
        # The process keeps running and enforces on the Ethernet link it could attach to.
        p.wait_log(r"fast path: egress rules generation \d+ active")
        self.assertIsNone(p.proc.poll())
        self.assertEqual(self.probe("tcp", CLIENT_IP, 8001), "ok 8001")
        self.assertEqual(self.probe("tcp", CLIENT_IP, 8002), "blocked")
        status = ns(GW_NS, find_binary(), "xdp", "status").stdout
        self.assertIn(f"{GW_OUT_IF}: TC egress", status)
        self.assertNotIn(f"{GW_TUN}: TC egress", status)


if __name__ == "__main__":
    unittest.main()
