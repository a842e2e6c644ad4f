#include "manager/metrics.h"

#include <fmt/format.h>

namespace marchproxy::manager {

namespace {
// The method label comes from the client, before authentication: only the methods the API knows
// get their own series, anything else is "other" (otherwise each invented method is a new series).
std::string methodLabel(const std::string& method) {
  for (const char* m : {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
    if (method == m) return method;
  return "other";
}
}  // namespace

void Metrics::request(const std::string& route, const std::string& method, int status, double seconds) {
  std::lock_guard g(mu_);
  ++requests_[{route, methodLabel(method), status}];
  auto& h = latency_[route];
  for (std::size_t i = 0; i < kBuckets.size(); ++i)
    if (seconds <= kBuckets[i]) ++h.buckets[i];
  ++h.count;
  h.sum += seconds;
}

void Metrics::login(bool ok) {
  std::lock_guard g(mu_);
  ++(ok ? logins_ok_ : logins_failed_);
}

std::string Metrics::render(store::Db& db, bool db_up) {
  std::string extra;  // sources_ is fixed after start-up; each source takes its own locks
  for (const auto& fn : sources_) extra += fn();
  std::string out;
  auto pool = db.stats();
  std::lock_guard g(mu_);
  out += "# HELP marchproxy_manager_requests_total API requests by route pattern, method and status.\n";
  out += "# TYPE marchproxy_manager_requests_total counter\n";
  for (const auto& [k, v] : requests_)
    out += fmt::format("marchproxy_manager_requests_total{{route=\"{}\",method=\"{}\",status=\"{}\"}} {}\n",
                       std::get<0>(k), std::get<1>(k), std::get<2>(k), v);
  out += "# HELP marchproxy_manager_request_duration_seconds API request latency by route pattern.\n";
  out += "# TYPE marchproxy_manager_request_duration_seconds histogram\n";
  for (const auto& [route, h] : latency_) {
    for (std::size_t i = 0; i < kBuckets.size(); ++i)
      out += fmt::format("marchproxy_manager_request_duration_seconds_bucket{{route=\"{}\",le=\"{}\"}} {}\n", route,
                         kBuckets[i], h.buckets[i]);
    out += fmt::format("marchproxy_manager_request_duration_seconds_bucket{{route=\"{}\",le=\"+Inf\"}} {}\n", route,
                       h.count);
    out += fmt::format("marchproxy_manager_request_duration_seconds_sum{{route=\"{}\"}} {}\n", route, h.sum);
    out += fmt::format("marchproxy_manager_request_duration_seconds_count{{route=\"{}\"}} {}\n", route, h.count);
  }
  out += "# HELP marchproxy_manager_logins_total Login attempts by result.\n";
  out += "# TYPE marchproxy_manager_logins_total counter\n";
  out += fmt::format("marchproxy_manager_logins_total{{result=\"ok\"}} {}\n", logins_ok_);
  out += fmt::format("marchproxy_manager_logins_total{{result=\"failed\"}} {}\n", logins_failed_);
  out += "# HELP marchproxy_manager_db_pool_connections Database connections open and in use.\n";
  out += "# TYPE marchproxy_manager_db_pool_connections gauge\n";
  out += fmt::format("marchproxy_manager_db_pool_connections{{state=\"open\"}} {}\n", pool.size);
  out += fmt::format("marchproxy_manager_db_pool_connections{{state=\"in_use\"}} {}\n", pool.in_use);
  out += "# HELP marchproxy_manager_db_pool_waits_total Acquisitions that had to wait for a free connection.\n";
  out += "# TYPE marchproxy_manager_db_pool_waits_total counter\n";
  out += fmt::format("marchproxy_manager_db_pool_waits_total {}\n", pool.waits);
  out += "# HELP marchproxy_manager_db_up 1 if the database answered the last health probe.\n";
  out += "# TYPE marchproxy_manager_db_up gauge\n";
  out += fmt::format("marchproxy_manager_db_up {}\n", db_up ? 1 : 0);
  return out + extra;
}

}  // namespace marchproxy::manager
