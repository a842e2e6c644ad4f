#pragma once
// What every API handler shares: the database, the key ring, throttles, metrics, and the request's
// authenticated principal. Authorisation decisions live in policy.h, next to this.
#include <cstdint>
#include <functional>
#include <string>

#include "manager/auth/keyring.h"
#include "manager/ca/authority.h"
#include "manager/license/license.h"
#include "manager/auth/throttle.h"
#include "manager/http/message.h"
#include "manager/http/router.h"
#include "manager/metrics.h"
#include "manager/store/db.h"

namespace marchproxy::manager::api {

using http::ApiError;
using http::Json;
using http::Request;
using http::Response;

struct App {
  store::Db& db;
  auth::KeyRing& keys;
  Metrics& metrics;
  auth::LoginThrottle throttle{db};  // persisted in the database (auth/throttle.h)
  int bcrypt_cost = 12;
  std::string openapi;  // the document served at /api/v1/openapi.json
  ca::Authority* ca = nullptr;             // the certificate authority (ca_routes.cc); set by run()
  license::Licensing* license = nullptr;   // the licence state; null = community edition
  // Called after a committed write that may have changed what a cluster's proxies run (wakes the
  // control loop's long-polls, control/notifier.h). Unset in tools and tests that need no wake-up.
  std::function<void()> on_config_write;
  App(store::Db& d, auth::KeyRing& k, Metrics& m) : db(d), keys(k), metrics(m) {}
};

struct Principal {
  std::int64_t user_id = 0;
  std::string username;
  std::string role;  // admin | service-owner | viewer
  bool api_token = false;
  bool isAdmin() const { return role == "admin"; }
  bool isOwner() const { return role == "service-owner"; }
};

// Resolves the bearer credential (access JWT or personal API token) to an enabled user.
// Throws 401 with a WWW-Authenticate header when missing or invalid.
Principal authenticate(App& app, const Request& req);

// Ends every access token already issued to the user (they carry the old epoch). Call inside the
// write transaction that changes the password, role or status, or logs out all sessions.
void bumpTokenEpoch(store::Conn& c, std::int64_t user_id);

// Parses a JSON object body: 415 without a JSON content type, 400 on malformed JSON, 422 when not an
// object.
Json parseBody(const Request& req);

std::int64_t pathId(const Request& req, const std::string& name = "id");

// Adds every route to the router (see resources.cc, auth_routes.cc, admin_routes.cc).
void addResourceRoutes(App& app, http::Router& r);
void addAuthRoutes(App& app, http::Router& r);
void addAdminRoutes(App& app, http::Router& r);
void addCaRoutes(App& app, http::Router& r);  // CA, certificate issue/revoke/download, licence
http::Router buildRouter(App& app);

}  // namespace marchproxy::manager::api
