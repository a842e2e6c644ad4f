// Operations and administration endpoints: health, metrics, the OpenAPI document, users and their
// cluster/service assignments, settings, and the audit log with chain verification.
#include "manager/api/context.h"
#include "manager/api/events.h"
#include "manager/api/policy.h"
#include "manager/api/validate.h"
#include "manager/audit/audit.h"
#include "manager/crypto/crypto.h"
#include "manager/util/time.h"

namespace marchproxy::manager::api {
namespace {

using store::Conn;
using store::Row;

Json userJson(const Row& r) {
  return {{"id", r.i64("id")},         {"username", r.str("username")},   {"email", r.str("email")},
          {"role", r.str("role")},     {"disabled", r.i64("disabled") != 0}, {"totp_enabled", r.i64("totp_enabled") != 0},
          {"created_at", r.str("created_at")}, {"updated_at", r.str("updated_at")}, {"version", r.i64("version")}};
}

// Runs fn as an admin-only write; a refusal (403, or 404/409/412/422 for an admin) is itself audited.
template <typename F>
Response adminWrite(App& app, Request& req, const std::string& action, const std::string& resource, F&& fn) {
  Principal p = authenticate(app, req);
  try {
    policy::requireAdmin(p);
    return fn(p);
  } catch (const ApiError& e) {
    policy::auditRefused(app, p, req, action, resource, e);
    throw;
  }
}

void checkUserBody(const Json& b, bool create) {
  for (const auto& [k, v] : b.items()) {
    if (k == "username") {
      if (!create) validate::fail(k, "cannot be changed after creation");
      validate::name(v, k);
    } else if (k == "email") {
      validate::text(v, k, 254);
      const auto& s = v.get_ref<const std::string&>();
      if (!s.empty() && (s.find('@') == std::string::npos || s.find(' ') != std::string::npos))
        validate::fail(k, "not an email address");
    } else if (k == "role") {
      if (v != "admin" && v != "service-owner" && v != "viewer")
        validate::fail(k, "must be one of admin, service-owner, viewer");
    } else if (k == "password") {
      validate::text(v, k, 72);
      if (v.get_ref<const std::string&>().size() < 12) validate::fail(k, "must be at least 12 characters");
    } else if (k == "disabled") {
      if (!v.is_boolean()) validate::fail(k, "expected a boolean");
    } else {
      validate::fail(k, "unknown field");
    }
  }
  if (create)
    for (const char* r : {"username", "password", "role"})
      if (!b.contains(r)) validate::fail(r, "required");
}

std::int64_t adminCount(Conn& c) {
  return c.exec("SELECT COUNT(*) AS n FROM users WHERE role = 'admin' AND disabled = 0").front().i64("n");
}

Response listUsers(App& app, Request& req) {
  Principal p = authenticate(app, req);
  policy::requireAdmin(p);
  for (const auto& [k, v] : req.query)
    if (k != "role") throw ApiError(400, "invalid-query", "unknown query parameter \"" + k + "\"", k);
  auto rows = app.db.read([&](Conn& c) {
    if (req.query.count("role"))
      return c.exec("SELECT * FROM users WHERE role = ? ORDER BY id", {req.query.at("role")});
    return c.exec("SELECT * FROM users ORDER BY id");
  });
  Json items = Json::array();
  for (const auto& r : rows.rows) items.push_back(userJson(r));
  return Response::json(200, {{"items", items}, {"total", items.size()}});
}

Response getUser(App& app, Request& req) {
  Principal p = authenticate(app, req);
  auto id = pathId(req);
  if (!p.isAdmin() && p.user_id != id) policy::requireAdmin(p);
  auto rows = app.db.read([&](Conn& c) { return c.exec("SELECT * FROM users WHERE id = ?", {std::to_string(id)}); });
  if (rows.empty()) throw ApiError(404, "not-found", "user " + std::to_string(id) + " does not exist");
  auto resp = Response::json(200, userJson(rows.front()));
  resp.headers.emplace_back("ETag", "\"" + rows.front().str("version") + "\"");
  return resp;
}

Response createUser(App& app, Request& req) {
  return adminWrite(app, req, "user.create", "users", [&](const Principal& p) {
    Json b = parseBody(req);
    checkUserBody(b, true);
    std::string hash = crypto::hashPassword(b["password"].get<std::string>(), app.bcrypt_cost);
    try {
      return app.db.write([&](Conn& c) {
        std::string now = util::nowIso();
        auto ins = c.exec("INSERT INTO users (username, email, password_hash, role, disabled, created_at, updated_at) "
                          "VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                          {b["username"].get<std::string>(), b.value("email", ""), hash, b["role"].get<std::string>(),
                           b.value("disabled", false) ? "1" : "0", now, now});
        std::string id = ins.front().str("id");
        audit::append(c, {p.username, req.remote_ip, "user.create", "users/" + id,
                          "created user \"" + b["username"].get<std::string>() + "\" with role " +
                              b["role"].get<std::string>()});
        auto r = c.exec("SELECT * FROM users WHERE id = ?", {id});
        auto resp = Response::json(201, userJson(r.front()));
        resp.headers.emplace_back("Location", "/api/v1/users/" + id);
        return resp;
      });
    } catch (const store::DbError& e) {
      if (e.kind == store::DbError::Kind::unique)
        throw ApiError(409, "conflict", "a user with this name already exists", "username");
      throw;
    }
  });
}

Response updateUser(App& app, Request& req) {
  auto id = pathId(req);
  return adminWrite(app, req, "user.update", "users/" + std::to_string(id), [&](const Principal& p) {
    Json b = parseBody(req);
    checkUserBody(b, false);
    std::optional<std::string> hash;
    if (b.contains("password")) hash = crypto::hashPassword(b["password"].get<std::string>(), app.bcrypt_cost);
    std::string im = req.header("if-match");
    return app.db.write([&](Conn& c) {
      auto rows = c.exec("SELECT * FROM users WHERE id = ?", {std::to_string(id)});
      if (rows.empty()) throw ApiError(404, "not-found", "user " + std::to_string(id) + " does not exist");
      const auto& u = rows.front();
      if (!im.empty() && im != "*" && im != "\"" + u.str("version") + "\"")
        throw ApiError(412, "precondition-failed", "user " + std::to_string(id) + " changed since you read it",
                       "If-Match");
      std::string set;
      store::Params params;
      if (b.contains("email")) set += "email = ?, ", params.push_back(b["email"].get<std::string>());
      if (b.contains("role")) set += "role = ?, ", params.push_back(b["role"].get<std::string>());
      if (b.contains("disabled")) set += "disabled = ?, ", params.push_back(b["disabled"].get<bool>() ? "1" : "0");
      if (hash) set += "password_hash = ?, ", params.push_back(*hash);
      params.push_back(util::nowIso());
      params.push_back(std::to_string(id));
      c.exec("UPDATE users SET " + set + "updated_at = ?, version = version + 1 WHERE id = ?", params);
      if (adminCount(c) == 0)
        throw ApiError(409, "conflict", "this would leave no enabled admin", b.contains("role") ? "role" : "disabled");
      if (hash || b.value("disabled", false) ||
          (b.contains("role") && b["role"].get<std::string>() != u.str("role"))) {
        // New password, disabled, or another role: every session and access token of the user ends.
        c.exec("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ?", {std::to_string(id)});
        bumpTokenEpoch(c, id);
      }
      std::string fields;
      for (const auto& [k, v] : b.items()) fields += (fields.empty() ? "" : ", ") + k;
      audit::append(c, {p.username, req.remote_ip, "user.update", "users/" + std::to_string(id),
                        "updated user \"" + u.str("username") + "\" (" + fields + ")"});
      auto r = c.exec("SELECT * FROM users WHERE id = ?", {std::to_string(id)});
      auto resp = Response::json(200, userJson(r.front()));
      resp.headers.emplace_back("ETag", "\"" + r.front().str("version") + "\"");
      return resp;
    });
  });
}

Response deleteUser(App& app, Request& req) {
  auto id = pathId(req);
  return adminWrite(app, req, "user.delete", "users/" + std::to_string(id), [&](const Principal& p) {
    return app.db.write([&](Conn& c) {
      auto rows = c.exec("SELECT username FROM users WHERE id = ?", {std::to_string(id)});
      if (rows.empty()) throw ApiError(404, "not-found", "user " + std::to_string(id) + " does not exist");
      c.exec("DELETE FROM users WHERE id = ?", {std::to_string(id)});
      if (adminCount(c) == 0) throw ApiError(409, "conflict", "this would leave no enabled admin");
      audit::append(c, {p.username, req.remote_ip, "user.delete", "users/" + std::to_string(id),
                        "deleted user \"" + rows.front().str("username") + "\""});
      return Response::noContent();
    });
  });
}

Response listAssignments(App& app, Request& req) {
  Principal p = authenticate(app, req);
  auto id = pathId(req);
  if (p.user_id != id) policy::requireAdmin(p);
  return app.db.read([&](Conn& c) {
    if (c.exec("SELECT 1 FROM users WHERE id = ?", {std::to_string(id)}).empty())
      throw ApiError(404, "not-found", "user " + std::to_string(id) + " does not exist");
    Json clusters = Json::array(), services = Json::array();
    for (const auto& r : c.exec("SELECT cluster_id FROM user_clusters WHERE user_id = ? ORDER BY cluster_id",
                                {std::to_string(id)}).rows)
      clusters.push_back(r.i64("cluster_id"));
    for (const auto& r : c.exec("SELECT service_id FROM user_services WHERE user_id = ? ORDER BY service_id",
                                {std::to_string(id)}).rows)
      services.push_back(r.i64("service_id"));
    return Response::json(200, {{"cluster_ids", clusters}, {"service_ids", services}});
  });
}

// POST /users/{id}/clusters {"cluster_id": n} and /users/{id}/services {"service_id": n}.
Response assign(App& app, Request& req, const std::string& kind) {
  auto id = pathId(req);
  std::string table = kind == "clusters" ? "user_clusters" : "user_services";
  std::string col = kind == "clusters" ? "cluster_id" : "service_id";
  return adminWrite(app, req, "user.assign", "users/" + std::to_string(id), [&](const Principal& p) {
    Json b = parseBody(req);
    for (const auto& [k, v] : b.items())
      if (k != col) validate::fail(k, "unknown field");
    if (!b.contains(col)) validate::fail(col, "required");
    if (!b[col].is_number_integer() || b[col].get<std::int64_t>() < 1) validate::fail(col, "expected a positive integer id");
    std::string target = std::to_string(b[col].get<std::int64_t>());
    return app.db.write([&](Conn& c) {
      if (c.exec("SELECT 1 FROM users WHERE id = ?", {std::to_string(id)}).empty())
        throw ApiError(404, "not-found", "user " + std::to_string(id) + " does not exist");
      if (c.exec("SELECT 1 FROM " + kind + " WHERE id = ?", {target}).empty())
        validate::fail(col, kind.substr(0, kind.size() - 1) + " " + target + " does not exist");
      if (!c.exec("SELECT 1 FROM " + table + " WHERE user_id = ? AND " + col + " = ?", {std::to_string(id), target})
               .empty())
        throw ApiError(409, "conflict", "already assigned", col);
      c.exec("INSERT INTO " + table + " (user_id, " + col + ") VALUES (?, ?)", {std::to_string(id), target});
      audit::append(c, {p.username, req.remote_ip, "user.assign", "users/" + std::to_string(id),
                        "assigned " + kind + "/" + target});
      return Response::json(201, {{col, std::stoll(target)}});
    });
  });
}

Response unassign(App& app, Request& req, const std::string& kind) {
  auto id = pathId(req);
  auto target = pathId(req, "target");
  std::string table = kind == "clusters" ? "user_clusters" : "user_services";
  std::string col = kind == "clusters" ? "cluster_id" : "service_id";
  return adminWrite(app, req, "user.unassign", "users/" + std::to_string(id), [&](const Principal& p) {
    return app.db.write([&](Conn& c) {
      auto r = c.exec("DELETE FROM " + table + " WHERE user_id = ? AND " + col + " = ?",
                      {std::to_string(id), std::to_string(target)});
      if (r.affected != 1) throw ApiError(404, "not-found", "no such assignment");
      audit::append(c, {p.username, req.remote_ip, "user.unassign", "users/" + std::to_string(id),
                        "unassigned " + kind + "/" + std::to_string(target)});
      return Response::noContent();
    });
  });
}

Response listSettings(App& app, Request& req) {
  Principal p = authenticate(app, req);
  policy::requireAdmin(p);
  auto rows = app.db.read([](Conn& c) { return c.exec("SELECT key, value, updated_at, version FROM settings ORDER BY key"); });
  Json items = Json::object();
  for (const auto& r : rows.rows) items[r.str("key")] = Json::parse(r.str("value"), nullptr, false);
  return Response::json(200, {{"settings", items}});
}

Response putSetting(App& app, Request& req) {
  std::string key = req.params.at("key");
  return adminWrite(app, req, "setting.update", "settings/" + key, [&](const Principal& p) {
    validate::name(Json(key), "key");
    Json b = parseBody(req);
    for (const auto& [k, v] : b.items())
      if (k != "value") validate::fail(k, "unknown field");
    if (!b.contains("value")) validate::fail("value", "required");
    std::string value = b["value"].dump();
    if (value.size() > 65536) validate::fail("value", "larger than 64 KiB");
    return app.db.write([&](Conn& c) {
      std::string now = util::nowIso();
      if (c.exec("UPDATE settings SET value = ?, updated_at = ?, version = version + 1 WHERE key = ?", {value, now, key})
              .affected == 0)
        c.exec("INSERT INTO settings (key, value, updated_at) VALUES (?, ?, ?)", {key, value, now});
      audit::append(c, {p.username, req.remote_ip, "setting.update", "settings/" + key, "set " + key});
      return Response::json(200, {{"key", key}, {"value", b["value"]}});
    });
  });
}

Response listAudit(App& app, Request& req) {
  Principal p = authenticate(app, req);
  policy::requireAdmin(p);
  std::string where = "1=1";
  store::Params params;
  std::int64_t limit = 100, offset = 0;
  for (const auto& [k, v] : req.query) {
    if (k == "actor" || k == "action" || k == "outcome" || k == "resource" || k == "source_ip") {
      where += " AND " + k + " = ?";
      params.push_back(v);
    } else if (k == "since") {
      where += " AND ts >= ?";
      params.push_back(v);
    } else if (k == "until") {
      where += " AND ts < ?";
      params.push_back(v);
    } else if (k == "limit" || k == "offset") {
      if (v.empty() || v.size() > 9 || v.find_first_not_of("0123456789") != std::string::npos)
        throw ApiError(400, "invalid-query", k + " must be a non-negative integer", k);
      (k == "limit" ? limit : offset) = std::stoll(v);
      if (limit < 1 || limit > 1000) throw ApiError(400, "invalid-query", "limit must be 1-1000", "limit");
    } else {
      throw ApiError(400, "invalid-query", "unknown query parameter \"" + k + "\"", k);
    }
  }
  return app.db.read([&](Conn& c) {
    auto total = c.exec("SELECT COUNT(*) AS n FROM audit_log WHERE " + where, params).front().i64("n");
    auto p2 = params;
    p2.push_back(std::to_string(limit));
    p2.push_back(std::to_string(offset));
    auto rows = c.exec("SELECT * FROM audit_log WHERE " + where + " ORDER BY id DESC LIMIT ? OFFSET ?", p2);
    Json items = Json::array();
    for (const auto& r : rows.rows)
      items.push_back({{"id", r.i64("id")},           {"ts", r.str("ts")},           {"actor", r.str("actor")},
                       {"source_ip", r.str("source_ip")}, {"action", r.str("action")}, {"resource", r.str("resource")},
                       {"summary", r.str("summary")},  {"outcome", r.str("outcome")}, {"hash", r.str("hash")}});
    return Response::json(200, {{"items", items}, {"total", total}, {"limit", limit}, {"offset", offset}});
  });
}

Response verifyAudit(App& app, Request& req) {
  Principal p = authenticate(app, req);
  policy::requireAdmin(p);
  auto v = app.db.read([](Conn& c) { return audit::verify(c); });
  Json j = {{"ok", v.ok}, {"rows_verified", v.rows}};
  if (!v.ok) {
    j["first_broken_id"] = v.first_broken_id ? Json(*v.first_broken_id) : Json(nullptr);
    j["reason"] = v.reason;
  }
  return Response::json(200, j);
}

}  // namespace

void addAdminRoutes(App& app, http::Router& r) {
  auto bind = [&app](Response (*fn)(App&, Request&)) { return [&app, fn](Request& q) { return fn(app, q); }; };
  r.add("GET", "/healthz", [&app](Request&) {
    bool up = app.db.ping();
    return Response::json(up ? 200 : 503, {{"status", up ? "ok" : "unavailable"}, {"database", up ? "ok" : "unreachable"}});
  });
  r.add("GET", "/metrics", [&app](Request&) {
    Response resp;
    resp.content_type = "text/plain; version=0.0.4";
    resp.body = app.metrics.render(app.db, app.db.ping());
    return resp;
  });
  r.add("GET", "/api/v1/openapi.json", [&app](Request&) {
    Response resp;
    resp.body = app.openapi;
    return resp;
  });
  r.add("GET", "/api/v1/users", bind(listUsers));
  r.add("POST", "/api/v1/users", bind(createUser));
  r.add("GET", "/api/v1/users/{id}", bind(getUser));
  r.add("PATCH", "/api/v1/users/{id}", bind(updateUser));
  r.add("DELETE", "/api/v1/users/{id}", bind(deleteUser));
  r.add("GET", "/api/v1/users/{id}/assignments", bind(listAssignments));
  r.add("POST", "/api/v1/users/{id}/clusters", [&app](Request& q) { return assign(app, q, "clusters"); });
  r.add("DELETE", "/api/v1/users/{id}/clusters/{target}", [&app](Request& q) { return unassign(app, q, "clusters"); });
  r.add("POST", "/api/v1/users/{id}/services", [&app](Request& q) { return assign(app, q, "services"); });
  r.add("DELETE", "/api/v1/users/{id}/services/{target}", [&app](Request& q) { return unassign(app, q, "services"); });
  r.add("GET", "/api/v1/settings", bind(listSettings));
  r.add("PUT", "/api/v1/settings/{key}", bind(putSetting));
  r.add("GET", "/api/v1/audit", bind(listAudit));
  r.add("GET", "/api/v1/audit/verify", bind(verifyAudit));
}

http::Router buildRouter(App& app) {
  http::Router r;
  addAdminRoutes(app, r);
  addAuthRoutes(app, r);
  addResourceRoutes(app, r);
  addCaRoutes(app, r);
  addEventRoutes(app, r);
  return r;
}

}  // namespace marchproxy::manager::api
