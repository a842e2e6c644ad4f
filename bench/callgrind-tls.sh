#!/bin/bash
# User-space instructions per HTTPS request (callgrind), as in bench/results/callgrind-tls-*.md:
#   [CURVE=P-384] bench/callgrind-tls.sh [BINARY] [keepalive|full|resume] [N]
# One origin nginx (bench body), `marchproxy ingress` (1 worker, access log off, TLS listener with
# a self-signed ECDSA certificate, P-256 unless CURVE says otherwise) under
# `valgrind --tool=callgrind --instr-atstart=no`; 10 warm-up requests, then instrumentation on for
# N requests from one Python ssl client (TLS 1.3, X25519): `keepalive` on one connection (default
# N 2,000), `full` a new connection per request without a session (default N 100), `resume` a new
# connection per request offering the newest session ticket, with `Connection: close` (what wrk
# does in tls-new*; default N 100; the client exits if one is not resumed). Prints total Ir / N.
# Ports ORIGIN_PORT, TLS_PORT (28941, 28942) must be free.
set -euo pipefail
BIN=${1:-$(dirname "$0")/../build/release/src/cli/marchproxy}
MODE=${2:-keepalive}
N=${3:-$([ "$MODE" = keepalive ] && echo 2000 || echo 100)}
CURVE=${CURVE:-P-256}
ORIGIN_PORT=${ORIGIN_PORT:-28941}
TLS_PORT=${TLS_PORT:-28942}
W=$(mktemp -d /tmp/mp-cg-tls.XXXXXX)
mkdir -p "$W/tmp"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:$CURVE -nodes -days 30 -subj /CN=bench.test \
  -addext subjectAltName=DNS:bench.test -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
cat > "$W/origin.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $W/origin.pid; error_log $W/origin-error.log warn;
events { worker_connections 1024; }
http {
  access_log off; default_type text/plain; keepalive_timeout 300s; keepalive_requests 1000000;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp; uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server { listen 127.0.0.1:${ORIGIN_PORT}; location / { return 200 "bench origin ok\n"; } }
}
CONF
cat > "$W/mp.yaml" <<CONF
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: https, address: 127.0.0.1, port: ${TLS_PORT}, tls: { certificates: [ { cert: "$W/cert.pem", key: "$W/key.pem" } ] } } ]
virtual_hosts: [ { name: bench, domains: ["*"], routes: [ { match: { prefix: / }, forward: { cluster: origin } } ] } ]
clusters: [ { name: origin, endpoints: ["127.0.0.1:${ORIGIN_PORT}"], max_idle_connections: 128 } ]
access_log: { enabled: false }
CONF
nginx -c "$W/origin.conf" -p "$W" > "$W/origin.out" 2>&1 &
ORIGIN=$!
# The allocator setting the proxy re-executes itself with (src/cli/main.cc), given up front: a
# re-exec would leave valgrind, which does not follow children here.
GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.tcache_count=128} valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$W/cg.%p" \
  "$BIN" ingress --config "$W/mp.yaml" > "$W/mp.log" 2>&1 &
VG=$!
trap 'kill $VG $ORIGIN 2>/dev/null || true' EXIT
cat > "$W/client.py" <<'PY'
import socket, ssl, subprocess, sys
mode, n, vg = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
REQ = b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n"
CLOSE = b"GET / HTTP/1.1\r\nHost: bench.test\r\nConnection: close\r\n\r\n"
session = None
def conn():
    for _ in range(600):
        try:
            return ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[4])), timeout=30),
                                   server_hostname="bench.test", session=session if mode == "resume" else None)
        except OSError:
            import time; time.sleep(0.1)
    raise SystemExit("no listener")
def one(s, req=REQ):
    s.sendall(req)
    got = b""
    while not got.endswith(b"bench origin ok\n"):
        d = s.recv(4096)
        if not d: raise SystemExit("closed")
        got += d
def fresh():
    global session
    c = conn(); one(c, CLOSE if mode == "resume" else REQ)
    if mode == "resume":
        if session is not None and not c.session_reused: raise SystemExit("not resumed")
        session = c.session
    c.close()
s = conn()
for _ in range(10): one(s)
if mode != "keepalive":
    s.close()
    for _ in range(10): fresh()
subprocess.run(["callgrind_control", "-z", vg], capture_output=True)
subprocess.run(["callgrind_control", "-i", "on", vg], capture_output=True)
if mode == "keepalive":
    for _ in range(n): one(s)
else:
    for _ in range(n): fresh()
subprocess.run(["callgrind_control", "-i", "off", vg], capture_output=True)
subprocess.run(["callgrind_control", "-d", vg], capture_output=True)
PY
python3 "$W/client.py" "$MODE" "$N" "$VG" "$TLS_PORT"
sleep 1
kill $VG; wait $VG || true
f=$(ls -S "$W"/cg.* | head -1)
ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "mode=$MODE N=$N Ir=$ir Ir/req=$((ir / N)) profile=$f"
