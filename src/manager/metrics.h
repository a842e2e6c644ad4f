#pragma once
// Prometheus metrics of the manager: requests by route and status, latency histogram by route,
// logins ok/failed, and the database pool (read at scrape time). Thread-safe.
#include <array>
#include <functional>
#include <vector>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

#include "manager/store/db.h"

namespace marchproxy::manager {

class Metrics {
 public:
  void request(const std::string& route, const std::string& method, int status, double seconds);
  void login(bool ok);
  std::string render(store::Db& db, bool db_up);
  // More families appended to every scrape (the control loop's proxies and long-polls). Call before
  // serving; the function runs on the scraping thread without the metrics lock.
  void addSource(std::function<std::string()> fn) { sources_.push_back(std::move(fn)); }

 private:
  static constexpr std::array<double, 10> kBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5};
  struct Hist {
    std::array<std::uint64_t, kBuckets.size()> buckets{};
    std::uint64_t count = 0;
    double sum = 0;
  };
  std::mutex mu_;
  std::map<std::tuple<std::string, std::string, int>, std::uint64_t> requests_;
  std::map<std::string, Hist> latency_;
  std::uint64_t logins_ok_ = 0, logins_failed_ = 0;
  std::vector<std::function<std::string()>> sources_;
};

}  // namespace marchproxy::manager
