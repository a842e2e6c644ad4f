// The listener `tls` block, per-route allowed_client_names and per-vhost redirect_to_https: how
// they load, how they are rejected, and that they survive the JSON round trip (and so the hash).
#include <gtest/gtest.h>

#include "config/loader.h"
#include "config/writer.h"

namespace marchproxy::config {
namespace {

std::string errors(const LoadResult& r) {
  std::string out;
  for (const auto& d : r.errors) out += d.toString() + "\n";
  return out;
}

std::string config(std::string_view tls, std::string_view vhost_extra = "", std::string_view route_extra = "") {
  return std::string("schema: 1\nlisteners:\n  - name: https\n    port: 8443\n    tls:\n") + std::string(tls) +
         "virtual_hosts:\n  - name: app\n    domains: [\"*\"]\n" + std::string(vhost_extra) +
         "    routes:\n      - match: { prefix: / }\n        direct_response: { status: 200, body: ok }\n" +
         std::string(route_extra) + "clusters: []\n";
}

constexpr std::string_view kTls =
    "      certificates:\n"
    "        - { cert: a.pem, key: a.key }\n"
    "        - { cert: b.pem, key: b.key, names: [\"*.Example.com\", api.example.com] }\n"
    "      min_version: \"1.3\"\n"
    "      handshake_timeout: 3s\n"
    "      client_auth: { mode: require, ca: ca.pem, crl: ca.crl }\n";

TEST(TlsConfig, LoadsAndRoundTrips) {
  LoadResult r = loadString(config(kTls, "    redirect_to_https: 308\n",
                                   "        allowed_client_names: [alice, spiffe://x/y]\n"));
  ASSERT_TRUE(r.ok()) << errors(r);
  const Listener& l = r.snapshot->listeners[0];
  ASSERT_TRUE(l.tls.has_value());
  ASSERT_EQ(l.tls->certificates.size(), 2u);
  EXPECT_EQ(l.tls->certificates[1].names, (std::vector<std::string>{"*.example.com", "api.example.com"}));
  EXPECT_EQ(l.tls->min_version, "1.3");
  EXPECT_EQ(l.tls->handshake_timeout, Millis(3000));
  EXPECT_EQ(l.tls->client_auth.mode, ClientAuth::Mode::kRequire);
  EXPECT_EQ(l.tls->client_auth.crl, "ca.crl");
  EXPECT_EQ(l.tls->groups, (std::vector<std::string>{"X25519", "P-256", "P-384"}));
  EXPECT_EQ(r.snapshot->virtual_hosts[0].redirect_to_https, 308);
  EXPECT_EQ(r.snapshot->virtual_hosts[0].routes[0].allowed_client_names.size(), 2u);

  std::string json = toJson(*r.snapshot, true);
  LoadResult again = loadString(json);
  ASSERT_TRUE(again.ok()) << errors(again);
  EXPECT_EQ(toJson(*again.snapshot, true), json);
  EXPECT_EQ(again.snapshot->hash, r.snapshot->hash);

  // A TLS setting is part of the content hash: changing it is a real reload.
  LoadResult other = loadString(config(std::string(kTls) + "      session_tickets: false\n"));
  ASSERT_TRUE(other.ok()) << errors(other);
  EXPECT_NE(other.snapshot->hash, r.snapshot->hash);
}

TEST(TlsConfig, ErrorsNameTheField) {
  LoadResult r = loadString(config("      certificates: []\n      min_version: \"1.1\"\n"
                                   "      client_auth: { mode: require }\n      alpn: [h3]\n",
                                   "    redirect_to_https: 302\n"));
  std::string e = errors(r);
  EXPECT_NE(e.find("listeners[0].tls.certificates: at least one certificate is required"), std::string::npos) << e;
  EXPECT_NE(e.find("listeners[0].tls.min_version: must be \"1.2\" or \"1.3\""), std::string::npos) << e;
  EXPECT_NE(e.find("listeners[0].tls.client_auth.ca: a CA bundle is required"), std::string::npos) << e;
  EXPECT_NE(e.find("listeners[0].tls.alpn[0]: \"h3\" is not supported"), std::string::npos) << e;
  EXPECT_NE(e.find("virtual_hosts[0].redirect_to_https: must be 301 or 308"), std::string::npos) << e;
}

TEST(TlsConfig, UnknownClientAuthModeSuggests) {
  LoadResult r = loadString(config("      certificates: [{ cert: a, key: b }]\n"
                                   "      client_auth: { mode: requir, ca: ca.pem }\n"));
  std::string e = errors(r);
  EXPECT_NE(e.find("listeners[0].tls.client_auth.mode: unknown mode \"requir\" (did you mean \"require\"?)"),
            std::string::npos)
      << e;
}

TEST(TlsConfig, MissingKeyIsAnError) {
  LoadResult r = loadString(config("      certificates: [{ cert: a.pem }]\n"));
  std::string e = errors(r);
  EXPECT_NE(e.find("listeners[0].tls.certificates[0]"), std::string::npos) << e;
  EXPECT_NE(e.find("key"), std::string::npos) << e;
}

}  // namespace
}  // namespace marchproxy::config
