#pragma once
// Access log: one JSON object per line. Each worker has its own writer and buffer and writes whole
// lines with a single write(2) to an O_APPEND descriptor, so lines from different workers never
// interleave and the request path never blocks on a lock.
#include <cstdint>
#include <string>
#include <string_view>

namespace marchproxy::proxy::server {

struct AccessEntry {
  std::string_view request_id, client, method, host, path, protocol, route, cluster, upstream, error;
  int status = 0;
  uint64_t bytes_in = 0, bytes_out = 0;
  double duration_ms = 0, upstream_ms = -1;  // upstream_ms < 0: no upstream involved
  int64_t unix_ms = 0;
};

class AccessLogWriter {
 public:
  // path "-" is stdout. Throws std::system_error if the file cannot be opened (start-up/reload only).
  explicit AccessLogWriter(const std::string& path);
  ~AccessLogWriter();
  AccessLogWriter(const AccessLogWriter&) = delete;
  AccessLogWriter& operator=(const AccessLogWriter&) = delete;

  void append(const AccessEntry& e);
  void flush();

 private:
  int fd_ = -1;
  bool owns_fd_ = false;
  size_t flush_at_;
  std::string buf_;
};

void appendJsonString(std::string& out, std::string_view s);

}  // namespace marchproxy::proxy::server
