#include "control/state_dir.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

namespace marchproxy::control {

namespace fs = std::filesystem;

bool isSafeFileName(const std::string& name) {
  if (name.empty() || name.size() > 255 || name == "config.json" || name == "manager.json") return false;
  if (name.front() == '/' || name.find('\\') != std::string::npos || name.find('\0') != std::string::npos)
    return false;
  size_t start = 0;
  for (;;) {
    const size_t slash = name.find('/', start);
    const std::string_view part = std::string_view(name).substr(start, slash == std::string::npos ? slash : slash - start);
    if (part.empty() || part == "." || part == "..") return false;
    if (slash == std::string::npos) return true;
    start = slash + 1;
  }
}

std::string writeFileAtomic(const fs::path& path, const std::string& content) {
  const fs::path tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
  if (fd < 0) return fmt::format("cannot write {}: {}", tmp.string(), std::strerror(errno));
  ::fchmod(fd, 0600);  // an existing file keeps its mode under O_TRUNC
  size_t off = 0;
  while (off < content.size()) {
    ssize_t n = ::write(fd, content.data() + off, content.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      std::string err = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      return fmt::format("cannot write {}: {}", tmp.string(), err);
    }
    off += static_cast<size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    std::string err = std::strerror(errno);
    ::unlink(tmp.c_str());
    return fmt::format("cannot rename {} to {}: {}", tmp.string(), path.string(), err);
  }
  return {};
}

namespace {

std::string makeDir(const fs::path& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return fmt::format("cannot create {}: {}", dir.string(), ec.message());
  fs::permissions(dir, fs::perms::owner_all, fs::perm_options::replace, ec);
  return {};
}

std::optional<uint64_t> parseVersion(std::string_view s) {
  uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || s.empty()) return std::nullopt;
  return v;
}

}  // namespace

std::string StateDir::ensure() const {
  for (const char* sub : {"", "identity", "snapshots", "rejected"})
    if (auto err = makeDir(*sub ? root_ / sub : root_); !err.empty()) return err;
  return {};
}

fs::path StateDir::snapshotDir(uint64_t version) const { return root_ / "snapshots" / std::to_string(version); }

bool StateDir::hasCurrent() const {
  std::error_code ec;
  return fs::is_regular_file(currentConfig(), ec);
}

std::optional<uint64_t> StateDir::currentVersion() const {
  std::error_code ec;
  const fs::path target = fs::read_symlink(root_ / "current", ec);
  if (ec) return std::nullopt;
  return parseVersion(target.filename().string());
}

Result<fs::path> StateDir::materialise(uint64_t version, const std::string& config_json,
                                       const std::map<std::string, std::string>& files) const {
  for (const auto& [name, content] : files)
    if (!isSafeFileName(name)) return Error{fmt::format("files: unsafe file name \"{}\"", name)};
  const fs::path dir = snapshotDir(version);
  std::error_code ec;
  fs::remove_all(dir, ec);  // a partial directory from an interrupted earlier attempt
  if (auto err = makeDir(dir); !err.empty()) return Error{err};
  for (const auto& [name, content] : files) {
    const fs::path p = dir / name;
    if (auto err = makeDir(p.parent_path()); !err.empty()) return Error{err};
    if (auto err = writeFileAtomic(p, content); !err.empty()) return Error{err};
  }
  if (auto err = writeFileAtomic(dir / "config.json", config_json); !err.empty()) return Error{err};
  return dir;
}

std::string StateDir::switchCurrent(uint64_t version) const {
  const std::optional<uint64_t> previous = currentVersion();
  const fs::path link = root_ / "current", tmp = root_ / "current.tmp";
  std::error_code ec;
  fs::remove(tmp, ec);
  fs::create_directory_symlink(fs::path("snapshots") / std::to_string(version), tmp, ec);
  if (ec) return fmt::format("cannot create {}: {}", tmp.string(), ec.message());
  if (::rename(tmp.c_str(), link.c_str()) != 0)
    return fmt::format("cannot rename {} to {}: {}", tmp.string(), link.string(), std::strerror(errno));
  for (const auto& e : fs::directory_iterator(root_ / "snapshots", ec)) {
    auto v = parseVersion(e.path().filename().string());
    if (v && (*v == version || (previous && *v == *previous))) continue;
    std::error_code rec;
    fs::remove_all(e.path(), rec);
  }
  return {};
}

void StateDir::reject(uint64_t version) const {
  const fs::path to = root_ / "rejected" / std::to_string(version);
  std::error_code ec;
  fs::remove_all(to, ec);
  makeDir(root_ / "rejected");
  fs::rename(snapshotDir(version), to, ec);
}

std::string StateDir::writeIdentity(const std::string& name, const std::string& content) const {
  if (auto err = makeDir(root_ / "identity"); !err.empty()) return err;
  return writeFileAtomic(root_ / "identity" / name, content);
}

std::optional<std::string> StateDir::readIdentity(const std::string& name) const {
  std::ifstream in(root_ / "identity" / name, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void StateDir::removeIdentity(const std::string& name) const {
  std::error_code ec;
  fs::remove(root_ / "identity" / name, ec);
}

}  // namespace marchproxy::control
