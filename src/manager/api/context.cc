#include "manager/api/context.h"

#include "manager/crypto/crypto.h"
#include "manager/util/time.h"

namespace marchproxy::manager::api {

namespace {
ApiError unauthorized(const std::string& detail) {
  ApiError e(401, "unauthorized", detail);
  e.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"marchproxy\"");
  return e;
}
}  // namespace

Principal authenticate(App& app, const Request& req) {
  std::string h = req.header("authorization");
  if (h.size() < 8 || (h.compare(0, 7, "Bearer ") != 0 && h.compare(0, 7, "bearer ") != 0))
    throw unauthorized("missing bearer token (Authorization: Bearer <token>)");
  std::string token = h.substr(7);
  Principal p;
  store::Rows rows;
  if (token.rfind("mpt_", 0) == 0) {
    std::string hash = crypto::sha256Hex(token);
    rows = app.db.read([&](store::Conn& c) {
      return c.exec("SELECT u.id, u.username, u.role, u.disabled FROM api_tokens t JOIN users u ON u.id = t.user_id "
                    "WHERE t.token_hash = ? AND t.revoked = 0",
                    {hash});
    });
    p.api_token = true;
  } else {
    auto claims = app.keys.verify(token, util::unixNow());
    if (!claims || !(*claims)["sub"].is_string()) throw unauthorized("invalid or expired access token");
    std::string sub = (*claims)["sub"].get<std::string>();
    const auto& ep = (*claims)["ep"];
    const auto& sid = (*claims)["sid"];
    std::int64_t epoch = ep.is_number_integer() ? ep.get<std::int64_t>() : 0;  // tokens from before v5: 0
    bool session_live = true;
    rows = app.db.read([&](store::Conn& c) {
      if (sid.is_string())
        session_live = !c.exec("SELECT 1 FROM refresh_tokens WHERE family = ? AND revoked = 0 LIMIT 1",
                               {sid.get<std::string>()})
                            .empty();
      return c.exec("SELECT id, username, role, disabled, token_epoch FROM users WHERE id = ?", {sub});
    });
    if (!rows.empty() && rows.front().i64("token_epoch") != epoch)
      throw unauthorized("access token revoked: the account's password, role or status changed, or all its "
                         "sessions were logged out; log in again");
    if (!session_live) throw unauthorized("access token revoked: its session was logged out; log in again");
  }
  if (rows.empty()) throw unauthorized("invalid or revoked token");
  const auto& r = rows.front();
  if (r.i64("disabled")) throw unauthorized("account disabled");
  p.user_id = r.i64("id");
  p.username = r.str("username");
  p.role = r.str("role");  // the current role, not the one at token issue time
  return p;
}

void bumpTokenEpoch(store::Conn& c, std::int64_t user_id) {
  c.exec("UPDATE users SET token_epoch = token_epoch + 1 WHERE id = ?", {std::to_string(user_id)});
}

Json parseBody(const Request& req) {
  std::string ct = req.header("content-type");
  auto semi = ct.find(';');
  std::string base = ct.substr(0, semi);
  while (!base.empty() && base.back() == ' ') base.pop_back();
  for (auto& ch : base) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (base != "application/json" && base != "application/merge-patch+json")
    throw ApiError(415, "unsupported-media-type", "request body must be application/json", "Content-Type");
  Json j;
  try {
    j = Json::parse(req.body);
  } catch (const Json::parse_error& e) {
    throw ApiError(400, "malformed-json", std::string("malformed JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(422, "invalid-field", "request body must be a JSON object");
  return j;
}

std::int64_t pathId(const Request& req, const std::string& name) {
  auto it = req.params.find(name);
  const std::string& s = it == req.params.end() ? std::string() : it->second;
  if (s.empty() || s.size() > 18 || s.find_first_not_of("0123456789") != std::string::npos || s[0] == '0')
    throw ApiError(404, "not-found", "no such resource: " + req.path);
  return std::stoll(s);
}

}  // namespace marchproxy::manager::api
