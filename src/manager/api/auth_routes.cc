// Authentication endpoints: login (password + optional TOTP), refresh-token rotation, logout,
// the caller's own account (password, 2FA enrolment, personal API tokens), signing-key rotation.
#include <set>

#include "manager/api/context.h"
#include "manager/api/policy.h"
#include "manager/api/validate.h"
#include "manager/audit/audit.h"
#include "manager/crypto/crypto.h"
#include "manager/util/time.h"

namespace marchproxy::manager::api {
namespace {

using store::Conn;

constexpr std::int64_t kAccessTtl = 3600;
constexpr std::int64_t kRefreshTtl = 30 * 86400;

// Checks the keys of a small request object: unknown ones are refused; listed ones must be strings.
void onlyStrings(const Json& b, std::initializer_list<const char*> allowed, std::initializer_list<const char*> required) {
  for (const auto& [k, v] : b.items()) {
    bool ok = false;
    for (const char* a : allowed) ok |= k == a;
    if (!ok) validate::fail(k, "unknown field");
    if (!v.is_string()) validate::fail(k, "expected a string");
    validate::text(v, k, 4096);
  }
  for (const char* r : required)
    if (!b.contains(r)) validate::fail(r, "required");
}

Json issueTokens(App& app, Conn& c, std::int64_t user_id, const std::string& username, const std::string& role,
                 const std::string& family) {
  std::int64_t now = util::unixNow();
  // "ep" (the user's token epoch) and "sid" (the session) let authenticate() refuse this token once
  // the password, role or status changes, or the session is logged out (context.cc).
  auto ep = c.exec("SELECT token_epoch FROM users WHERE id = ?", {std::to_string(user_id)});
  Json claims = {{"sub", std::to_string(user_id)},
                 {"name", username},
                 {"role", role},
                 {"iat", now},
                 {"exp", now + kAccessTtl},
                 {"ep", ep.empty() ? 0 : ep.front().i64("token_epoch")},
                 {"sid", family},
                 {"jti", crypto::hex(crypto::randomBytes(12))}};
  std::string refresh = crypto::randomToken("mpr_");
  c.exec("INSERT INTO refresh_tokens (user_id, token_hash, family, expires_at, created_at) VALUES (?, ?, ?, ?, ?)",
         {std::to_string(user_id), crypto::sha256Hex(refresh), family, util::isoFromUnixMs((now + kRefreshTtl) * 1000),
          util::nowIso()});
  return {{"access_token", app.keys.sign(claims)},
          {"token_type", "Bearer"},
          {"expires_in", kAccessTtl},
          {"refresh_token", refresh}};
}

ApiError tooMany(std::int64_t retry) {
  ApiError e(429, "too-many-attempts", "too many failed logins; try again in " + std::to_string(retry) + " s");
  e.headers.emplace_back("Retry-After", std::to_string(retry));
  return e;
}

void auditOutside(App& app, const audit::Entry& e) {
  app.db.write([&](Conn& c) { audit::append(c, e); });
}

// A password policy that refuses the obviously weak without composition theatre.
void checkNewPassword(const Json& v, const std::string& field) {
  const auto& s = v.get_ref<const std::string&>();
  if (s.size() < 12) validate::fail(field, "must be at least 12 characters");
  if (s.size() > 72) validate::fail(field, "must be at most 72 bytes (bcrypt's limit)");
}

bool consumeBackupCode(Conn& c, std::int64_t user_id, const std::string& stored_json, const std::string& code) {
  auto arr = Json::parse(stored_json, nullptr, false);
  if (!arr.is_array()) return false;
  std::string h = crypto::sha256Hex(code);
  for (auto it = arr.begin(); it != arr.end(); ++it) {
    if (it->is_string() && crypto::safeEqual(it->get<std::string>(), h)) {
      arr.erase(it);
      c.exec("UPDATE users SET backup_codes = ? WHERE id = ?", {arr.dump(), std::to_string(user_id)});
      return true;
    }
  }
  return false;
}

Response login(App& app, Request& req) {
  Json b = parseBody(req);
  onlyStrings(b, {"username", "password", "totp_code"}, {"username", "password"});
  std::string username = b["username"], password = b["password"];
  if (auto r = app.throttle.retryAfter(username, req.remote_ip, util::unixNow()); r > 0) throw tooMany(r);
  auto rows = app.db.read([&](Conn& c) {
    return c.exec("SELECT id, username, role, password_hash, disabled, totp_enabled, totp_secret_enc, backup_codes "
                  "FROM users WHERE username = ?",
                  {username});
  });
  // A dummy hash keeps the response time of unknown users close to that of known ones.
  static const std::string dummy = crypto::hashPassword("not-a-password", app.bcrypt_cost);
  bool ok = crypto::verifyPassword(password, rows.empty() ? dummy : rows.front().str("password_hash"));
  ok = ok && !rows.empty() && !rows.front().i64("disabled");
  auto failed = [&](const std::string& why, const std::string& type) -> ApiError {
    app.throttle.failure(username, req.remote_ip, util::unixNow());
    app.metrics.login(false);
    auditOutside(app, {username, req.remote_ip, "auth.login_failed", "users/" + username, why, "failure"});
    ApiError e(401, type, type == "totp-required" ? "this account needs a TOTP code (totp_code)"
                                                  : "invalid username or password");
    e.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"marchproxy\"");
    return e;
  };
  if (!ok) throw failed("bad username or password", "invalid-credentials");
  const auto& u = rows.front();
  std::int64_t uid = u.i64("id");
  std::string totp_problem;
  auto resp = app.db.write([&](Conn& c) -> std::optional<Response> {
    if (u.i64("totp_enabled")) {
      std::string code = b.value("totp_code", "");
      if (code.empty()) {
        totp_problem = "totp-required";
        return std::nullopt;
      }
      auto secret = app.keys.open(u.str("totp_secret_enc"), "users.totp:" + std::to_string(uid));
      // The backup-code list is re-read inside the write transaction so a code is used once.
      auto fresh = c.exec("SELECT backup_codes FROM users WHERE id = ?", {std::to_string(uid)});
      bool code_ok = (secret && code.size() == 6 && crypto::totpVerify(*secret, code, util::unixNow())) ||
                     (code.size() > 6 && consumeBackupCode(c, uid, fresh.front().str("backup_codes"), code));
      if (!code_ok) {
        totp_problem = "invalid-credentials";
        return std::nullopt;
      }
    }
    audit::append(c, {username, req.remote_ip, "auth.login", "users/" + std::to_string(uid), "logged in"});
    return Response::json(200, issueTokens(app, c, uid, u.str("username"), u.str("role"),
                                           crypto::hex(crypto::randomBytes(12))));
  });
  if (!resp) throw failed(totp_problem == "totp-required" ? "TOTP code missing" : "bad TOTP code", totp_problem);
  app.throttle.success(username, req.remote_ip, util::unixNow());
  app.metrics.login(true);
  return *resp;
}

Response refresh(App& app, Request& req) {
  Json b = parseBody(req);
  onlyStrings(b, {"refresh_token"}, {"refresh_token"});
  std::string hash = crypto::sha256Hex(b["refresh_token"].get<std::string>());
  std::string detail;
  auto resp = app.db.write([&](Conn& c) -> std::optional<Response> {
    auto rows = c.exec("SELECT t.id, t.user_id, t.family, t.revoked, t.expires_at, u.username, u.role, u.disabled "
                       "FROM refresh_tokens t JOIN users u ON u.id = t.user_id WHERE t.token_hash = ?",
                       {hash});
    if (rows.empty()) {
      detail = "unknown refresh token";
      return std::nullopt;
    }
    const auto& t = rows.front();
    if (t.i64("revoked")) {
      // A used token came back: someone holds a stolen copy. End the whole session family.
      c.exec("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?", {t.str("family")});
      audit::append(c, {t.str("username"), req.remote_ip, "auth.refresh_reuse", "users/" + t.str("user_id"),
                        "a rotated refresh token was presented again; the session was revoked", "failure"});
      detail = "refresh token already used; the session has been revoked";
      return std::nullopt;
    }
    if (t.str("expires_at") <= util::nowIso() || t.i64("disabled")) {
      detail = "refresh token expired";
      return std::nullopt;
    }
    c.exec("UPDATE refresh_tokens SET revoked = 1 WHERE id = ?", {t.str("id")});
    return Response::json(200, issueTokens(app, c, t.i64("user_id"), t.str("username"), t.str("role"),
                                           t.str("family")));
  });
  if (!resp) {
    ApiError e(401, "unauthorized", detail);
    e.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"marchproxy\"");
    throw e;
  }
  return *resp;
}

Response logout(App& app, Request& req) {
  Principal p = authenticate(app, req);
  Json b = req.body.empty() ? Json::object() : parseBody(req);
  onlyStrings(b, {"refresh_token"}, {});
  app.db.write([&](Conn& c) {
    if (b.contains("refresh_token")) {
      auto rows = c.exec("SELECT family FROM refresh_tokens WHERE token_hash = ? AND user_id = ?",
                         {crypto::sha256Hex(b["refresh_token"].get<std::string>()), std::to_string(p.user_id)});
      if (!rows.empty()) c.exec("UPDATE refresh_tokens SET revoked = 1 WHERE family = ?", {rows.front().str("family")});
    } else {
      c.exec("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ?", {std::to_string(p.user_id)});
      bumpTokenEpoch(c, p.user_id);  // every session: the access tokens too
    }
    audit::append(c, {p.username, req.remote_ip, "auth.logout", "users/" + std::to_string(p.user_id), "logged out"});
  });
  return Response::noContent();
}

Response me(App& app, Request& req) {
  Principal p = authenticate(app, req);
  auto r = app.db.read([&](Conn& c) {
    return c.exec("SELECT id, username, email, role, totp_enabled FROM users WHERE id = ?", {std::to_string(p.user_id)});
  });
  const auto& u = r.front();
  return Response::json(200, {{"id", u.i64("id")},
                              {"username", u.str("username")},
                              {"email", u.str("email")},
                              {"role", u.str("role")},
                              {"totp_enabled", u.i64("totp_enabled") != 0}});
}

Response changePassword(App& app, Request& req) {
  Principal p = authenticate(app, req);
  Json b = parseBody(req);
  onlyStrings(b, {"current_password", "new_password"}, {"current_password", "new_password"});
  checkNewPassword(b["new_password"], "new_password");
  auto hash = app.db.read([&](Conn& c) {
    return c.exec("SELECT password_hash FROM users WHERE id = ?", {std::to_string(p.user_id)}).front().str("password_hash");
  });
  if (!crypto::verifyPassword(b["current_password"].get<std::string>(), hash))
    validate::fail("current_password", "does not match");
  std::string nh = crypto::hashPassword(b["new_password"].get<std::string>(), app.bcrypt_cost);
  app.db.write([&](Conn& c) {
    c.exec("UPDATE users SET password_hash = ?, updated_at = ?, version = version + 1 WHERE id = ?",
           {nh, util::nowIso(), std::to_string(p.user_id)});
    c.exec("UPDATE refresh_tokens SET revoked = 1 WHERE user_id = ?", {std::to_string(p.user_id)});
    bumpTokenEpoch(c, p.user_id);
    audit::append(c, {p.username, req.remote_ip, "auth.password_change", "users/" + std::to_string(p.user_id),
                      "changed own password; sessions revoked"});
  });
  return Response::noContent();
}

Response totpEnroll(App& app, Request& req) {
  Principal p = authenticate(app, req);
  std::string secret = crypto::randomBytes(20);
  std::string b32 = crypto::base32Encode(secret);
  app.db.write([&](Conn& c) {
    auto r = c.exec("SELECT totp_enabled FROM users WHERE id = ?", {std::to_string(p.user_id)});
    if (r.front().i64("totp_enabled"))
      throw ApiError(409, "conflict", "two-factor authentication is already enabled; disable it first");
    c.exec("UPDATE users SET totp_secret_enc = ? WHERE id = ?",
           {app.keys.seal(secret, "users.totp:" + std::to_string(p.user_id)), std::to_string(p.user_id)});
    audit::append(c, {p.username, req.remote_ip, "auth.totp_enroll", "users/" + std::to_string(p.user_id),
                      "started TOTP enrolment"});
  });
  std::string uri = "otpauth://totp/MarchProxy:" + p.username + "?secret=" + b32 +
                    "&issuer=MarchProxy&algorithm=SHA1&digits=6&period=30";
  return Response::json(200, {{"secret", b32}, {"otpauth_uri", uri}});
}

Response totpVerify(App& app, Request& req) {
  Principal p = authenticate(app, req);
  Json b = parseBody(req);
  onlyStrings(b, {"code"}, {"code"});
  std::string code = b["code"];
  return app.db.write([&](Conn& c) {
    auto r = c.exec("SELECT totp_secret_enc, totp_enabled FROM users WHERE id = ?", {std::to_string(p.user_id)});
    const auto& u = r.front();
    if (u.isNull("totp_secret_enc")) throw ApiError(409, "conflict", "start enrolment first (POST /api/v1/auth/totp/enroll)");
    if (u.i64("totp_enabled")) throw ApiError(409, "conflict", "two-factor authentication is already enabled");
    auto secret = app.keys.open(u.str("totp_secret_enc"), "users.totp:" + std::to_string(p.user_id));
    if (!secret || !crypto::totpVerify(*secret, code, util::unixNow())) validate::fail("code", "does not match");
    Json codes = Json::array(), hashes = Json::array();
    for (int i = 0; i < 10; ++i) {
      std::string c1 = crypto::hex(crypto::randomBytes(5));  // 10 hex digits
      codes.push_back(c1);
      hashes.push_back(crypto::sha256Hex(c1));
    }
    c.exec("UPDATE users SET totp_enabled = 1, backup_codes = ? WHERE id = ?",
           {hashes.dump(), std::to_string(p.user_id)});
    audit::append(c, {p.username, req.remote_ip, "auth.totp_enable", "users/" + std::to_string(p.user_id),
                      "enabled TOTP two-factor authentication"});
    return Response::json(200, {{"totp_enabled", true}, {"backup_codes", codes}});
  });
}

Response totpDisable(App& app, Request& req) {
  Principal p = authenticate(app, req);
  Json b = parseBody(req);
  onlyStrings(b, {"password"}, {"password"});
  auto hash = app.db.read([&](Conn& c) {
    return c.exec("SELECT password_hash FROM users WHERE id = ?", {std::to_string(p.user_id)}).front().str("password_hash");
  });
  if (!crypto::verifyPassword(b["password"].get<std::string>(), hash)) validate::fail("password", "does not match");
  app.db.write([&](Conn& c) {
    c.exec("UPDATE users SET totp_enabled = 0, totp_secret_enc = NULL, backup_codes = '[]' WHERE id = ?",
           {std::to_string(p.user_id)});
    audit::append(c, {p.username, req.remote_ip, "auth.totp_disable", "users/" + std::to_string(p.user_id),
                      "disabled TOTP two-factor authentication"});
  });
  return Response::noContent();
}

Response listTokens(App& app, Request& req) {
  Principal p = authenticate(app, req);
  auto rows = app.db.read([&](Conn& c) {
    return c.exec("SELECT id, name, created_at, last_used_at, revoked FROM api_tokens WHERE user_id = ? ORDER BY id",
                  {std::to_string(p.user_id)});
  });
  Json items = Json::array();
  for (const auto& r : rows.rows)
    items.push_back({{"id", r.i64("id")},
                     {"name", r.str("name")},
                     {"created_at", r.str("created_at")},
                     {"revoked", r.i64("revoked") != 0}});
  return Response::json(200, {{"items", items}, {"total", items.size()}});
}

Response createToken(App& app, Request& req) {
  Principal p = authenticate(app, req);
  if (p.api_token) policy::deny("API tokens cannot create API tokens; log in with a password");
  Json b = parseBody(req);
  onlyStrings(b, {"name"}, {"name"});
  validate::name(b["name"], "name");
  std::string token = crypto::randomToken("mpt_");
  try {
    return app.db.write([&](Conn& c) {
      auto ins = c.exec("INSERT INTO api_tokens (user_id, name, token_hash, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                        {std::to_string(p.user_id), b["name"].get<std::string>(), crypto::sha256Hex(token),
                         util::nowIso()});
      audit::append(c, {p.username, req.remote_ip, "auth.token_create", "tokens/" + ins.front().str("id"),
                        "created API token \"" + b["name"].get<std::string>() + "\""});
      return Response::json(201, {{"id", ins.front().i64("id")}, {"name", b["name"]}, {"token", token}});
    });
  } catch (const store::DbError& e) {
    if (e.kind == store::DbError::Kind::unique)
      throw ApiError(409, "conflict", "you already have a token with this name", "name");
    throw;
  }
}

Response revokeToken(App& app, Request& req) {
  Principal p = authenticate(app, req);
  auto id = pathId(req);
  app.db.write([&](Conn& c) {
    auto r = c.exec("UPDATE api_tokens SET revoked = 1 WHERE id = ? AND user_id = ?",
                    {std::to_string(id), std::to_string(p.user_id)});
    if (r.affected != 1) throw ApiError(404, "not-found", "token " + std::to_string(id) + " does not exist");
    audit::append(c, {p.username, req.remote_ip, "auth.token_revoke", "tokens/" + std::to_string(id),
                      "revoked API token"});
  });
  return Response::noContent();
}

Response rotateSigningKey(App& app, Request& req) {
  Principal p = authenticate(app, req);
  try {
    policy::requireAdmin(p);
  } catch (const ApiError& e) {
    auditOutside(app, {p.username, req.remote_ip, "auth.signing_key_rotate", "signing-keys", e.detail, "denied"});
    throw;
  }
  std::string kid = app.db.write([&](Conn& c) {
    // The retired key keeps verifying for one access-token lifetime, then goes (keyring.h).
    std::string k = app.keys.rotate(c, kAccessTtl);
    audit::append(c, {p.username, req.remote_ip, "auth.signing_key_rotate", "signing-keys/" + k,
                      "rotated the JWT signing key"});
    return k;
  });
  app.keys.reload(app.db);
  return Response::json(200, {{"kid", kid}});
}

}  // namespace

void addAuthRoutes(App& app, http::Router& r) {
  auto bind = [&app](Response (*fn)(App&, Request&)) { return [&app, fn](Request& q) { return fn(app, q); }; };
  r.add("POST", "/api/v1/auth/login", bind(login));
  r.add("POST", "/api/v1/auth/refresh", bind(refresh));
  r.add("POST", "/api/v1/auth/logout", bind(logout));
  r.add("GET", "/api/v1/auth/me", bind(me));
  r.add("POST", "/api/v1/auth/password", bind(changePassword));
  r.add("POST", "/api/v1/auth/totp/enroll", bind(totpEnroll));
  r.add("POST", "/api/v1/auth/totp/verify", bind(totpVerify));
  r.add("POST", "/api/v1/auth/totp/disable", bind(totpDisable));
  r.add("GET", "/api/v1/auth/tokens", bind(listTokens));
  r.add("POST", "/api/v1/auth/tokens", bind(createToken));
  r.add("DELETE", "/api/v1/auth/tokens/{id}", bind(revokeToken));
  r.add("POST", "/api/v1/auth/signing-keys/rotate", bind(rotateSigningKey));
}

}  // namespace marchproxy::manager::api
