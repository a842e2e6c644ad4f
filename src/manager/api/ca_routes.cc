// Routes of the certificate authority and the licence: CA certificate and CRL, issuing server and
// client certificates, revocation, downloads, the intermediate CA (enterprise), GET /license.
// Certificate listing, import, edit and delete are the generic resource routes (resources.cc).
#include <cctype>
#include <stdexcept>
#include <string>
#include <vector>

#include "manager/api/context.h"
#include "manager/api/policy.h"
#include "manager/api/resources.h"
#include "manager/api/validate.h"
#include "manager/audit/audit.h"
#include "manager/ca/authority.h"
#include "manager/events/bus.h"

namespace marchproxy::manager::api {
namespace {

using store::Conn;

ca::Authority& authority(App& app) {
  if (!app.ca) throw ApiError(503, "unavailable", "the certificate authority is not running");
  return *app.ca;
}

Response pem(const std::string& text) {
  Response r;
  r.content_type = "application/x-pem-file";
  r.body = text;
  return r;
}

// Tells live subscribers (web UI) about a committed change; the row never holds key material.
void announce(const Json& cert, const std::string& action) {
  events::Event ev;
  ev.type = "object";
  ev.resource = "certificates";
  ev.id = cert.value("id", std::int64_t(0));
  ev.action = action;
  ev.data = cert;
  events::bus().publish(std::move(ev));
}

// Admin-only write: a refusal is audited, then 403.
Principal requireAdminAudited(App& app, const Request& req, const std::string& action, const std::string& resource) {
  Principal p = authenticate(app, req);
  if (!p.isAdmin()) {
    policy::auditDenied(app, p, req, action, resource, "needs the admin role");
    policy::requireAdmin(p);
  }
  return p;
}

Response issue(App& app, Request& req) {
  Principal p = requireAdminAudited(app, req, "certificate.issue", "certificates");
  Json b = parseBody(req);
  for (const auto& [k, v] : b.items())
    if (k != "kind" && k != "name" && k != "sans" && k != "common_name" && k != "days" && k != "description")
      validate::fail(k, "unknown field");
  if (!b.contains("kind")) validate::fail("kind", "required");
  if (b["kind"] != "server" && b["kind"] != "client") validate::fail("kind", "must be one of server, client");
  std::string kind = b["kind"];
  if (!b.contains("name")) validate::fail("name", "required");
  validate::name(b["name"], "name");
  int days = 365;
  if (b.contains("days")) {
    if (!b["days"].is_number_integer()) validate::fail("days", "expected an integer");
    auto d = b["days"].get<std::int64_t>();
    if (d < 1 || d > 825) validate::fail("days", "must be between 1 and 825");
    days = static_cast<int>(d);
  }
  std::string description;
  if (b.contains("description")) {
    validate::text(b["description"], "description", 1024);
    description = b["description"];
  }
  std::vector<std::string> sans;
  std::string cn;
  if (kind == "server") {
    if (b.contains("common_name")) validate::fail("common_name", "server certificates take sans, not common_name");
    if (!b.contains("sans")) validate::fail("sans", "required for server certificates");
    if (!b["sans"].is_array()) validate::fail("sans", "expected an array of DNS names and IP addresses");
    for (std::size_t i = 0; i < b["sans"].size(); ++i) {
      if (!b["sans"][i].is_string()) validate::fail("sans[" + std::to_string(i) + "]", "expected a string");
      sans.push_back(b["sans"][i]);
    }
  } else {
    if (b.contains("sans")) validate::fail("sans", "client certificates take common_name, not sans");
    if (!b.contains("common_name")) validate::fail("common_name", "required for client certificates (the service name)");
    validate::text(b["common_name"], "common_name", 64);
    cn = b["common_name"];
    // "proxy:<id>:<name>" is how the control listener recognises a proxy's certificate (review L6).
    std::string lower = cn.substr(0, 6);
    for (auto& ch : lower) ch = char(std::tolower(static_cast<unsigned char>(ch)));
    if (lower == "proxy:")
      validate::fail("common_name", "the prefix \"proxy:\" is reserved for the certificates of registered proxies");
  }
  std::string name = b["name"];
  Json row;
  try {
    Response resp = app.db.write([&](Conn& c) {
      if (!c.exec("SELECT 1 FROM certificates WHERE name = ?", {name}).empty())
        throw ApiError(409, "conflict", "a certificate with this name already exists", "name");
      ca::Issued out = kind == "server" ? authority(app).issueServer(c, name, sans, days)
                                        : authority(app).issueClient(c, name, cn, days);
      if (!description.empty())
        c.exec("UPDATE certificates SET description = ? WHERE id = ?", {description, std::to_string(out.certificate_id)});
      std::string what = kind == "server" ? "SANs " + Json(sans).dump() : "CN \"" + cn + "\"";
      audit::append(c, {p.username, req.remote_ip, "certificate.issue", "certificates/" + std::to_string(out.certificate_id),
                        "issued " + kind + " certificate \"" + name + "\" (" + what + ", " + std::to_string(days) +
                            " days, serial " + out.serial + ")"});
      Json j = resourceJson(c, "certificates", out.certificate_id);
      row = j;
      j["cert_pem"] = out.cert_pem;
      j["key_pem"] = out.key_pem;  // shown once, here only; sealed at rest
      j["ca_chain"] = authority(app).chainPem();
      auto resp = Response::json(201, j);
      resp.headers.emplace_back("Location", "/api/v1/certificates/" + std::to_string(out.certificate_id));
      return resp;
    });
    announce(row, "created");
    return resp;
  } catch (const store::DbError& e) {
    if (e.kind == store::DbError::Kind::unique)
      throw ApiError(409, "conflict", "a certificate with this name already exists", "name");
    throw;
  }
}

Response revoke(App& app, Request& req) {
  auto id = pathId(req);
  std::string resource = "certificates/" + std::to_string(id);
  Principal p = requireAdminAudited(app, req, "certificate.revoke", resource);
  std::string reason = "unspecified";
  if (!req.body.empty()) {
    Json b = parseBody(req);
    for (const auto& [k, v] : b.items()) {
      if (k != "reason") validate::fail(k, "unknown field");
      std::string list;
      bool ok = false;
      for (const auto& r : ca::revocationReasons()) {
        list += (list.empty() ? "" : ", ") + r;
        ok |= v == r;
      }
      std::string why = v.is_string() ? ca::refusedRevocationReason(v.get<std::string>()) : "";
      if (!ok && !why.empty()) validate::fail("reason", why + " (accepted: " + list + ")");
      if (!ok) validate::fail("reason", "must be one of " + list);
      reason = v;
    }
  }
  Json out = app.db.write([&](Conn& c) {
    Json cert = resourceJson(c, "certificates", id);
    std::string kind = cert.value("kind", "imported");
    if (kind == "ca") throw ApiError(409, "conflict", "the certificate authority's own certificate cannot be revoked");
    if (kind == "imported")
      throw ApiError(409, "conflict", "certificate " + std::to_string(id) +
                                          " was issued elsewhere; only its issuer can revoke it (delete it here instead)");
    if (cert.value("revoked", false))
      throw ApiError(409, "conflict", "certificate " + std::to_string(id) + " was already revoked at " +
                                          cert.value("revoked_at", ""));
    if (!authority(app).revoke(c, cert["serial"], reason))
      throw std::runtime_error("certificate " + std::to_string(id) + ": serial " + cert.value("serial", "") +
                               " is not in the CA's serial history");
    audit::append(c, {p.username, req.remote_ip, "certificate.revoke", resource,
                      "revoked " + kind + " certificate \"" + cert.value("name", "") + "\" (serial " +
                          cert.value("serial", "") + ", reason " + reason + ")"});
    return resourceJson(c, "certificates", id);
  });
  authority(app).crlPem();  // regenerate now rather than on the next snapshot
  // Every cluster's version moved (the CRL is in every snapshot): wake the waiting long-polls, so
  // the proxies get the new CRL, and a proxy whose own certificate this was learns it, at once.
  if (app.on_config_write) app.on_config_write();
  announce(out, "updated");
  return Response::json(200, out);
}

Response download(App& app, Request& req) {
  auto id = pathId(req);
  std::string resource = "certificates/" + std::to_string(id);
  bool with_key = false;
  for (const auto& [k, v] : req.query) {
    if (k != "include_key") throw ApiError(400, "invalid-query", "unknown query parameter \"" + k + "\"", k);
    if (v != "true" && v != "false") throw ApiError(400, "invalid-query", "include_key must be true or false", k);
    with_key = v == "true";
  }
  Principal p = with_key ? requireAdminAudited(app, req, "certificate.download_key", resource) : authenticate(app, req);
  if (!with_key) {
    return app.db.read([&](Conn& c) {
      auto r = c.exec("SELECT cert_pem FROM certificates WHERE id = ?", {std::to_string(id)});
      if (r.empty()) throw ApiError(404, "not-found", "certificate " + std::to_string(id) + " does not exist");
      return pem(r.front().str("cert_pem"));
    });
  }
  return app.db.write([&](Conn& c) {
    auto r = c.exec("SELECT name, kind, cert_pem, key_enc FROM certificates WHERE id = ?", {std::to_string(id)});
    if (r.empty()) throw ApiError(404, "not-found", "certificate " + std::to_string(id) + " does not exist");
    const auto& row = r.front();
    if (row.str("kind") == "ca")
      throw ApiError(403, "forbidden", "the certificate authority's private key never leaves the manager",
                     "include_key");
    if (row.str("key_enc").empty())
      throw ApiError(409, "conflict", "the manager holds no private key for certificate " + std::to_string(id) +
                                          " (proxies keep their own keys)", "include_key");
    auto key = app.keys.open(row.str("key_enc"), "certificates.key");
    if (!key) throw std::runtime_error("certificate " + std::to_string(id) + ": stored key does not decrypt");
    audit::append(c, {p.username, req.remote_ip, "certificate.download_key", resource,
                      "downloaded the private key of certificate \"" + row.str("name") + "\""});
    return pem(row.str("cert_pem") + *key);
  });
}

Response createIntermediate(App& app, Request& req) {
  Principal p = requireAdminAudited(app, req, "ca.intermediate", "ca");
  try {
    policy::requireFeature(app, "intermediate-ca");
  } catch (const ApiError& e) {
    policy::auditDenied(app, p, req, "ca.intermediate", "ca", e.detail);
    throw;
  }
  bool created = false;
  authority(app).createIntermediate(&created);
  if (created)
    app.db.write([&](Conn& c) {
      audit::append(c, {p.username, req.remote_ip, "ca.intermediate", "ca",
                        "created the intermediate CA; new certificates are issued by it"});
    });
  return Response::json(created ? 201 : 200, authority(app).info());
}

// A CA write whose refusals past the admin check (404, 409, 422: the admin check audits its own) are
// audited too.
template <typename F>
Response refusalsAudited(App& app, Request& req, const std::string& action, const std::string& resource, F&& fn) {
  try {
    return fn(app, req);
  } catch (const ApiError& e) {
    if (e.status != 403 && e.status != 401) {
      try {
        policy::auditRefused(app, authenticate(app, req), req, action, resource, e);
      } catch (const ApiError&) {  // not authenticated: nothing to attribute, nothing written
      }
    }
    throw;
  }
}

}  // namespace

void addCaRoutes(App& app, http::Router& r) {
  r.add("GET", "/api/v1/ca", [&app](Request& req) {
    authenticate(app, req);
    return Response::json(200, authority(app).info());
  });
  // The CA chain and the CRL are public by nature: proxies fetch them before they trust anything.
  r.add("GET", "/api/v1/ca.pem", [&app](Request&) { return pem(authority(app).chainPem()); });
  r.add("GET", "/api/v1/ca/crl.pem", [&app](Request&) { return pem(authority(app).crlPem()); });
  r.add("POST", "/api/v1/ca/intermediate",
        [&app](Request& req) { return refusalsAudited(app, req, "ca.intermediate", "ca", createIntermediate); });
  r.add("POST", "/api/v1/certificates/issue",
        [&app](Request& req) { return refusalsAudited(app, req, "certificate.issue", "certificates", issue); });
  r.add("POST", "/api/v1/certificates/{id}/revoke", [&app](Request& req) {
    std::string resource = "certificates";
    try {
      resource += "/" + std::to_string(pathId(req));
    } catch (const ApiError&) {  // not an id
    }
    return refusalsAudited(app, req, "certificate.revoke", resource, revoke);
  });
  r.add("GET", "/api/v1/certificates/{id}/download", [&app](Request& req) { return download(app, req); });
  r.add("GET", "/api/v1/license", [&app](Request& req) {
    authenticate(app, req);
    license::State s = app.license ? app.license->state() : license::State{};
    return Response::json(200, s.toJson());
  });
}

}  // namespace marchproxy::manager::api
