"""Egress DNS: names resolved by c-ares against a small DNS server the test runs on loopback.

Checks that the decision is made on the resolved address (a permitted name answering with a
forbidden address is refused: DNS rebinding), that answers are cached for their TTL, and that a
name that does not exist is a 502.
"""

import hashlib
import os
import socket
import struct
import threading

from harness import ProxyTestCase, main, render
from test_egress_proxy import CURL, TOKEN, curl

import unittest

CONFIG = """
schema: 1
kind: egress
workers: 1
listeners:
  - {name: http, address: 127.0.0.1, port: 0}
admin: {address: 127.0.0.1, port: 0}
services:
  - name: billing
    tokens: ["sha256:${token_hash}"]
dns:
  servers: ["127.0.0.1:${dns_port}"]
  min_ttl: 1s
  max_ttl: 10m
mappings:
  - name: allowed-by-name
    sources: [billing]
    destinations: ["*.example.test"]
    protocols: [http]
    ports: ["${port}"]
  - name: loopback-named
    sources: [billing]
    destinations: [good.internal.test, 127.0.0.1/32]
    protocols: [http]
    ports: ["${port}"]
"""


class DnsServer:
    """Answers A queries from `records` (name -> (address, ttl)); AAAA: no records; else NXDOMAIN.
    Counts queries per (name, type)."""

    def __init__(self, records):
        self.records = records
        self.queries = {}
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._loop, daemon=True).start()

    def close(self):
        self.sock.close()

    def count(self, name, qtype=1):
        with self.lock:
            return self.queries.get((name, qtype), 0)

    def _loop(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            try:
                self.sock.sendto(self._answer(data), addr)
            except (OSError, ValueError, IndexError, struct.error):
                pass

    def _answer(self, q):
        qid, flags, qd = struct.unpack(">HHH", q[:6])
        pos, labels = 12, []
        while q[pos]:
            labels.append(q[pos + 1:pos + 1 + q[pos]].decode().lower())
            pos += 1 + q[pos]
        pos += 1
        qtype, qclass = struct.unpack(">HH", q[pos:pos + 4])
        question = q[12:pos + 4]
        name = ".".join(labels)
        with self.lock:
            self.queries[(name, qtype)] = self.queries.get((name, qtype), 0) + 1
        rec = self.records.get(name)
        rd = flags & 0x0100
        if rec is None:
            return struct.pack(">HHHHHH", qid, 0x8083 | rd, 1, 0, 0, 0) + question  # NXDOMAIN
        answers = b""
        count = 0
        if qtype == 1:
            address, ttl = rec
            answers = struct.pack(">HHHIH", 0xC00C, 1, 1, ttl, 4) + socket.inet_aton(address)
            count = 1
        return struct.pack(">HHHHHH", qid, 0x8080 | rd, 1, count, 0, 0) + question + answers


@unittest.skipUnless(CURL, "curl not installed")
class EgressDnsTest(ProxyTestCase):
    def setUp(self):
        self.origin = self.start_origin("o1")
        self.dns = DnsServer({
            "api.example.test": ("127.0.0.1", 300),      # permitted name, loopback answer: rebinding
            "good.internal.test": ("127.0.0.1", 300),    # the mapping names 127.0.0.1/32 too
            "short.internal.test": ("127.0.0.1", 0),
        })
        self.addCleanup(self.dns.close)
        cfg = render(CONFIG, token_hash=hashlib.sha256(TOKEN.encode()).hexdigest(), dns_port=self.dns.port,
                     port=self.origin.port)
        self.p = self.start_proxy(cfg, command="egress", expect_listeners=("http",))
        self.proxy = f"http://127.0.0.1:{self.p.ports['http']}"

    def get(self, name, path="/id"):
        return curl("-x", self.proxy, "-U", f"billing:{TOKEN}", f"http://{name}:{self.origin.port}{path}")

    def test_rebinding_into_a_forbidden_network_is_refused(self):
        rc, code, body = self.get("api.example.test")
        self.assertEqual(code, 403, body)
        self.assertIn(b"api.example.test resolves to 127.0.0.1, a forbidden network that no rule names", body)
        self.assertGreaterEqual(self.dns.count("api.example.test"), 1)  # it was asked: c-ares, not /etc/hosts
        self.assertEqual(self.origin.count, 0)

    def test_named_network_is_allowed_and_answers_are_cached_for_their_ttl(self):
        for _ in range(3):
            rc, code, body = self.get("good.internal.test")
            self.assertEqual((code, body), (200, b"o1"))
        self.assertEqual(self.dns.count("good.internal.test"), 1)  # TTL 300 s: asked once

    def test_unknown_name_is_502_and_an_unmapped_name_is_never_resolved(self):
        rc, code, body = self.get("missing.example.test")
        self.assertEqual(code, 502, body)
        self.assertIn(b"cannot resolve missing.example.test", body)
        rc, code, body = self.get("unmapped.other.test")
        self.assertEqual(code, 403, body)
        self.assertEqual(self.dns.count("unmapped.other.test"), 0)


if __name__ == "__main__":
    main()
