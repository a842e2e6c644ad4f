#!/usr/bin/env python3
"""bench/xdp.py — receive-side CPU per dropped packet: our XDP program (lists, buckets and counters
all enabled) against an nftables drop rule in the input hook and a minimal XDP_DROP program, native
and generic mode, on a veth pair between this namespace and a sender namespace, in one run.

Method: a C sender (sendmmsg, 64-byte UDP; compiled here with cc) floods from the sender namespace
with TSO/GSO off. The receive side of a veth runs in NET_RX softirq, so the cost per packet is the
softirq CPU time (/proc/stat, all CPUs) over the run divided by the packets sent; "total" is all
non-idle CPU time per packet (sender included). Configurations alternate round after round and the
median is reported. The machine is shared: softirq from other work adds noise, so compare ratios
within one run. Needs root, clang (for the minimal program), cc, nft, iproute2.

Usage: bench/xdp.py [--packets N] [--rounds R] [--marchproxy PATH] [--out bench/results]
       bench/xdp.py --scenario overhead [--duration S] [--rounds R]

`--scenario overhead`: the cost of the program for legitimate traffic. wrk in the sender namespace
runs keep-alive HTTP/1.1 requests (the `h1` scenario's shape: 50 connections) through the veth to
a one-worker marchproxy, with the full XDP program attached in native mode (lists, buckets, port
filter, counters; no limit reached) and without a fast path, alternating round after round. Cost
per request = the proxy's own CPU time (utime + stime) plus NET_RX softirq time, over the requests
wrk completed; goal: with XDP <= 1.05x without.
"""
import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NS, HOST_IF, PEER_IF = "mpxbench", "mpxbh", "mpxbp"
RX_IP, TX_IP = "10.251.0.1", "10.251.0.2"
HZ = os.sysconf("SC_CLK_TCK")

SENDER_C = r"""
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
int main(int argc, char **argv) {
  long n = atol(argv[3]);
  int s = socket(AF_INET, SOCK_DGRAM, 0);
  struct sockaddr_in src = {.sin_family = AF_INET}, dst = {.sin_family = AF_INET, .sin_port = htons(9)};
  inet_pton(AF_INET, argv[1], &src.sin_addr);
  inet_pton(AF_INET, argv[2], &dst.sin_addr);
  if (bind(s, (void *)&src, sizeof src) || connect(s, (void *)&dst, sizeof dst)) { perror("socket"); return 1; }
  enum { B = 64 };
  char payload[64]; memset(payload, 'x', sizeof payload);
  struct iovec iov = {payload, sizeof payload};
  struct mmsghdr m[B]; memset(m, 0, sizeof m);
  for (int i = 0; i < B; i++) { m[i].msg_hdr.msg_iov = &iov; m[i].msg_hdr.msg_iovlen = 1; }
  long sent = 0;
  while (sent < n) { int r = sendmmsg(s, m, B, 0); if (r > 0) sent += r; }
  printf("%ld\n", sent);
  return 0;
}
"""

MINIMAL_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
SEC("xdp") int drop_all(struct xdp_md *ctx) { return XDP_DROP; }
char LICENSE[] SEC("license") = "GPL";
"""

PROXY_YAML = """
schema: 1
workers: 1
admin: off
listeners: [ { name: web, address: %s, port: 0 } ]
virtual_hosts: [ { name: v, domains: ["*"], routes: [ { match: { prefix: / }, direct_response: { status: 200 } } ] } ]
fast_path:
  interfaces: [ %s ]
  mode: %s
  deny: [ 192.0.2.0/24, "2001:db8:bad::/48" ]
  allow: [ 198.51.100.0/24 ]
  per_source: { packets_per_second: 1, burst: 1 }
  global: { packets_per_second: 100000000 }
  syn: { packets_per_second: 100, burst: 100 }
  port_filter: true
  extra_tcp_ports: [ 22 ]
"""


def sh(*args, check=True, **kw):
    return subprocess.run(list(args), check=check, capture_output=True, text=True, **kw)


def cpu_jiffies():
    f = open("/proc/stat").readline().split()[1:]
    v = list(map(int, f))
    busy = v[0] + v[1] + v[2] + v[5] + v[6] + v[7]  # user nice system irq softirq steal
    return busy, v[6]


def setup():
    teardown()
    sh("ip", "netns", "add", NS)
    sh("ip", "link", "add", HOST_IF, "type", "veth", "peer", "name", PEER_IF)
    sh("ip", "link", "set", PEER_IF, "netns", NS)
    sh("ip", "addr", "add", RX_IP + "/24", "dev", HOST_IF)
    sh("ip", "link", "set", HOST_IF, "up")
    sh("ip", "netns", "exec", NS, "ip", "addr", "add", TX_IP + "/24", "dev", PEER_IF)
    sh("ip", "netns", "exec", NS, "ip", "link", "set", PEER_IF, "up")
    sh("ip", "netns", "exec", NS, "ethtool", "-K", PEER_IF, "tso", "off", "gso", "off", check=False)
    sh("ip", "netns", "exec", NS, "ip", "neigh", "replace", RX_IP, "lladdr",
       open(f"/sys/class/net/{HOST_IF}/address").read().strip(), "dev", PEER_IF)


def teardown():
    sh("nft", "delete", "table", "inet", "mpxbench", check=False)
    sh("ip", "netns", "del", NS, check=False)
    sh("ip", "link", "del", HOST_IF, check=False)


class Config:
    def __init__(self, name, start, stop):
        self.name, self.start, self.stop = name, start, stop


def make_configs(work, marchproxy):
    minimal = os.path.join(work, "minimal.bpf.o")
    sh("clang", "-O2", "-target", "bpf", f"-I/usr/include/{sh('gcc', '-print-multiarch').stdout.strip()}",
       "-c", "-x", "c", "-", "-o", minimal, input=MINIMAL_C)
    state = {}

    def nft_on():
        sh("nft", "-f", "-", input="table inet mpxbench {\n chain input {\n  type filter hook input priority 0;\n"
           f"  ip saddr {TX_IP} udp dport 9 drop\n }}\n}}\n")

    def nft_off():
        sh("nft", "delete", "table", "inet", "mpxbench", check=False)

    def minimal_on(mode):
        return lambda: sh("ip", "link", "set", "dev", HOST_IF, mode, "obj", minimal, "sec", "xdp")

    def minimal_off(mode):
        return lambda: sh("ip", "link", "set", "dev", HOST_IF, mode, "off", check=False)

    def ours_on(mode):
        def f():
            cfg = os.path.join(work, f"proxy-{mode}.yaml")
            open(cfg, "w").write(PROXY_YAML % (RX_IP, HOST_IF, mode))
            p = subprocess.Popen([marchproxy, "ingress", "--no-watch", "-c", cfg], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            for line in p.stderr:
                if "marchproxy ingress ready" in line:
                    break
                if f"XDP attached to {HOST_IF} in {mode}" not in line and "cannot attach" in line:
                    raise RuntimeError(line)
            state["proxy"] = p
        return f

    def ours_off():
        p = state.pop("proxy", None)
        if p:
            p.terminate()
            p.wait(20)

    return [
        Config("nftables drop (input hook)", nft_on, nft_off),
        Config("minimal XDP_DROP, native", minimal_on("xdpdrv"), minimal_off("xdpdrv")),
        Config("marchproxy XDP, native", ours_on("native"), ours_off),
        Config("minimal XDP_DROP, generic", minimal_on("xdpgeneric"), minimal_off("xdpgeneric")),
        Config("marchproxy XDP, generic", ours_on("generic"), ours_off),
    ]


OVERHEAD_YAML = """
schema: 1
workers: 1
admin: off
listeners: [ { name: web, address: %s, port: %d } ]
virtual_hosts: [ { name: v, domains: ["*"], routes: [ { match: { prefix: / }, direct_response: { status: 200, body: "ok" } } ] } ]
"""

OVERHEAD_FAST_PATH = """fast_path:
  interfaces: [ %s ]
  mode: native
  deny: [ 192.0.2.0/24, "2001:db8:bad::/48" ]
  allow: [ 198.51.100.0/24 ]
  per_source: { packets_per_second: 100000000 }
  global: { packets_per_second: 100000000 }
  syn: { packets_per_second: 100000, burst: 100000 }
  port_filter: true
  extra_tcp_ports: [ 22 ]
"""


def proc_cpu_ns(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) * 1e9 / HZ  # utime + stime


def overhead(a, work):
    port = 18080
    results = {}
    for r in range(a.rounds):
        for name, with_xdp in (("without fast path", False), ("XDP native, all checks on", True)):
            cfg = os.path.join(work, "overhead.yaml")
            text = OVERHEAD_YAML % (RX_IP, port) + (OVERHEAD_FAST_PATH % HOST_IF if with_xdp else "")
            open(cfg, "w").write(text)
            p = subprocess.Popen([a.marchproxy, "ingress", "--no-watch", "-c", cfg], stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE, text=True)
            try:
                for line in p.stderr:
                    if "marchproxy ingress ready" in line:
                        break
                    if with_xdp and "cannot attach" in line:
                        raise RuntimeError(line)
                sh("ip", "netns", "exec", NS, "wrk", "-t1", "-c50", "-d2s", f"http://{RX_IP}:{port}/")  # warm-up
                c0 = proc_cpu_ns(p.pid)
                _, s0 = cpu_jiffies()
                out = sh("ip", "netns", "exec", NS, "wrk", "-t1", "-c50", f"-d{a.duration}s",
                         f"http://{RX_IP}:{port}/").stdout
                _, s1 = cpu_jiffies()
                c1 = proc_cpu_ns(p.pid)
            finally:
                p.terminate()
                p.wait(20)
            reqs = int(next(ln for ln in out.splitlines() if "requests in" in ln).split()[0])
            m = {"proxy_ns": (c1 - c0) / reqs, "softirq_ns": (s1 - s0) * 1e9 / HZ / reqs,
                 "rps": reqs / a.duration}
            m["cost_ns"] = m["proxy_ns"] + m["softirq_ns"]
            results.setdefault(name, []).append(m)
            print(f"round {r + 1} {name:<28} proxy {m['proxy_ns']:7.0f} + softirq {m['softirq_ns']:6.0f} "
                  f"ns/req  {m['rps']:8.0f} req/s", flush=True)
    med = {k: {f: statistics.median(m[f] for m in v) for f in ("proxy_ns", "softirq_ns", "cost_ns", "rps")}
           for k, v in results.items()}
    base = med["without fast path"]["cost_ns"]
    lines = ["| configuration | proxy CPU ns/req | softirq ns/req | cost ns/req | × without | req/s |",
             "|---|---|---|---|---|---|"]
    for k, m in med.items():
        lines.append(f"| {k} | {m['proxy_ns']:.0f} | {m['softirq_ns']:.0f} | {m['cost_ns']:.0f} | "
                     f"{m['cost_ns'] / base:.3f} | {m['rps']:.0f} |")
    return results, med, "\n".join(lines)


def measure(sender, packets):
    b0, s0 = cpu_jiffies()
    t0 = time.monotonic()
    out = sh("ip", "netns", "exec", NS, sender, TX_IP, RX_IP, str(packets)).stdout
    wall = time.monotonic() - t0
    b1, s1 = cpu_jiffies()
    sent = int(out)
    ns = 1e9 / HZ
    return {"softirq_ns": (s1 - s0) * ns / sent, "total_ns": (b1 - b0) * ns / sent, "pps": sent / wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=3_000_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--marchproxy", default=os.path.join(ROOT, "build", "release", "src", "cli", "marchproxy"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    ap.add_argument("--scenario", choices=("drop", "overhead"), default="drop")
    ap.add_argument("--duration", type=int, default=10, help="overhead: seconds of load per round")
    a = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/xdp.py needs root (namespaces, XDP, nftables)")
    work = tempfile.mkdtemp(prefix="mp-xdp-bench-")
    if a.scenario == "overhead":
        try:
            setup()
            results, med, table = overhead(a, work)
        finally:
            teardown()
            shutil.rmtree(work, ignore_errors=True)
        print(table)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"xdp-overhead-{stamp}.md"), "w") as f:
            f.write(f"# XDP fast path: CPU overhead on legitimate traffic ({stamp} UTC)\n\n"
                    f"{a.rounds} rounds × {a.duration} s of wrk (1 thread, 50 keep-alive connections) from a "
                    "namespace over a veth pair to a one-worker marchproxy answering from a direct response, "
                    "with and without the full XDP program (native mode) on the receiving veth, alternating; "
                    "median. Cost = the proxy's CPU time + NET_RX softirq time, per request (`bench/xdp.py "
                    "--scenario overhead`). Goal: ≤ 1.05× without.\n\n" + table + "\n")
        with open(os.path.join(a.out, f"xdp-overhead-{stamp}.json"), "w") as f:
            json.dump({"rounds": results, "median": med, "duration": a.duration}, f, indent=1)
        return
    sender = os.path.join(work, "sender")
    sh("cc", "-O2", "-o", sender, "-x", "c", "-", input=SENDER_C)
    results = {}
    try:
        setup()
        configs = make_configs(work, a.marchproxy)
        for r in range(a.rounds):
            for c in configs:
                c.start()
                try:
                    m = measure(sender, a.packets)
                finally:
                    c.stop()
                results.setdefault(c.name, []).append(m)
                print(f"round {r + 1} {c.name:<28} softirq {m['softirq_ns']:7.1f} ns/pkt  total "
                      f"{m['total_ns']:7.1f} ns/pkt  {m['pps'] / 1e6:5.2f} Mpps", flush=True)
    finally:
        teardown()
        shutil.rmtree(work, ignore_errors=True)
    med = {k: {f: statistics.median(m[f] for m in v) for f in ("softirq_ns", "total_ns", "pps")}
           for k, v in results.items()}
    nft = med["nftables drop (input hook)"]["softirq_ns"]
    lines = ["| configuration | receive (softirq) ns/pkt | × nftables | × minimal XDP (same mode) | "
             "total CPU ns/pkt | Mpps |", "|---|---|---|---|---|---|"]
    for k, m in med.items():
        mode = "native" if "native" in k else "generic" if "generic" in k else None
        base = med.get(f"minimal XDP_DROP, {mode}", {}).get("softirq_ns") if mode else None
        lines.append(f"| {k} | {m['softirq_ns']:.1f} | {m['softirq_ns'] / nft:.2f} | "
                     f"{(m['softirq_ns'] / base) if base else float('nan'):.2f} | {m['total_ns']:.1f} | "
                     f"{m['pps'] / 1e6:.2f} |")
    table = "\n".join(lines)
    print(table)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, f"xdp-{stamp}.md"), "w") as f:
        f.write(f"# XDP fast path: CPU per dropped packet ({stamp} UTC)\n\n"
                f"{a.rounds} rounds × {a.packets} 64-byte UDP packets per configuration, median; veth pair, "
                f"sender in a namespace (sendmmsg, TSO/GSO off); `bench/xdp.py`. Receive cost = NET_RX "
                f"softirq time over all CPUs / packets (/proc/stat, {HZ} Hz ticks); the machine is shared, "
                "so the ratios within this run are what counts.\n\n" + table + "\n")
    with open(os.path.join(a.out, f"xdp-{stamp}.json"), "w") as f:
        json.dump({"rounds": results, "median": med, "packets": a.packets}, f, indent=1)


if __name__ == "__main__":
    main()
