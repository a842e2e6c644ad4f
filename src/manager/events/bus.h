#pragma once
// The manager's in-process event bus. Any part of the manager publishes; each WebSocket subscriber
// (api/events_routes.cc) has its own bounded queue that its connection thread blocks on. Publishing
// never blocks: a subscriber that falls more than `max_queue` events behind loses them and is told
// to resynchronise (one `resync` event) instead.
//
//   events::bus().publish({.type = "proxy", .resource = "proxies", .id = 7, .action = "online",
//                          .cluster_id = 1, .data = {...}});
//   events::bus().publishThrottled("heartbeat:7", ev, std::chrono::seconds(5));  // heartbeats
//   if (events::bus().claim("heartbeat:7", 5s)) { build the event; publish(ev); }  // same, lazily
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>

#include <nlohmann/json.hpp>

namespace marchproxy::manager::events {

struct Event {
  std::string type;                      // "object" | "audit" | "proxy" | "heartbeat" | "resync"
  std::string resource;                  // "clusters", "services", …, "proxies", "audit"
  std::int64_t id = 0;                   // the object's id (0 when none)
  std::string action;                    // "created" "updated" "deleted" "rotated" | audit action | status
  std::optional<std::int64_t> cluster_id;  // the owning cluster: who may see it (role scoping)
  nlohmann::json data = nlohmann::json::object();  // the object / entry, never secrets
  std::uint64_t seq = 0;                 // set by the bus, increasing

  nlohmann::json toJson() const;
};

class Subscriber {
 public:
  explicit Subscriber(std::size_t max_queue) : max_queue_(max_queue) {}
  // Waits up to `wait` for the next event; nullopt on timeout or after close().
  std::optional<Event> next(std::chrono::milliseconds wait);
  void close();
  bool closed();

 private:
  friend class Bus;
  void push(const Event& e);
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Event> q_;
  std::size_t max_queue_;
  bool overflowed_ = false, closed_ = false;
};

class Bus {
 public:
  std::shared_ptr<Subscriber> subscribe(std::size_t max_queue = 1024);
  void unsubscribe(const std::shared_ptr<Subscriber>& s);
  void publish(Event e);
  // Publishes unless an event with the same key went out less than `min_interval` ago (heartbeats).
  // Returns whether it was published.
  bool publishThrottled(const std::string& key, Event e, std::chrono::milliseconds min_interval);
  // The throttle alone: true (and the key's time taken) when nothing with `key` went out less than
  // `min_interval` ago. Lets a caller skip building an event (a database read) that would be dropped.
  bool claim(const std::string& key, std::chrono::milliseconds min_interval);
  std::size_t subscribers();

 private:
  std::mutex mu_;
  std::set<std::shared_ptr<Subscriber>> subs_;
  std::map<std::string, std::chrono::steady_clock::time_point> last_;
  std::uint64_t seq_ = 0;
};

// The manager's one bus.
Bus& bus();

}  // namespace marchproxy::manager::events
