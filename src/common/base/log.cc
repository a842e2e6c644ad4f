#include "common/base/log.h"

#include <spdlog/sinks/stdout_sinks.h>

namespace marchproxy::log {

void init() {
  auto logger = spdlog::stderr_logger_mt("marchproxy");
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e%z %^%l%$ [%t] %v");
  spdlog::set_default_logger(logger);
}

bool setLevel(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  if (lvl == spdlog::level::off && level != "off") return false;
  spdlog::set_level(lvl);
  return true;
}

}  // namespace marchproxy::log
