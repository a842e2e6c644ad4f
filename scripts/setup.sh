#!/usr/bin/env bash
# Installs every build, test and benchmark dependency of MarchProxy from Debian packages.
# Idempotent: installs only what is missing, and says nothing when everything is present.
set -euo pipefail

PKGS=(
  # build
  cmake ninja-build g++ ccache pkg-config
  clang-14 clang libclang-rt-14-dev llvm-14      # libFuzzer + sanitizer runtimes
  libboost1.81-dev libssl-dev libfmt-dev libspdlog-dev nlohmann-json3-dev
  libyaml-cpp-dev libcli11-dev libre2-dev libgtest-dev libgmock-dev libbenchmark-dev
  libnghttp2-dev libc-ares-dev                   # HTTP/2 (ingress), async DNS (egress)
  libsqlite3-dev libpq-dev libcrypt-dev          # manager storage and password hashing
  libbpf-dev bpftool gcc-multilib                # XDP/TC fast path (gcc-multilib: /usr/include/asm)
  # tests
  python3 curl procps iproute2 prometheus
  postgresql-15 openssl iperf3 nftables          # real PostgreSQL for manager tests; TLS test certs
  python3-websockets redis-server                # WebSocket client for the ingress tests; Redis for global rate limits
  testssl.sh bsdextrautils                       # TLS listener audit (tests/integration/test_testssl.py; hexdump)
  # benchmarks (peers and load generators)
  nginx-light haproxy wrk nghttp2-client gnuplot-nox
  squid tinyproxy ethtool                        # egress bench peers (forward proxies); ethtool for bench/xdp.py
  python3-h2 python3-hyperframe python3-grpcio   # HTTP/2 frame-level abuse tests, gRPC end-to-end tests
  chromium                                       # web UI end-to-end tests (tests/web)
)
# The web UI (web/) builds with Node 20 + npm. Node from elsewhere (e.g. nodesource, which bundles
# npm) is kept; Debian's packages only when `node` is missing.
command -v node >/dev/null 2>&1 || PKGS+=(nodejs npm)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  # Wait for a dpkg lock held by another install (parallel worktrees, unattended upgrades).
  APT=(apt-get -o DPkg::Lock::Timeout=600)
  $SUDO "${APT[@]}" update -qq
  $SUDO "${APT[@]}" install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The peers are packaged as services; we run our own instances with our own configs.
  for s in nginx haproxy prometheus postgresql squid tinyproxy; do
    $SUDO systemctl disable --now "$s" >/dev/null 2>&1 || true
    $SUDO service "$s" stop >/dev/null 2>&1 || true
  done
fi
