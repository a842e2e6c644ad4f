// The snapshot compiler and config versions over a real SQLite database, driven through the real
// API handlers: every compiled snapshot must load clean with the loader the proxies use
// (config::loadString for ingress, egress::loadString for egress), and config_version must move on
// every change a cluster's proxies see and on nothing else.
#include <gtest/gtest.h>
#include <thread>

#include "config/loader.h"
#include "egress/config.h"
#include <fstream>

#include "manager/api/context.h"
#include "manager/ca/authority.h"
#include "manager/control/compiler.h"
#include "manager/control/notifier.h"
#include "manager/crypto/crypto.h"
#include "manager/metrics.h"
#include "manager/store/migrations.h"
#include "manager/test_db.h"
#include "manager/util/time.h"

namespace mm = marchproxy::manager;
using nlohmann::json;

namespace {

// A self-signed P-256 certificate and its key, made with openssl for this test (not a secret).
constexpr const char* kCert = R"(-----BEGIN CERTIFICATE-----
MIIBvzCCAWagAwIBAgIUY2ydqnDoHTFa63FbjiPoGn6D6QowCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQd2ViLmV4YW1wbGUudGVzdDAgFw0yNjEyMDIwNTEyMDZaGA8y
MTI2MTEwODA1MTIwNlowGzEZMBcGA1UEAwwQd2ViLmV4YW1wbGUudGVzdDBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABLVqbX5WQUhXaOG6VIrP8r/s+9862Iu77OvP
1290kEi8Ze5jFZyMuG6GONntE+2q7L5s3bNl8AwYtioDUNinJYyjgYUwgYIwHQYD
VR0OBBYEFFxKRBd987dlEStjrgE75kV+KtF3MB8GA1UdIwQYMBaAFFxKRBd987dl
EStjrgE75kV+KtF3MA8GA1UdEwEB/wQFMAMBAf8wLwYDVR0RBCgwJoIQYXBpLmV4
YW1wbGUudGVzdIISKi5hcGkuZXhhbXBsZS50ZXN0MAoGCCqGSM49BAMCA0cAMEQC
IACCHuIi1toGxENh9rCRIlGF3GvCO9d7OqSOm24FFATZAiATwV3jsZ4yQzkVM1PQ
dzpHFM5PxzOWAON0zE8LbHRumg==
-----END CERTIFICATE-----
)";
constexpr const char* kKey = R"(-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgISclZ9E6nfFJ+v9H
TPbgSmBkVL6+XrkcvFBF2yPEJLGhRANCAAS1am1+VkFIV2jhulSKz/K/7PvfOtiL
u+zrz9dvdJBIvGXuYxWcjLhuhjjZ7RPtquy+bN2zZfAMGLYqA1DYpyWM
-----END PRIVATE KEY-----
)";

struct Env {
  mm::testing::TempDb tmp;
  std::unique_ptr<mm::store::Db>& db = tmp.db;
  mm::auth::KeyRing keys{mm::crypto::randomBytes(32)};
  mm::Metrics metrics;
  std::unique_ptr<mm::api::App> app;
  mm::http::Router router;
  std::string token;
  int writes = 0;

  Env() {
    keys.load(*db);
    app = std::make_unique<mm::api::App>(*db, keys, metrics);
    app->on_config_write = [this] { ++writes; };
    router = mm::api::buildRouter(*app);
    db->write([](mm::store::Conn& c) {
      c.exec("INSERT INTO users (username, password_hash, role, created_at, updated_at) "
             "VALUES ('admin', 'x', 'admin', 'now', 'now')");
    });
    auto now = mm::util::unixNow();
    token = keys.sign({{"sub", "1"}, {"exp", now + 3600}, {"iat", now}});
  }
  std::pair<int, json> call(const std::string& method, const std::string& path, const json& body = nullptr,
                            const std::map<std::string, std::string>& headers = {}) {
    mm::http::Request req;
    req.method = method;
    req.path = path;
    req.remote_ip = "127.0.0.1";
    req.headers["authorization"] = "Bearer " + token;
    for (const auto& [k, v] : headers) req.headers[k] = v;
    if (!body.is_null()) {
      req.headers["content-type"] = "application/json";
      req.body = body.dump();
    }
    try {
      auto resp = router.match(req).handler(req);
      return {resp.status, resp.body.empty() ? json() : json::parse(resp.body)};
    } catch (const mm::http::ApiError& e) {
      return {e.status, json{{"detail", e.detail}, {"field", e.field}}};
    }
  }
  std::int64_t create(const std::string& res, const json& body) {
    auto [st, j] = call("POST", "/api/v1/" + res, body);
    EXPECT_EQ(st, 201) << res << ": " << j.dump();
    return j.value("id", std::int64_t(0));
  }
  std::int64_t version(std::int64_t cluster) {
    return db->read([&](mm::store::Conn& c) { return mm::control::clusterVersion(c, cluster); });
  }
};

std::string errors(const std::vector<marchproxy::config::Diagnostic>& ds) {
  std::string out;
  for (const auto& d : ds) out += "line " + std::to_string(d.line) + ": " + d.path + ": " + d.message + "\n";
  return out;
}

// The proxy's own loader builds the TLS contexts from the shipped files: write them as the agent
// does, then load the document against that directory.
marchproxy::egress::LoadResult loadEgressWithFiles(const mm::control::CompiledSnapshot& snap,
                                                   const std::filesystem::path& dir) {
  for (const auto& [name, content] : snap.files) {
    auto path = dir / name;
    std::filesystem::create_directories(path.parent_path());
    std::ofstream(path) << content;
  }
  return marchproxy::egress::loadString(snap.config.dump(), dir.string());
}

mm::control::CaSource testCa() {
  return {[] { return std::string(kCert); }, [] { return std::string("-----BEGIN X509 CRL-----\n-----END X509 CRL-----\n"); }};
}

// A cluster with everything the compiler maps: weighted backends, every lb policy, health checks,
// header rewrites, a TLS certificate with an mTLS allow-list, a disabled route; services of every
// auth type, a collection, and mappings (by service, by collection, icmp-only, disabled).
struct Populated : Env {
  std::int64_t cluster = 0, other = 0;
  Populated() {
    cluster = create("clusters", {{"name", "prod"}, {"ingress_http_address", "127.0.0.1:18080"}});
    other = create("clusters", {{"name", "staging"}});
    auto key = call("POST", "/api/v1/certificates",
                    {{"name", "web"}, {"cert_pem", kCert}, {"key_pem", kKey}});
    EXPECT_EQ(key.first, 201) << key.second.dump();
    std::int64_t cert = key.second.value("id", std::int64_t(0));
    create("routes", {{"cluster_id", cluster}, {"name", "api"}, {"hosts", {"api.example.test", "*.api.example.test"}},
                      {"paths", {"/v1/", "/"}},
                      {"backends", {{{"address", "10.0.0.1:8080"}, {"weight", 3}}, {{"address", "backend.internal:8080"}}}},
                      {"lb_policy", "ip_hash"},
                      {"health_check", {{"path", "/healthz"}, {"interval_ms", 2000}, {"timeout_ms", 500}}},
                      {"header_rewrites", {{{"action", "set"}, {"name", "x-env"}, {"value", "prod"}},
                                           {{"action", "remove"}, {"name", "x-debug"}},
                                           {{"action", "add"}, {"name", "x-tag"}, {"value", "a"}},
                                           {{"action", "add"}, {"name", "x-tag"}, {"value", "b"}}}},
                      {"certificate_id", cert},
                      {"mtls_allow", {"billing-client"}},
                      {"rate_limit", {{"requests_per_second", 50}, {"burst", 100}}}});
    create("routes", {{"cluster_id", cluster}, {"name", "web"}, {"hosts", {"api.example.test", "www.example.test"}},
                      {"paths", {"/static/"}}, {"backends", {{{"address", "[::1]:9000"}}}}, {"lb_policy", "least_conn"},
                      {"health_check", {{"interval_ms", 1000}}}});
    create("routes", {{"cluster_id", cluster}, {"name", "old"}, {"hosts", {"old.example.test"}},
                      {"backends", {{{"address", "10.0.0.9:80"}}}}, {"enabled", false}});
    auto billing = create("services", {{"cluster_id", cluster}, {"name", "billing"}, {"ip_fqdn", "billing.internal"},
                                       {"auth_type", "base64"}, {"collection", "payments"}});
    auto reports = create("services", {{"cluster_id", cluster}, {"name", "reports"}, {"ip_fqdn", "10.20.0.0/16"},
                                       {"auth_type", "jwt"}});
    auto stripe = create("services", {{"cluster_id", cluster}, {"name", "stripe"}, {"ip_fqdn", "api.stripe.com"}});
    auto dns = create("services", {{"cluster_id", cluster}, {"name", "dns"}, {"ip_fqdn", "1.1.1.1"}});
    create("mappings", {{"cluster_id", cluster}, {"name", "billing-to-stripe"}, {"source_services", {billing}},
                        {"destination_services", {stripe}}, {"protocols", {"https"}}, {"ports", {443}},
                        {"priority", 200}});
    create("mappings", {{"cluster_id", cluster}, {"name", "payments-to-reports"}, {"source_collections", {"payments"}},
                        {"destination_services", {reports, dns}}, {"protocols", {"tcp", "udp"}},
                        {"ports", {"5432", "8000-8100"}}});
    create("mappings", {{"cluster_id", cluster}, {"name", "ping"}, {"source_services", {reports}},
                        {"destination_services", {dns}}, {"protocols", {"icmp"}}});
    create("mappings", {{"cluster_id", cluster}, {"name", "off"}, {"source_services", {reports}},
                        {"destination_services", {stripe}}, {"protocols", {"https"}}, {"ports", {443}},
                        {"enabled", false}});
  }
};

}  // namespace

TEST(ControlCompiler, IngressSnapshotLoadsWithTheProxyLoader) {
  Populated p;
  mm::control::Compiler compiler(*p.db, p.keys, testCa());
  auto snap = compiler.get(p.cluster, "ingress");
  ASSERT_TRUE(snap);
  auto r = marchproxy::config::loadString(snap->config.dump());
  ASSERT_TRUE(r.ok()) << errors(r.errors) << snap->config.dump(2);
  const auto& s = *r.snapshot;
  EXPECT_EQ(s.version, std::uint64_t(p.version(p.cluster)));
  ASSERT_EQ(s.listeners.size(), 2u);  // http + https (a route has a certificate)
  EXPECT_EQ(s.listeners[0].port, 18080);
  ASSERT_TRUE(s.listeners[1].tls);
  EXPECT_EQ(s.listeners[1].tls->client_auth.mode, marchproxy::config::ClientAuth::Mode::kOptional);
  // Every path the document names is shipped in files; the key only because a route uses it.
  for (const auto& f : {s.listeners[1].tls->certificates[0].cert, s.listeners[1].tls->certificates[0].key,
                        s.listeners[1].tls->client_auth.ca, s.listeners[1].tls->client_auth.crl})
    EXPECT_TRUE(snap->files.count(f)) << f;
  EXPECT_EQ(snap->files.at(s.listeners[1].tls->certificates[0].key), kKey);
  // The disabled route is not compiled; api and web share api.example.test, longest path first.
  EXPECT_EQ(s.clusters.size(), 2u);
  const marchproxy::config::VirtualHost* api = nullptr;
  for (const auto& v : s.virtual_hosts)
    if (v.domains == std::vector<std::string>{"api.example.test"}) api = &v;
  ASSERT_TRUE(api);
  ASSERT_EQ(api->routes.size(), 3u);
  EXPECT_EQ(api->routes[0].match.path, "/static/");
  EXPECT_EQ(api->routes[1].match.path, "/v1/");
  EXPECT_EQ(api->routes[1].allowed_client_names, std::vector<std::string>{"billing-client"});
  ASSERT_TRUE(api->routes[1].rate_limit.has_value());
  EXPECT_EQ(api->routes[1].rate_limit->requests_per_second, 50u);
  EXPECT_EQ(api->routes[1].rate_limit->burst, 100u);
  EXPECT_EQ(api->routes[1].rate_limit->key, marchproxy::config::RequestRateLimit::Key::kClientIp);
  EXPECT_FALSE(api->routes[0].rate_limit.has_value()) << "web has no rate_limit";
  EXPECT_EQ(api->routes[1].request_headers.add.size(), 2u);
  EXPECT_EQ(api->routes[1].request_headers.remove, std::vector<std::string>{"x-debug"});
  for (const auto& c : s.clusters)
    if (c.name == "api") {
      EXPECT_EQ(c.lb, marchproxy::config::LbPolicy::kRingHash);
      EXPECT_EQ(c.health_check.type, marchproxy::config::HealthCheck::Type::kHttp);
      EXPECT_EQ(c.health_check.interval.count(), 2000);
      EXPECT_EQ(c.endpoints[0].weight, 3u);
    }
  EXPECT_EQ(snap->hash.rfind("sha256:", 0), 0u);
  EXPECT_TRUE(snap->files.count("ca/crl.pem"));
}

TEST(ControlCompiler, EgressSnapshotLoadsWithTheProxyLoader) {
  Populated p;
  mm::control::Compiler compiler(*p.db, p.keys, testCa());
  auto snap = compiler.get(p.cluster, "egress");
  ASSERT_TRUE(snap);
  auto r = marchproxy::egress::loadString(snap->config.dump());
  ASSERT_TRUE(r.ok()) << errors(r.errors) << snap->config.dump(2);
  const auto& c = *r.config;
  EXPECT_EQ(c.listeners.size(), 2u);
  EXPECT_EQ(c.services.size(), 4u);
  EXPECT_EQ(c.rules.size(), 3u);  // "off" is disabled
  ASSERT_EQ(c.jwt.keys.size(), 1u);
  EXPECT_EQ(c.jwt.keys[0].service, "reports");  // its secret signs for reports only
  // The base64 service's token is shipped as its SHA-256 only, the JWT key as the sealed secret.
  std::string dump = snap->config.dump();
  auto sealed = p.db->read([](mm::store::Conn& cn) {
    return cn.exec("SELECT secret_enc FROM services WHERE name = 'billing'").front().str("secret_enc");
  });
  auto token = p.keys.open(sealed, "services.secret");
  ASSERT_TRUE(token);
  EXPECT_EQ(dump.find(*token), std::string::npos);
  EXPECT_NE(dump.find(mm::crypto::sha256Hex(*token)), std::string::npos);
  // The other cluster compiles to an empty but valid document.
  auto empty = compiler.get(p.other, "egress");
  ASSERT_TRUE(empty);
  EXPECT_TRUE(marchproxy::egress::loadString(empty->config.dump()).ok());
  EXPECT_TRUE(marchproxy::config::loadString(compiler.get(p.other, "ingress")->config.dump()).ok());
  EXPECT_FALSE(compiler.get(999, "egress"));
}

TEST(ControlCompiler, EgressTlsListenerShipsTheCertificateTheClientCaAndTheCrl) {
  Populated p;
  mm::ca::Authority ca(*p.db, p.keys);
  auto server = ca.issueServer("egress-tls", {"127.0.0.1"});
  auto st = p.call("PATCH", "/api/v1/clusters/" + std::to_string(p.cluster),
                   {{"egress_tls_certificate_id", server.certificate_id}, {"egress_tls_address", "127.0.0.1:13129"}});
  ASSERT_EQ(st.first, 200) << st.second.dump();
  EXPECT_EQ(st.second["egress_tls_certificate_id"], server.certificate_id);
  mm::control::Compiler compiler(*p.db, p.keys, {[&] { return ca.chainPem(); }, [&] { return ca.crlPem(); }});
  auto snap = compiler.get(p.cluster, "egress");
  ASSERT_TRUE(snap);
  auto r = loadEgressWithFiles(*snap, p.tmp.dir / "snap");
  ASSERT_TRUE(r.ok()) << errors(r.errors) << snap->config.dump(2);
  ASSERT_EQ(r.config->listeners.size(), 3u);
  const auto& l = r.config->listeners[2];
  EXPECT_EQ(l.name, "proxy-tls");
  EXPECT_EQ(l.port, 13129);
  EXPECT_EQ(l.kind, marchproxy::egress::ListenerConfig::Kind::kHttp);
  ASSERT_TRUE(l.tls);
  EXPECT_TRUE(l.tls->contexts);
  EXPECT_FALSE(l.tls->require_client_cert);
  const auto& tls = snap->config["listeners"][2]["tls"];
  EXPECT_EQ(tls, json({{"cert", "certs/" + std::to_string(server.certificate_id) + ".pem"},
                       {"key", "certs/" + std::to_string(server.certificate_id) + ".key"},
                       {"client_ca", "ca/clients.pem"},
                       {"crl", "ca/crl.pem"},
                       {"client_auth", "optional"}}));
  EXPECT_EQ(snap->files.at(tls["key"].get<std::string>()), server.key_pem);
  EXPECT_EQ(snap->files.at("ca/clients.pem"), ca.chainPem());
  // The other cluster has no certificate: no TLS listener, no key shipped.
  auto other = compiler.get(p.other, "egress");
  EXPECT_EQ(other->config["listeners"].size(), 2u);
  EXPECT_EQ(other->files.count(tls["key"].get<std::string>()), 0u);

  // Renewing the certificate moves only the clusters that serve it; the snapshot ships the new key.
  auto before = std::make_pair(p.version(p.cluster), p.version(p.other));
  auto renewed = p.db->write([&](mm::store::Conn& c) { return ca.renew(c, server.certificate_id); });
  EXPECT_EQ(p.version(p.cluster), before.first + 1);
  EXPECT_EQ(p.version(p.other), before.second);
  EXPECT_EQ(compiler.get(p.cluster, "egress")->files.at(tls["key"].get<std::string>()), renewed.key_pem);

  // Clearing it removes the listener (and bumps the version).
  st = p.call("PATCH", "/api/v1/clusters/" + std::to_string(p.cluster), {{"egress_tls_certificate_id", nullptr}});
  ASSERT_EQ(st.first, 200) << st.second.dump();
  EXPECT_EQ(compiler.get(p.cluster, "egress")->config["listeners"].size(), 2u);
}

TEST(ControlCompiler, EgressTlsCertificateIsValidatedWithTheFieldNamed) {
  Populated p;
  auto path = "/api/v1/clusters/" + std::to_string(p.other);
  auto before = p.version(p.other);
  auto r = p.call("PATCH", path, {{"egress_tls_certificate_id", 424242}});
  EXPECT_EQ(r.first, 422);
  EXPECT_EQ(r.second["field"], "egress_tls_certificate_id") << r.second.dump();
  EXPECT_EQ(r.second["detail"], "egress_tls_certificate_id: certificate 424242 does not exist") << r.second.dump();
  r = p.call("PATCH", path, {{"egress_tls_certificate_id", "1"}});
  EXPECT_EQ(r.first, 422);
  EXPECT_EQ(r.second["field"], "egress_tls_certificate_id");
  // The TLS listener cannot take the plain proxy's address (default 127.0.0.1:3128).
  r = p.call("PATCH", path, {{"egress_tls_certificate_id", 1}, {"egress_tls_address", "127.0.0.1:3128"}});
  EXPECT_EQ(r.first, 422);
  EXPECT_EQ(r.second["field"], "egress_tls_address") << r.second.dump();
  r = p.call("POST", "/api/v1/clusters",
             {{"name", "third"}, {"egress_tls_certificate_id", 1}, {"egress_tls_address", "127.0.0.1:1080"}});
  EXPECT_EQ(r.first, 422);
  EXPECT_EQ(r.second["field"], "egress_tls_address") << r.second.dump();
  EXPECT_EQ(p.version(p.other), before);
  // Set: replacing the certificate bumps the cluster that serves it (no route of "staging" uses it).
  ASSERT_EQ(p.call("PATCH", path, {{"egress_tls_certificate_id", 1}}).first, 200);
  EXPECT_EQ(p.version(p.other), before + 1);
  ASSERT_EQ(p.call("PATCH", "/api/v1/certificates/1", {{"cert_pem", kCert}, {"key_pem", kKey}}).first, 200);
  EXPECT_EQ(p.version(p.other), before + 2);
}

// Forwards (L4 port forwards) and SOCKS5 over TLS compile into egress snapshots the proxy's own
// loader accepts: sources by service name, a service destination as its address, mTLS with the
// cluster's certificate and the manager's CA; a disabled forward is left out.
TEST(ControlCompiler, EgressForwardsAndSocksTlsLoadWithTheProxyLoader) {
  Populated p;
  mm::ca::Authority ca(*p.db, p.keys);
  auto server = ca.issueServer("egress-tls", {"127.0.0.1"});
  auto cl = "/api/v1/clusters/" + std::to_string(p.cluster);
  ASSERT_EQ(p.call("PATCH", cl, {{"egress_tls_certificate_id", server.certificate_id},
                                 {"egress_socks_tls_address", "127.0.0.1:11443"}})
                .first,
            200);
  auto pg = p.create("forwards", {{"cluster_id", p.cluster}, {"name", "pg"}, {"listen_address", "127.0.0.1:15432"},
                                  {"destination", "db.example.com:5432"},
                                  {"sources", {{{"cidr", "10.1.0.0/16"}, {"service_id", 1}},
                                               {{"cidr", "10.2.0.0/16"}, {"service_id", 2}}}},
                                  {"idle_timeout_seconds", 600}});
  p.create("forwards", {{"cluster_id", p.cluster}, {"name", "dns"}, {"protocol", "udp"},
                        {"listen_address", "127.0.0.1:15353"}, {"destination_service_id", 4},
                        {"destination_port", 53}, {"sources", {{{"cidr", "127.0.0.0/8"}, {"service_id", 1}}}}});
  p.create("forwards", {{"cluster_id", p.cluster}, {"name", "pg-mtls"}, {"listen_address", "[::1]:15433"},
                        {"destination", "[2001:db8::5]:5432"}, {"mtls", true}});
  p.create("forwards", {{"cluster_id", p.cluster}, {"name", "off"}, {"listen_address", "127.0.0.1:15434"},
                        {"destination", "10.9.9.9:22"}, {"sources", {{{"cidr", "10.0.0.0/8"}, {"service_id", 1}}}},
                        {"enabled", false}});
  mm::control::Compiler compiler(*p.db, p.keys, {[&] { return ca.chainPem(); }, [&] { return ca.crlPem(); }});
  auto snap = compiler.get(p.cluster, "egress");
  ASSERT_TRUE(snap);
  auto r = loadEgressWithFiles(*snap, p.tmp.dir / "snap");
  ASSERT_TRUE(r.ok()) << errors(r.errors) << snap->config.dump(2);
  const auto& c = *r.config;
  ASSERT_EQ(c.listeners.size(), 4u);
  EXPECT_EQ(c.listeners[3].name, "socks5-tls");
  EXPECT_EQ(c.listeners[3].kind, marchproxy::egress::ListenerConfig::Kind::kSocks5);
  EXPECT_EQ(c.listeners[3].port, 11443);
  ASSERT_TRUE(c.listeners[3].tls);
  ASSERT_EQ(c.forwards.size(), 3u);  // sorted by name; "off" is disabled
  const auto& dns = c.forwards[0];
  EXPECT_EQ(dns.name, "dns");
  EXPECT_EQ(dns.protocol, marchproxy::egress::Protocol::kUdp);
  EXPECT_EQ(dns.host, "1.1.1.1");  // the service's address
  EXPECT_EQ(dns.dest_port, 53);
  const auto& fpg = c.forwards[1];
  EXPECT_EQ(fpg.name, "pg");
  EXPECT_EQ(fpg.port, 15432);
  EXPECT_EQ(fpg.host, "db.example.com");
  ASSERT_EQ(fpg.sources.size(), 2u);
  EXPECT_EQ(fpg.sources[0].service, "billing");
  EXPECT_EQ(fpg.sources[1].service, "reports");
  EXPECT_EQ(fpg.idle_timeout.count(), 600000);
  EXPECT_FALSE(fpg.tls);
  const auto& mtls = c.forwards[2];
  EXPECT_EQ(mtls.address, "::1");
  EXPECT_EQ(mtls.host, "2001:db8::5");
  ASSERT_TRUE(mtls.tls);
  EXPECT_TRUE(mtls.tls->require_client_cert);
  EXPECT_EQ(snap->files.at("ca/clients.pem"), ca.chainPem());

  // Deleting a forward takes it out of the next snapshot (and bumps the version once).
  auto v = p.version(p.cluster);
  ASSERT_EQ(p.call("DELETE", "/api/v1/forwards/" + std::to_string(pg)).first, 204);
  EXPECT_EQ(p.version(p.cluster), v + 1);
  EXPECT_EQ(compiler.get(p.cluster, "egress")->config["forwards"].size(), 2u);
  // The mTLS forward keeps the certificate: clearing it is refused with the field named.
  auto st = p.call("PATCH", cl, {{"egress_tls_certificate_id", nullptr}});
  EXPECT_EQ(st.first, 422);
  EXPECT_EQ(st.second["field"], "egress_tls_certificate_id") << st.second.dump();
  // A cluster listener cannot take a forward's port.
  st = p.call("PATCH", cl, {{"egress_proxy_address", "0.0.0.0:15433"}});
  EXPECT_EQ(st.first, 200) << "IPv4 wildcard vs an IPv6 forward: " << st.second.dump();
  st = p.call("PATCH", cl, {{"egress_socks5_address", "[::]:15433"}});
  EXPECT_EQ(st.first, 409);  // a conflict with another object
  EXPECT_EQ(st.second["field"], "egress_socks5_address") << st.second.dump();
  // Without a SOCKS5 TLS address there is no such listener.
  ASSERT_EQ(p.call("PATCH", cl, {{"egress_socks_tls_address", ""}}).first, 200);
  EXPECT_EQ(compiler.get(p.cluster, "egress")->config["listeners"].size(), 3u);
}

// A destination service turned into a network behind the API's back (the API refuses it with 422
// ip_fqdn): the forward is left out and the rest of the snapshot still loads.
TEST(ControlCompiler, ForwardToAServiceThatBecameANetworkIsLeftOut) {
  Populated p;
  p.create("forwards", {{"cluster_id", p.cluster}, {"name", "dns"}, {"protocol", "udp"},
                        {"listen_address", "127.0.0.1:15353"}, {"destination_service_id", 4},
                        {"destination_port", 53}, {"sources", {{{"cidr", "127.0.0.0/8"}, {"service_id", 1}}}}});
  p.create("forwards", {{"cluster_id", p.cluster}, {"name", "pg"}, {"listen_address", "127.0.0.1:15432"},
                        {"destination", "db.example.com:5432"}, {"sources", {{{"cidr", "10.1.0.0/16"}, {"service_id", 1}}}}});
  auto st = p.call("PATCH", "/api/v1/services/4", {{"ip_fqdn", "1.1.0.0/16"}});
  EXPECT_EQ(st.first, 422);
  EXPECT_EQ(st.second["field"], "ip_fqdn") << st.second.dump();
  p.db->write([&](mm::store::Conn& c) { c.exec("UPDATE services SET ip_fqdn = '1.1.0.0/16' WHERE id = 4"); });
  mm::control::Compiler compiler(*p.db, p.keys, testCa());
  auto snap = compiler.get(p.cluster, "egress");
  ASSERT_TRUE(snap);
  auto r = loadEgressWithFiles(*snap, p.tmp.dir / "snap");
  ASSERT_TRUE(r.ok()) << errors(r.errors) << snap->config.dump(2);
  ASSERT_EQ(r.config->forwards.size(), 1u);
  EXPECT_EQ(r.config->forwards[0].name, "pg");
}

TEST(ControlCompiler, ForwardsAreValidatedWithTheFieldNamed) {
  Populated p;
  auto before = p.version(p.cluster);
  json base = {{"cluster_id", p.cluster}, {"name", "f"}, {"listen_address", "127.0.0.1:15432"},
               {"destination", "db.example.com:5432"}, {"sources", {{{"cidr", "10.1.0.0/16"}, {"service_id", 1}}}}};
  // Listen ports another object holds are 409 (conflict), the rest 422.
  auto expect422 = [&](const json& change, const std::string& field, const std::string& detail = "", int status = 422) {
    json body = base;
    for (const auto& [k, v] : change.items()) {
      if (v.is_null() && k != "destination_service_id") body.erase(k);
      else body[k] = v;
    }
    auto r = p.call("POST", "/api/v1/forwards", body);
    EXPECT_EQ(r.first, status) << change.dump() << " " << r.second.dump();
    EXPECT_EQ(r.second["field"], field) << change.dump() << " " << r.second.dump();
    if (!detail.empty()) {
      EXPECT_EQ(r.second["detail"], detail);
    }
  };
  expect422({{"listen_address", "127.0.0.1:0"}}, "listen_address", "listen_address: port must be 1-65535");
  expect422({{"listen_address", "127.0.0.1:70000"}}, "listen_address");
  expect422({{"listen_address", "db.example.com:5432"}}, "listen_address");
  expect422({{"protocol", "sctp"}}, "protocol");
  expect422({{"destination", "*.example.com:5432"}}, "destination");
  expect422({{"destination", nullptr}}, "destination");
  expect422({{"destination_service_id", 3}}, "destination");  // both
  expect422({{"destination", nullptr}, {"destination_service_id", 2}, {"destination_port", 5432}},
            "destination_service_id", "destination_service_id: service 2 is a network (10.20.0.0/16); a forward needs one host");
  expect422({{"destination", nullptr}, {"destination_service_id", 3}}, "destination_port");
  expect422({{"sources", {{{"cidr", "10.1.2.3/16"}, {"service_id", 1}}}}}, "sources[0].cidr");
  expect422({{"sources", {{{"cidr", "10.1.0.0/16"}, {"service_id", 999}}}}}, "sources[0].service_id",
            "sources[0].service_id: service 999 does not exist");
  expect422({{"sources", json::array()}}, "sources");
  expect422({{"protocol", "udp"}, {"mtls", true}}, "mtls");
  expect422({{"mtls", true}}, "mtls",
            "mtls: needs the cluster's egress_tls_certificate_id (the certificate the forward serves)");
  expect422({{"listen_address", "127.0.0.1:3128"}}, "listen_address",
            "listen_address: 127.0.0.1:3128 is already the cluster's egress_proxy_address (an egress proxy listener)",
            409);
  expect422({{"listen_address", "127.0.0.1:9902"}}, "listen_address",
            "listen_address: 127.0.0.1:9902 is already the cluster's egress_admin_address (the egress proxies' "
            "/metrics and /ready)",
            409);
  expect422({{"name", "socks5"}}, "name");
  expect422({{"idle_timeout_seconds", -1}}, "idle_timeout_seconds");
  EXPECT_EQ(p.version(p.cluster), before);

  auto id = p.create("forwards", base);
  EXPECT_EQ(p.version(p.cluster), before + 1);
  // The same port again (here through the wildcard address) is taken; udp on it is not.
  expect422({{"name", "g"}, {"listen_address", "0.0.0.0:15432"}}, "listen_address",
            "listen_address: 0.0.0.0:15432 (tcp) is already the listen address of forward \"f\"", 409);
  p.create("forwards", {{"cluster_id", p.cluster}, {"name", "g"}, {"protocol", "udp"}, {"listen_address", "0.0.0.0:15432"},
                        {"destination", "1.1.1.1:53"}, {"sources", {{{"cidr", "10.1.0.0/16"}, {"service_id", 1}}}}});
  // Another cluster may use the port; its forwards name its own services only.
  auto elsewhere = p.create("services", {{"cluster_id", p.other}, {"name", "s"}, {"ip_fqdn", "s.internal"}});
  json other = base;
  other["cluster_id"] = p.other;
  expect422({{"cluster_id", p.other}}, "sources[0].service_id", "sources[0].service_id: service 1 belongs to another cluster");
  other["sources"] = {{{"cidr", "10.1.0.0/16"}, {"service_id", elsewhere}}};
  p.create("forwards", other);
  // Same name in a cluster: 409 naming the field.
  json dup_body = base;
  dup_body["listen_address"] = "127.0.0.1:15499";
  auto dup = p.call("POST", "/api/v1/forwards", dup_body);
  EXPECT_EQ(dup.first, 409) << dup.second.dump();
  EXPECT_EQ(dup.second["field"], "name");

  // Updates: a changed port is checked against the rest (but not against the forward itself); a
  // service a forward uses cannot be deleted; the audit log names the forward.
  auto path = "/api/v1/forwards/" + std::to_string(id);
  auto st = p.call("PATCH", path, {{"listen_address", "127.0.0.1:15432"}, {"idle_timeout_seconds", 30}});
  EXPECT_EQ(st.first, 200) << st.second.dump();
  EXPECT_EQ(st.second["idle_timeout_seconds"], 30);
  st = p.call("PATCH", path, {{"protocol", "udp"}});
  EXPECT_EQ(st.first, 409);
  EXPECT_EQ(st.second["field"], "listen_address") << st.second.dump();
  auto spare = p.create("services", {{"cluster_id", p.cluster}, {"name", "spare"}, {"ip_fqdn", "spare.internal"}});
  ASSERT_EQ(p.call("PATCH", path, {{"destination", ""}, {"destination_service_id", spare}, {"destination_port", 5432}}).first,
            200);
  st = p.call("DELETE", "/api/v1/services/" + std::to_string(spare));
  EXPECT_EQ(st.first, 409);
  EXPECT_NE(st.second["detail"].get<std::string>().find("forward"), std::string::npos) << st.second.dump();
  auto audit = p.db->read([](mm::store::Conn& c) {
    return c.exec("SELECT action, summary FROM audit_log WHERE resource LIKE 'forwards/%' ORDER BY id");
  });
  ASSERT_GE(audit.rows.size(), 2u);
  EXPECT_EQ(audit.rows[0].str("action"), "forward.create");
  EXPECT_EQ(audit.rows.back().str("action"), "forward.update");
}

// As for mappings: a cluster's owner writes any forward of it; a service owner only forwards whose
// every source is one of their services, never mTLS ones; a viewer writes none.
TEST(ControlCompiler, ForwardRolesFollowTheMappingRules) {
  Populated p;
  p.db->write([&](mm::store::Conn& c) {
    c.exec("INSERT INTO users (username, password_hash, role, created_at, updated_at) "
           "VALUES ('owner', 'x', 'service-owner', 'now', 'now'), ('viewer', 'x', 'viewer', 'now', 'now')");
    c.exec("INSERT INTO user_services (user_id, service_id) VALUES (2, 1)");  // billing
    c.exec("INSERT INTO user_clusters (user_id, cluster_id) VALUES (3, " + std::to_string(p.cluster) + ")");
    // What an admin lets non-admins name in sources (docs/api.md, forwards).
    c.exec("UPDATE clusters SET forward_source_networks = '[\"10.0.0.0/8\"]' WHERE id = " + std::to_string(p.cluster));
  });
  auto now = mm::util::unixNow();
  auto as = [&](int uid) { return p.keys.sign({{"sub", std::to_string(uid)}, {"exp", now + 3600}, {"iat", now}}); };
  std::string admin = p.token;
  json mine = {{"cluster_id", p.cluster}, {"name", "mine"}, {"listen_address", "127.0.0.1:15432"},
               {"destination", "db.example.com:5432"}, {"sources", {{{"cidr", "10.1.0.0/16"}, {"service_id", 1}}}}};
  p.token = as(2);
  auto st = p.call("POST", "/api/v1/forwards", mine);
  EXPECT_EQ(st.first, 201) << st.second.dump();
  json theirs = mine;
  theirs["name"] = "theirs";
  theirs["listen_address"] = "127.0.0.1:15433";
  theirs["sources"].push_back({{"cidr", "10.2.0.0/16"}, {"service_id", 2}});
  st = p.call("POST", "/api/v1/forwards", theirs);
  EXPECT_EQ(st.first, 403) << st.second.dump();
  st = p.call("PATCH", "/api/v1/forwards/1", {{"sources", theirs["sources"]}});
  EXPECT_EQ(st.first, 403) << st.second.dump();
  json m = mine;
  m["name"] = "m";
  m["listen_address"] = "127.0.0.1:15434";
  m["mtls"] = true;
  st = p.call("POST", "/api/v1/forwards", m);
  EXPECT_EQ(st.first, 403) << st.second.dump();
  EXPECT_EQ(p.call("GET", "/api/v1/forwards").second["total"], 1);
  p.token = as(3);
  EXPECT_EQ(p.call("GET", "/api/v1/forwards/1").first, 200);
  EXPECT_EQ(p.call("DELETE", "/api/v1/forwards/1").first, 403);
  p.token = admin;
  // If-Match: the version read is required to still be current.
  EXPECT_EQ(p.call("PATCH", "/api/v1/forwards/1", {{"comment", "x"}}, {{"if-match", "\"1\""}}).first, 200);
  st = p.call("PATCH", "/api/v1/forwards/1", {{"comment", "y"}}, {{"if-match", "\"1\""}});
  EXPECT_EQ(st.first, 412) << st.second.dump();
  EXPECT_EQ(p.call("GET", "/api/v1/forwards/1").second["comment"], "x");
}

TEST(ControlCompiler, CachedUntilTheVersionMoves) {
  Populated p;
  mm::control::Compiler compiler(*p.db, p.keys, testCa());
  auto a = compiler.get(p.cluster, "ingress");
  auto b = compiler.get(p.cluster, "ingress");
  EXPECT_EQ(a.get(), b.get());
  EXPECT_EQ(compiler.compiles(), 1u);
  auto st = p.call("PATCH", "/api/v1/routes/2", {{"paths", {"/assets/"}}});
  ASSERT_EQ(st.first, 200) << st.second.dump();
  auto c = compiler.get(p.cluster, "ingress");
  EXPECT_GT(c->version, a->version);
  EXPECT_NE(c->hash, a->hash);
  EXPECT_EQ(compiler.compiles(), 2u);
}

TEST(ControlVersions, BumpOnEveryChangeProxiesSeeAndNothingElse) {
  Populated p;
  auto v = [&] { return std::make_pair(p.version(p.cluster), p.version(p.other)); };
  auto expectBump = [&](const std::string& what, const std::string& method, const std::string& path, const json& body,
                        int status) {
    auto before = v();
    int writes = p.writes;
    auto r = p.call(method, path, body);
    ASSERT_EQ(r.first, status) << what << ": " << r.second.dump();
    auto after = v();
    EXPECT_EQ(after.first, before.first + 1) << what;
    EXPECT_EQ(after.second, before.second) << what << " changed another cluster";
    EXPECT_EQ(p.writes, writes + 1) << what << " did not notify";
  };
  expectBump("route update", "PATCH", "/api/v1/routes/1", {{"lb_policy", "round_robin"}}, 200);
  expectBump("route create", "POST", "/api/v1/routes",
             {{"cluster_id", p.cluster}, {"name", "new"}, {"hosts", {"n.example.test"}},
              {"backends", {{{"address", "10.0.0.5:80"}}}}},
             201);
  expectBump("route delete", "DELETE", "/api/v1/routes/4", nullptr, 204);
  expectBump("service create", "POST", "/api/v1/services",
             {{"cluster_id", p.cluster}, {"name", "s2"}, {"ip_fqdn", "s2.internal"}}, 201);
  expectBump("service secret rotation", "POST", "/api/v1/services/1/rotate-secret", nullptr, 200);
  expectBump("mapping update", "PATCH", "/api/v1/mappings/1", {{"enabled", false}}, 200);
  expectBump("certificate update", "PATCH", "/api/v1/certificates/1", {{"cert_pem", kCert}, {"key_pem", kKey}}, 200);
  expectBump("cluster listener", "PATCH", "/api/v1/clusters/1", {{"egress_proxy_address", "0.0.0.0:3128"}}, 200);

  // Not seen by proxies: a cluster's description, another cluster's routes.
  auto before = v();
  ASSERT_EQ(p.call("PATCH", "/api/v1/clusters/1", {{"description", "people only"}}).first, 200);
  EXPECT_EQ(v(), before);
  ASSERT_EQ(p.call("POST", "/api/v1/routes",
                   {{"cluster_id", p.other}, {"name", "x"}, {"hosts", {"x.example.test"}},
                    {"backends", {{{"address", "10.0.0.5:80"}}}}})
                .first,
            201);
  EXPECT_EQ(v().first, before.first);
  EXPECT_EQ(v().second, before.second + 1);
  // A refused write changes nothing.
  before = v();
  EXPECT_EQ(p.call("PATCH", "/api/v1/routes/1", {{"health_check", {{"interval_ms", 1000}, {"timeout_ms", 1000}}}}).first,
            422);
  EXPECT_EQ(p.call("PATCH", "/api/v1/clusters/1", {{"ingress_http_address", "example.com:80"}}).first, 422);
  EXPECT_EQ(v(), before);
}

TEST(ControlNotifier, WakesWaitersAndTimesOut) {
  mm::control::Notifier n;
  auto e = n.epoch();
  // Timeout: nothing changed.
  EXPECT_FALSE(n.waitPast(e, mm::control::Notifier::Clock::now() + std::chrono::milliseconds(20)));
  std::thread t([&] {
    while (n.waiting() == 0) std::this_thread::yield();
    n.changed();
  });
  EXPECT_TRUE(n.waitPast(e, mm::control::Notifier::Clock::now() + std::chrono::seconds(30)));
  t.join();
  EXPECT_EQ(n.epoch(), e + 1);
  n.shutdown();
  EXPECT_FALSE(n.waitPast(n.epoch(), mm::control::Notifier::Clock::now() + std::chrono::seconds(30)));
}
