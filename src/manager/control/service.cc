#include "manager/control/service.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <regex>

#include "manager/api/policy.h"
#include "manager/api/validate.h"
#include "manager/audit/audit.h"
#include "manager/crypto/crypto.h"
#include "manager/events/bus.h"
#include "manager/util/time.h"

namespace marchproxy::manager::control {
namespace {

using api::ApiError;
using api::Json;
using api::Request;
using api::Response;
using store::Conn;
using store::Row;

ApiError unauthorized(const std::string& detail) {
  ApiError e(401, "unauthorized", detail);
  e.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"marchproxy-control\"");
  return e;
}

std::string str(const Json& body, const std::string& field, std::size_t max, bool required = true) {
  if (!body.contains(field)) {
    if (required) api::validate::fail(field, "required");
    return "";
  }
  api::validate::text(body[field], field, max);
  return body[field].get<std::string>();
}

}  // namespace

Service::Service(api::App& app, ca::Authority& ca, license::Licensing* license, Options opts)
    : app_(app),
      ca_(ca),
      license_(license),
      opts_(opts),
      compiler_(app.db, app.keys, CaSource{[&ca] { return ca.chainPem(); }, [&ca] { return ca.crlPem(); }}) {}

Service::~Service() { notifier_.shutdown(); }

namespace {

struct ProxyCtx {
  Row row;
  std::int64_t id = 0;
};

}  // namespace

// --- the control listener ----------------------------------------------------------------------

void Service::addControlRoutes(http::Router& r) {
  // The certificate (verified by the handshake against the CA), its CN naming this proxy, the
  // bearer token of this proxy, and neither revoked.
  auto authenticate = [this](const Request& req) {
    std::int64_t id = api::pathId(req);
    if (!req.peer.verified)
      throw unauthorized("a client certificate issued by the manager's CA is required (mTLS)");
    std::string want = "proxy:" + std::to_string(id) + ":";
    if (req.peer.common_name.rfind(want, 0) != 0)
      throw ApiError(403, "forbidden", "the client certificate (CN " + req.peer.common_name + ") is not proxy " +
                                           std::to_string(id) + "'s");
    std::string h = req.header("authorization");
    if (h.size() < 8 || (h.compare(0, 7, "Bearer ") != 0 && h.compare(0, 7, "bearer ") != 0))
      throw unauthorized("missing proxy token (Authorization: Bearer mpp_…)");
    auto rows = app_.db.read([&](Conn& c) {
      return c.exec("SELECT p.*, c.config_version AS cluster_version FROM proxy_servers p JOIN clusters c ON "
                    "c.id = p.cluster_id WHERE p.id = ?",
                    {std::to_string(id)});
    });
    if (rows.empty()) throw unauthorized("proxy " + std::to_string(id) + " is not registered; register again");
    const Row& row = rows.front();
    if (row.str("status") == "revoked")
      throw ApiError(403, "proxy-revoked", "proxy " + std::to_string(id) + " (" + row.str("name") +
                                               ") was revoked by an operator at " + row.str("revoked_at") +
                                               "; keep serving the cached snapshot");
    if (!crypto::safeEqual(crypto::sha256Hex(h.substr(7)), row.str("token_hash")))
      throw unauthorized("the proxy token is not proxy " + std::to_string(id) + "'s current token");
    if (ca_.isRevoked(req.peer.serial))
      throw ApiError(403, "certificate-revoked", "the client certificate " + req.peer.serial + " is revoked");
    // The handshake checked the validity period when the connection was made; a kept-alive
    // connection can outlive it.
    if (req.peer.not_after != 0 && util::unixNow() > req.peer.not_after)
      throw ApiError(403, "certificate-revoked",
                     "the client certificate " + req.peer.serial + " expired at " + util::isoFromUnixMs(req.peer.not_after * 1000) +
                         "; register again");
    return ProxyCtx{row, id};
  };

  r.add("POST", "/api/v1/proxies/register", [this](Request& req) {
    Json body = api::parseBody(req);
    for (const auto& [k, v] : body.items())
      if (k != "cluster_key" && k != "name" && k != "kind" && k != "version" && k != "capabilities" && k != "csr")
        api::validate::fail(k, "unknown field");
    std::string key = str(body, "cluster_key", 256);
    std::string name = str(body, "name", 63);
    static const std::regex kName("[a-z0-9][a-z0-9._-]{0,62}");
    if (!std::regex_match(name, kName))
      api::validate::fail("name", "must be 1-63 of a-z 0-9 . _ - and start with a letter or digit");
    std::string kind = str(body, "kind", 16);
    if (kind != "ingress" && kind != "egress") api::validate::fail("kind", "must be ingress or egress");
    std::string sw = str(body, "version", 64, false);
    Json caps = body.value("capabilities", Json::array());
    if (!caps.is_array() || caps.size() > 32) api::validate::fail("capabilities", "expected an array of at most 32 strings");
    for (std::size_t i = 0; i < caps.size(); ++i) api::validate::text(caps[i], "capabilities[" + std::to_string(i) + "]", 64);
    std::string csr = str(body, "csr", 16384);
    std::string hash = crypto::sha256Hex(key);
    std::string now = util::nowIso();
    int limit = license_ ? license_->proxyLimit() : 3;
    auto result = app_.db.write([&](Conn& c) {
      auto cl = c.exec("SELECT id, config_version FROM clusters WHERE api_key_hash = ? OR "
                       "(prev_api_key_hash = ? AND prev_api_key_expires > ?)",
                       {hash, hash, now});
      if (cl.empty()) throw unauthorized("unknown or expired cluster key");
      std::int64_t cid = cl.front().i64("id");
      auto existing = c.exec("SELECT id, status, cert_serial, kind FROM proxy_servers WHERE cluster_id = ? AND name = ?",
                             {std::to_string(cid), name});
      bool again = !existing.empty();
      bool holds_slot = again && existing.front().str("status") != "revoked";
      if (!holds_slot) {
        auto n = c.exec("SELECT COUNT(*) AS n FROM proxy_servers WHERE status <> 'revoked'").front().i64("n");
        if (n >= limit)
          throw ApiError(403, "license-limit",
                         fmt::format("the {} allows {} prox{}; {} {} registered. Remove one (DELETE "
                                     "/api/v1/proxies/{{id}}) or install a licence: see docs/licensing.md",
                                     limit == 3 && !(license_ && license_->state().edition == "enterprise")
                                         ? "community edition"
                                         : "licence",
                                     limit, limit == 1 ? "y" : "ies", n, n == 1 ? "is" : "are"));
      }
      std::int64_t id;
      if (again) {
        id = existing.front().i64("id");
        std::string old = existing.front().str("cert_serial");
        if (!old.empty() && existing.front().str("status") != "revoked") {
          ca_.revoke(c, old, "superseded");  // bumps every cluster's version: the CRL changed
        }
      } else {
        id = c.exec("INSERT INTO proxy_servers (cluster_id, name, kind, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                    {std::to_string(cid), name, kind, now})
                 .front()
                 .i64("id");
      }
      auto issued = ca_.signProxyCsr(c, csr, "proxy:" + std::to_string(id) + ":" + name, opts_.cert_days);
      std::string token = crypto::randomToken("mpp_");
      c.exec("UPDATE proxy_servers SET kind = ?, token_hash = ?, cert_serial = ?, cert_not_after = ?, status = 'active', "
             "sw_version = ?, capabilities = ?, address = ?, revoked_at = NULL, error = NULL, updated_at = ? WHERE id = ?",
             {kind, crypto::sha256Hex(token), issued.serial, issued.not_after, sw, caps.dump(), req.remote_ip, now,
              std::to_string(id)});
      audit::append(c, {"proxy:" + name, req.remote_ip, again ? "proxy.reregister" : "proxy.register",
                        "proxies/" + std::to_string(id),
                        (again ? "re-registered " : "registered ") + kind + " proxy \"" + name + "\" in cluster " +
                            std::to_string(cid) + " (certificate " + issued.serial + ")"});
      std::int64_t version = clusterVersion(c, cid);
      return Json{{"id", id},
                  {"token", token},
                  {"certificate", issued.cert_pem},
                  {"ca_chain", ca_.chainPem()},
                  {"heartbeat_interval_s", opts_.heartbeat_interval_s},
                  {"config_version", version}};
    });
    notifier_.changed();  // a re-registration revoked a certificate: every CRL moved
    publishProxy(result["id"].get<std::int64_t>(), "registered");
    auto resp = Response::json(201, result);
    resp.headers.emplace_back("Location", "/api/v1/proxies/" + std::to_string(result["id"].get<std::int64_t>()));
    return resp;
  });

  r.add("GET", "/api/v1/proxies/{id}/config", [this, authenticate](Request& req) {
    ProxyCtx p = authenticate(req);
    auto num = [&](const std::string& k, std::int64_t lo, std::int64_t hi) -> std::optional<std::int64_t> {
      auto it = req.query.find(k);
      if (it == req.query.end()) return std::nullopt;
      const auto& v = it->second;
      if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos || std::stoll(v) < lo ||
          std::stoll(v) > hi)
        throw ApiError(400, "invalid-query", fmt::format("{} must be an integer {}-{}", k, lo, hi), k);
      return std::stoll(v);
    };
    auto since = num("since", 0, std::int64_t(1) << 62);
    std::int64_t wait = num("wait", 0, opts_.max_wait_s).value_or(opts_.max_wait_s);
    std::string kind = p.row.str("kind");
    std::int64_t cid = p.row.i64("cluster_id");
    auto until = Notifier::Clock::now() + std::chrono::seconds(wait);
    for (;;) {
      auto epoch = notifier_.epoch();
      std::int64_t version = app_.db.read([&](Conn& c) { return clusterVersion(c, cid); });
      if (!since || version > *since) {
        auto snap = compiler_.get(cid, kind);
        if (!snap) throw ApiError(404, "not-found", "the proxy's cluster no longer exists");
        Response resp;
        resp.body = snap->body;
        resp.headers.emplace_back("ETag", "\"" + std::to_string(snap->version) + "\"");
        return resp;
      }
      auto now = Notifier::Clock::now();
      if (now >= until) break;
      auto slice = opts_.poll_database ? std::min(until, now + std::chrono::seconds(1)) : until;
      notifier_.waitPast(epoch, slice);
      if (notifier_.stopped()) break;  // shutting down: answer 304, the proxy polls again
    }
    Response resp;
    resp.status = 304;
    resp.content_type.clear();
    return resp;
  });

  r.add("POST", "/api/v1/proxies/{id}/heartbeat", [this, authenticate](Request& req) {
    ProxyCtx p = authenticate(req);
    Json body = api::parseBody(req);
    auto intField = [&](const char* k) {
      if (body.contains(k) && !(body[k].is_number_integer() && body[k].get<std::int64_t>() >= 0))
        api::validate::fail(k, "expected a non-negative integer");
    };
    intField("applied_version");
    intField("uptime_s");
    intField("rss_bytes");
    if (body.contains("applied_hash") && !body["applied_hash"].is_null()) api::validate::text(body["applied_hash"], "applied_hash", 80);
    if (body.contains("version")) api::validate::text(body["version"], "version", 64);
    if (body.contains("counters") && !body["counters"].is_object()) api::validate::fail("counters", "expected an object");
    Json err = body.value("error", Json());
    if (!err.is_null()) {
      if (!err.is_object() || !err.contains("message") || !err["message"].is_string())
        api::validate::fail("error", "expected null or {\"version\": N, \"message\": \"…\"}");
      api::validate::text(err["message"], "error.message", 4096);
    }
    std::string now = util::nowIso();
    auto version = app_.db.write([&](Conn& c) {
      c.exec("UPDATE proxy_servers SET last_seen = ?, heartbeat = ?, applied_config_version = ?, applied_hash = ?, "
             "error = ?, sw_version = ? WHERE id = ?",
             {now, body.dump(), std::to_string(body.value("applied_version", std::int64_t(0))),
              body.value("applied_hash", Json("")).is_string() ? body["applied_hash"].get<std::string>() : "",
              err.is_null() ? std::nullopt : std::optional<std::string>(err.dump()),
              body.contains("version") ? body["version"].get<std::string>() : p.row.str("sw_version"),
              std::to_string(p.id)});
      return clusterVersion(c, p.row.i64("cluster_id"));
    });
    publishProxy(p.id, "heartbeat");
    return Response::json(200, {{"config_version", version}});
  });

  r.add("POST", "/api/v1/proxies/{id}/certificate", [this, authenticate](Request& req) {
    ProxyCtx p = authenticate(req);
    Json body = api::parseBody(req);
    for (const auto& [k, v] : body.items())
      if (k != "csr") api::validate::fail(k, "unknown field");
    std::string csr = str(body, "csr", 16384);
    auto issued = app_.db.write([&](Conn& c) {
      auto is = ca_.signProxyCsr(c, csr, "proxy:" + std::to_string(p.id) + ":" + p.row.str("name"), opts_.cert_days);
      c.exec("UPDATE proxy_servers SET cert_serial = ?, cert_not_after = ?, updated_at = ? WHERE id = ?",
             {is.serial, is.not_after, util::nowIso(), std::to_string(p.id)});
      // The certificate this request came with is superseded: revoked, so a copy of the old key
      // (a backup, a decommissioned disk) cannot speak for this proxy until it expires.
      const bool superseded = !req.peer.serial.empty() && req.peer.serial != is.serial &&
                              ca_.revoke(c, req.peer.serial, "superseded");
      audit::append(c, {"proxy:" + p.row.str("name"), req.remote_ip, "proxy.renew", "proxies/" + std::to_string(p.id),
                        "renewed the proxy certificate (new serial " + is.serial + ", expires " + is.not_after +
                            (superseded ? "; revoked the superseded serial " + req.peer.serial : std::string()) +
                            ")"});
      return is;
    });
    return Response::json(200, {{"certificate", issued.cert_pem}, {"ca_chain", ca_.chainPem()}});
  });

  r.add("GET", "/api/v1/ca.pem", [this](Request&) {
    Response resp;
    resp.content_type = "application/x-pem-file";
    resp.body = ca_.chainPem();
    return resp;
  });
  r.add("GET", "/healthz", [this](Request&) {
    bool up = app_.db.ping();
    return Response::json(up ? 200 : 503, {{"status", up ? "ok" : "unavailable"}});
  });
}

// --- the API listener --------------------------------------------------------------------------

namespace {

Json proxyJson(const Row& r, int interval_s) {
  Json hb = r.isNull("heartbeat") ? Json::object() : Json::parse(r.str("heartbeat"), nullptr, false);
  if (!hb.is_object()) hb = Json::object();
  std::string status = r.str("status");
  std::string last_seen = r.str("last_seen");
  std::string since = last_seen.empty() ? r.str("updated_at") : last_seen;
  std::string cutoff = util::isoFromUnixMs((util::unixNow() - 3 * std::int64_t(interval_s)) * 1000);
  if (status == "revoked") status = "revoked";
  else status = since.empty() || since < cutoff ? "stale" : "online";
  std::int64_t applied = r.i64("applied_config_version"), want = r.i64("cluster_version");
  Json err = r.isNull("error") ? Json() : Json::parse(r.str("error"), nullptr, false);
  if (err.is_discarded()) err = nullptr;
  return {{"id", r.i64("id")},
          {"cluster_id", r.i64("cluster_id")},
          {"name", r.str("name")},
          {"kind", r.str("kind")},
          {"version", r.str("sw_version")},
          {"capabilities", Json::parse(r.str("capabilities"), nullptr, false)},
          {"address", r.str("address")},
          {"status", status},
          {"last_seen", last_seen.empty() ? Json() : Json(last_seen)},
          {"applied_version", applied},
          {"applied_hash", r.str("applied_hash")},
          {"config_version", want},
          {"drift", r.str("status") != "revoked" && applied != want},
          {"error", err},
          {"counters", hb.value("counters", Json::object())},
          {"uptime_s", hb.value("uptime_s", Json())},
          {"cpu_seconds", hb.value("cpu_seconds", Json())},
          {"rss_bytes", hb.value("rss_bytes", Json())},
          {"certificate_serial", r.str("cert_serial")},
          {"certificate_not_after", r.str("cert_not_after")},
          {"registered_at", r.str("created_at")},
          {"revoked_at", r.isNull("revoked_at") ? Json() : Json(r.str("revoked_at"))}};
}

constexpr const char* kSelect =
    "SELECT p.*, c.config_version AS cluster_version FROM proxy_servers p JOIN clusters c ON c.id = p.cluster_id";

}  // namespace

void Service::addApiRoutes(http::Router& r) {
  r.add("GET", "/api/v1/proxies", [this](Request& req) {
    api::Principal who = api::authenticate(app_, req);
    std::string where = " WHERE 1=1";
    store::Params params;
    std::size_t limit = 100, offset = 0;  // the same paging contract as every other list
    auto num = [](const std::string& k, const std::string& v, std::size_t lo, std::size_t hi) {
      if (v.empty() || v.size() > 12 || v.find_first_not_of("0123456789") != std::string::npos ||
          std::stoull(v) < lo || std::stoull(v) > hi)
        throw ApiError(400, "invalid-query", k + " must be an integer " + std::to_string(lo) + "-" + std::to_string(hi), k);
      return static_cast<std::size_t>(std::stoull(v));
    };
    for (const auto& [k, v] : req.query) {
      if (k == "limit") {
        limit = num(k, v, 1, 1000);
      } else if (k == "offset") {
        offset = num(k, v, 0, std::size_t(1) << 40);
      } else if (k == "cluster_id") {
        if (v.empty() || v.size() > 18 || v.find_first_not_of("0123456789") != std::string::npos)
          throw ApiError(400, "invalid-query", "cluster_id must be an integer", "cluster_id");
        where += " AND p.cluster_id = ?";
        params.push_back(v);
      } else if (k == "kind") {
        if (v != "ingress" && v != "egress") throw ApiError(400, "invalid-query", "kind must be ingress or egress", "kind");
        where += " AND p.kind = ?";
        params.push_back(v);
      } else {
        throw ApiError(400, "invalid-query", "unknown query parameter \"" + k + "\"", k);
      }
    }
    if (!who.isAdmin() && !(who.role == "viewer")) {
      // Service owners see the proxies of the clusters they see (policy.h).
      std::string scope = api::policy::clusterScopeSql();
      where += " AND p." + scope;
      params.push_back(std::to_string(who.user_id));
      params.push_back(std::to_string(who.user_id));
    }
    auto rows = app_.db.read([&](Conn& c) { return c.exec(std::string(kSelect) + where + " ORDER BY p.id", params); });
    Json items = Json::array();
    for (std::size_t i = offset; i < rows.rows.size() && items.size() < limit; ++i)
      items.push_back(proxyJson(rows.rows[i], opts_.heartbeat_interval_s));
    return Response::json(200, {{"items", items}, {"total", rows.rows.size()}, {"limit", limit}, {"offset", offset}});
  });

  r.add("GET", "/api/v1/proxies/{id}", [this](Request& req) {
    api::Principal who = api::authenticate(app_, req);
    auto id = api::pathId(req);
    return app_.db.read([&](Conn& c) {
      auto rows = c.exec(std::string(kSelect) + " WHERE p.id = ?", {std::to_string(id)});
      if (rows.empty() ||
          (!who.isAdmin() && who.role != "viewer" && !api::policy::seesCluster(c, who, rows.front().i64("cluster_id"))))
        throw ApiError(404, "not-found", "proxy " + std::to_string(id) + " does not exist");
      return Response::json(200, proxyJson(rows.front(), opts_.heartbeat_interval_s));
    });
  });

  r.add("DELETE", "/api/v1/proxies/{id}", [this](Request& req) {
    api::Principal who = api::authenticate(app_, req);
    auto id = api::pathId(req);
    std::string resource = "proxies/" + std::to_string(id);
    if (!who.isAdmin()) {
      app_.db.write([&](Conn& c) {
        audit::append(c, {who.username, req.remote_ip, "proxy.delete", resource, "only admins delete proxies", "denied"});
      });
      api::policy::requireAdmin(who);
    }
    app_.db.write([&](Conn& c) {
      auto rows = c.exec("SELECT name, status, cert_serial FROM proxy_servers WHERE id = ?", {std::to_string(id)});
      if (rows.empty()) throw ApiError(404, "not-found", "proxy " + std::to_string(id) + " does not exist");
      if (rows.front().str("status") == "revoked")
        throw ApiError(409, "conflict", "proxy " + std::to_string(id) + " is already revoked");
      std::string serial = rows.front().str("cert_serial");
      // The revocation bumps every cluster's config_version (the CRL is in every snapshot).
      if (!serial.empty()) ca_.revoke(c, serial, "cessationOfOperation");
      c.exec("UPDATE proxy_servers SET status = 'revoked', revoked_at = ?, token_hash = NULL, updated_at = ? WHERE id = ?",
             {util::nowIso(), util::nowIso(), std::to_string(id)});
      audit::append(c, {who.username, req.remote_ip, "proxy.delete", resource,
                        "revoked proxy \"" + rows.front().str("name") + "\" (certificate " + serial +
                            ") and freed its licence slot"});
    });
    notifier_.changed();
    publishProxy(id, "revoked");
    return Response::noContent();
  });
}

void Service::publishProxy(std::int64_t id, const std::string& action) {
  // Heartbeats: the throttle (one event per proxy per 5 s) and "anyone listening?" come before the
  // database read, so 1,000 beating proxies cost no extra reads when nobody watches.
  if (action == "heartbeat" &&
      (events::bus().subscribers() == 0 || !events::bus().claim("heartbeat:" + std::to_string(id), std::chrono::seconds(5))))
    return;
  try {
    auto rows = app_.db.read([&](Conn& c) { return c.exec(std::string(kSelect) + " WHERE p.id = ?", {std::to_string(id)}); });
    if (rows.empty()) return;
    events::Event ev;
    ev.type = action == "heartbeat" ? "heartbeat" : "proxy";
    ev.resource = "proxies";
    ev.id = id;
    ev.action = action;
    ev.cluster_id = rows.front().i64("cluster_id");
    ev.data = proxyJson(rows.front(), opts_.heartbeat_interval_s);
    events::bus().publish(std::move(ev));
  } catch (const std::exception& e) {  // an event is never worth failing the proxy's call
    spdlog::warn("control: proxy {} event not published: {}", id, e.what());
  }
}

std::string Service::metricsText() {
  std::string out;
  auto rows = app_.db.read([&](Conn& c) { return c.exec(std::string(kSelect)); });
  std::map<std::string, int> by{{"online", 0}, {"stale", 0}, {"revoked", 0}};
  int drift = 0;
  for (const auto& r : rows.rows) {
    Json j = proxyJson(r, opts_.heartbeat_interval_s);
    ++by[j["status"].get<std::string>()];
    drift += j["drift"].get<bool>() ? 1 : 0;
  }
  out += "# HELP marchproxy_manager_proxies Registered proxies by status.\n# TYPE marchproxy_manager_proxies gauge\n";
  for (const auto& [k, v] : by) out += fmt::format("marchproxy_manager_proxies{{status=\"{}\"}} {}\n", k, v);
  out += "# HELP marchproxy_manager_proxies_drifting Proxies whose applied version is not their cluster's.\n"
         "# TYPE marchproxy_manager_proxies_drifting gauge\n";
  out += fmt::format("marchproxy_manager_proxies_drifting {}\n", drift);
  out += "# HELP marchproxy_manager_config_long_polls Config long-polls waiting for a change.\n"
         "# TYPE marchproxy_manager_config_long_polls gauge\n";
  out += fmt::format("marchproxy_manager_config_long_polls {}\n", notifier_.waiting());
  out += "# HELP marchproxy_manager_snapshot_compiles_total Snapshots compiled (cache misses).\n"
         "# TYPE marchproxy_manager_snapshot_compiles_total counter\n";
  out += fmt::format("marchproxy_manager_snapshot_compiles_total {}\n", compiler_.compiles());
  out += "# HELP marchproxy_manager_snapshot_compile_seconds_total Time spent compiling snapshots.\n"
         "# TYPE marchproxy_manager_snapshot_compile_seconds_total counter\n";
  out += fmt::format("marchproxy_manager_snapshot_compile_seconds_total {:.6f}\n", compiler_.compileSeconds());
  return out;
}

}  // namespace marchproxy::manager::control
