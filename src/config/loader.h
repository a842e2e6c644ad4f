#pragma once
// Config text -> validated Snapshot. The entry point for `marchproxy check`, for `ingress --config`
// (start-up and every reload) and for the proxy's on-disk cache of the manager's last snapshot.
//
// YAML and JSON go through one decoder (yaml-cpp reads both), so a file written by hand and a
// snapshot sent by the manager obey exactly the same rules. Loading never throws: every problem,
// from a missing file to a YAML syntax error to a route naming an unknown cluster, comes back as a
// Diagnostic with the line and field path, and all of them are collected in one pass.
//
// Thread-safety: the functions are re-entrant and share no state; call them from any thread (a
// reload runs them off the workers, then publishes the snapshot).
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "config/diagnostic.h"
#include "config/model.h"
#include "config/validate.h"  // validate()
#include "config/writer.h"    // toJson(), computeHash(), summary()

namespace marchproxy::config {

inline constexpr size_t kMaxConfigBytes = 16 << 20;

struct LoadResult {
  std::shared_ptr<Snapshot> snapshot;  // null when errors is non-empty
  std::vector<Diagnostic> errors;      // sorted by line
  std::vector<Diagnostic> warnings;    // e.g. a cluster no route uses, a route that can never match

  bool ok() const { return snapshot != nullptr; }
};

// Reads and loads a file. Missing, unreadable, not a regular file or larger than kMaxConfigBytes are
// diagnostics too (with line 0).
LoadResult loadFile(const std::string& path);

// Loads YAML or JSON text: decodes it (types, unknown fields, syntax), then runs validate(). On
// success snapshot->hash is computeHash() of the result.
LoadResult loadString(std::string_view text);

}  // namespace marchproxy::config
