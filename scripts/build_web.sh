#!/usr/bin/env bash
# Builds the web UI (web/ → web/dist, which the manager serves). Quiet and idempotent like setup.sh:
# `npm ci` only when node_modules is missing or older than package-lock.json, `npm run build` only
# when a source (or docs/openapi.json, which the API types are generated from) is newer than the build.
set -euo pipefail
cd "$(dirname "$0")/../web"

stamp=node_modules/.package-lock.json   # npm writes it on every install
if [ ! -f "$stamp" ] || [ package-lock.json -nt "$stamp" ]; then
  echo "web: npm ci"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi

out=dist/index.html
if [ ! -f "$out" ] || [ -n "$(find src index.html public package-lock.json vite.config.ts tsconfig.json ../docs/openapi.json -newer "$out" -print -quit)" ]; then
  echo "web: npm run build"
  log=$(mktemp)
  if ! npm run build >"$log" 2>&1; then cat "$log"; rm -f "$log"; exit 1; fi
  rm -f "$log"
fi
