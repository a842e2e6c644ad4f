#include "ingress/ingress.h"

#include <csignal>

#include "common/base/log.h"
#include "proxy/server/server.h"

namespace marchproxy::ingress {

int run(const Options& options) {
  // Peers that vanish mid-write must surface as EPIPE on that connection, not kill the process.
  std::signal(SIGPIPE, SIG_IGN);
  proxy::server::Server server({options.config_path, options.watch});
  return server.run();
}

}  // namespace marchproxy::ingress
