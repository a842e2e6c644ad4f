#include "manager/control/compiler.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <stdexcept>

#include "manager/crypto/crypto.h"

namespace marchproxy::manager::control {
namespace {

using Json = nlohmann::json;
using store::Conn;
using store::Row;

Json parseJson(const std::string& text, Json fallback) {
  Json j = Json::parse(text, nullptr, false);
  return j.is_discarded() ? fallback : j;
}

// "host:port" / "[v6]:port" (validated on write) → {address, port}.
Json listenerAt(const std::string& name, const std::string& host_port) {
  auto colon = host_port.rfind(':');
  std::string host = host_port.substr(0, colon);
  if (host.size() > 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  return {{"name", name}, {"address", host}, {"port", std::stoi(host_port.substr(colon + 1))}};
}

std::string ms(std::int64_t v) { return std::to_string(v) + "ms"; }

// A virtual host name from a route host: names allow letters, digits and . _ - : / only.
std::string vhostName(const std::string& host) {
  if (host == "*") return "default";
  if (host.rfind("*.", 0) == 0) return "wildcard." + host.substr(2);
  return host;
}

// Longest path first so that a more specific prefix of another route wins (first match wins in
// the proxy); ties keep route name order, so the result does not depend on row order.
struct RoutePath {
  std::string route, path;
  const Row* row;
  std::string name;  // unique per virtual host: the route's name, "<route>/<i>" for its i-th path
};

// Puts certificate `id` and its decrypted key into the snapshot's files as certs/<id>.pem and
// certs/<id>.key; returns {cert, key} with those paths, null when the row is gone.
Json shipCertificate(Conn& c, std::int64_t id, std::map<std::string, std::string>& files, const auth::KeyRing& keys) {
  auto rows = c.exec("SELECT cert_pem, key_enc FROM certificates WHERE id = ?", {std::to_string(id)});
  if (rows.empty()) return nullptr;
  auto key = keys.open(rows.front().str("key_enc"), "certificates.key");
  if (!key) throw std::runtime_error("certificate " + std::to_string(id) + ": the stored key does not decrypt");
  std::string base = "certs/" + std::to_string(id);
  files[base + ".pem"] = rows.front().str("cert_pem");
  files[base + ".key"] = *key;
  return {{"cert", base + ".pem"}, {"key", base + ".key"}};
}

Json compileIngress(Conn& c, const Row& cluster, std::map<std::string, std::string>& files, const std::string& ca_chain,
                    const auth::KeyRing& keys) {
  auto cid = std::to_string(cluster.i64("id"));
  auto routes = c.exec("SELECT * FROM ingress_routes WHERE cluster_id = ? AND enabled = 1 ORDER BY name", {cid});
  Json clusters = Json::array();
  std::map<std::string, std::vector<RoutePath>> by_host;
  std::set<std::int64_t> cert_ids;
  bool mtls = false;
  for (const auto& r : routes.rows) {
    std::string name = r.str("name");
    Json endpoints = Json::array();
    std::set<std::int64_t> weights;
    for (const auto& b : parseJson(r.str("backends"), Json::array())) {
      std::int64_t w = b.value("weight", std::int64_t(1));
      weights.insert(w);
      endpoints.push_back({{"address", b.value("address", "")}, {"weight", w}});
    }
    std::string policy = r.str("lb_policy");
    Json cl = {{"name", name}, {"endpoints", endpoints}};
    // The API's policies in the proxy's terms (docs/control-plane.md).
    if (policy == "least_conn" || policy == "random") cl["lb"] = "least_request";
    else if (policy == "ip_hash") cl["lb"] = "ring_hash", cl["hash_on"] = "source_ip";
    else cl["lb"] = weights.size() > 1 ? "weighted_round_robin" : "round_robin";
    Json hc = parseJson(r.str("health_check"), Json::object());
    if (hc.is_object() && !hc.empty()) {
      Json h = {{"type", "http"}, {"path", hc.value("path", "/")}};
      std::int64_t interval = hc.value("interval_ms", std::int64_t(5000));
      h["interval"] = ms(interval);
      // Without a timeout: the proxy's 1 s, but always shorter than the interval (it refuses otherwise).
      h["timeout"] = ms(hc.value("timeout_ms", std::min<std::int64_t>(1000, interval / 2)));
      if (hc.contains("healthy_threshold")) h["healthy_threshold"] = hc["healthy_threshold"];
      if (hc.contains("unhealthy_threshold")) h["unhealthy_threshold"] = hc["unhealthy_threshold"];
      cl["health_check"] = h;
    }
    clusters.push_back(cl);
    Json paths = parseJson(r.str("paths"), Json::array({"/"}));
    if (paths.empty()) paths.push_back("/");
    for (const auto& h : parseJson(r.str("hosts"), Json::array()))
      for (std::size_t i = 0; i < paths.size(); ++i)
        by_host[h.get<std::string>()].push_back(
            {name, paths[i].get<std::string>(), &r, paths.size() == 1 ? name : name + "/" + std::to_string(i + 1)});
    if (!r.isNull("certificate_id")) cert_ids.insert(r.i64("certificate_id"));
    if (!parseJson(r.str("mtls_allow"), Json::array()).empty()) mtls = true;
  }

  Json vhosts = Json::array();
  std::set<std::string> vnames;
  for (auto& [host, list] : by_host) {
    std::stable_sort(list.begin(), list.end(),
                     [](const RoutePath& a, const RoutePath& b) { return a.path.size() > b.path.size(); });
    Json rs = Json::array();
    for (const auto& rp : list) {
      Json route = {{"name", rp.name}, {"match", {{"prefix", rp.path}}}, {"forward", {{"cluster", rp.route}}}};
      Json rw = parseJson(rp.row->str("header_rewrites"), Json::array());
      Json rem = Json::array(), set = Json::array(), add = Json::array();
      for (const auto& h : rw) {
        std::string action = h.value("action", "");
        if (action == "remove") rem.push_back(h.value("name", ""));
        else (action == "set" ? set : add).push_back({{"name", h.value("name", "")}, {"value", h.value("value", "")}});
      }
      if (!rw.empty()) {
        Json req = Json::object();
        if (!rem.empty()) req["remove"] = rem;
        if (!set.empty()) req["set"] = set;
        if (!add.empty()) req["add"] = add;
        route["request_headers"] = req;
      }
      Json allow = parseJson(rp.row->str("mtls_allow"), Json::array());
      if (!allow.empty()) route["allowed_client_names"] = allow;
      // The API's {requests_per_second, burst}: per client address, in each proxy (docs/rate-limiting.md).
      Json rl = parseJson(rp.row->str("rate_limit"), Json::object());
      if (rl.is_object() && rl.value("requests_per_second", std::int64_t(0)) > 0) {
        Json limit = {{"requests_per_second", rl.value("requests_per_second", std::int64_t(0))}, {"key", "client_ip"}};
        if (rl.value("burst", std::int64_t(0)) > 0) limit["burst"] = rl.value("burst", std::int64_t(0));
        route["rate_limit"] = limit;
      }
      rs.push_back(route);
    }
    std::string vn = vhostName(host);
    for (int i = 2; !vnames.insert(vn).second; ++i) vn = vhostName(host) + "-" + std::to_string(i);
    vhosts.push_back({{"name", vn}, {"domains", {host}}, {"routes", rs}});
  }

  Json listeners = Json::array({listenerAt("http", cluster.str("ingress_http_address"))});
  if (!cert_ids.empty()) {
    Json certs = Json::array();
    for (auto id : cert_ids)
      if (Json cert = shipCertificate(c, id, files, keys); !cert.is_null()) certs.push_back(cert);
    Json tls = {{"certificates", certs}};
    if (mtls && !ca_chain.empty()) {
      files["ca/clients.pem"] = ca_chain;
      tls["client_auth"] = {{"mode", "optional"}, {"ca", "ca/clients.pem"}, {"crl", "ca/crl.pem"}};
    }
    Json l = listenerAt("https", cluster.str("ingress_https_address"));
    l["tls"] = tls;
    listeners.push_back(l);
  }
  return {{"schema", 1}, {"version", cluster.i64("config_version")}, {"listeners", listeners},
          {"virtual_hosts", vhosts}, {"clusters", clusters}};
}

// The cluster's enabled forwards in the egress's terms (docs/egress.md "Port forwards"): sources by
// service name, a service destination as its ip_fqdn, mTLS as a `tls` block with the cluster's
// certificate and the manager's CA. A forward the proxy could not identify callers for (its mTLS
// certificate or the CA is gone) is left out rather than shipped as a document the proxy refuses.
Json compileForwards(Conn& c, const std::string& cid, const std::map<std::int64_t, const Row*>& services,
                     const Json& server_tls, const std::string& ca_chain, std::map<std::string, std::string>& files) {
  auto rows = c.exec("SELECT * FROM forwards WHERE cluster_id = ? AND enabled = 1 ORDER BY name", {cid});
  Json out = Json::array();
  for (const auto& f : rows.rows) {
    Json fw = {{"name", f.str("name")}, {"listen", f.str("listen_address")}, {"protocol", f.str("protocol")}};
    if (!f.isNull("destination_service_id")) {
      auto it = services.find(f.i64("destination_service_id"));
      if (it == services.end()) continue;
      std::string host = it->second->str("ip_fqdn");
      // The API keeps it one host; a network written behind its back is left out, not shipped as a
      // destination that makes the proxy refuse the whole snapshot.
      if (host.find('/') != std::string::npos) continue;
      if (host.find(':') != std::string::npos) host = "[" + host + "]";
      fw["destination"] = host + ":" + std::to_string(f.i64("destination_port"));
    } else {
      fw["destination"] = f.str("destination");
    }
    Json sources = Json::array();
    for (const auto& src : parseJson(f.str("sources"), Json::array()))
      if (auto it = services.find(src.value("service_id", std::int64_t(0))); it != services.end())
        sources.push_back({{"cidr", src.value("cidr", "")}, {"service", it->second->str("name")}});
    if (!sources.empty()) fw["sources"] = sources;
    if (f.i64("mtls")) {
      if (server_tls.is_null() || ca_chain.empty()) continue;
      files["ca/clients.pem"] = ca_chain;
      Json tls = server_tls;
      tls["client_ca"] = "ca/clients.pem";
      tls["crl"] = "ca/crl.pem";
      fw["tls"] = tls;
    } else if (sources.empty()) {
      continue;
    }
    if (f.i64("idle_timeout_seconds") > 0) fw["idle_timeout"] = std::to_string(f.i64("idle_timeout_seconds")) + "s";
    out.push_back(fw);
  }
  return out;
}

Json compileEgress(Conn& c, const Row& cluster, std::map<std::string, std::string>& files, const std::string& ca_chain,
                   const auth::KeyRing& keys) {
  auto cid = std::to_string(cluster.i64("id"));
  auto svc = c.exec("SELECT id, name, ip_fqdn, collection, auth_type, secret_enc FROM services WHERE cluster_id = ? "
                    "ORDER BY name",
                    {cid});
  std::map<std::int64_t, const Row*> by_id;
  Json services = Json::array(), jwt_keys = Json::array();
  for (const auto& s : svc.rows) {
    by_id[s.i64("id")] = &s;
    Json tokens = Json::array();
    std::string type = s.str("auth_type");
    if (type != "none" && !s.isNull("secret_enc")) {
      auto secret = keys.open(s.str("secret_enc"), "services.secret");
      if (!secret) throw std::runtime_error("service " + s.str("name") + ": the stored secret does not decrypt");
      if (type == "base64") tokens.push_back("sha256:" + crypto::sha256Hex(*secret));
      else jwt_keys.push_back({{"id", s.str("name")}, {"alg", "HS256"}, {"secret", *secret}, {"service", s.str("name")}});
    }
    services.push_back({{"name", s.str("name")}, {"tokens", tokens}});
  }
  auto maps = c.exec("SELECT * FROM mappings WHERE cluster_id = ? AND enabled = 1 ORDER BY name", {cid});
  Json mappings = Json::array();
  for (const auto& m : maps.rows) {
    std::set<std::string> sources;
    for (const auto& id : parseJson(m.str("source_services"), Json::array()))
      if (auto it = by_id.find(id.get<std::int64_t>()); it != by_id.end()) sources.insert(it->second->str("name"));
    for (const auto& col : parseJson(m.str("source_collections"), Json::array()))
      for (const auto& s : svc.rows)
        if (s.str("collection") == col.get<std::string>()) sources.insert(s.str("name"));
    Json dests = Json::array();
    std::set<std::string> seen;
    for (const auto& id : parseJson(m.str("destination_services"), Json::array()))
      if (auto it = by_id.find(id.get<std::int64_t>()); it != by_id.end() && seen.insert(it->second->str("ip_fqdn")).second)
        dests.push_back(it->second->str("ip_fqdn"));
    // A mapping whose sources are all gone (an empty collection) allows nothing: leave it out
    // rather than ship a rule the proxy refuses.
    if (sources.empty() || dests.empty()) continue;
    Json ports = Json::array();
    for (const auto& p : parseJson(m.str("ports"), Json::array()))
      ports.push_back(p.is_string() ? p.get<std::string>() : std::to_string(p.get<std::int64_t>()));
    if (ports.empty()) ports.push_back("1-65535");  // icmp-only mappings: ports do not apply
    mappings.push_back({{"name", m.str("name")},
                        {"sources", Json(sources)},
                        {"destinations", dests},
                        {"protocols", parseJson(m.str("protocols"), Json::array())},
                        {"ports", ports},
                        {"priority", m.i64("priority")}});
  }
  Json doc = {{"schema", 1},
              {"kind", "egress"},
              {"listeners",
               {listenerAt("proxy", cluster.str("egress_proxy_address")),
                [&] {
                  Json l = listenerAt("socks5", cluster.str("egress_socks5_address"));
                  l["protocol"] = "socks5";
                  return l;
                }()}},
              {"services", services},
              {"mappings", mappings}};
  if (!jwt_keys.empty()) doc["jwt"] = {{"keys", jwt_keys}};
  // With a certificate: an HTTPS proxy listener too (and SOCKS5 over TLS when the cluster names an
  // address for it), where a client certificate the manager's CA issued names the service by its CN
  // (optional: credentials keep working without one).
  Json server_tls;  // {cert, key} of the cluster's egress certificate, null without one
  if (!cluster.isNull("egress_tls_certificate_id"))
    server_tls = shipCertificate(c, cluster.i64("egress_tls_certificate_id"), files, keys);
  if (!server_tls.is_null()) {
    Json tls = server_tls;
    if (!ca_chain.empty()) {
      files["ca/clients.pem"] = ca_chain;
      tls["client_ca"] = "ca/clients.pem";
      tls["crl"] = "ca/crl.pem";
      tls["client_auth"] = "optional";
    }
    Json l = listenerAt("proxy-tls", cluster.str("egress_tls_address"));
    l["tls"] = tls;
    doc["listeners"].push_back(l);
    if (std::string socks = cluster.str("egress_socks_tls_address"); !socks.empty()) {
      Json sl = listenerAt("socks5-tls", socks);
      sl["protocol"] = "socks5";
      sl["tls"] = tls;
      doc["listeners"].push_back(sl);
    }
  }
  Json forwards = compileForwards(c, cid, by_id, server_tls, ca_chain, files);
  if (!forwards.empty()) doc["forwards"] = forwards;
  return doc;
}

}  // namespace

std::int64_t clusterVersion(Conn& c, std::int64_t cluster_id) {
  auto rows = c.exec("SELECT config_version FROM clusters WHERE id = ?", {std::to_string(cluster_id)});
  return rows.empty() ? -1 : rows.front().i64("config_version");
}

Compiler::Compiler(store::Db& db, const auth::KeyRing& keys, CaSource ca) : db_(db), keys_(keys), ca_(std::move(ca)) {}

double Compiler::compileSeconds() const { return double(compile_ns_.load()) / 1e9; }

std::shared_ptr<const CompiledSnapshot> Compiler::compile(Conn& c, std::int64_t cluster_id, const std::string& kind,
                                                          const std::string& ca_chain, const std::string& crl) {
  if (kind != "ingress" && kind != "egress") throw std::invalid_argument("kind must be ingress or egress");
  auto t0 = std::chrono::steady_clock::now();
  auto rows = c.exec("SELECT * FROM clusters WHERE id = ?", {std::to_string(cluster_id)});
  if (rows.empty()) return nullptr;
  const Row& cluster = rows.front();
  auto snap = std::make_shared<CompiledSnapshot>();
  snap->cluster_id = cluster_id;
  snap->kind = kind;
  snap->version = cluster.i64("config_version");
  snap->config = kind == "ingress" ? compileIngress(c, cluster, snap->files, ca_chain, keys_)
                                   : compileEgress(c, cluster, snap->files, ca_chain, keys_);
  snap->files["ca/crl.pem"] = crl;
  Json files(snap->files);
  // nlohmann's object keeps keys sorted, so dump() is the canonical form.
  snap->hash = "sha256:" + crypto::sha256Hex(Json{{"config", snap->config}, {"files", files}}.dump());
  snap->body = Json{{"version", snap->version}, {"hash", snap->hash}, {"kind", kind}, {"config", snap->config},
                    {"files", files}}
                   .dump();
  compiles_.fetch_add(1);
  compile_ns_.fetch_add(std::uint64_t(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count()));
  return snap;
}

std::shared_ptr<const CompiledSnapshot> Compiler::get(std::int64_t cluster_id, const std::string& kind) {
  if (kind != "ingress" && kind != "egress") throw std::invalid_argument("kind must be ingress or egress");
  auto key = std::make_pair(cluster_id, kind);
  std::int64_t version = db_.read([&](Conn& c) { return clusterVersion(c, cluster_id); });
  if (version < 0) return nullptr;
  {
    std::lock_guard g(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end() && it->second->version == version) return it->second;
  }
  // One compile at a time: when a change wakes every long-poll at once, the first compiles and the
  // others find its result in the cache.
  std::lock_guard one(compile_mu_);
  {
    std::lock_guard g(mu_);
    auto it = cache_.find(key);
    if (it != cache_.end() && it->second->version >= version) return it->second;
  }
  // The CA material is read before the transaction: the CA reads the database itself, and a read
  // nested in a read would hold two pool connections.
  std::string chain = ca_.chain_pem ? ca_.chain_pem() : std::string();
  std::string crl = ca_.crl_pem ? ca_.crl_pem() : std::string();
  auto snap = db_.read([&](Conn& c) { return compile(c, cluster_id, kind, chain, crl); });
  if (!snap) return nullptr;
  std::lock_guard g(mu_);
  auto& slot = cache_[key];
  if (!slot || slot->version <= snap->version) slot = snap;
  return slot;
}

}  // namespace marchproxy::manager::control
