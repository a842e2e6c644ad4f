#include "ingress/ingress.h"

#include "common/base/log.h"

namespace marchproxy::ingress {

int run(const Options& options) {
  spdlog::error("ingress: not built yet ({})", options.config_path);
  return 1;
}

}  // namespace marchproxy::ingress
