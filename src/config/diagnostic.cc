#include "config/diagnostic.h"

namespace marchproxy::config {

std::string Diagnostic::toString() const {
  std::string out;
  if (line > 0) out += "line " + std::to_string(line) + ": ";
  if (!path.empty()) out += path + ": ";
  out += message;
  return out;
}

}  // namespace marchproxy::config
