#pragma once
// The egress config: listeners (HTTP proxy, SOCKS5), services and their credentials, JWT keys,
// mappings (rules), DNS, timeouts, admin and access log. Its own document kind: a file with
// `kind: egress` at the top level (`marchproxy check` dispatches on it). Every field is documented
// in docs/config-reference.md (section "Egress") and docs/egress.md.
//
// Loading never throws: every problem comes back as a config::Diagnostic with its line and field
// path, all of them collected in one pass, as for the ingress config.
#include <array>
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/diagnostic.h"
#include "config/model.h"
#include "egress/acl.h"
#include "proxy/tls/server_contexts.h"

namespace marchproxy::egress {

using Millis = std::chrono::milliseconds;

// TLS towards clients (an HTTP/SOCKS5 listener's or a TCP forward's `tls`): the proxy's certificate
// and, with `client_ca`, client certificates whose CN names the service (docs/egress.md "Identity").
struct TlsConfig {
  std::string cert;       // file paths, resolved against the config file's directory
  std::string key;
  std::string client_ca;  // client certificates must chain to it; their CN names the service
  std::string crl;        // optional: certificates it revokes are refused in the handshake
  // A client without a certificate fails the handshake; otherwise (listeners only) it may still
  // authenticate with Proxy-Authorization / SOCKS5 username and password.
  bool require_client_cert = false;
  // Built when the config is loaded (so `marchproxy check` reports unusable files); shared
  // read-only by every worker.
  std::shared_ptr<const proxy::tls::ServerContexts> contexts;
};

struct ListenerConfig {
  // kTcpForward/kUdpForward: the listen socket of a `forwards` entry of the same name (built by
  // the server; never in Config::listeners).
  enum class Kind { kHttp, kSocks5, kTcpForward, kUdpForward };
  std::string name;
  std::string address = "127.0.0.1";
  uint16_t port = 0;  // 0 = kernel-chosen (tests); logged at start
  Kind kind = Kind::kHttp;
  std::optional<TlsConfig> tls;  // kHttp/kSocks5: clients speak TLS to the proxy (HTTPS proxy, SOCKS5 over TLS)
};

// An L4 port-forward (docs/egress.md, "Port forwards"): a TCP or UDP listen port bound to one
// destination, for clients that cannot speak a proxy protocol. The caller is identified by its
// source address (the first `sources` CIDR that contains it) or, with `tls`, by its client
// certificate's CN; then the destination goes through the same mapping check as a CONNECT.
struct ForwardSource {
  Cidr cidr;
  std::string service;
};

struct ForwardConfig {
  std::string name;
  std::string address = "127.0.0.1";
  uint16_t port = 0;                   // 0 = kernel-chosen (tests); logged at start
  Protocol protocol = Protocol::kTcp;  // kTcp or kUdp
  std::string host;                    // destination: a name (lower-case) or an IP literal
  uint16_t dest_port = 0;
  std::vector<ForwardSource> sources;
  std::optional<TlsConfig> tls;  // tcp only; client certificates required
  Millis idle_timeout{0};         // 0 = timeouts.idle
  uint32_t max_sessions = 1024;   // udp: concurrent client addresses per worker
};

enum class JwtAlg { kHs256, kRs256, kEs384 };
std::string_view jwtAlgName(JwtAlg a);

struct JwtKey {
  std::string kid;  // matched against the token's "kid"; several keys overlap during a rotation
  JwtAlg alg = JwtAlg::kHs256;
  std::string secret;      // HS256
  std::string public_key;  // RS256/ES384: PEM text (from public_key or public_key_file)
  // When set, tokens this key verifies must name this service in "service_id": a service that holds
  // its own HS256 secret cannot sign tokens for another one. Unset: the key may sign for any service
  // (an identity provider's key).
  std::string service;
};

struct JwtConfig {
  std::string issuer;    // required "iss" when non-empty
  std::string audience;  // required in "aud" when non-empty
  Millis clock_skew{30'000};
  std::vector<JwtKey> keys;
};

struct Service {
  std::string name;
  std::string collection;  // optional group name; mappings may name it in `source_collections`
  // SHA-256 of each accepted token (Basic password / SOCKS5 password). Never the token itself.
  std::vector<std::array<uint8_t, 32>> token_sha256;
};

struct DnsConfig {
  std::vector<std::string> servers;  // "ip" or "ip:port" ("[v6]:port"); empty = /etc/resolv.conf
  std::map<std::string, std::vector<IpAddr>> hosts;  // static answers, checked first (lower-case names)
  Millis min_ttl{1'000};
  Millis max_ttl{300'000};
  Millis negative_ttl{5'000};
  Millis timeout{2'000};
};

struct TimeoutsConfig {
  Millis connect{5'000};       // dialling a destination
  Millis header_read{10'000};  // a request head / SOCKS handshake
  Millis idle{300'000};        // a tunnel or keep-alive connection with no bytes either way
  Millis revoke_grace{0};      // open tunnels a reload no longer allows are closed after this
  Millis drain{10'000};        // SIGTERM: how long open connections may finish
};

struct AdminConfig {
  bool enabled = true;
  std::string address = "127.0.0.1";
  uint16_t port = 9902;
};

struct Config {
  int schema = 1;
  uint32_t workers = 0;  // 0 = one per core
  config::CpuAffinity cpu_affinity;  // as the ingress's; taken at start
  std::vector<ListenerConfig> listeners;
  std::vector<ForwardConfig> forwards;
  AdminConfig admin;
  bool access_log = false;
  std::string access_log_path = "-";
  std::vector<Service> services;
  JwtConfig jwt;
  std::vector<Rule> rules;
  std::vector<Cidr> forbidden_networks;  // default: defaultForbiddenNetworks()
  DnsConfig dns;
  TimeoutsConfig timeouts;
  std::string hash;  // hex SHA-256 of the file text
};

struct LoadResult {
  std::shared_ptr<Config> config;  // null when errors is non-empty
  std::vector<config::Diagnostic> errors;
  bool ok() const { return config != nullptr; }
};

// `base_dir` resolves relative *_file paths (the config file's directory).
LoadResult loadString(std::string_view text, const std::string& base_dir = ".");
LoadResult loadFile(const std::string& path);

// True when the text is a YAML/JSON document whose top level has `kind: egress`.
bool isEgressDocument(std::string_view text);

// One line for `marchproxy check`: listeners, services, rules.
std::string summary(const Config& c);

}  // namespace marchproxy::egress
