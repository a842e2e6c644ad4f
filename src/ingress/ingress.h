#pragma once
// Runs the ingress reverse proxy from a config file until SIGTERM/SIGINT (graceful drain).
#include <string>

namespace marchproxy::ingress {

struct Options {
  std::string config_path;
  bool watch = true;  // reload on file change as well as on SIGHUP
};

// Returns the process exit code.
int run(const Options& options);

}  // namespace marchproxy::ingress
