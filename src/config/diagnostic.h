#pragma once
// A problem found in a config: where (line/column in the file when known, and the field path) and
// what. The loader and validate() report every problem they find as one of these, never by throwing.
#include <string>

namespace marchproxy::config {

struct Diagnostic {
  int line = 0, column = 0;  // 1-based; 0 = unknown (snapshots built in code, file-level errors)
  std::string path;          // "clusters[1].endpoints[0].port"; empty for the whole file
  std::string message;       // "must be between 1 and 65535"

  // "line 12: clusters[1].endpoints[0].port: must be between 1 and 65535"; the parts that are
  // unknown are left out.
  std::string toString() const;
};

}  // namespace marchproxy::config
