#!/bin/bash
# Deterministic per-request counts for scenario h2 (h2c prior knowledge, h2load -c 10 -m 10, one
# HTTP/1.1 origin nginx), as in bench/results/callgrind-h2-*.md:
#   bench/h2-counts.sh callgrind [BINARY] [VAR=value ...]   user-space Ir/req of marchproxy (valgrind)
#   bench/h2-counts.sh strace    [BINARY] [VAR=value ...]   syscalls/req of marchproxy (strace -c -f)
#   bench/h2-counts.sh haproxy                               syscalls/req of HAProxy (strace -c -f)
#   bench/h2-counts.sh haproxy-callgrind                     user-space Ir/req of HAProxy
# marchproxy re-executes itself with GLIBC_TUNABLES (src/cli/main.cc): MARCHPROXY_MALLOC_TUNING=off for glibc defaults.
# CG_OPTS="--cache-sim=yes --branch-sim=yes" adds simulated cache misses and mispredicted branches.
# 1,000 (callgrind) / 2,000 (strace) warm-up requests, then 10,000 / 20,000 measured; requests are
# counted at the origin (stub_status). Ports 18941/18942 must be free.
set -euo pipefail
MODE=${1:?callgrind, strace or haproxy}
shift
BIN=$(dirname "$0")/../build/release/src/cli/marchproxy
if [ $# -gt 0 ] && [[ "$1" != *=* ]]; then BIN=$1; shift; fi
W=$(mktemp -d /tmp/mp-h2-counts.XXXXXX)
mkdir -p "$W/origin-tmp"
# The bench's own origin (bench/configs/origin-nginx.conf, rendered as bench/lib/targets.py does).
sed -e "s|@WORK@|$W|g" -e "s|@NOFILE@|65536|" -e "s|@WORKER_CONNECTIONS@|1024|" -e "s|@PORT@|18941|" \
    -e 's|@BODY@|marchproxy bench origin 200 ok\\n|' "$(dirname "$0")/configs/origin-nginx.conf" > "$W/origin.conf"
cat > "$W/mp.yaml" <<CONF
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: h2c, address: 127.0.0.1, port: 18942, h2c: true } ]
virtual_hosts: [ { name: bench, domains: ["*"], routes: [ { match: { prefix: / }, forward: { cluster: origin } } ] } ]
clusters: [ { name: origin, endpoints: ["127.0.0.1:18941"], max_idle_connections: 128 } ]
access_log: { enabled: false }
CONF
cat > "$W/haproxy.cfg" <<CONF
global
    nbthread 1
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend bench_h2c
    bind 127.0.0.1:18942 proto h2
    default_backend origin
backend origin
    server origin1 127.0.0.1:18941
CONF
nginx -c "$W/origin.conf" -p "$W" > "$W/origin.out" 2>&1 &
ORIGIN=$!
case $MODE in
  callgrind) env "$@" valgrind --tool=callgrind --trace-children=yes --instr-atstart=no ${CG_OPTS:-} --callgrind-out-file="$W/cg.%p" \
               "$BIN" ingress --config "$W/mp.yaml" > "$W/mp.log" 2>&1 & ;;
  strace) env "$@" "$BIN" ingress --config "$W/mp.yaml" > "$W/mp.log" 2>&1 & ;;
  haproxy-callgrind) valgrind --tool=callgrind --trace-children=yes --instr-atstart=no ${CG_OPTS:-} --callgrind-out-file="$W/cg.%p" \
               haproxy -db -f "$W/haproxy.cfg" > "$W/mp.log" 2>&1 & ;;
  cpu) env "$@" taskset -c 0 "$BIN" ingress --config "$W/mp.yaml" > "$W/mp.log" 2>&1 & ;;
  haproxy-cpu) taskset -c 0 haproxy -db -f "$W/haproxy.cfg" > "$W/mp.log" 2>&1 & ;;
  haproxy) haproxy -db -f "$W/haproxy.cfg" > "$W/mp.log" 2>&1 & ;;
esac
PROXY=$!
trap 'kill $PROXY $ORIGIN 2>/dev/null || true' EXIT
for _ in $(seq 60); do h2load -n 1 http://127.0.0.1:18942/ 2>/dev/null | grep -q "1 succeeded" && break; sleep 1; done
served() { curl -s http://127.0.0.1:18941/__origin_status | awk '/^ [0-9]/{print $3}'; }
H2LOAD="h2load -c 10 -m 10"
if [ "$MODE" = callgrind ] || [ "$MODE" = haproxy-callgrind ]; then
  $H2LOAD -n 1000 http://127.0.0.1:18942/ > /dev/null
  callgrind_control -i on $PROXY > /dev/null 2>&1
  r0=$(served)
  $H2LOAD -n 10000 http://127.0.0.1:18942/ | grep -E "^requests:"
  r1=$(served)
  callgrind_control -i off $PROXY > /dev/null 2>&1
  callgrind_control -d $PROXY > /dev/null 2>&1
  sleep 1
  kill $PROXY; wait $PROXY || true
  f=$(ls -S "$W"/cg.* | head -1)
  ir=$(callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  callgrind_annotate "$f" 2>/dev/null | grep -E '^Events shown|PROGRAM TOTALS'
  reqs=$((r1 - r0 - 1))
  echo "requests=$reqs Ir=$ir Ir/req=$((ir / reqs)) profile=$f"
elif [ "$MODE" = cpu ] || [ "$MODE" = haproxy-cpu ]; then
  # Wall-clock class numbers (CPU time of every thread, user and system): noisy on a shared machine.
  ticks() { cat /proc/$PROXY/task/*/stat | awk '{u+=$14; s+=$15; f+=$10} END {print u, s, f}'; }
  csw() { cat /proc/$PROXY/task/*/status | awk '/^voluntary_ctxt_switches/ {v+=$2} /^nonvoluntary_ctxt_switches/ {nv+=$2} END {print v+nv}'; }
  csws() { for t in /proc/$PROXY/task/*; do echo "$(cat $t/comm) $(awk '/ctxt_switches/ {printf "%s %s ", $1, $2}' $t/status)"; done; }
  taskset -c 1 $H2LOAD -n 20000 http://127.0.0.1:18942/ > /dev/null
  read -r u0 s0 f0 < <(ticks)
  c0=$(csw)
  csws
  r0=$(served)
  perf stat -x, -o "$W/perf.txt" -e 'syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_sendmsg,syscalls:sys_enter_writev,syscalls:sys_enter_readv,syscalls:sys_enter_recvmsg,syscalls:sys_enter_read,syscalls:sys_enter_write' -p $PROXY &
  PERF=$!
  sleep 0.5
  taskset -c 1 $H2LOAD -n 200000 http://127.0.0.1:18942/ | grep -E "^(requests|finished in):"
  r1=$(served)
  read -r u1 s1 f1 < <(ticks)
  c1=$(csw)
  csws
  kill -INT $PERF; wait $PERF || true
  reqs=$((r1 - r0 - 1))
  hz=$(getconf CLK_TCK)
  awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n=$reqs -v hz=$hz 'BEGIN { printf "user %.2f us/req  sys %.2f us/req  total %.2f us/req (%d requests)\n", u*1e6/hz/n, s*1e6/hz/n, (u+s)*1e6/hz/n, n }'
  awk -v f=$((f1 - f0)) -v c=$((c1 - c0)) -v n=$reqs 'BEGIN { printf "minor faults %.4f/req  context switches %.4f/req\n", f/n, c/n }'
  awk -F, -v n=$reqs '$3 ~ /sys_enter/ && $1 > 0 { sub("syscalls:sys_enter_", "", $3); printf "%-12s %.3f/req (full speed, perf)\n", $3, $1/n }' "$W/perf.txt"
else
  $H2LOAD -n 2000 http://127.0.0.1:18942/ > /dev/null
  strace -c -f -p $PROXY -o "$W/strace.txt" &
  ST=$!
  sleep 1
  r0=$(served)
  $H2LOAD -n 20000 http://127.0.0.1:18942/ | grep -E "^requests:"
  r1=$(served)
  kill -INT $ST; wait $ST || true
  reqs=$((r1 - r0 - 1))
  awk -v n=$reqs '$NF ~ /^[a-z_0-9]+$/ && $4 ~ /^[0-9]+$/ { e = ($5 ~ /^[0-9]+$/) ? $5 : 0; printf "%-16s %8.3f calls/req  %6.3f errors/req\n", $NF, $4/n, e/n }
                  /^-+ / {next} /total/ { printf "%-16s %8.3f calls/req\n", "total", $3/n }' "$W/strace.txt"
  echo "requests=$reqs trace=$W/strace.txt"
fi
