#include "manager/events/bus.h"

namespace marchproxy::manager::events {

nlohmann::json Event::toJson() const {
  nlohmann::json j{{"seq", seq}, {"type", type}, {"resource", resource}, {"id", id}, {"action", action},
                   {"data", data}};
  j["cluster_id"] = cluster_id ? nlohmann::json(*cluster_id) : nlohmann::json(nullptr);
  return j;
}

std::optional<Event> Subscriber::next(std::chrono::milliseconds wait) {
  std::unique_lock l(mu_);
  cv_.wait_for(l, wait, [&] { return closed_ || overflowed_ || !q_.empty(); });
  if (closed_) return std::nullopt;
  if (overflowed_) {
    overflowed_ = false;
    q_.clear();
    Event e;
    e.type = "resync";
    return e;
  }
  if (q_.empty()) return std::nullopt;
  Event e = std::move(q_.front());
  q_.pop_front();
  return e;
}

void Subscriber::close() {
  {
    std::lock_guard g(mu_);
    closed_ = true;
  }
  cv_.notify_all();
}

bool Subscriber::closed() {
  std::lock_guard g(mu_);
  return closed_;
}

void Subscriber::push(const Event& e) {
  {
    std::lock_guard g(mu_);
    if (closed_) return;
    if (q_.size() >= max_queue_) {
      overflowed_ = true;
    } else {
      q_.push_back(e);
    }
  }
  cv_.notify_one();
}

std::shared_ptr<Subscriber> Bus::subscribe(std::size_t max_queue) {
  auto s = std::make_shared<Subscriber>(max_queue);
  std::lock_guard g(mu_);
  subs_.insert(s);
  return s;
}

void Bus::unsubscribe(const std::shared_ptr<Subscriber>& s) {
  s->close();
  std::lock_guard g(mu_);
  subs_.erase(s);
}

void Bus::publish(Event e) {
  std::lock_guard g(mu_);
  e.seq = ++seq_;
  for (const auto& s : subs_) s->push(e);
}

bool Bus::claim(const std::string& key, std::chrono::milliseconds min_interval) {
  auto now = std::chrono::steady_clock::now();
  std::lock_guard g(mu_);
  auto it = last_.find(key);
  if (it != last_.end() && now - it->second < min_interval) return false;
  last_[key] = now;
  if (last_.size() > 100000) last_.clear();  // bounded: keys are per proxy
  return true;
}

bool Bus::publishThrottled(const std::string& key, Event e, std::chrono::milliseconds min_interval) {
  if (!claim(key, min_interval)) return false;
  publish(std::move(e));
  return true;
}

std::size_t Bus::subscribers() {
  std::lock_guard g(mu_);
  return subs_.size();
}

Bus& bus() {
  static Bus b;
  return b;
}

}  // namespace marchproxy::manager::events
