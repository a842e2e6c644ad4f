#!/bin/bash
# RSS per idle TLS keep-alive connection of `marchproxy ingress` (1 worker, direct response):
#   bench/idle-tls-rss.sh BINARY [CONNECTIONS]   (port 28962 must be free)
# Opens CONNECTIONS TLS 1.3 connections, one request on each, then compares VmRSS with the warm process.
set -euo pipefail
BIN=$1; C=${2:-500}
W=$(mktemp -d /tmp/mp-idle-tls.XXXXXX)
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=bench.test -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat > "$W/mp.yaml" <<CONF
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: https, address: 127.0.0.1, port: 28962, tls: { certificates: [ { cert: "$W/cert.pem", key: "$W/key.pem" } ] } } ]
virtual_hosts: [ { name: bench, domains: ["*"], routes: [ { match: { prefix: / }, direct_response: { status: 200, body: "ok\n" } } ] } ]
access_log: { enabled: false }
CONF
"$BIN" ingress --config "$W/mp.yaml" > "$W/mp.log" 2>&1 & MP=$!
trap 'kill $MP 2>/dev/null || true' EXIT
python3 - "$C" "$MP" <<'PY'
import socket, ssl, sys, time
c, pid = int(sys.argv[1]), sys.argv[2]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS"): return int(l.split()[1])
def conn():
    for _ in range(100):
        try: return ctx.wrap_socket(socket.create_connection(("127.0.0.1", 28962), timeout=30), server_hostname="bench.test")
        except OSError: time.sleep(0.1)
def one(s):
    s.sendall(b"GET / HTTP/1.1\r\nHost: b\r\n\r\n"); got = b""
    while not got.endswith(b"ok\n"): got += s.recv(4096)
warm = [conn() for _ in range(20)]
for s in warm: one(s)
for s in warm: s.close()
time.sleep(0.5)
r0 = rss()
conns = [conn() for _ in range(c)]
for s in conns: one(s)
time.sleep(1)
r1 = rss()
print(f"idle TLS connections={c} RSS before={r0} KiB after={r1} KiB per connection={(r1 - r0) * 1024 // c} bytes")
PY
