#pragma once
// Login throttling: counts failed logins per key ("user:alice", "ip:10.0.0.1") in a sliding window
// and blocks the key for a while once it reaches the limit. In memory: a restart forgets counts,
// which only ever makes throttling more lenient, never locks anyone out for good.
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>

namespace marchproxy::manager::auth {

class Throttle {
 public:
  Throttle(int limit, std::chrono::seconds window) : limit_(limit), window_(window) {}
  // Seconds until the key may try again, or 0 if it may try now.
  std::int64_t retryAfter(const std::string& key);
  void failure(const std::string& key);
  void success(const std::string& key);

 private:
  struct State {
    int failures = 0;
    std::chrono::steady_clock::time_point first, blocked_until;
  };
  int limit_;
  std::chrono::seconds window_;
  std::mutex mu_;
  std::map<std::string, State> states_;
};

}  // namespace marchproxy::manager::auth
