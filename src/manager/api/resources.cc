// Generic list/get/create/update/delete over the configuration resources, driven by the Spec tables
// below. Every write runs in one transaction that also bumps the owning cluster's config_version
// (when the change alters what proxies do) and appends the audit row.
#include "manager/api/resources.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <arpa/inet.h>

#include <functional>
#include <memory>
#include <optional>
#include <set>

#include "manager/api/context.h"
#include "manager/api/events.h"
#include "manager/api/policy.h"
#include "manager/api/validate.h"
#include "manager/ca/authority.h"
#include "manager/audit/audit.h"
#include "manager/crypto/crypto.h"
#include "manager/events/bus.h"
#include "manager/util/time.h"

namespace marchproxy::manager::api {
namespace {

using store::Conn;
using store::Row;

enum class Kind { text, integer, boolean, array, object };
enum class Res { clusters, services, mappings, routes, certificates, forwards };
enum class Op { read, create, update, remove, rotate };

using Check = std::function<void(const Json&, const std::string&)>;

struct Field {
  std::string name;
  Kind kind;
  bool required = false;   // on create
  bool updatable = true;
  bool nullable = false;
  Check check;
  bool write_only = false;  // accepted, never returned (stored transformed by a hook)
};

struct Spec {
  Res res;
  std::string path, table, noun;
  std::vector<Field> fields;
  std::vector<std::pair<std::string, Kind>> readonly_out;  // extra columns returned
  std::vector<std::string> filters, sorts;
  bool cluster_scoped = false;
};

const char* kindName(Kind k) {
  switch (k) {
    case Kind::text: return "a string";
    case Kind::integer: return "an integer";
    case Kind::boolean: return "a boolean";
    case Kind::array: return "an array";
    case Kind::object: return "an object";
  }
  return "?";
}

bool kindMatches(Kind k, const Json& v) {
  switch (k) {
    case Kind::text: return v.is_string();
    case Kind::integer: return v.is_number_integer();
    case Kind::boolean: return v.is_boolean();
    case Kind::array: return v.is_array();
    case Kind::object: return v.is_object();
  }
  return false;
}

// --- composable checks -------------------------------------------------------------------------

Check textMax(std::size_t max) {
  return [max](const Json& v, const std::string& f) { validate::text(v, f, max); };
}
Check oneOf(std::vector<std::string> allowed) {
  return [allowed](const Json& v, const std::string& f) {
    for (const auto& a : allowed)
      if (v == a) return;
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    validate::fail(f, "must be one of " + list);
  };
}
Check intRange(std::int64_t lo, std::int64_t hi) {
  return [lo, hi](const Json& v, const std::string& f) {
    auto n = v.get<std::int64_t>();
    if (n < lo || n > hi) validate::fail(f, "must be between " + std::to_string(lo) + " and " + std::to_string(hi));
  };
}
Check arrayOf(Check each, std::size_t max_items, bool non_empty, bool unique = true) {
  return [=](const Json& v, const std::string& f) {
    if (non_empty && v.empty()) validate::fail(f, "must not be empty");
    if (v.size() > max_items) validate::fail(f, "more than " + std::to_string(max_items) + " items");
    std::set<std::string> seen;
    for (std::size_t i = 0; i < v.size(); ++i) {
      std::string fi = f + "[" + std::to_string(i) + "]";
      each(v[i], fi);
      if (unique && !seen.insert(v[i].dump()).second) validate::fail(fi, "duplicate value " + v[i].dump());
    }
  };
}
Check positiveId() {
  return [](const Json& v, const std::string& f) {
    if (!v.is_number_integer() || v.get<std::int64_t>() < 1) validate::fail(f, "expected a positive integer id");
  };
}
// An object with a fixed set of keys, each with its own check; unknown keys are refused.
Check objectOf(std::vector<std::pair<std::string, Check>> keys, std::vector<std::string> required = {}) {
  return [=](const Json& v, const std::string& f) {
    if (!v.is_object()) validate::fail(f, "expected an object");
    for (const auto& [k, val] : v.items()) {
      const Check* check = nullptr;
      for (const auto& kc : keys)
        if (kc.first == k) check = &kc.second;
      if (!check) validate::fail(f + "." + k, "unknown field");
      (*check)(val, f + "." + k);
    }
    for (const auto& r : required)
      if (!v.contains(r)) validate::fail(f + "." + r, "required");
  };
}
Check intIn(std::int64_t lo, std::int64_t hi) {
  return [=](const Json& v, const std::string& f) {
    if (!v.is_number_integer()) validate::fail(f, "expected an integer");
    intRange(lo, hi)(v, f);
  };
}
Check strCheck(Check c) {
  return [=](const Json& v, const std::string& f) {
    if (!v.is_string()) validate::fail(f, "expected a string");
    c(v, f);
  };
}
void pemCert(const Json& v, const std::string& f) {
  validate::text(v, f, 65536);
  const auto& s = v.get_ref<const std::string&>();
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(s.data(), int(s.size())), BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> x(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr), X509_free);
  if (!x) validate::fail(f, "not a PEM-encoded X.509 certificate");
}
void pemKey(const Json& v, const std::string& f) {
  validate::text(v, f, 65536);
  const auto& s = v.get_ref<const std::string&>();
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(s.data(), int(s.size())), BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> k(PEM_read_bio_PrivateKey(bio.get(), nullptr, nullptr, nullptr),
                                                        EVP_PKEY_free);
  if (!k) validate::fail(f, "not a PEM-encoded (unencrypted) private key");
}
void urlPath(const Json& v, const std::string& f) {
  validate::text(v, f, 1024);
  const auto& s = v.get_ref<const std::string&>();
  if (s.empty() || s[0] != '/') validate::fail(f, "must start with '/'");
}
void headerName(const Json& v, const std::string& f) {
  validate::text(v, f, 128);
  const auto& s = v.get_ref<const std::string&>();
  if (s.empty()) validate::fail(f, "must not be empty");
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos))
      validate::fail(f, "not a valid header name");
}

// A proxy listener address: an IP literal (proxies do not resolve names to bind) and a port.
void listenAddress(const Json& v, const std::string& f) {
  validate::hostPort(v, f);
  std::string host = v.get<std::string>().substr(0, v.get<std::string>().rfind(':'));
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (!validate::isIp(host))
    validate::fail(f, "must be an IP address and a port (\"0.0.0.0:8080\", \"[::]:8080\")");
}

// "" (no such listener) or a listen address.
void optionalListenAddress(const Json& v, const std::string& f) {
  if (!v.get_ref<const std::string&>().empty()) listenAddress(v, f);
}

// A network and the prefix length: {16 address bytes (IPv4 in the first 4), prefix, bits}.
struct Net {
  unsigned char b[16] = {};
  int prefix = 0, bits = 0;
};
std::optional<Net> parseNet(const std::string& cidr) {
  Net n;
  auto slash = cidr.find('/');
  std::string addr = cidr.substr(0, slash);
  if (inet_pton(AF_INET, addr.c_str(), n.b) == 1) n.bits = 32;
  else if (inet_pton(AF_INET6, addr.c_str(), n.b) == 1) n.bits = 128;
  else return std::nullopt;
  n.prefix = slash == std::string::npos ? n.bits : std::atoi(cidr.c_str() + slash + 1);
  return n;
}
// Is `inner` inside `outer` (same family, at least as long a prefix, the same leading bits)?
bool netWithin(const Net& inner, const Net& outer) {
  if (inner.bits != outer.bits || inner.prefix < outer.prefix) return false;
  for (int i = 0; i < outer.prefix; ++i)
    if ((inner.b[i / 8] ^ outer.b[i / 8]) & (0x80 >> (i % 8))) return false;
  return true;
}

// A network for a forward's sources: address/prefix with no host bits set (the proxy refuses those).
void networkCidr(const Json& v, const std::string& f) {
  validate::cidr(v, f);
  const auto& s = v.get_ref<const std::string&>();
  auto n = parseNet(s);
  for (int i = n ? n->prefix : 0; n && i < n->bits; ++i)
    if (n->b[i / 8] & (0x80 >> (i % 8))) validate::fail(f, "\"" + s + "\" has host bits set");
}

// A forward's fixed destination: one host (a name or an IP address, no wildcard or CIDR) and a port.
void forwardDestination(const Json& v, const std::string& f) {
  if (!v.get_ref<const std::string&>().empty()) validate::hostPort(v, f);
}

// --- the resources -------------------------------------------------------------------------------

const std::vector<Spec>& specs() {
  static const std::vector<Spec> all = [] {
    std::vector<Spec> v;
    Check nameCheck = validate::name;
    v.push_back({Res::clusters, "clusters", "clusters", "cluster",
                 {{"name", Kind::text, true, true, false, nameCheck},
                  {"description", Kind::text, false, true, false, textMax(1024)},
                  {"syslog_endpoint", Kind::text, false, true, false, validate::syslogEndpoint},
                  {"log_auth", Kind::boolean},
                  {"log_netflow", Kind::boolean},
                  {"log_debug", Kind::boolean},
                  // Where the cluster's proxies listen (compiled into their snapshots).
                  {"ingress_http_address", Kind::text, false, true, false, listenAddress},
                  {"ingress_https_address", Kind::text, false, true, false, listenAddress},
                  {"egress_proxy_address", Kind::text, false, true, false, listenAddress},
                  {"egress_socks5_address", Kind::text, false, true, false, listenAddress},
                  // The egress HTTPS proxy listener: on egress_tls_address while a certificate is set.
                  {"egress_tls_address", Kind::text, false, true, false, listenAddress},
                  {"egress_tls_certificate_id", Kind::integer, false, true, true, positiveId()},
                  // SOCKS5 over TLS on this address while the certificate is set ("" = no such listener).
                  {"egress_socks_tls_address", Kind::text, false, true, false, optionalListenAddress},
                  // Where the egress proxies serve /metrics and /ready (not compiled: they bind it at
                  // start, by default or --admin); no forward may take it. Admins only.
                  {"egress_admin_address", Kind::text, false, true, false, listenAddress},
                  // The networks service owners may name in forwards' sources. Admins only.
                  {"forward_source_networks", Kind::array, false, true, false,
                   arrayOf(strCheck(networkCidr), 100, false)}},
                 {{"config_version", Kind::integer}, {"prev_api_key_expires", Kind::text}},
                 {"name"},
                 {"name", "id", "created_at", "updated_at"}});
    v.push_back({Res::services, "services", "services", "service",
                 {{"cluster_id", Kind::integer, true, false, false, positiveId()},
                  {"name", Kind::text, true, true, false, nameCheck},
                  {"description", Kind::text, false, true, false, textMax(1024)},
                  {"ip_fqdn", Kind::text, true, true, false, validate::hostOrIp},
                  {"collection", Kind::text, false, true, false,
                   [](const Json& j, const std::string& f) {
                     if (!j.get_ref<const std::string&>().empty()) validate::name(j, f);
                   }},
                  {"auth_type", Kind::text, false, true, false, oneOf({"none", "base64", "jwt"})},
                  {"jwt_expiry", Kind::integer, false, true, false, intRange(60, 86400)}},
                 {{"secret_rotated_at", Kind::text}},
                 {"cluster_id", "name", "collection", "auth_type", "ip_fqdn"},
                 {"name", "id", "cluster_id", "collection", "created_at", "updated_at"},
                 true});
    v.push_back({Res::mappings, "mappings", "mappings", "mapping",
                 {{"cluster_id", Kind::integer, true, false, false, positiveId()},
                  {"name", Kind::text, true, true, false, nameCheck},
                  {"source_services", Kind::array, false, true, false, arrayOf(positiveId(), 1000, false)},
                  {"source_collections", Kind::array, false, true, false, arrayOf(validate::name, 100, false)},
                  {"destination_services", Kind::array, true, true, false, arrayOf(positiveId(), 1000, true)},
                  {"protocols", Kind::array, true, true, false,
                   arrayOf(strCheck(oneOf({"http", "https", "tcp", "udp", "icmp"})), 5, true)},
                  {"ports", Kind::array, false, true, false, arrayOf(validate::port, 100, false)},
                  {"auth_required", Kind::boolean},
                  {"priority", Kind::integer, false, true, false, intRange(0, 10000)},
                  {"enabled", Kind::boolean},
                  {"comment", Kind::text, false, true, false, textMax(1024)}},
                 {},
                 {"cluster_id", "name", "enabled"},
                 {"name", "id", "cluster_id", "priority", "created_at", "updated_at"},
                 true});
    v.push_back(
        {Res::routes, "routes", "ingress_routes", "route",
         {{"cluster_id", Kind::integer, true, false, false, positiveId()},
          {"name", Kind::text, true, true, false, nameCheck},
          {"hosts", Kind::array, true, true, false, arrayOf(validate::hostPattern, 100, true)},
          {"paths", Kind::array, false, true, false, arrayOf(urlPath, 100, false)},
          {"backends", Kind::array, true, true, false,
           arrayOf(objectOf({{"address", validate::hostPort}, {"weight", intIn(1, 1000)}}, {"address"}), 256, true)},
          {"lb_policy", Kind::text, false, true, false, oneOf({"round_robin", "least_conn", "random", "ip_hash"})},
          {"health_check", Kind::object, false, true, false,
           objectOf({{"path", urlPath},
                     {"interval_ms", intIn(100, 3600000)},
                     {"timeout_ms", intIn(10, 600000)},
                     {"healthy_threshold", intIn(1, 100)},
                     {"unhealthy_threshold", intIn(1, 100)}})},
          {"rate_limit", Kind::object, false, true, false,
           objectOf({{"requests_per_second", intIn(1, 10000000)}, {"burst", intIn(0, 10000000)}},
                    {"requests_per_second"})},
          {"certificate_id", Kind::integer, false, true, true, positiveId()},
          {"mtls_allow", Kind::array, false, true, false, arrayOf(textMax(256), 100, false)},
          {"header_rewrites", Kind::array, false, true, false,
           arrayOf(objectOf({{"action", strCheck(oneOf({"set", "add", "remove"}))},
                             {"name", headerName},
                             {"value", textMax(4096)}},
                            {"action", "name"}),
                   50, false, false)},
          {"enabled", Kind::boolean}},
         {},
         {"cluster_id", "name", "enabled", "certificate_id"},
         {"name", "id", "cluster_id", "created_at", "updated_at"},
         true});
    // L4 port forwards on the cluster's egress proxies (docs/egress.md "Port forwards").
    v.push_back({Res::forwards, "forwards", "forwards", "forward",
                 {{"cluster_id", Kind::integer, true, false, false, positiveId()},
                  {"name", Kind::text, true, true, false, nameCheck},
                  {"protocol", Kind::text, false, true, false, oneOf({"tcp", "udp"})},
                  {"listen_address", Kind::text, true, true, false, listenAddress},
                  {"destination", Kind::text, false, true, false, forwardDestination},
                  {"destination_service_id", Kind::integer, false, true, true, positiveId()},
                  {"destination_port", Kind::integer, false, true, true, intIn(1, 65535)},
                  {"sources", Kind::array, false, true, false,
                   arrayOf(objectOf({{"cidr", strCheck(networkCidr)}, {"service_id", positiveId()}}, {"cidr", "service_id"}),
                           100, false)},
                  {"mtls", Kind::boolean},
                  {"idle_timeout_seconds", Kind::integer, false, true, false, intRange(0, 7 * 86400)},
                  {"enabled", Kind::boolean},
                  {"comment", Kind::text, false, true, false, textMax(1024)}},
                 {},
                 {"cluster_id", "name", "protocol", "enabled"},
                 {"name", "id", "cluster_id", "created_at", "updated_at"},
                 true});
    v.push_back({Res::certificates, "certificates", "certificates", "certificate",
                 {{"name", Kind::text, true, true, false, nameCheck},
                  {"description", Kind::text, false, true, false, textMax(1024)},
                  {"cert_pem", Kind::text, true, true, false, pemCert},
                  {"key_pem", Kind::text, true, true, false, pemKey, true}},
                 {{"not_after", Kind::text}, {"not_before", Kind::text}, {"kind", Kind::text}, {"serial", Kind::text},
                  {"subject", Kind::text}, {"issuer", Kind::text}, {"sans", Kind::array}, {"revoked_at", Kind::text},
                  {"revoke_reason", Kind::text}, {"renewed_at", Kind::text}},
                 {"name", "kind"},
                 {"name", "id", "not_after", "kind", "created_at", "updated_at"}});
    return v;
  }();
  return all;
}

// (A loop, not find_if with a lambda: clang 14 cannot capture structured bindings.)
const Field* findField(const Spec& s, const std::string& name) {
  for (const auto& f : s.fields)
    if (f.name == name) return &f;
  return nullptr;
}

const Spec& specFor(const std::string& path) {
  for (const auto& s : specs())
    if (s.path == path) return s;
  throw std::logic_error("no spec " + path);
}

// --- values ----------------------------------------------------------------------------------

store::Param toColumn(const Field& f, const Json& v) {
  if (v.is_null()) return std::nullopt;
  switch (f.kind) {
    case Kind::text: return v.get<std::string>();
    case Kind::integer: return std::to_string(v.get<std::int64_t>());
    case Kind::boolean: return std::string(v.get<bool>() ? "1" : "0");
    default: return v.dump();
  }
}

Json fromColumn(Kind k, const std::optional<std::string>& v) {
  if (!v) return nullptr;
  switch (k) {
    case Kind::text: return *v;
    case Kind::integer: return std::stoll(*v);
    case Kind::boolean: return *v != "0";
    default: return Json::parse(*v, nullptr, false);
  }
}

Json rowJson(const Spec& s, const Row& r) {
  Json j = {{"id", r.i64("id")}};
  for (const auto& f : s.fields)
    if (!f.write_only) j[f.name] = fromColumn(f.kind, r.at(f.name));
  for (const auto& [col, k] : s.readonly_out) j[col] = fromColumn(k, r.at(col));
  if (s.res == Res::services) j["has_secret"] = !r.isNull("secret_enc");
  if (s.res == Res::certificates) {
    j["revoked"] = !r.isNull("revoked_at");
    j["has_key"] = !r.str("key_enc").empty();
  }
  j["created_at"] = r.str("created_at");
  j["updated_at"] = r.str("updated_at");
  j["version"] = r.i64("version");
  return j;
}

std::string etag(std::int64_t version) { return "\"" + std::to_string(version) + "\""; }

}  // namespace

void validateResourceBody(const std::string& resource, const Json& body, bool create) {
  const Spec& s = specFor(resource);
  if (!body.is_object()) throw ApiError(422, "invalid-field", "request body must be a JSON object");
  for (const auto& [k, v] : body.items()) {
    const Field* it = findField(s, k);
    if (!it) validate::fail(k, "unknown field");
    if (!create && !it->updatable) validate::fail(k, "cannot be changed after creation");
    if (v.is_null()) {
      if (!it->nullable) validate::fail(k, "must not be null");
      continue;
    }
    if (!kindMatches(it->kind, v)) validate::fail(k, std::string("expected ") + kindName(it->kind));
    if (it->check) it->check(v, k);
  }
  if (create)
    for (const auto& f : s.fields)
      if (f.required && !body.contains(f.name)) validate::fail(f.name, "required");
  // Cross-field rules.
  if (s.res == Res::mappings && create) {
    bool has_src = (body.contains("source_services") && !body["source_services"].empty()) ||
                   (body.contains("source_collections") && !body["source_collections"].empty());
    if (!has_src) validate::fail("source_services", "a mapping needs source services or source collections");
  }
  if (s.res == Res::routes && body.contains("health_check") && body["health_check"].is_object()) {
    // The proxies refuse a check whose timeout is not shorter than its interval.
    const Json& hc = body["health_check"];
    if (hc.contains("timeout_ms") && hc["timeout_ms"].get<std::int64_t>() >= hc.value("interval_ms", std::int64_t(5000)))
      validate::fail("health_check.timeout_ms", "must be shorter than health_check.interval_ms");
  }
  if (s.res == Res::certificates && !create && (body.contains("cert_pem") != body.contains("key_pem")))
    validate::fail(body.contains("cert_pem") ? "key_pem" : "cert_pem",
                   "the certificate and its key are replaced together");
}

namespace {

struct Ctx {
  App& app;
  const Spec& spec;
  Principal who;
  const Request& req;
};

// Forwards a cluster may have: each is a listen socket per egress worker.
constexpr std::int64_t kMaxForwardsPerCluster = 256;

// Takes the cluster row's write lock for the rest of the transaction. Listen-port checks read the
// cluster's forwards and listeners; without the lock two managers on one PostgreSQL database (READ
// COMMITTED) would both find a port free and both insert it. SQLite writes are serialised already.
void lockCluster(Conn& c, std::int64_t cid) {
  c.exec("UPDATE clusters SET config_version = config_version WHERE id = ?", {std::to_string(cid)});
}

// "host:port" / "[v6]:port" (validated) → {host without brackets in canonical text, port}: "[0::0]"
// is "::" and "[::0001]" is "::1", so equal addresses compare equal and every wildcard is seen.
std::pair<std::string, std::string> splitListen(const std::string& hp) {
  auto colon = hp.rfind(':');
  std::string host = hp.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  unsigned char b[16];
  char text[INET6_ADDRSTRLEN];
  int family = host.find(':') != std::string::npos ? AF_INET6 : AF_INET;
  if (inet_pton(family, host.c_str(), b) == 1 && inet_ntop(family, b, text, sizeof text)) host = text;
  return {host, hp.substr(colon + 1)};
}

// Throws 403 unless `who` may do `op` on this object. `values` is the object after the change.
void authorize(Ctx& x, Conn& c, Op op, const Json& values) {
  const Principal& p = x.who;
  if (p.isAdmin()) return;
  if (op != Op::read) policy::requireWriter(p);
  std::int64_t cid = values.contains("cluster_id") && values["cluster_id"].is_number_integer()
                         ? values["cluster_id"].get<std::int64_t>()
                         : 0;
  std::int64_t id = values.value("id", std::int64_t(0));
  switch (x.spec.res) {
    case Res::clusters:
      if (op == Op::read ? policy::seesCluster(c, p, id) : (op == Op::update && policy::ownsCluster(c, p, id))) return;
      policy::deny(op == Op::read || op == Op::update ? "cluster " + std::to_string(id) + " is not assigned to you"
                                                      : "only admins create, delete or re-key clusters");
    case Res::services:
      if (op == Op::create ? policy::ownsCluster(c, p, cid) : policy::ownsService(c, p, id)) return;
      policy::deny(op == Op::create ? "cluster " + std::to_string(cid) + " is not assigned to you"
                                    : "service " + std::to_string(id) + " is not assigned to you");
    case Res::mappings: {
      if (op == Op::read) {
        if (policy::seesCluster(c, p, cid)) return;
        policy::deny("cluster " + std::to_string(cid) + " is not assigned to you");
      }
      if (policy::ownsCluster(c, p, cid)) return;
      if (values.contains("source_collections") && !values["source_collections"].empty())
        policy::deny("mappings from collections need the cluster assigned to you");
      for (const auto& sid : values.value("source_services", Json::array()))
        if (!policy::ownsService(c, p, sid.get<std::int64_t>()))
          policy::deny("source service " + sid.dump() + " is not assigned to you");
      return;
    }
    case Res::forwards: {
      // As mappings: the cluster's owner, or a service owner whose services are every caller the
      // forward names (mTLS admits any service with a certificate, so it needs the cluster).
      if (op == Op::read) {
        if (policy::seesCluster(c, p, cid)) return;
        policy::deny("cluster " + std::to_string(cid) + " is not assigned to you");
      }
      if (policy::ownsCluster(c, p, cid)) return;
      if (values.value("mtls", false)) policy::deny("forwards with mtls need the cluster assigned to you");
      // A service owner's forward listens on one address and an unprivileged port: every address of
      // the egress hosts (0.0.0.0, ::) and ports below 1024 are the cluster owner's to hand out.
      if (values.contains("listen_address") && values["listen_address"].is_string()) {
        auto [host, port] = splitListen(values["listen_address"].get<std::string>());
        if (host == "0.0.0.0" || host == "::")
          policy::deny("listening on every address (" + values["listen_address"].get<std::string>() +
                       ") needs the cluster assigned to you; name one address");
        if (port.empty() || std::stoi(port) < 1024)
          policy::deny("listen ports below 1024 need the cluster assigned to you");
      }
      for (const auto& src : values.value("sources", Json::array()))
        if (src.is_object() && src.contains("service_id") && src["service_id"].is_number_integer() &&
            !policy::ownsService(c, p, src["service_id"].get<std::int64_t>()))
          policy::deny("source service " + src["service_id"].dump() + " is not assigned to you");
      return;
    }
    case Res::routes:
      if (op == Op::read && policy::seesCluster(c, p, cid)) return;
      policy::deny(op == Op::read ? "cluster " + std::to_string(cid) + " is not assigned to you"
                                  : "only admins edit ingress routes");
    case Res::certificates:
      if (op == Op::read) return;
      policy::deny("only admins edit certificates");
  }
}

// The change collides with another stored object (a listen port another forward or a listener of
// the cluster holds): 409 naming the field, as validate::fail does with 422.
[[noreturn]] void conflict(const std::string& field, const std::string& reason) {
  throw ApiError(409, "conflict", field + ": " + reason, field);
}

// Least privilege for a forward's callers: a non-admin may name, in `sources`, only networks inside
// the cluster's forward_source_networks, which only admins set. On update only the CIDRs the change
// adds are checked (an admin narrowing the list does not lock owners out of their other edits).
// Throws 403 (audited as denied) naming the entry.
void checkOwnerSources(Ctx& x, Conn& c, const Json& after, const Json* before) {
  if (x.who.isAdmin() || !after.contains("sources") || !after["sources"].is_array()) return;
  std::set<std::string> had;
  if (before)
    for (const auto& src : before->value("sources", Json::array()))
      if (src.is_object() && src.contains("cidr")) had.insert(src["cidr"].dump());
  std::int64_t cid = after["cluster_id"].get<std::int64_t>();
  auto row = c.exec("SELECT forward_source_networks FROM clusters WHERE id = ?", {std::to_string(cid)});
  Json allowed = row.empty() ? Json::array() : Json::parse(row.front().str("forward_source_networks"), nullptr, false);
  if (!allowed.is_array()) allowed = Json::array();
  std::vector<Net> nets;
  std::string list;
  for (const auto& a : allowed)
    if (a.is_string())
      if (auto n = parseNet(a.get<std::string>())) {
        nets.push_back(*n);
        list += (list.empty() ? "" : ", ") + a.get<std::string>();
      }
  const Json& sources = after["sources"];
  for (std::size_t i = 0; i < sources.size(); ++i) {
    if (!sources[i].is_object() || !sources[i].contains("cidr") || !sources[i]["cidr"].is_string()) continue;
    if (had.count(sources[i]["cidr"].dump())) continue;
    const std::string cidr = sources[i]["cidr"].get<std::string>();
    auto n = parseNet(cidr);
    bool inside = false;
    for (const auto& net : nets) inside |= n && netWithin(*n, net);
    if (inside) continue;
    const std::string field = "sources[" + std::to_string(i) + "]";
    throw ApiError(403, "forbidden",
                   field + ": " + cidr + " is outside the networks an admin allowed for forwards of cluster " +
                       std::to_string(cid) + " (forward_source_networks: " + (list.empty() ? "none" : list) +
                       "); ask an admin to widen them or to create this forward",
                   field + ".cidr");
  }
}

// A certificate a proxy serves: it must exist. Throws 422 naming the field.
void checkServerCertificate(Conn& c, const Json& v, const std::string& field) {
  if (!v.contains(field) || v[field].is_null()) return;
  if (c.exec("SELECT 1 FROM certificates WHERE id = ?", {std::to_string(v[field].get<std::int64_t>())}).empty())
    validate::fail(field, "certificate " + v[field].dump() + " does not exist");
}

// Two listen addresses take the same port when their ports match and their hosts are equal or one
// is the wildcard of the same family (0.0.0.0 covers every IPv4 address, :: every IPv6 one).
bool sameListenPort(const std::string& a, const std::string& b) {
  auto [ha, pa] = splitListen(a);
  auto [hb, pb] = splitListen(b);
  if (pa != pb) return false;
  bool va6 = ha.find(':') != std::string::npos, vb6 = hb.find(':') != std::string::npos;
  auto any = [](const std::string& h) { return h == "0.0.0.0" || h == "::"; };
  return ha == hb || (va6 == vb6 && (any(ha) || any(hb)));
}

// The cluster's egress TCP listeners as its snapshot has them, and the admin endpoint: field ->
// address (schema defaults for a create that leaves them out; the TLS ones only while a certificate
// is set).
std::vector<std::pair<std::string, std::string>> egressListeners(const Json& v) {
  std::vector<std::pair<std::string, std::string>> out = {
      {"egress_proxy_address", v.value("egress_proxy_address", "127.0.0.1:3128")},
      {"egress_socks5_address", v.value("egress_socks5_address", "127.0.0.1:1080")},
      {"egress_admin_address", v.value("egress_admin_address", "127.0.0.1:9902")}};
  if (v.contains("egress_tls_certificate_id") && !v["egress_tls_certificate_id"].is_null()) {
    out.emplace_back("egress_tls_address", v.value("egress_tls_address", "127.0.0.1:3129"));
    if (std::string socks = v.value("egress_socks_tls_address", ""); !socks.empty())
      out.emplace_back("egress_socks_tls_address", socks);
  }
  return out;
}

// A cluster after the change: its TLS certificate exists, no two egress listeners take the same
// address, none takes a TCP forward's port, and mTLS forwards keep their certificate (the proxy
// would refuse the snapshot otherwise).
void checkClusterListeners(Conn& c, const Json& v) {
  checkServerCertificate(c, v, "egress_tls_certificate_id");
  auto listeners = egressListeners(v);
  for (std::size_t i = 2; i < listeners.size(); ++i)
    for (std::size_t k = 0; k < i; ++k)
      if (sameListenPort(listeners[i].second, listeners[k].second))
        validate::fail(listeners[i].first, listeners[i].second + " is already the cluster's " + listeners[k].first);
  const bool has_tls = v.contains("egress_tls_certificate_id") && !v["egress_tls_certificate_id"].is_null();
  if (!v.contains("id")) return;  // a new cluster has no forwards yet
  lockCluster(c, v["id"].get<std::int64_t>());
  auto fwd = c.exec("SELECT name, protocol, listen_address, mtls FROM forwards WHERE cluster_id = ? ORDER BY name",
                    {v["id"].dump()});
  for (const auto& f : fwd.rows) {
    if (f.i64("mtls") && !has_tls)
      validate::fail("egress_tls_certificate_id", "forward \"" + f.str("name") +
                                                       "\" identifies its callers by client certificate; change or "
                                                       "delete it first");
    if (f.str("protocol") != "tcp") continue;
    for (const auto& [field, addr] : listeners)
      if (sameListenPort(addr, f.str("listen_address")))
        conflict(field, addr + " is the listen address of forward \"" + f.str("name") + "\"");
  }
}

// A forward after the change (`v` has every field the caller set; the rest take the schema's
// defaults): one destination, callers that can be identified, and a listen port nothing else of the
// cluster's egress proxies takes. Throws 422 naming the field.
void checkForward(Conn& c, const Json& v, std::int64_t cid) {
  lockCluster(c, cid);
  if (c.exec("SELECT COUNT(*) AS n FROM forwards WHERE cluster_id = ? AND id <> ?",
             {std::to_string(cid), std::to_string(v.value("id", std::int64_t(0)))})
          .front()
          .i64("n") >= kMaxForwardsPerCluster)
    validate::fail("cluster_id", "cluster " + std::to_string(cid) + " already has " +
                                     std::to_string(kMaxForwardsPerCluster) + " forwards (the limit)");
  // Forwards share the listeners' names in the snapshot.
  for (const char* reserved : {"proxy", "socks5", "proxy-tls", "socks5-tls"})
    if (v.value("name", "") == reserved)
      validate::fail("name", std::string("\"") + reserved + "\" is the name of an egress listener");
  const std::string protocol = v.value("protocol", "tcp");
  const bool mtls = v.value("mtls", false);
  const bool by_service = v.contains("destination_service_id") && !v["destination_service_id"].is_null();
  const bool has_port = v.contains("destination_port") && !v["destination_port"].is_null();
  const std::string dest = v.value("destination", "");
  if (by_service && !dest.empty())
    validate::fail("destination", "give either destination (host:port) or destination_service_id, not both");
  if (!by_service && dest.empty())
    validate::fail("destination", "required: \"host:port\", or destination_service_id with destination_port");
  if (by_service && !has_port) validate::fail("destination_port", "required with destination_service_id");
  if (!by_service && has_port) validate::fail("destination_port", "only with destination_service_id");
  auto serviceIn = [&](std::int64_t sid, const std::string& field) {
    auto r = c.exec("SELECT cluster_id, ip_fqdn FROM services WHERE id = ?", {std::to_string(sid)});
    if (r.empty()) validate::fail(field, "service " + std::to_string(sid) + " does not exist");
    if (r.front().i64("cluster_id") != cid)
      validate::fail(field, "service " + std::to_string(sid) + " belongs to another cluster");
    return r.front().str("ip_fqdn");
  };
  if (by_service) {
    std::string host = serviceIn(v["destination_service_id"].get<std::int64_t>(), "destination_service_id");
    if (host.find('/') != std::string::npos)
      validate::fail("destination_service_id", "service " + v["destination_service_id"].dump() + " is a network (" +
                                                   host + "); a forward needs one host");
  }
  const Json sources = v.value("sources", Json::array());
  for (std::size_t i = 0; i < sources.size(); ++i)
    serviceIn(sources[i]["service_id"].get<std::int64_t>(), "sources[" + std::to_string(i) + "].service_id");
  if (mtls && protocol == "udp") validate::fail("mtls", "client certificates are for tcp forwards only (this one is udp)");
  if (!mtls && sources.empty())
    validate::fail("sources", "a forward needs sources (CIDR -> service) or mtls (client certificate CN = service)");
  auto cl = c.exec("SELECT * FROM clusters WHERE id = ?", {std::to_string(cid)});
  Json cluster = Json::object();
  for (const char* k : {"egress_proxy_address", "egress_socks5_address", "egress_tls_address", "egress_socks_tls_address",
                        "egress_admin_address"})
    cluster[k] = cl.front().str(k);
  if (!cl.front().isNull("egress_tls_certificate_id")) cluster["egress_tls_certificate_id"] = cl.front().i64("egress_tls_certificate_id");
  if (mtls && !cluster.contains("egress_tls_certificate_id"))
    validate::fail("mtls", "needs the cluster's egress_tls_certificate_id (the certificate the forward serves)");
  // A port something else of the cluster's egress proxies holds: 409, the other holder named.
  const std::string listen = v["listen_address"].get<std::string>();
  if (protocol == "tcp")
    for (const auto& [field, addr] : egressListeners(cluster))
      if (sameListenPort(addr, listen))
        conflict("listen_address", listen + " is already the cluster's " + field +
                                       (field == "egress_admin_address" ? " (the egress proxies' /metrics and /ready)"
                                                                         : " (an egress proxy listener)"));
  auto others = c.exec("SELECT id, name, listen_address FROM forwards WHERE cluster_id = ? AND protocol = ? AND id <> ?",
                       {std::to_string(cid), protocol, std::to_string(v.value("id", std::int64_t(0)))});
  for (const auto& o : others.rows)
    if (sameListenPort(o.str("listen_address"), listen))
      conflict("listen_address", listen + " (" + protocol + ") is already the listen address of forward \"" +
                                     o.str("name") + "\"");
}

// Checks that referenced objects exist and live in the same cluster. Throws 422 naming the field.
void checkReferences(Conn& c, const Spec& s, const Json& v) {
  if (s.res == Res::clusters) return checkClusterListeners(c, v);
  if (!s.cluster_scoped) return;
  std::int64_t cid = v["cluster_id"].get<std::int64_t>();
  if (c.exec("SELECT 1 FROM clusters WHERE id = ?", {std::to_string(cid)}).empty())
    validate::fail("cluster_id", "cluster " + std::to_string(cid) + " does not exist");
  auto services = [&](const char* field) {
    if (!v.contains(field)) return;
    for (std::size_t i = 0; i < v[field].size(); ++i) {
      auto sid = v[field][i].get<std::int64_t>();
      auto r = c.exec("SELECT cluster_id FROM services WHERE id = ?", {std::to_string(sid)});
      std::string fi = std::string(field) + "[" + std::to_string(i) + "]";
      if (r.empty()) validate::fail(fi, "service " + std::to_string(sid) + " does not exist");
      if (r.front().i64("cluster_id") != cid)
        validate::fail(fi, "service " + std::to_string(sid) + " belongs to another cluster");
    }
  };
  if (s.res == Res::mappings) {
    services("source_services");
    services("destination_services");
    bool icmp_only = true;
    for (const auto& pr : v["protocols"]) icmp_only &= pr == "icmp";
    if (!icmp_only && v.value("ports", Json::array()).empty())
      validate::fail("ports", "required for tcp, udp, http and https mappings");
  }
  if (s.res == Res::routes) checkServerCertificate(c, v, "certificate_id");
  if (s.res == Res::forwards) checkForward(c, v, cid);
  // A forward's destination service stays one host: a network there would compile to a destination
  // the proxies refuse, and with it the cluster's whole egress snapshot.
  if (s.res == Res::services && v.contains("id") && v.value("ip_fqdn", "").find('/') != std::string::npos) {
    auto f = c.exec("SELECT name FROM forwards WHERE destination_service_id = ? ORDER BY name LIMIT 1", {v["id"].dump()});
    if (!f.empty())
      validate::fail("ip_fqdn", "\"" + v["ip_fqdn"].get<std::string>() + "\" is a network; forward \"" +
                                    f.front().str("name") + "\" sends to this service and needs one host");
  }
}

// The CA's own certificates and proxy certificates belong to the CA and the control channel.
void guardCaManaged(const Json& cert, const std::string& verb) {
  std::string kind = cert.value("kind", "imported");
  if (kind == "ca")
    throw ApiError(409, "conflict", "certificate " + cert["id"].dump() + " is the certificate authority's own; it cannot be " + verb);
  if (kind == "proxy")
    throw ApiError(409, "conflict", "certificate " + cert["id"].dump() + " belongs to a registered proxy; revoke it "
                                    "(POST /api/v1/certificates/" + cert["id"].dump() + "/revoke) or delete the proxy");
}

// A server or client certificate MarchProxy issued may be deleted once it can no longer be trusted:
// revoked (its serials stay in the CRL: the CRL reads certificate_serials, which a delete leaves
// alone) or with every serial expired. Deleting a valid one would leave it trusted and, with its
// row gone, unrevocable until it expires.
void guardIssuedDelete(Conn& c, const Json& cert) {
  std::string kind = cert.value("kind", "imported");
  if (kind != "server" && kind != "client") return;
  auto id = cert["id"].dump();
  std::string now = util::nowIso(), until;
  // The row's current certificate, then every earlier serial it had (renewals).
  if (!cert.value("revoked", false) && cert.value("not_after", "") > now) until = cert.value("not_after", "");
  auto live = c.exec("SELECT MAX(not_after) AS until FROM certificate_serials WHERE certificate_id = ? AND "
                     "revoked_at IS NULL AND not_after > ?",
                     {id, now});
  if (!live.empty() && live.front().str("until") > until) until = live.front().str("until");
  if (until.empty()) return;
  throw ApiError(409, "conflict", "certificate " + id + " was issued by MarchProxy and is valid until " + until +
                                      "; revoke it first (POST /api/v1/certificates/" + id + "/revoke), then delete it");
}

void bumpCluster(Conn& c, std::int64_t cluster_id) {
  c.exec("UPDATE clusters SET config_version = config_version + 1 WHERE id = ?", {std::to_string(cluster_id)});
}

// Resource-specific columns computed on create/update (hashes, sealed secrets). Returns extra
// response fields shown exactly once (api_key, secret).
Json applyHooks(Ctx& x, Conn& c, std::vector<std::pair<std::string, store::Param>>& cols, const Json& body, const Json* before) {
  Json once = Json::object();
  switch (x.spec.res) {
    case Res::clusters:
      if (!before) {
        std::string key = crypto::randomToken("mpk_");
        cols.emplace_back("api_key_hash", crypto::sha256Hex(key));
        once["api_key"] = key;
      }
      break;
    case Res::services: {
      std::string old_type = before ? before->value("auth_type", "none") : "none";
      std::string type = body.value("auth_type", old_type);
      if (type != old_type || (!before && type != "none")) {
        if (type == "none") {
          cols.emplace_back("secret_enc", std::nullopt);
          cols.emplace_back("secret_rotated_at", std::nullopt);
        } else {
          std::string secret = type == "jwt" ? crypto::base64urlEncode(crypto::randomBytes(32))
                                             : crypto::randomToken("mps_");
          cols.emplace_back("secret_enc", x.app.keys.seal(secret, "services.secret"));
          cols.emplace_back("secret_rotated_at", util::nowIso());
          once["secret"] = secret;
        }
      }
      break;
    }
    case Res::certificates:
      for (auto& [col, val] : cols) {
        if (col == "key_pem") {
          col = "key_enc";
          val = x.app.keys.seal(*val, "certificates.key");
        }
      }
      if (body.contains("cert_pem")) {
        const auto& pem = body["cert_pem"].get_ref<const std::string&>();
        const auto& keypem = body["key_pem"].get_ref<const std::string&>();
        std::unique_ptr<BIO, decltype(&BIO_free)> b1(BIO_new_mem_buf(pem.data(), int(pem.size())), BIO_free);
        std::unique_ptr<X509, decltype(&X509_free)> cert(PEM_read_bio_X509(b1.get(), nullptr, nullptr, nullptr),
                                                         X509_free);
        std::unique_ptr<BIO, decltype(&BIO_free)> b2(BIO_new_mem_buf(keypem.data(), int(keypem.size())), BIO_free);
        std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(
            PEM_read_bio_PrivateKey(b2.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
        ca::CertFacts f = ca::checkImport(pem, keypem);
        if (before && before->value("kind", "imported") != "imported")
          throw ApiError(409, "conflict", "certificate " + before->value("id", Json(0)).dump() + " was issued by "
                                          "MarchProxy (" + before->value("kind", "") + "); it is renewed, not replaced");
        auto dup = c.exec("SELECT id FROM certificates WHERE issuer = ? AND serial = ?", {f.issuer, f.serial});
        if (!dup.empty() && (!before || dup.front().i64("id") != before->value("id", Json(0)).get<std::int64_t>()))
          validate::fail("cert_pem", "this certificate (serial " + f.serial + ") is already stored as certificate " +
                                         dup.front().str("id"));
        cols.emplace_back("not_after", f.not_after);
        cols.emplace_back("not_before", f.not_before);
        cols.emplace_back("serial", f.serial);
        cols.emplace_back("subject", f.subject);
        cols.emplace_back("issuer", f.issuer);
        cols.emplace_back("sans", Json(f.sans).dump());
      }
      break;
    default:
      break;
  }
  return once;
}

std::string fieldList(const Json& body) {
  std::string out;
  for (const auto& [k, v] : body.items()) out += (out.empty() ? "" : ", ") + k;
  return out;
}

// Maps database constraint failures to client errors.
[[noreturn]] void rethrowDb(const store::DbError& e, const Spec& s) {
  if (e.kind == store::DbError::Kind::unique)
    throw ApiError(409, "conflict", "a " + s.noun + " with this name already exists" +
                                        (s.cluster_scoped ? " in this cluster" : ""), "name");
  if (e.kind == store::DbError::Kind::foreign_key)
    throw ApiError(409, "conflict", "the " + s.noun + " is still referenced by other objects; remove those first");
  throw;
}

std::optional<std::int64_t> ifMatch(const Request& req) {
  std::string h = req.header("if-match");
  if (h.empty() || h == "*") return std::nullopt;
  if (h.size() >= 2 && h.front() == 'W' && h[1] == '/') h = h.substr(2);
  if (h.size() < 3 || h.front() != '"' || h.back() != '"' ||
      h.find_first_not_of("0123456789", 1) != h.size() - 1)
    throw ApiError(412, "precondition-failed", "If-Match does not name a version of this resource", "If-Match");
  return std::stoll(h.substr(1, h.size() - 2));
}

Row loadRow(Conn& c, const Spec& s, std::int64_t id) {
  auto rows = c.exec("SELECT * FROM " + s.table + " WHERE id = ?", {std::to_string(id)});
  if (rows.empty()) throw ApiError(404, "not-found", s.noun + " " + std::to_string(id) + " does not exist");
  return rows.rows.front();
}

// Role-level refusals that need no object: made before the body is parsed so a viewer gets 403, not
// a validation error about a body it may not send at all.
void earlyDeny(Ctx& x, Op op) {
  const Principal& p = x.who;
  if (p.isAdmin()) return;
  std::string why;
  if (p.role == "viewer") why = "the viewer role is read-only";
  else if (x.spec.res == Res::routes || x.spec.res == Res::certificates) why = "only admins edit " + x.spec.path;
  else if (x.spec.res == Res::clusters && op != Op::update) why = "only admins create, delete or re-key clusters";
  if (why.empty()) return;
  policy::deny(why);  // audited by the route's wrapper, as every refused write

}

Response list(Ctx& x) {
  const Spec& s = x.spec;
  std::int64_t limit = 100, offset = 0;
  std::string order = "id";
  std::string where = "1=1";
  store::Params params;
  auto num = [&](const std::string& k, const std::string& v, std::int64_t lo, std::int64_t hi) {
    if (v.empty() || v.size() > 12 || v.find_first_not_of("0123456789") != std::string::npos || std::stoll(v) < lo ||
        std::stoll(v) > hi)
      throw ApiError(400, "invalid-query", k + " must be an integer " + std::to_string(lo) + "-" + std::to_string(hi),
                     k);
    return std::stoll(v);
  };
  for (const auto& [k, v] : x.req.query) {
    if (k == "limit") {
      limit = num(k, v, 1, 1000);
    } else if (k == "offset") {
      offset = num(k, v, 0, 1LL << 40);
    } else if (k == "sort") {
      bool desc = !v.empty() && v[0] == '-';
      std::string col = desc ? v.substr(1) : v;
      if (std::find(s.sorts.begin(), s.sorts.end(), col) == s.sorts.end()) {
        std::string allowed;
        for (const auto& a : s.sorts) allowed += (allowed.empty() ? "" : ", ") + a;
        throw ApiError(400, "invalid-query", "sort: cannot sort by \"" + col + "\" (allowed: " + allowed + ")", "sort");
      }
      order = col + (desc ? " DESC" : "") + ", id";
    } else if (k == "q") {
      std::string esc;
      for (char c : v) {
        if (c == '%' || c == '_' || c == '\\') esc += '\\';
        esc += c;
      }
      where += " AND name LIKE ? ESCAPE '\\'";
      params.push_back("%" + esc + "%");
    } else if (std::find(s.filters.begin(), s.filters.end(), k) != s.filters.end()) {
      const Field* f = findField(s, k);
      std::string val = v;
      if (f && f->kind == Kind::integer) val = std::to_string(num(k, v, 0, 1LL << 62));
      if (f && f->kind == Kind::boolean) {
        if (v != "true" && v != "false") throw ApiError(400, "invalid-query", k + " must be true or false", k);
        val = v == "true" ? "1" : "0";
      }
      where += " AND " + k + " = ?";
      params.push_back(val);
    } else {
      throw ApiError(400, "invalid-query", "unknown query parameter \"" + k + "\"", k);
    }
  }
  if (x.who.isOwner()) {
    auto uid = std::to_string(x.who.user_id);
    if (s.res == Res::clusters) where += " AND id IN (SELECT cluster_id FROM user_clusters WHERE user_id = ? UNION SELECT s2.cluster_id "
                                         "FROM user_services us2 JOIN services s2 ON s2.id = us2.service_id WHERE us2.user_id = ?)";
    else if (s.res == Res::services) where += " AND " + policy::serviceScopeSql();
    else if (s.cluster_scoped) where += " AND " + policy::clusterScopeSql();
    if (s.res != Res::certificates) {
      params.push_back(uid);
      params.push_back(uid);
    }
  }
  return x.app.db.read([&](Conn& c) {
    auto total = c.exec("SELECT COUNT(*) AS n FROM " + s.table + " WHERE " + where, params).front().i64("n");
    auto p2 = params;
    p2.push_back(std::to_string(limit));
    p2.push_back(std::to_string(offset));
    auto rows = c.exec("SELECT * FROM " + s.table + " WHERE " + where + " ORDER BY " + order + " LIMIT ? OFFSET ?", p2);
    Json items = Json::array();
    for (const auto& r : rows.rows) items.push_back(rowJson(s, r));
    return Response::json(200, {{"items", items}, {"total", total}, {"limit", limit}, {"offset", offset}});
  });
}

Response getOne(Ctx& x) {
  auto id = pathId(x.req);
  return x.app.db.read([&](Conn& c) {
    Row r = loadRow(c, x.spec, id);
    Json j = rowJson(x.spec, r);
    authorize(x, c, Op::read, j);
    auto resp = Response::json(200, j);
    resp.headers.emplace_back("ETag", etag(r.i64("version")));
    return resp;
  });
}

Response create(Ctx& x) {
  const Spec& s = x.spec;
  std::string action = s.noun + ".create";
  earlyDeny(x, Op::create);
  Json body = parseBody(x.req);
  validateResourceBody(s.path, body, true);
  try {
    return x.app.db.write([&](Conn& c) {
      authorize(x, c, Op::create, body);
      if (s.res == Res::forwards) checkOwnerSources(x, c, body, nullptr);
      checkReferences(c, s, body);
      std::vector<std::pair<std::string, store::Param>> cols;
      for (const auto& [k, v] : body.items()) {
        cols.emplace_back(k, toColumn(*findField(s, k), v));
      }
      Json once = applyHooks(x, c, cols, body, nullptr);
      std::string now = util::nowIso();
      cols.emplace_back("created_at", now);
      cols.emplace_back("updated_at", now);
      std::string names, marks;
      store::Params params;
      for (auto& [k, v] : cols) {
        names += (names.empty() ? "" : ", ") + k;
        marks += marks.empty() ? "?" : ", ?";
        params.push_back(v);
      }
      auto ins = c.exec("INSERT INTO " + s.table + " (" + names + ") VALUES (" + marks + ") RETURNING id", params);
      std::int64_t id = ins.front().i64("id");
      if (s.cluster_scoped) bumpCluster(c, body["cluster_id"].get<std::int64_t>());
      audit::append(c, {x.who.username, x.req.remote_ip, action, s.path + "/" + std::to_string(id),
                        "created " + s.noun + " \"" + body.value("name", "") + "\" (" + fieldList(body) + ")"});
      Row r = loadRow(c, s, id);
      Json j = rowJson(s, r);
      for (const auto& [k, v] : once.items()) j[k] = v;
      auto resp = Response::json(201, j);
      resp.headers.emplace_back("Location", "/api/v1/" + s.path + "/" + std::to_string(id));
      resp.headers.emplace_back("ETag", etag(r.i64("version")));
      return resp;
    });
  } catch (const store::DbError& e) {
    rethrowDb(e, s);
  }
}

Response update(Ctx& x) {
  const Spec& s = x.spec;
  auto id = pathId(x.req);
  std::string action = s.noun + ".update", resource = s.path + "/" + std::to_string(id);
  earlyDeny(x, Op::update);
  Json body = parseBody(x.req);
  validateResourceBody(s.path, body, false);
  auto expected = ifMatch(x.req);
  try {
    return x.app.db.write([&](Conn& c) {
      Row before_row = loadRow(c, s, id);
      Json before = rowJson(s, before_row);
      authorize(x, c, Op::update, before);
      if (s.res == Res::certificates) guardCaManaged(before, "changed");
      Json after = before;
      for (const auto& [k, v] : body.items()) after[k] = v;
      authorize(x, c, Op::update, after);
      // The certificate's private key is shipped to the cluster's proxies: as for routes' certificates,
      // only admins choose it.
      if (s.res == Res::clusters && !x.who.isAdmin() && body.contains("egress_tls_certificate_id") &&
          body["egress_tls_certificate_id"] != before["egress_tls_certificate_id"])
        policy::deny("only admins set egress_tls_certificate_id");
      // Bounds on what the cluster's owners may do with forwards: set by admins only.
      for (const char* guard : {"forward_source_networks", "egress_admin_address"})
        if (s.res == Res::clusters && !x.who.isAdmin() && body.contains(guard) && body[guard] != before[guard])
          policy::deny(std::string("only admins set ") + guard);
      if (s.res == Res::forwards) checkOwnerSources(x, c, after, &before);
      if (expected && *expected != before_row.i64("version"))
        throw ApiError(412, "precondition-failed",
                       s.noun + " " + std::to_string(id) + " changed since you read it (version " +
                           std::to_string(before_row.i64("version")) + ", If-Match " + std::to_string(*expected) + ")",
                       "If-Match");
      checkReferences(c, s, after);
      std::vector<std::pair<std::string, store::Param>> cols;
      for (const auto& [k, v] : body.items()) {
        cols.emplace_back(k, toColumn(*findField(s, k), v));
      }
      Json once = applyHooks(x, c, cols, body, &before);
      cols.emplace_back("updated_at", util::nowIso());
      std::string set;
      store::Params params;
      for (auto& [k, v] : cols) {
        set += (set.empty() ? "" : ", ") + k + " = ?";
        params.push_back(v);
      }
      params.push_back(std::to_string(id));
      params.push_back(std::to_string(before_row.i64("version")));
      auto res = c.exec("UPDATE " + s.table + " SET " + set + ", version = version + 1 WHERE id = ? AND version = ?",
                        params);
      if (res.affected != 1) throw ApiError(412, "precondition-failed", "concurrent update", "If-Match");
      if (s.cluster_scoped) bumpCluster(c, after["cluster_id"].get<std::int64_t>());
      if (s.res == Res::clusters) {
        bool proxies_see = false;  // name and description are for people only
        for (const auto& [k, v] : body.items()) proxies_see |= k != "name" && k != "description";
        if (proxies_see) bumpCluster(c, id);
      }
      if (s.res == Res::certificates) ca::bumpClustersServing(c, id);
      audit::append(c, {x.who.username, x.req.remote_ip, action, resource,
                        "updated " + s.noun + " \"" + after.value("name", "") + "\" (" + fieldList(body) + ")"});
      Row r = loadRow(c, s, id);
      Json j = rowJson(s, r);
      for (const auto& [k, v] : once.items()) j[k] = v;
      auto resp = Response::json(200, j);
      resp.headers.emplace_back("ETag", etag(r.i64("version")));
      return resp;
    });
  } catch (const store::DbError& e) {
    rethrowDb(e, s);
  }
}

Response remove(Ctx& x) {
  const Spec& s = x.spec;
  auto id = pathId(x.req);
  std::string action = s.noun + ".delete", resource = s.path + "/" + std::to_string(id);
  earlyDeny(x, Op::remove);
  auto expected = ifMatch(x.req);
  try {
    return x.app.db.write([&](Conn& c) {
      Row before_row = loadRow(c, s, id);
      Json before = rowJson(s, before_row);
      authorize(x, c, Op::remove, before);
      if (s.res == Res::certificates) {
        guardCaManaged(before, "deleted");
        guardIssuedDelete(c, before);
      }
      if (expected && *expected != before_row.i64("version"))
        throw ApiError(412, "precondition-failed",
                       s.noun + " " + std::to_string(id) + " changed since you read it", "If-Match");
      if (s.res == Res::clusters) {
        // Owned rows must go first; say which kind blocks the delete.
        for (const char* t : {"forwards", "services", "mappings", "ingress_routes"})
          if (!c.exec(std::string("SELECT 1 FROM ") + t + " WHERE cluster_id = ? LIMIT 1", {std::to_string(id)}).empty())
            throw ApiError(409, "conflict", "cluster " + std::to_string(id) + " still has " + t + "; delete them first");
      }
      if (s.res == Res::services) {
        // Mappings reference services inside JSON arrays, which foreign keys cannot see.
        auto maps = c.exec("SELECT id, source_services, destination_services FROM mappings WHERE cluster_id = ?",
                           {std::to_string(before["cluster_id"].get<std::int64_t>())});
        for (const auto& m : maps.rows) {
          for (const char* col : {"source_services", "destination_services"}) {
            auto arr = Json::parse(m.str(col), nullptr, false);
            for (const auto& sid : arr)
              if (sid == id)
                throw ApiError(409, "conflict", "service " + std::to_string(id) + " is used by mapping " +
                                                    m.str("id") + "; change or delete the mapping first");
          }
        }
        auto fwds = c.exec("SELECT id, sources, destination_service_id FROM forwards WHERE cluster_id = ?",
                           {std::to_string(before["cluster_id"].get<std::int64_t>())});
        for (const auto& f : fwds.rows) {
          bool uses = !f.isNull("destination_service_id") && f.i64("destination_service_id") == id;
          for (const auto& src : Json::parse(f.str("sources"), nullptr, false))
            uses |= src.is_object() && src.value("service_id", std::int64_t(0)) == id;
          if (uses)
            throw ApiError(409, "conflict", "service " + std::to_string(id) + " is used by forward " + f.str("id") +
                                                "; change or delete the forward first");
        }
      }
      c.exec("DELETE FROM " + s.table + " WHERE id = ?", {std::to_string(id)});
      if (s.cluster_scoped) bumpCluster(c, before["cluster_id"].get<std::int64_t>());
      audit::append(c, {x.who.username, x.req.remote_ip, action, resource,
                        "deleted " + s.noun + " \"" + before.value("name", "") + "\""});
      return Response::noContent();
    });
  } catch (const store::DbError& e) {
    rethrowDb(e, s);
  }
}

Response rotateClusterKey(Ctx& x) {
  auto id = pathId(x.req);
  earlyDeny(x, Op::rotate);
  std::int64_t grace = 3600;
  if (!x.req.body.empty()) {
    Json b = parseBody(x.req);
    for (const auto& [k, v] : b.items()) {
      if (k != "grace_seconds") validate::fail(k, "unknown field");
      if (!v.is_number_integer()) validate::fail(k, "expected an integer");
      intRange(0, 7 * 86400)(v, k);
      grace = v.get<std::int64_t>();
    }
  }
  std::string resource = "clusters/" + std::to_string(id);
  return x.app.db.write([&](Conn& c) {
    Row r = loadRow(c, x.spec, id);
    authorize(x, c, Op::rotate, rowJson(x.spec, r));
    std::string key = crypto::randomToken("mpk_");
    std::string until = util::isoFromUnixMs((util::unixNow() + grace) * 1000);
    c.exec("UPDATE clusters SET prev_api_key_hash = api_key_hash, prev_api_key_expires = ?, api_key_hash = ?, "
           "updated_at = ?, version = version + 1 WHERE id = ?",
           {until, crypto::sha256Hex(key), util::nowIso(), std::to_string(id)});
    audit::append(c, {x.who.username, x.req.remote_ip, "cluster.rotate_key", resource,
                      "rotated the API key; the previous key works until " + until});
    return Response::json(200, {{"api_key", key}, {"previous_key_valid_until", until}});
  });
}

Response rotateServiceSecret(Ctx& x) {
  auto id = pathId(x.req);
  std::string resource = "services/" + std::to_string(id);
  earlyDeny(x, Op::rotate);
  return x.app.db.write([&](Conn& c) {
    Row r = loadRow(c, x.spec, id);
    Json j = rowJson(x.spec, r);
    authorize(x, c, Op::rotate, j);
    std::string type = j["auth_type"];
    if (type == "none") validate::fail("auth_type", "service " + std::to_string(id) + " has no secret to rotate");
    std::string secret =
        type == "jwt" ? crypto::base64urlEncode(crypto::randomBytes(32)) : crypto::randomToken("mps_");
    c.exec("UPDATE services SET secret_enc = ?, secret_rotated_at = ?, updated_at = ?, version = version + 1 "
           "WHERE id = ?",
           {x.app.keys.seal(secret, "services.secret"), util::nowIso(), util::nowIso(), std::to_string(id)});
    bumpCluster(c, j["cluster_id"].get<std::int64_t>());
    audit::append(c, {x.who.username, x.req.remote_ip, "service.rotate_secret", resource, "rotated the " + type +
                                                                                         " secret"});
    return Response::json(200, {{"secret", secret}});
  });
}

// Proxies (next issue) authenticate with their cluster's API key; this endpoint lets them (and
// tests) check a key, honouring the grace window of the previous key after a rotation.
Response clusterWhoami(App& app, const Request& req) {
  std::string key = req.header("x-cluster-api-key");
  if (key.empty()) {
    ApiError e(401, "unauthorized", "missing X-Cluster-API-Key header");
    throw e;
  }
  std::string hash = crypto::sha256Hex(key);
  std::string now = util::nowIso();
  auto rows = app.db.read([&](Conn& c) {
    return c.exec("SELECT id, name, config_version FROM clusters WHERE api_key_hash = ? OR "
                  "(prev_api_key_hash = ? AND prev_api_key_expires > ?)",
                  {hash, hash, now});
  });
  if (rows.empty()) throw ApiError(401, "unauthorized", "unknown or expired cluster API key");
  const auto& r = rows.front();
  return Response::json(200, {{"cluster_id", r.i64("id")},
                              {"name", r.str("name")},
                              {"config_version", r.i64("config_version")}});
}

// The audit action and resource of a write route: ("forward.update", "forwards/7"), as the
// handlers name them in the rows they append on success.
std::pair<std::string, std::string> writeAction(const Spec& s, const Request& req) {
  std::string resource = s.path;
  if (auto it = req.params.find("id"); it != req.params.end()) {
    try {
      resource += "/" + std::to_string(pathId(req));
    } catch (const ApiError&) {  // not an id: the path names no object
    }
  }
  std::string verb = req.method == "PATCH" ? "update" : req.method == "DELETE" ? "delete" : "create";
  if (req.path.ends_with("/rotate-key")) verb = "rotate_key";
  if (req.path.ends_with("/rotate-secret")) verb = "rotate_secret";
  return {s.noun + "." + verb, resource};
}

void publishChange(const Spec& s, const Request& req, const Response& resp, const Json& before) {
  events::Event ev;
  ev.type = "object";
  ev.resource = s.path;
  Json obj = before;
  if (!resp.body.empty()) {
    Json j = Json::parse(resp.body, nullptr, false);
    if (j.is_object() && j.contains("id")) obj = j;
  }
  if (obj.is_object()) {
    obj.erase("api_key");  // shown once to the caller only
    obj.erase("secret");
  }
  ev.id = req.params.count("id") ? std::stoll(req.params.at("id")) : obj.value("id", std::int64_t(0));
  ev.action = req.method == "POST" ? (req.params.count("id") ? "rotated" : "created")
              : req.method == "DELETE" ? "deleted"
                                       : "updated";
  if (s.res == Res::clusters)
    ev.cluster_id = ev.id;
  else if (obj.is_object() && obj.contains("cluster_id") && obj["cluster_id"].is_number_integer())
    ev.cluster_id = obj["cluster_id"].get<std::int64_t>();
  if (ev.action != "rotated" && obj.is_object()) ev.data = obj;
  else ev.data = {{"id", ev.id}};
  events::bus().publish(std::move(ev));
}

}  // namespace

Json resourceJson(Conn& c, const std::string& resource, std::int64_t id) {
  const Spec& s = specFor(resource);
  return rowJson(s, loadRow(c, s, id));
}

bool mayReadObject(App& app, const Principal& who, const std::string& resource, const Json& object) {
  if (who.isAdmin()) return true;
  const Spec* spec = nullptr;
  for (const auto& sp : specs())
    if (sp.path == resource) spec = &sp;
  if (!spec || !object.is_object()) return false;
  Request none;
  Ctx x{app, *spec, who, none};
  try {
    app.db.read([&](Conn& c) { authorize(x, c, Op::read, object); });
    return true;
  } catch (const ApiError&) {
    return false;
  }
}

void addResourceRoutes(App& app, http::Router& router) {
  for (const auto& spec : specs()) {
    const Spec* s = &spec;
    std::string base = "/api/v1/" + s->path;
    auto wrap = [&app, s](Response (*fn)(Ctx&)) {
      return [&app, s, fn](Request& req) {
        Ctx x{app, *s, authenticate(app, req), req};
        if (req.method == "GET") return fn(x);
        // Every successful write is announced on the event bus (after its transaction committed).
        // A delete's event carries the object as it was, so subscribers can be scoped by its cluster.
        Json before;
        if (req.params.count("id")) {
          try {
            before = app.db.read([&](Conn& c) { return rowJson(*s, loadRow(c, *s, pathId(req))); });
          } catch (const std::exception&) {
          }
        }
        Response resp;
        try {
          resp = fn(x);
        } catch (const ApiError& e) {
          // Every refused change attempt is audited (actor, source IP, action, resource, reason).
          auto [action, resource] = writeAction(*s, req);
          policy::auditRefused(app, x.who, req, action, resource, e);
          throw;
        }
        if (resp.status < 300) publishChange(*s, req, resp, before);
        // Every write above bumps the config_version of the clusters it affects inside its
        // transaction; now that it has committed, wake the proxies' long-polls.
        if (app.on_config_write) app.on_config_write();
        return resp;
      };
    };
    router.add("GET", base, wrap(list));
    router.add("POST", base, wrap(create));
    router.add("GET", base + "/{id}", wrap(getOne));
    router.add("PATCH", base + "/{id}", wrap(update));
    router.add("DELETE", base + "/{id}", wrap(remove));
    if (s->res == Res::clusters) router.add("POST", base + "/{id}/rotate-key", wrap(rotateClusterKey));
    if (s->res == Res::services) router.add("POST", base + "/{id}/rotate-secret", wrap(rotateServiceSecret));
    // An externally issued certificate and its key (the same as POST /certificates, named for what it does).
    if (s->res == Res::certificates) router.add("POST", base + "/import", wrap(create));
  }
  router.add("GET", "/api/v1/cluster/whoami", [&app](Request& req) { return clusterWhoami(app, req); });
}

}  // namespace marchproxy::manager::api
