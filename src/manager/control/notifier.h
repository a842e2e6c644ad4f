#pragma once
// Wakes config long-polls when a write may have changed a cluster's config_version. Writers call
// changed() after their transaction commits; a waiting request re-reads its cluster's version and
// waits again if its cluster was not the one that changed. One epoch counter for all clusters keeps
// writers free of bookkeeping: a change costs each waiter one indexed SELECT.
//
// Threading: every method is safe from any thread.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>

namespace marchproxy::manager::control {

class Notifier {
 public:
  using Clock = std::chrono::steady_clock;
  std::uint64_t epoch() const;
  void changed();
  // Blocks until the epoch moves past `seen`, `until` passes, or shutdown(). True when it moved.
  bool waitPast(std::uint64_t seen, Clock::time_point until);
  void shutdown();  // wakes every waiter for good (server stop)
  int waiting() const;
  bool stopped() const;

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::uint64_t epoch_ = 0;
  int waiting_ = 0;
  bool stopped_ = false;
};

}  // namespace marchproxy::manager::control
