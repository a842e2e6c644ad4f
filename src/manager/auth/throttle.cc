#include "manager/auth/throttle.h"

#include <algorithm>

namespace marchproxy::manager::auth {
namespace {

// Keys: the user name is length-prefixed, so no name/address pair can collide with another.
std::string withUser(const char* kind, const std::string& user, const std::string& ip = "") {
  return kind + std::to_string(user.size()) + ":" + user + ip;
}
std::string pairKey(const std::string& user, const std::string& ip) { return withUser("pair:", user, ip); }
std::string userKey(const std::string& user) { return withUser("user:", user); }
std::string ipKey(const std::string& ip) { return "ip:" + ip; }
std::string knownKey(const std::string& user, const std::string& ip) { return withUser("known:", user, ip); }

constexpr const char* kUpsert =
    "INSERT INTO login_throttle (key, failures, window_start, blocked_until, strikes, expires_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, "
    "window_start = excluded.window_start, blocked_until = excluded.blocked_until, strikes = excluded.strikes, "
    "expires_at = excluded.expires_at";

}  // namespace

std::int64_t LoginThrottle::retryAfter(const std::string& user, const std::string& ip, std::int64_t now) {
  auto rows = db_.read([&](store::Conn& c) {
    return c.exec("SELECT key, blocked_until, expires_at FROM login_throttle WHERE key IN (?, ?, ?, ?)",
                  {pairKey(user, ip), ipKey(ip), userKey(user), knownKey(user, ip)});
  });
  bool known = false;
  std::int64_t pair = 0, addr = 0, usr = 0;
  for (const auto& r : rows.rows) {
    std::string k = r.str("key");
    std::int64_t until = r.i64("blocked_until");
    if (k.rfind("known:", 0) == 0) known = r.i64("expires_at") > now;
    else if (k.rfind("pair:", 0) == 0) pair = until;
    else if (k.rfind("ip:", 0) == 0) addr = until;
    else usr = until;
  }
  std::int64_t until = std::max(pair, addr);
  if (!known) until = std::max(until, usr);
  return until > now ? until - now : 0;
}

void LoginThrottle::failure(const std::string& user, const std::string& ip, std::int64_t now) {
  db_.write([&](store::Conn& c) {
    c.exec("DELETE FROM login_throttle WHERE expires_at <= ?", {std::to_string(now)});
    for (auto [key, limit] : {std::pair{pairKey(user, ip), limits_.per_user_ip}, std::pair{ipKey(ip), limits_.per_ip},
                              std::pair{userKey(user), limits_.per_user}}) {
      auto rows = c.exec("SELECT failures, window_start, blocked_until, strikes FROM login_throttle WHERE key = ?",
                         {key});
      std::int64_t failures = 0, window_start = now, blocked_until = 0, strikes = 0;
      if (!rows.empty()) {
        const auto& r = rows.front();
        failures = r.i64("failures");
        window_start = r.i64("window_start");
        blocked_until = r.i64("blocked_until");
        strikes = r.i64("strikes");
      }
      if (now - window_start >= limits_.window_s) {
        failures = 0;
        window_start = now;
      }
      if (++failures >= limit) {
        // Back-off: each block in a row doubles, up to the cap. Strikes are forgotten when the row
        // expires, a window after the block ends.
        std::int64_t block = limits_.first_block_s << std::min<std::int64_t>(strikes, 20);
        blocked_until = now + std::min(block, limits_.max_block_s);
        ++strikes;
        failures = 0;
        window_start = now;
      }
      std::int64_t expires = std::max(window_start, blocked_until) + limits_.window_s;
      c.exec(kUpsert, {key, std::to_string(failures), std::to_string(window_start), std::to_string(blocked_until),
                       std::to_string(strikes), std::to_string(expires)});
    }
  });
}

void LoginThrottle::success(const std::string& user, const std::string& ip, std::int64_t now) {
  db_.write([&](store::Conn& c) {
    // Only the (user, IP) counter: clearing the user's would give an attacker spraying from many
    // addresses a fresh allowance each time the real user logs in.
    c.exec("DELETE FROM login_throttle WHERE key = ?", {pairKey(user, ip)});
    c.exec(kUpsert, {knownKey(user, ip), "0", std::to_string(now), "0", "0",
                     std::to_string(now + limits_.known_address_s)});
  });
}

}  // namespace marchproxy::manager::auth
