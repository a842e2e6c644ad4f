#pragma once
// Serves the built web UI (web/dist) from the manager: correct content types, hashed assets cached
// for a year, index.html revalidated, a single-page-app fallback (any other GET that is not an API
// path gets index.html), precompressed `.gz` siblings when the client accepts gzip, and no way out
// of the directory (`..`, symlinks pointing outside, NUL bytes are refused).
#include <optional>
#include <string>

#include "manager/http/message.h"

namespace marchproxy::manager::http {

class StaticFiles {
 public:
  // `dir` empty = the UI is not served (every GET that is not an API route is 404).
  explicit StaticFiles(std::string dir);
  // The answer for a GET the router did not match, or nullopt when this is not a UI path
  // (`/api/…`, or not a GET) and the caller's 404 stands.
  std::optional<Response> serve(const Request& req) const;
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;  // canonical, no trailing slash
};

// Where the UI is when --ui-dir / MARCHPROXY_UI_DIR are not given: ./web/dist, then the repository's
// web/dist next to a build tree (<exe>/../../../web/dist), then /usr/share/marchproxy/web.
std::string defaultUiDir();

// The Content-Type for a file name by its extension.
std::string contentTypeFor(const std::string& name);

}  // namespace marchproxy::manager::http
