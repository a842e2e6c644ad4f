#pragma once
// `marchproxy egress --config FILE`: runs the egress forward proxy until SIGTERM/SIGINT.
//
// Threads:
//   main (control) — signals, file watch, reloads. Builds a Runtime per config and posts it to
//                    every worker; each worker then re-checks its open tunnels (revocation).
//   admin          — /ready /live /metrics /config on its own port.
//   worker-N       — listeners (SO_REUSEPORT), sessions (HTTP proxy, SOCKS5), tunnels, resolver,
//                    counters. Nothing on a worker is shared with another worker.
#include <string>

namespace marchproxy::egress {

struct Options {
  std::string config_path;
  bool watch = true;  // reload on file change as well as on SIGHUP
};

// Returns the process exit code.
int run(const Options& options);

}  // namespace marchproxy::egress
