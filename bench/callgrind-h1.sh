#!/bin/bash
# User-space instructions per keep-alive HTTP/1.1 request (callgrind), as in
# bench/results/callgrind-h1-*.md:
#   bench/callgrind-h1.sh [BINARY] [VAR=value ...]    e.g. LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
# One origin nginx (bench body, keepalive_requests 1e6), `marchproxy ingress` (1 worker, access log
# off) under `valgrind --tool=callgrind --instr-atstart=no`; 2,000 warm-up requests, then
# instrumentation on for 20,000 requests over 4 keep-alive connections (h2load --h1).
# Prints total Ir / requests the origin served. Ports 18931/18932 must be free.
# CG_NEW_CONNECTIONS=1 (in this script's environment): scenario h1-new instead, one new client
# connection per request (wrk -c 4 -H 'Connection: close' for 10 s, warm-up 2 s); Ir per request is
# then Ir per connection.
set -euo pipefail
BIN=${1:-$(dirname "$0")/../build/release/src/cli/marchproxy}
shift || true
W=$(mktemp -d /tmp/mp-cg-h1.XXXXXX)
mkdir -p "$W/tmp"
cat > "$W/origin.conf" <<CONF
worker_processes 1; daemon off; master_process off; pid $W/origin.pid; error_log $W/origin-error.log warn;
events { worker_connections 1024; }
http {
  access_log off; default_type text/plain; keepalive_timeout 300s; keepalive_requests 1000000;
  client_body_temp_path $W/tmp; proxy_temp_path $W/tmp; fastcgi_temp_path $W/tmp; uwsgi_temp_path $W/tmp; scgi_temp_path $W/tmp;
  server { listen 127.0.0.1:18931; location = /__origin_status { stub_status; }
           location / { return 200 "marchproxy bench origin 200 ok\n"; } }
}
CONF
cat > "$W/mp.yaml" <<CONF
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 18932 } ]
virtual_hosts: [ { name: bench, domains: ["*"], routes: [ { match: { prefix: / }, forward: { cluster: origin } } ] } ]
clusters: [ { name: origin, endpoints: ["127.0.0.1:18931"], max_idle_connections: 128 } ]
access_log: { enabled: false }
CONF
nginx -c "$W/origin.conf" -p "$W" > "$W/origin.out" 2>&1 &
ORIGIN=$!
env "$@" valgrind --tool=callgrind --trace-children=yes --instr-atstart=no --callgrind-out-file="$W/cg.%p" \
  "$BIN" ingress --config "$W/mp.yaml" > "$W/mp.log" 2>&1 &
VG=$!
trap 'kill $VG $ORIGIN 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -s -o /dev/null http://127.0.0.1:18932/ && break; sleep 1; done
served() { curl -s http://127.0.0.1:18931/__origin_status | awk '/^ [0-9]/{print $3}'; }
load() {  # $1: requests (keep-alive) or seconds (new connections)
  if [ -n "${CG_NEW_CONNECTIONS:-}" ]; then
    wrk -t 1 -c 4 -d "$(( $1 < 100 ? $1 : 2 ))s" -H 'Connection: close' http://127.0.0.1:18932/ | grep -E "requests in"
  else
    h2load --h1 -n "$1" -c 4 http://127.0.0.1:18932/ | grep -E "^requests:"
  fi
}
load 2000 > /dev/null
callgrind_control -i on $VG > /dev/null 2>&1
r0=$(served)
load "$([ -n "${CG_NEW_CONNECTIONS:-}" ] && echo 10 || echo 20000)"
r1=$(served)
callgrind_control -i off $VG > /dev/null 2>&1
callgrind_control -d $VG > /dev/null 2>&1
sleep 1
kill $VG; wait $VG || true
f=$(ls -S "$W"/cg.* | head -1)
ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
reqs=$((r1 - r0 - 1))  # minus the status request itself
echo "requests=$reqs Ir=$ir Ir/req=$((ir / reqs)) profile=$f"
