#include "common/base/duration.h"

#include <cstdint>

namespace marchproxy {

std::optional<Millis> parseDuration(std::string_view text) {
  if (text.empty()) return std::nullopt;
  int64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (text[i] < '0' || text[i] > '9') return std::nullopt;
    int64_t n = 0;
    while (i < text.size() && text[i] >= '0' && text[i] <= '9') {
      n = n * 10 + (text[i] - '0');
      if (n > 1'000'000'000'000LL) return std::nullopt;
      ++i;
    }
    std::string_view unit;
    size_t u = i;
    while (i < text.size() && (text[i] < '0' || text[i] > '9')) ++i;
    unit = text.substr(u, i - u);
    int64_t mult;
    if (unit == "ms") mult = 1;
    else if (unit == "s") mult = 1000;
    else if (unit == "m") mult = 60'000;
    else if (unit == "h") mult = 3'600'000;
    else return std::nullopt;
    total += n * mult;
    if (total > 10'000'000'000'000LL) return std::nullopt;
  }
  return Millis(total);
}

std::string formatDuration(Millis d) {
  auto ms = d.count();
  if (ms == 0) return "0s";
  if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
  if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
  if (ms % 1000 == 0) return std::to_string(ms / 1000) + "s";
  return std::to_string(ms) + "ms";
}

}  // namespace marchproxy
