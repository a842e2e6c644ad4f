#include "manager/http/static_files.h"

#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>

namespace marchproxy::manager::http {

namespace fs = std::filesystem;

namespace {

std::optional<std::string> readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool isRegular(const std::string& p) {
  std::error_code ec;
  return fs::is_regular_file(p, ec);
}

// Canonical path of an existing file, or empty.
std::string canonical(const std::string& p) {
  char buf[PATH_MAX];
  return ::realpath(p.c_str(), buf) ? std::string(buf) : std::string();
}

bool acceptsGzip(const Request& req) {
  return req.header("accept-encoding").find("gzip") != std::string::npos;
}

const std::string kSecurityCsp =
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "font-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

}  // namespace

std::string contentTypeFor(const std::string& name) {
  auto dot = name.rfind('.');
  std::string ext = dot == std::string::npos ? "" : name.substr(dot + 1);
  for (auto& ch : ext) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (ext == "html") return "text/html; charset=utf-8";
  if (ext == "js" || ext == "mjs") return "text/javascript; charset=utf-8";
  if (ext == "css") return "text/css; charset=utf-8";
  if (ext == "json" || ext == "map") return "application/json";
  if (ext == "webmanifest") return "application/manifest+json";
  if (ext == "svg") return "image/svg+xml";
  if (ext == "png") return "image/png";
  if (ext == "ico") return "image/x-icon";
  if (ext == "jpg" || ext == "jpeg") return "image/jpeg";
  if (ext == "webp") return "image/webp";
  if (ext == "woff2") return "font/woff2";
  if (ext == "woff") return "font/woff";
  if (ext == "txt") return "text/plain; charset=utf-8";
  if (ext == "wasm") return "application/wasm";
  return "application/octet-stream";
}

std::string defaultUiDir() {
  if (isRegular("web/dist/index.html")) return "web/dist";
  char exe[PATH_MAX];
  ssize_t n = ::readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n > 0) {
    exe[n] = 0;
    fs::path p = fs::path(exe).parent_path() / "../../../web/dist";
    if (isRegular((p / "index.html").string())) return p.lexically_normal().string();
  }
  if (isRegular("/usr/share/marchproxy/web/index.html")) return "/usr/share/marchproxy/web";
  return "";
}

StaticFiles::StaticFiles(std::string dir) {
  if (!dir.empty()) dir_ = canonical(dir);
}

std::optional<Response> StaticFiles::serve(const Request& req) const {
  if (req.method != "GET") return std::nullopt;
  const std::string& path = req.path;
  if (path == "/api" || path.rfind("/api/", 0) == 0) return std::nullopt;
  if (dir_.empty() || !isRegular(dir_ + "/index.html"))
    throw ApiError(404, "ui-not-built",
                   "the web UI is not available: build it (npm run build in web/) and start the manager with --ui-dir");
  // The decoded path must be plain segments: no "..", ".", empty runs, backslashes or control bytes.
  bool clean = !path.empty() && path[0] == '/';
  std::string rel;
  for (std::size_t i = 1; clean && i <= path.size(); ++i) {
    auto j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    std::string seg = path.substr(i, j - i);
    if (seg == "." || seg == ".." || (seg.empty() && j != path.size())) clean = false;
    for (char ch : seg)
      if (static_cast<unsigned char>(ch) < 0x20 || ch == '\\' || ch == 0x7f) clean = false;
    if (!seg.empty()) rel += (rel.empty() ? "" : "/") + seg;
    i = j;
  }
  if (!clean) throw ApiError(404, "not-found", "no such file");

  Response r;
  std::string file = rel.empty() ? "index.html" : rel;
  std::string full = dir_ + "/" + file;
  std::string real = isRegular(full) ? canonical(full) : "";
  if (!real.empty() && real.rfind(dir_ + "/", 0) != 0) real.clear();  // a symlink pointing outside
  bool spa = false;
  if (real.empty()) {
    // Only extensionless paths (client-side routes) fall back to the app; a missing asset is a 404 so
    // a stale page does not parse HTML as JavaScript.
    auto last = file.substr(file.rfind('/') == std::string::npos ? 0 : file.rfind('/') + 1);
    if (last.find('.') != std::string::npos || rel.rfind("assets/", 0) == 0)
      throw ApiError(404, "not-found", "no such file: /" + rel);
    file = "index.html";
    real = canonical(dir_ + "/index.html");
    spa = true;
  }
  bool html = file == "index.html" || spa;
  std::optional<std::string> body;
  // The pre-compressed sibling obeys the same containment rule as the file itself (a .gz symlink
  // must not serve something outside the UI directory).
  std::string gz = isRegular(real + ".gz") ? canonical(real + ".gz") : "";
  if (acceptsGzip(req) && !gz.empty() && gz.rfind(dir_ + "/", 0) == 0) {
    body = readFile(gz);
    if (body) r.headers.emplace_back("Content-Encoding", "gzip");
  }
  if (!body) body = readFile(real);
  if (!body) throw ApiError(404, "not-found", "no such file: /" + rel);
  r.status = 200;
  r.body = std::move(*body);
  r.content_type = contentTypeFor(file);
  r.headers.emplace_back("Vary", "Accept-Encoding");
  if (rel.rfind("assets/", 0) == 0) {
    r.headers.emplace_back("Cache-Control", "public, max-age=31536000, immutable");  // content-hashed names
  } else {
    r.headers.emplace_back("Cache-Control", "no-cache");
  }
  if (html) {
    r.headers.emplace_back("Content-Security-Policy", kSecurityCsp);
    r.headers.emplace_back("X-Frame-Options", "DENY");
    r.headers.emplace_back("Referrer-Policy", "no-referrer");
  }
  return r;
}

}  // namespace marchproxy::manager::http
