// /api/v1/events: tickets and the role-scoped WebSocket event stream.
#include <chrono>
#include <map>
#include <mutex>

#include "manager/api/events.h"
#include "manager/api/policy.h"
#include "manager/crypto/crypto.h"
#include "manager/events/bus.h"

namespace marchproxy::manager::api {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kTicketTtl = std::chrono::seconds(30);
constexpr auto kKeepalive = std::chrono::seconds(25);
constexpr auto kRecheck = std::chrono::seconds(30);

// Who a ticket was issued to, and the credential (the Authorization header) it was issued on: the
// stream re-checks that credential, so revoking an API token, or a JWT expiring, ends the stream too.
struct Grant {
  Principal who;
  std::string authorization;
};

// Tickets live in memory (hashed): they are good for one connection to this manager process.
struct Tickets {
  std::mutex mu;
  std::map<std::string, std::pair<Grant, Clock::time_point>> by_hash;

  std::string issue(Grant g) {
    std::string t = crypto::randomToken("mpw_");
    std::lock_guard l(mu);
    auto now = Clock::now();
    for (auto it = by_hash.begin(); it != by_hash.end();) it = it->second.second < now ? by_hash.erase(it) : ++it;
    by_hash[crypto::sha256Hex(t)] = {std::move(g), now + kTicketTtl};
    return t;
  }
  std::optional<Grant> redeem(const std::string& t) {
    std::lock_guard l(mu);
    auto it = by_hash.find(crypto::sha256Hex(t));
    if (it == by_hash.end()) return std::nullopt;
    auto [g, until] = std::move(it->second);
    by_hash.erase(it);  // single use
    if (until < Clock::now()) return std::nullopt;
    return g;
  }
};

Tickets& tickets() {
  static Tickets t;
  return t;
}

// Open streams, per user and in all: each holds a connection thread, so one user cannot take the
// manager's connection budget (512) with event streams.
constexpr int kMaxStreamsPerUser = 8;
constexpr int kMaxStreams = 200;
struct StreamCount {
  std::mutex mu;
  std::map<std::int64_t, int> by_user;
  int total = 0;
};
StreamCount& streamCount() {
  static StreamCount c;
  return c;
}

class EventStream : public http::WsSession {
 public:
  EventStream(App& app, Grant g)
      : app_(app), who_(std::move(g.who)), authorization_(std::move(g.authorization)), sub_(events::bus().subscribe()) {
    Json hello{{"type", "hello"}, {"user", who_.username}, {"role", who_.role}};
    pending_ = hello.dump();
    if (!who_.isAdmin() && who_.role != "viewer") rememberOwned();
  }
  ~EventStream() override {
    events::bus().unsubscribe(sub_);
    auto& sc = streamCount();
    std::lock_guard l(sc.mu);
    --sc.total;
    if (--sc.by_user[who_.user_id] <= 0) sc.by_user.erase(who_.user_id);
  }

  bool finished() const override { return ended_; }

  std::optional<std::string> next(std::chrono::milliseconds wait) override {
    if (pending_) return std::exchange(pending_, std::nullopt);
    auto deadline = Clock::now() + wait;
    while (Clock::now() < deadline) {
      if (Clock::now() - checked_ > kRecheck && !stillAllowed()) {
        sub_->close();
        ended_ = true;
        return std::nullopt;
      }
      auto ev = sub_->next(std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()));
      if (!ev) break;
      if (!visible(*ev)) continue;
      sent_ = Clock::now();
      return ev->toJson().dump(-1, ' ', false, Json::error_handler_t::replace);
    }
    if (Clock::now() - sent_ > kKeepalive) {
      sent_ = Clock::now();
      return Json{{"type", "keepalive"}}.dump();
    }
    return std::nullopt;
  }

 private:
  // The credential may have been revoked or expired, the user disabled or given another role since
  // the ticket was issued.
  bool stillAllowed() {
    checked_ = Clock::now();
    try {
      Request probe;
      probe.headers["authorization"] = authorization_;
      if (authenticate(app_, probe).user_id != who_.user_id) return false;
    } catch (const ApiError&) {
      return false;
    }
    auto rows = app_.db.read([&](store::Conn& c) {
      return c.exec("SELECT role, disabled FROM users WHERE id = ?", {std::to_string(who_.user_id)});
    });
    if (rows.empty() || rows.front().i64("disabled")) return false;
    who_.role = rows.front().str("role");
    // Assignments may have changed too: visibility is worked out afresh (at most 30 s stale).
    clusters_.clear();
    objects_.clear();
    if (!who_.isAdmin() && who_.role != "viewer") rememberOwned();
    return true;
  }

  // The services this owner is assigned: their "deleted" events are theirs too, although the row
  // (and the assignment) is gone by the time the event is checked (review M2).
  void rememberOwned() {
    auto rows = app_.db.read([&](store::Conn& c) {
      return c.exec("SELECT service_id FROM user_services WHERE user_id = ?", {std::to_string(who_.user_id)});
    });
    for (const auto& r : rows.rows) objects_["services/" + std::to_string(r.i64("service_id"))] = true;
  }

  // Visibility is cached per object and per cluster until the next re-check (review M5: one
  // database read per event for every non-admin subscriber, before).
  bool objectVisible(const events::Event& ev) {
    const std::string key = ev.resource + "/" + std::to_string(ev.id);
    auto it = objects_.find(key);
    if (ev.action == "deleted") return it != objects_.end() && it->second;  // the row is gone: what we knew
    if (it != objects_.end() && ev.action != "updated") return it->second;
    // An update may move the object (another cluster or owner): checked again, then remembered.
    bool ok = mayReadObject(app_, who_, ev.resource, ev.data);
    if (objects_.size() > 10000) objects_.clear();
    objects_[key] = ok;
    return ok;
  }

  bool clusterVisible(std::int64_t cluster_id) {
    auto it = clusters_.find(cluster_id);
    if (it != clusters_.end()) return it->second;
    bool ok = app_.db.read([&](store::Conn& c) { return policy::seesCluster(c, who_, cluster_id); });
    if (clusters_.size() > 10000) clusters_.clear();
    clusters_[cluster_id] = ok;
    return ok;
  }

  bool visible(const events::Event& ev) {
    if (ev.type == "resync") return true;
    if (who_.isAdmin()) return true;
    if (ev.type == "audit") return false;  // the audit log is for admins
    // Viewers list all configuration (GET /x scopes only service owners); owners get exactly what
    // they may read.
    if (ev.type == "object") return who_.role == "viewer" || objectVisible(ev);
    // proxies and anything else cluster-scoped: viewers read every cluster, owners their own
    if (!ev.cluster_id) return false;
    if (who_.role == "viewer") return true;
    return clusterVisible(*ev.cluster_id);
  }

  App& app_;
  Principal who_;
  std::string authorization_;
  bool ended_ = false;
  std::shared_ptr<events::Subscriber> sub_;
  std::optional<std::string> pending_;
  std::map<std::int64_t, bool> clusters_;   // cluster id -> visible (until the next re-check)
  std::map<std::string, bool> objects_;     // "resource/id" -> visible (idem)
  Clock::time_point sent_ = Clock::now(), checked_ = Clock::now();
};

}  // namespace

std::unique_ptr<http::WsSession> openEventStream(App& app, Request& req) {
  auto it = req.query.find("ticket");
  if (it == req.query.end() || it->second.empty())
    throw ApiError(401, "unauthorized", "missing ticket: POST /api/v1/events/ticket first, then connect with ?ticket=",
                   "ticket");
  auto who = tickets().redeem(it->second);
  if (!who) throw ApiError(401, "unauthorized", "unknown, used or expired ticket (tickets are single use, 30 s)",
                           "ticket");
  {
    auto& sc = streamCount();
    std::lock_guard l(sc.mu);
    if (sc.by_user[who->who.user_id] >= kMaxStreamsPerUser)
      throw ApiError(429, "too-many-streams",
                     "at most " + std::to_string(kMaxStreamsPerUser) + " event streams per user; close one first");
    if (sc.total >= kMaxStreams)
      throw ApiError(503, "too-many-streams", "the manager has its maximum of event streams open; retry later");
    ++sc.total;  // the stream's destructor gives both back
    ++sc.by_user[who->who.user_id];
  }
  return std::make_unique<EventStream>(app, *who);
}

void addEventRoutes(App& app, http::Router& r) {
  r.add("POST", "/api/v1/events/ticket", [&app](Request& req) {
    Principal p = authenticate(app, req);
    return Response::json(201, {{"ticket", tickets().issue({p, req.header("authorization")})},
                                {"expires_in", std::chrono::duration_cast<std::chrono::seconds>(kTicketTtl).count()}});
  });
  r.add("GET", "/api/v1/events", [](Request&) -> Response {
    throw ApiError(426, "upgrade-required",
                   "connect with a WebSocket (Upgrade: websocket) and ?ticket= from POST /api/v1/events/ticket");
  });
}

}  // namespace marchproxy::manager::api
