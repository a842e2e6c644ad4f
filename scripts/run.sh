#!/usr/bin/env bash
# Runs MarchProxy on one machine: installs dependencies, builds the release preset, starts two demo
# upstreams on 127.0.0.1:9001 and :9002 and the ingress on examples/basic.yaml
# (http://127.0.0.1:8080, admin on http://127.0.0.1:9901). Ctrl-C stops everything.
#
# Also starts the manager with the web UI on http://127.0.0.1:8000 (data in build/run-manager; the
# first start prints the generated admin password, or set MARCHPROXY_ADMIN_PASSWORD).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/build_web.sh
cmake --preset release >/dev/null
cmake --build --preset release -j "$(nproc)"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

python3 scripts/demo_upstream.py 9001 app-1 & pids+=($!)
python3 scripts/demo_upstream.py 9002 app-2 & pids+=($!)
mkdir -p build/run-manager
build/release/src/cli/marchproxy manager --listen 127.0.0.1:8000 --data-dir build/run-manager --ui-dir web/dist & pids+=($!)

cat <<MSG
MarchProxy ingress starting on http://127.0.0.1:8080 (admin: http://127.0.0.1:9901/metrics)
  web UI: http://127.0.0.1:8000/ (manager; user admin)
  try:    curl -s http://127.0.0.1:8080/
  reload: edit examples/basic.yaml (or kill -HUP the process)
MSG
build/release/src/cli/marchproxy ingress --config examples/basic.yaml & pids+=($!)
wait "${pids[-1]}"
