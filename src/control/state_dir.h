#pragma once
// The proxy's state directory under a manager (docs/control-protocol.md, "Applying on the proxy"):
//
//   <state-dir>/identity/{key.pem,token,cert.pem,ca.pem,proxy.json}  0600, written atomically
//   <state-dir>/snapshots/<version>/config.json, manager.json (the answer without files) + files
//   <state-dir>/current -> snapshots/<version>     the last applied (last-known-good) snapshot
//   <state-dir>/rejected/<version>/                  snapshots the proxy refused, for the operator
//
// Pure filesystem code (no network, no config loading); the agent calls it on the control thread.
#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>

#include "common/base/result.h"

namespace marchproxy::control {

// True when `name` may be written below a snapshot directory: relative, no "..", no empty or "."
// components, no NUL or backslash, not config.json or manager.json (the agent's own), at most 255 bytes.
bool isSafeFileName(const std::string& name);

// Writes `content` to `path` (0600) through a temporary file and rename(). Returns an error text.
std::string writeFileAtomic(const std::filesystem::path& path, const std::string& content);

class StateDir {
 public:
  explicit StateDir(std::filesystem::path root) : root_(std::move(root)) {}

  // Creates the directory tree (0700). Returns an error text, empty when fine.
  std::string ensure() const;

  const std::filesystem::path& root() const { return root_; }
  std::filesystem::path snapshotDir(uint64_t version) const;
  std::filesystem::path currentConfig() const { return root_ / "current" / "config.json"; }
  bool hasCurrent() const;
  // The version `current` points at, when it points at snapshots/<version>.
  std::optional<uint64_t> currentVersion() const;

  // Writes config.json and the files (names as in the snapshot's `files`) into a fresh
  // snapshots/<version>/. Refuses unsafe names before writing anything. Returns the directory.
  Result<std::filesystem::path> materialise(uint64_t version, const std::string& config_json,
                                            const std::map<std::string, std::string>& files) const;

  // Points `current` at snapshots/<version> (a new symlink renamed over the old one), then deletes
  // every snapshot directory but this one and the one `current` pointed at before. Error text or "".
  std::string switchCurrent(uint64_t version) const;

  // Moves snapshots/<version> to rejected/<version> (replacing an older rejection of it).
  void reject(uint64_t version) const;

  // identity/<name>, 0600.
  std::string writeIdentity(const std::string& name, const std::string& content) const;
  std::optional<std::string> readIdentity(const std::string& name) const;
  void removeIdentity(const std::string& name) const;

 private:
  std::filesystem::path root_;
};

}  // namespace marchproxy::control
