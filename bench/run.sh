#!/usr/bin/env bash
# MarchProxy ingress beside nginx and HAProxy, side by side, printing ratios. See bench/README.md.
#
#   bench/run.sh [--scenario h1|h1-new|idle|tls|tls-new|tls-new-p384|h2|all] [--rounds 3] [--duration 10] [--workers 1]
#                [--proxies nginx,haproxy,marchproxy] [--marchproxy PATH] [--help for the rest]
#
# This wrapper checks the tools, raises the open-file limit, gives the harness a work directory
# under bench/work/, and on exit ends by PID every process the harness recorded in its pid file
# (checking each PID's start time, so a recycled PID is never signalled). It builds nothing.
set -euo pipefail

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo_dir=$(dirname "$bench_dir")
python=/usr/bin/python3
[[ -x $python ]] || python=$(command -v python3)

if [[ " $* " == *" -h "* || " $* " == *" --help "* ]]; then
  exec "$python" "$bench_dir/lib/harness.py" --work-dir /nonexistent --help
fi

missing=()
for tool in wrk taskset nginx haproxy; do
  command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || missing+=("$tool")
done
if ((${#missing[@]})); then
  echo "missing: ${missing[*]} (Debian: apt-get install wrk util-linux nginx-light haproxy)" >&2
  exit 1
fi
command -v gnuplot >/dev/null 2>&1 || echo "note: gnuplot not found, no chart will be drawn" >&2
export PATH=$PATH:/usr/sbin

# The idle scenario holds 10,000 connections in the client and in the proxy: each needs the fds.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if (($(ulimit -n) < 10300)); then
  echo "warning: open-file limit $(ulimit -n) is below what 10,000 idle connections need" >&2
fi

mkdir -p "$bench_dir/work"
work_dir=$(mktemp -d "$bench_dir/work/run.XXXXXX")
pid_file=$work_dir/pids
harness_pid=

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n $harness_pid ]] && kill -0 "$harness_pid" 2>/dev/null; then
    kill -TERM "$harness_pid" 2>/dev/null || true
    wait "$harness_pid" 2>/dev/null || true
  fi
  if [[ -s $pid_file ]]; then
    local pid start name now
    while read -r pid start name; do
      [[ -r /proc/$pid/stat ]] || continue
      # Field 22 (start time) of /proc/PID/stat, counted after the ")" that ends the command name.
      now=$(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $20}')
      if [[ $now == "$start" ]]; then
        echo "cleanup: ending leftover $name (pid $pid)" >&2
        kill -KILL "$pid" 2>/dev/null || true
      fi
    done <"$pid_file"
  fi
  if ((rc == 0)) && [[ ! -e $work_dir/KEEP && -z ${BENCH_KEEP_WORK:-} ]]; then
    rm -rf "$work_dir"
  else
    echo "logs and configs kept in ${work_dir#"$repo_dir"/}" >&2
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

"$python" "$bench_dir/lib/harness.py" --work-dir "$work_dir" --pid-file "$pid_file" \
  --invocation "bench/run.sh $*" "$@" &
harness_pid=$!
wait "$harness_pid"
