#pragma once
// `marchproxy egress --config FILE` (or `--manager URL`, src/control): runs the egress forward proxy until SIGTERM/SIGINT.
//
// Threads:
//   main (control) — signals, file watch, reloads. Builds a Runtime per config and posts it to
//                    every worker; each worker then re-checks its open tunnels (revocation).
//   admin          — /ready /live /metrics /config on its own port.
//   worker-N       — listeners (SO_REUSEPORT), sessions (HTTP proxy, SOCKS5), tunnels, resolver,
//                    counters. Nothing on a worker is shared with another worker.
#include <optional>
#include <string>

#include "control/agent.h"

namespace marchproxy::egress {

struct Options {
  std::string config_path;
  bool watch = true;  // reload on file change as well as on SIGHUP
  // --manager: the config comes from the manager (src/control; config_path is then empty).
  std::optional<control::AgentOptions> manager;
};

// Returns the process exit code.
int run(const Options& options);

}  // namespace marchproxy::egress
