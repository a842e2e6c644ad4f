#pragma once
// Process-wide logging (spdlog). Operational messages go to stderr; access logs have their own
// writer (src/proxy/server/access_log.h). Never log secrets or full request headers.
#include <spdlog/spdlog.h>

namespace marchproxy::log {

// Sets the level from a name (trace, debug, info, warn, error, off). Returns false if unknown.
bool setLevel(const std::string& level);
void init();

}  // namespace marchproxy::log
