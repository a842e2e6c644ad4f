#!/usr/bin/env bash
# Runs the whole MarchProxy system on one machine: installs dependencies, builds the `dist` preset
# (optimised; licences verify only against the built-in vendor key, unlike the test builds' `release`)
# and the web UI, then `marchproxy up` — the manager on SQLite with the web UI
# (http://127.0.0.1:8000), one ingress (http://localhost:8080) and one egress (127.0.0.1:3128, SOCKS5
# :1080) registered to it, and a demo upstream the ingress routes to. Data in ./marchproxy-data; the
# first run prints the generated admin password once. Ctrl-C stops everything. Extra arguments go to
# `marchproxy up` (see `marchproxy up --help`, docs/operations.md).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
bash scripts/build_web.sh
cmake --preset dist >/dev/null
cmake --build --preset dist -j "$(nproc)"

exec build/dist/src/cli/marchproxy up --ui-dir web/dist "$@"
