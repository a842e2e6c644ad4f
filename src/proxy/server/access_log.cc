#include "proxy/server/access_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>

#include <fmt/format.h>

namespace marchproxy::proxy::server {

AccessLogWriter::AccessLogWriter(const std::string& path) {
  if (path == "-") {
    fd_ = STDOUT_FILENO;
    flush_at_ = 3500;  // below PIPE_BUF: a pipe write of whole lines stays atomic
  } else {
    fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (fd_ < 0) throw std::system_error(errno, std::generic_category(), "access log " + path);
    owns_fd_ = true;
    flush_at_ = 32 * 1024;
  }
  buf_.reserve(flush_at_ + 1024);
}

AccessLogWriter::~AccessLogWriter() {
  flush();
  if (owns_fd_) ::close(fd_);
}

void appendJsonString(std::string& out, std::string_view s) {
  out.push_back('"');
  for (unsigned char c : s) {
    switch (c) {
      case '"': out.append("\\\""); break;
      case '\\': out.append("\\\\"); break;
      case '\n': out.append("\\n"); break;
      case '\r': out.append("\\r"); break;
      case '\t': out.append("\\t"); break;
      default:
        if (c < 0x20 || c >= 0x7f) fmt::format_to(std::back_inserter(out), "\\u{:04x}", c);
        else out.push_back(static_cast<char>(c));
    }
  }
  out.push_back('"');
}

void AccessLogWriter::append(const AccessEntry& e) {
  auto field = [this](std::string_view k, std::string_view v) {
    buf_.push_back('"');
    buf_.append(k);
    buf_.append("\":");
    appendJsonString(buf_, v);
    buf_.push_back(',');
  };
  fmt::format_to(std::back_inserter(buf_), "{{\"ts_ms\":{},", e.unix_ms);
  field("request_id", e.request_id);
  field("client", e.client);
  field("method", e.method);
  field("host", e.host);
  field("path", e.path);
  field("protocol", e.protocol);
  field("route", e.route);
  field("cluster", e.cluster);
  field("upstream", e.upstream);
  if (!e.error.empty()) field("error", e.error);
  fmt::format_to(std::back_inserter(buf_),
                 "\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":{:.3f}", e.status, e.bytes_in,
                 e.bytes_out, e.duration_ms);
  if (e.upstream_ms >= 0) fmt::format_to(std::back_inserter(buf_), ",\"upstream_ms\":{:.3f}", e.upstream_ms);
  buf_.append("}\n");
  if (buf_.size() >= flush_at_) flush();
}

void AccessLogWriter::flush() {
  size_t off = 0;
  while (off < buf_.size()) {
    ssize_t n = ::write(fd_, buf_.data() + off, buf_.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      break;  // a full disk must not stop the proxy; lines are dropped
    }
    off += static_cast<size_t>(n);
  }
  buf_.clear();
}

}  // namespace marchproxy::proxy::server
