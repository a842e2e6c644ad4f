#pragma once
// The config snapshot: the one contract between the manager and the proxies (ARCHITECTURE.md).
//
// A Snapshot is plain data. It is built once (from YAML/JSON by config/loader.h, or by the manager),
// validated as a whole (config/validate.h), then published read-only as
// std::shared_ptr<const Snapshot>. Nothing on the request path mutates it. Derived, fast-lookup forms
// (compiled routes, regexes, load-balancer tables) are built from it by the proxy at apply time.
//
// Every field here is documented for users in docs/config-reference.md; keep the two in step.
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace marchproxy::config {

inline constexpr int kSchemaVersion = 1;

using Millis = std::chrono::milliseconds;

// Where a value came from in a hand-written file, for error messages. line 0 = unknown (JSON from
// the manager, or defaults).
struct SourcePos {
  int line = 0;
  int column = 0;
};

// ---------------------------------------------------------------- listeners

// TLS on a listener (docs/tls.md). Files are PEM; relative paths are relative to the config file's
// directory. They are read, checked and compiled into OpenSSL contexts by proxy/tls at apply time.
struct TlsCertificate {
  std::string cert;  // certificate chain, leaf first
  std::string key;   // its private key (RSA or ECDSA)
  // Names this certificate serves (exact "a.example.com" or wildcard "*.example.com"); empty = the
  // DNS names of the certificate's subjectAltName (or its CN when it has none).
  std::vector<std::string> names;
  SourcePos pos;
};

struct ClientAuth {
  enum class Mode { kNone, kOptional, kRequire };
  Mode mode = Mode::kNone;
  std::string ca;   // CA bundle the client certificate must chain to (required unless mode none)
  std::string crl;  // optional CRL file (PEM); revoked client certificates are refused
};

struct ListenerTls {
  // SNI picks among these: exact name, then the longest wildcard, then the default certificate.
  std::vector<TlsCertificate> certificates;
  uint32_t default_certificate = 0;  // index into certificates
  std::string min_version = "1.2";   // "1.2" | "1.3"
  std::string ciphers;               // TLS 1.2 cipher list (OpenSSL syntax); empty = modern AEAD-only set
  std::vector<std::string> groups{"X25519", "P-256", "P-384"};
  std::vector<std::string> alpn{"http/1.1"};
  bool session_tickets = true;
  Millis ticket_key_rotation{3'600'000};  // a fresh ticket key this often; the previous one still decrypts
  Millis handshake_timeout{10'000};
  ClientAuth client_auth;
};

// PROXY protocol on a listener (docs/proxy-protocol.md): the peer (a load balancer) announces the
// real client address in a header before any other byte (before the ClientHello on TLS listeners).
struct ProxyProtocol {
  enum class Mode { kOff, kV1, kV2, kAny };
  Mode accept = Mode::kOff;
  std::vector<std::string> trusted;  // CIDRs allowed to send a header; empty = any
};

struct Listener {
  std::string name;
  std::string address = "0.0.0.0";  // IPv4 or IPv6 literal
  uint16_t port = 0;                 // 0 = kernel-chosen (tests); logged at start
  std::optional<ListenerTls> tls;    // absent = plain HTTP
  ProxyProtocol proxy_protocol;
  bool h2c = false;                  // cleartext HTTP/2 with prior knowledge (plain listeners only)
  SourcePos pos;
};

struct Admin {
  bool enabled = true;
  std::string address = "127.0.0.1";
  uint16_t port = 9901;
};

// ---------------------------------------------------------------- headers

struct HeaderValue {
  std::string name;
  std::string value;
};

// Applied in order: remove, then set (replace any existing), then add (append).
struct HeaderRewrite {
  std::vector<std::string> remove;
  std::vector<HeaderValue> set;
  std::vector<HeaderValue> add;
  bool empty() const { return remove.empty() && set.empty() && add.empty(); }
};

// Which forwarding headers the proxy writes towards the upstream.
struct Forwarding {
  bool x_forwarded_for = true;    // append the client address
  bool x_forwarded_proto = true;  // set to the listener's scheme
  bool x_forwarded_host = true;   // set to the client's Host
  bool via = true;                // append "1.1 marchproxy"
  // When false (the default) incoming X-Forwarded-* headers are dropped and rewritten, so that
  // clients cannot spoof them; set true only behind another trusted proxy.
  bool trust_downstream = false;
};

// ---------------------------------------------------------------- routes

enum class PathMatch { kPrefix, kExact, kRegex };

struct HeaderMatch {
  enum class Kind { kPresent, kExact, kPrefix, kRegex };
  std::string name;  // lower-case
  Kind kind = Kind::kPresent;
  std::string value;
  bool invert = false;  // match when the header does NOT match
};

struct RouteMatch {
  PathMatch path_kind = PathMatch::kPrefix;
  std::string path = "/";            // prefix, exact path, or RE2 regex (full match)
  std::vector<std::string> methods;  // empty = any; upper-case tokens
  std::vector<HeaderMatch> headers;  // all must match
};

enum class RetryOn : uint8_t {
  kConnectFailure = 1,  // connect refused / timed out / reset before any response byte
  kStatus502 = 2,
  kStatus503 = 4,
  kStatus504 = 8,
};

struct RetryPolicy {
  uint32_t attempts = 0;  // retries after the first try (0 = off)
  uint8_t on = static_cast<uint8_t>(RetryOn::kConnectFailure);  // bit set of RetryOn
  Millis per_try_timeout{0};                                    // 0 = route timeout
  // Only idempotent methods (GET HEAD OPTIONS PUT DELETE TRACE) are retried, and never once any part
  // of the request body has been sent upstream beyond what the proxy still holds.
};

struct ForwardAction {
  std::string cluster;
  std::optional<std::string> prefix_rewrite;  // replaces the matched prefix (prefix routes only)
  std::optional<std::string> host_rewrite;    // Host sent upstream
  Millis timeout{0};  // whole upstream exchange until the response head; 0 = cluster's response timeout
  RetryPolicy retry;
};

struct RedirectAction {
  int code = 301;                     // 301 302 303 307 308
  std::optional<std::string> scheme;  // "http" | "https"
  std::optional<std::string> host;    // host[:port]
  std::optional<std::string> path;    // replaces the whole path
  std::optional<std::string> prefix_rewrite;
  bool strip_query = false;
};

struct DirectResponseAction {
  int status = 200;
  std::string body;
  std::string content_type = "text/plain";
};

enum class ActionKind { kForward, kRedirect, kDirectResponse };

// Request rate limit of a route (docs/rate-limiting.md): a token bucket per key.
struct RequestRateLimit {
  uint64_t requests_per_second = 0;  // 0 = off
  uint64_t burst = 0;                // bucket depth; 0 = requests_per_second
  enum class Key { kClientIp, kHeader, kClientCert };
  Key key = Key::kClientIp;
  std::string header;  // lower-case, when key == kHeader
  enum class Scope { kLocal, kGlobal };
  Scope scope = Scope::kLocal;  // global = shared between proxy instances through Redis
  uint32_t ipv6_prefix = 64;    // an IPv6 client address is keyed by its /ipv6_prefix network
  // key header / client_cert: the client address is also limited to per_ip_ceiling x the rate
  // and burst, across all its keys (a client cannot multiply its limit by rotating keys); 0 = off.
  uint32_t per_ip_ceiling = 4;
};

struct Route {
  std::string name;  // for metrics and logs; defaulted to "<vhost>/<index>"
  RouteMatch match;
  ActionKind action = ActionKind::kForward;
  ForwardAction forward;
  RedirectAction redirect;
  DirectResponseAction direct;
  HeaderRewrite request_headers;
  HeaderRewrite response_headers;
  // mTLS: when non-empty only clients whose verified certificate has one of these names (subject CN
  // or a DNS/URI/email subjectAltName) may use the route; others get 403.
  std::vector<std::string> allowed_client_names;
  std::optional<RequestRateLimit> rate_limit;  // absent = no request rate limit
  bool websocket = true;                        // false: WebSocket upgrades are refused (403)
  Millis websocket_idle_timeout{3'600'000};     // an open WebSocket with no bytes either way closes
  SourcePos pos;
};

struct VirtualHost {
  std::string name;
  // Exact names ("example.com"), wildcards ("*.example.com" = any sub-domain, not the apex) or "*"
  // (default). Matched case-insensitively on Host without its port. Exact beats wildcard (longest
  // wildcard first), then "*".
  std::vector<std::string> domains;
  std::vector<Route> routes;  // first match wins, in file order
  HeaderRewrite request_headers;
  HeaderRewrite response_headers;
  // On a plain-HTTP listener: answer every request with this redirect (301 or 308) to the same
  // host and path over https. 0 = off.
  int redirect_to_https = 0;
  SourcePos pos;
};

// ---------------------------------------------------------------- clusters

struct Endpoint {
  std::string host;  // IP literal or DNS name (resolved at apply time)
  uint16_t port = 0;
  uint32_t weight = 1;  // 1..1000
  SourcePos pos;
};

enum class LbPolicy { kRoundRobin, kWeightedRoundRobin, kLeastRequest, kRingHash, kMaglev };

struct HashPolicy {
  enum class Source { kSourceIp, kHeader };
  Source source = Source::kSourceIp;
  std::string header;  // lower-case, when source == kHeader
};

struct HealthCheck {
  enum class Type { kNone, kHttp, kTcp };
  Type type = Type::kNone;
  Millis interval{5000};
  Millis timeout{1000};
  uint32_t healthy_threshold = 2;    // consecutive successes to mark healthy
  uint32_t unhealthy_threshold = 3;  // consecutive failures to mark unhealthy
  std::string path = "/";            // http only
  std::string host;                  // http only; empty = endpoint host
  std::vector<std::pair<int, int>> expected_statuses{{200, 399}};  // inclusive ranges
};

struct OutlierDetection {
  bool enabled = true;
  uint32_t consecutive_5xx = 5;
  uint32_t consecutive_connect_failures = 3;
  Millis base_ejection_time{10'000};  // doubled on each repeated ejection
  Millis max_ejection_time{300'000};
  uint32_t max_ejection_percent = 50;  // never eject more than this share of a cluster
};

struct ClusterTimeouts {
  Millis connect{2000};
  Millis response{30'000};  // from request sent to response head received
  Millis idle{60'000};      // idle pooled upstream connections are closed after this
};

// TLS towards a cluster's endpoints (re-encryption). Files as for listener TLS.
struct UpstreamTls {
  std::string sni;           // server name sent and verified; empty = the endpoint's host when it is a name
  bool verify = true;        // verify the upstream's certificate chain and name
  std::string ca;            // CA bundle to verify against; empty = the system's default store
  std::string client_cert;   // optional client certificate (mTLS to the upstream) ...
  std::string client_key;    // ... and its key
};

struct Cluster {
  // http2 = h2 over TLS (ALPN) when tls is set, else h2c with prior knowledge. gRPC needs http2.
  enum class Protocol { kHttp1, kHttp2 };
  std::string name;
  Protocol protocol = Protocol::kHttp1;
  std::vector<Endpoint> endpoints;
  LbPolicy lb = LbPolicy::kRoundRobin;
  HashPolicy hash;  // ring_hash / maglev only
  HealthCheck health_check;
  OutlierDetection outlier;
  ClusterTimeouts timeouts;
  uint32_t max_idle_connections = 64;  // per endpoint, per worker
  uint32_t retry_budget_percent = 20;  // retries in flight <= this % of active requests (min 3)
  std::optional<UpstreamTls> tls;      // absent = plain HTTP to the endpoints
  // PROXY protocol header written on each new upstream connection (docs/proxy-protocol.md).
  enum class SendProxyProtocol { kOff, kV1, kV2 };
  SendProxyProtocol send_proxy_protocol = SendProxyProtocol::kOff;
  SourcePos pos;
};

// ---------------------------------------------------------------- limits and timeouts

struct Limits {
  uint32_t max_connections = 10'000;      // per proxy process; over it new connections are closed
  uint32_t max_request_line = 8 * 1024;   // 414 beyond
  uint32_t max_header_bytes = 64 * 1024;  // whole head; 431 beyond
  uint32_t max_headers = 100;             // 431 beyond
  uint64_t max_body_bytes = 0;            // 0 = unlimited; 413 beyond
  uint32_t max_connections_per_ip = 0;    // open connections per client address; 0 = off
};

// Redis for global rate limits (docs/rate-limiting.md). Absent = global limits act locally.
struct Redis {
  std::string address;  // IP literal
  uint16_t port = 6379;
  Millis timeout{50};   // per request; slower = the local fallback bucket decides
  std::string password_file;  // AUTH password: first line of this file, or
  std::string password_env;   // the value of this environment variable (never logged)
};

struct Timeouts {
  Millis header_read{10'000};  // from first byte of a request to its complete head (408)
  Millis idle{60'000};         // keep-alive idle between requests
  Millis body_read{60'000};    // max gap between body reads from the client (408)
  Millis drain{20'000};        // graceful shutdown deadline
};

// HTTP/2 on the listeners (TLS with ALPN "h2", or h2c): stream limits and abuse limits
// (docs/http2.md). Over a flood limit the connection gets GOAWAY ENHANCE_YOUR_CALM and is closed.
struct Http2 {
  uint32_t max_concurrent_streams = 100;
  uint32_t initial_stream_window = 65535;        // bytes; the connection window is raised to 1 MiB
  uint32_t max_frame_size = 16384;
  uint32_t max_header_list_bytes = 65536;        // decoded; larger -> stream reset / 431
  uint32_t max_resets_per_second = 100;          // client RST_STREAM (rapid reset, CVE-2023-44487)
  uint32_t max_control_frames_per_second = 100;  // SETTINGS/PING/empty DATA/PRIORITY floods
  uint32_t max_continuation_frames = 32;         // per header block (CONTINUATION flood)
  Millis idle_timeout{300'000};
  Millis stream_idle_timeout{60'000};  // a finished stream that does not end (zero window) is reset
};

struct AccessLog {
  bool enabled = false;
  std::string path = "-";  // "-" = stdout
};

// ---------------------------------------------------------------- fast path (XDP / TC eBPF)

// A token bucket: packets per second and the burst (bucket depth). 0 pps = off.
struct RateLimit {
  uint64_t packets_per_second = 0;
  uint64_t burst = 0;  // 0 = one second's worth
};

enum class FastPathMode { kAuto, kNative, kGeneric, kUserspace };

enum class DscpClass { kP0, kP1, kP2, kP3 };  // EF, AF41, AF21, best effort

struct DscpRule {
  std::string protocol = "tcp";  // tcp | udp
  uint16_t port = 0;             // destination port
  DscpClass dscp_class = DscpClass::kP3;
  SourcePos pos;
};

// A raw TCP/UDP rule for routed (gateway) traffic leaving fast_path.egress_interfaces: the egress
// mapping's shape (sources, destinations, protocols, ports), with addresses in place of service
// names and host names, since a forwarded packet carries neither (docs/fast-path.md).
struct RoutedRule {
  std::string name;
  std::vector<std::string> sources;           // CIDRs or addresses; empty = any source
  std::vector<std::string> destinations;      // CIDRs or addresses; at least one
  std::vector<std::string> protocols{"tcp"};  // "tcp" | "udp"
  std::vector<std::pair<uint16_t, uint16_t>> ports;  // inclusive destination port ranges; empty = all
  SourcePos pos;
};

// Packets the proxy would refuse anyway die in the driver (docs/fast-path.md).
struct FastPath {
  bool enabled = false;
  std::vector<std::string> interfaces;  // XDP on each; empty = userspace enforcement only
  FastPathMode mode = FastPathMode::kAuto;
  std::vector<std::string> deny;   // CIDRs; the longest matching prefix of deny/allow wins
  std::vector<std::string> allow;  // CIDRs that skip the rate limits and the port filter
  RateLimit per_source;            // all packets from one source address
  RateLimit global;                // all packets on the interface
  RateLimit syn;                   // TCP SYNs from one source to the listening ports
  bool port_filter = false;        // drop TCP SYN / UDP to ports the proxy does not serve
  std::vector<uint16_t> extra_tcp_ports;  // served besides the listeners and admin (e.g. 22)
  std::vector<uint16_t> extra_udp_ports;
  std::vector<std::string> egress_interfaces;  // TC clsact egress program on each
  std::vector<DscpRule> dscp;                  // egress marking by destination
  bool icmp_echo = true;                       // false: egress drops ICMP echo request/reply
  // Routed TCP/UDP on egress_interfaces: when enforced, only what a rule allows leaves (default deny).
  bool routed_enforce = false;
  std::vector<RoutedRule> routed;
  SourcePos pos;
};

// ---------------------------------------------------------------- workers

// Worker thread pinning (docs/operations.md, "CPU pinning"). Takes effect at start (like workers).
struct CpuAffinity {
  enum class Mode { kOff, kAuto, kList };
  Mode mode = Mode::kOff;      // off: the kernel schedules the workers
  std::vector<uint32_t> cpus;  // kList: worker i runs on cpus[i % cpus.size()]
  SourcePos pos;
};

// ---------------------------------------------------------------- snapshot

struct Snapshot {
  int schema = kSchemaVersion;
  uint64_t version = 0;  // monotonically increasing; the manager sets it, files may
  std::string hash;      // content hash (hex SHA-256 of the canonical JSON), computed on load
  uint32_t workers = 0;  // 0 = one per core
  CpuAffinity cpu_affinity;
  std::vector<Listener> listeners;
  Admin admin;
  std::vector<VirtualHost> virtual_hosts;
  std::vector<Cluster> clusters;
  Forwarding forwarding;
  Limits limits;
  Timeouts timeouts;
  Http2 http2;
  AccessLog access_log;
  FastPath fast_path;
  std::optional<Redis> redis;
};

}  // namespace marchproxy::config
