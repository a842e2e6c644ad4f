#pragma once
// Runs the ingress reverse proxy from a config file, or under a manager (src/control), until
// SIGTERM/SIGINT (graceful drain).
#include <optional>
#include <string>

#include "control/agent.h"

namespace marchproxy::ingress {

struct Options {
  std::string config_path;
  bool watch = true;  // reload on file change as well as on SIGHUP
  // --manager: the config comes from the manager (config_path is then empty); finish()ed options.
  std::optional<control::AgentOptions> manager;
};

// Returns the process exit code.
int run(const Options& options);

}  // namespace marchproxy::ingress
