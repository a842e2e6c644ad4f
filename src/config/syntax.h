#pragma once
// Spelling rules shared by the loader (text -> Snapshot), validate() and the JSON writer
// (Snapshot -> text): the names of enum values in the file format, the syntax of names, hosts,
// domains and HTTP tokens, and the documented ranges. Internal to src/config; other modules use
// loader.h. Keeping the tables here is what guarantees toJson() writes exactly what loadString()
// reads.
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "config/model.h"

namespace marchproxy::config::syntax {

// ---------------------------------------------------------------- ranges (docs/config-reference.md)

inline constexpr uint32_t kMaxWorkers = 256;
inline constexpr uint32_t kMaxCpu = 4095;  // highest CPU number cpu_affinity may name
inline constexpr size_t kMaxRoutedRules = 64;       // MP_ROUTED_RULES in bpf/fastpath_maps.h
inline constexpr size_t kMaxRoutedPortRanges = 8;   // MP_ROUTED_RANGES
inline constexpr size_t kMaxNameLength = 128;
inline constexpr size_t kMaxPathLength = 4096;
inline constexpr size_t kMaxHeaderValueLength = 8192;
inline constexpr size_t kMaxDirectBodyBytes = 1 << 20;  // served from memory on every hit
inline constexpr uint32_t kMaxWeight = 1000;
inline constexpr uint32_t kMaxRetryAttempts = 10;
inline constexpr uint32_t kMaxThreshold = 100;
inline constexpr uint32_t kMaxIdleConnections = 10'000;
inline constexpr uint32_t kMaxConnections = 10'000'000;
inline constexpr uint32_t kMinRequestLine = 256;
inline constexpr uint32_t kMaxRequestLine = 1 << 20;
inline constexpr uint32_t kMinHeaderBytes = 1024;
inline constexpr uint32_t kMaxHeaderBytes = 16 << 20;
inline constexpr uint32_t kMaxHeaders = 10'000;
inline constexpr uint32_t kMaxH2Streams = 10'000;  // http2.max_concurrent_streams
inline constexpr Millis kMinHealthInterval{100};
inline constexpr uint64_t kMaxRequestsPerSecond = 1'000'000'000;
inline constexpr uint32_t kMaxPerIpCeiling = 1000;

// ---------------------------------------------------------------- enum spellings

template <typename E>
struct Spelling {
  std::string_view name;
  E value;
};

inline constexpr Spelling<LbPolicy> kLbPolicies[] = {
    {"round_robin", LbPolicy::kRoundRobin},
    {"weighted_round_robin", LbPolicy::kWeightedRoundRobin},
    {"least_request", LbPolicy::kLeastRequest},
    {"ring_hash", LbPolicy::kRingHash},
    {"maglev", LbPolicy::kMaglev},
};

inline constexpr Spelling<Cluster::Protocol> kClusterProtocols[] = {
    {"http1", Cluster::Protocol::kHttp1},
    {"http2", Cluster::Protocol::kHttp2},
};

inline constexpr Spelling<HealthCheck::Type> kHealthTypes[] = {
    {"none", HealthCheck::Type::kNone},
    {"http", HealthCheck::Type::kHttp},
    {"tcp", HealthCheck::Type::kTcp},
};

inline constexpr Spelling<RetryOn> kRetryOn[] = {
    {"connect-failure", RetryOn::kConnectFailure},
    {"502", RetryOn::kStatus502},
    {"503", RetryOn::kStatus503},
    {"504", RetryOn::kStatus504},
};

inline constexpr Spelling<PathMatch> kPathMatches[] = {
    {"prefix", PathMatch::kPrefix},
    {"exact", PathMatch::kExact},
    {"regex", PathMatch::kRegex},
};

inline constexpr Spelling<HeaderMatch::Kind> kHeaderMatchKinds[] = {
    {"exact", HeaderMatch::Kind::kExact},
    {"prefix", HeaderMatch::Kind::kPrefix},
    {"regex", HeaderMatch::Kind::kRegex},
    {"present", HeaderMatch::Kind::kPresent},
};

inline constexpr Spelling<ClientAuth::Mode> kClientAuthModes[] = {
    {"none", ClientAuth::Mode::kNone},
    {"optional", ClientAuth::Mode::kOptional},
    {"require", ClientAuth::Mode::kRequire},
};

inline constexpr Spelling<FastPathMode> kFastPathModes[] = {
    {"auto", FastPathMode::kAuto},
    {"native", FastPathMode::kNative},
    {"generic", FastPathMode::kGeneric},
    {"userspace", FastPathMode::kUserspace},
};

inline constexpr Spelling<DscpClass> kDscpClasses[] = {
    {"P0", DscpClass::kP0},
    {"P1", DscpClass::kP1},
    {"P2", DscpClass::kP2},
    {"P3", DscpClass::kP3},
};

inline constexpr Spelling<RequestRateLimit::Key> kRateLimitKeys[] = {
    {"client_ip", RequestRateLimit::Key::kClientIp},
    {"header", RequestRateLimit::Key::kHeader},
    {"client_cert", RequestRateLimit::Key::kClientCert},
};

inline constexpr Spelling<RequestRateLimit::Scope> kRateLimitScopes[] = {
    {"local", RequestRateLimit::Scope::kLocal},
    {"global", RequestRateLimit::Scope::kGlobal},
};

inline constexpr Spelling<ProxyProtocol::Mode> kProxyProtocolModes[] = {
    {"off", ProxyProtocol::Mode::kOff},
    {"v1", ProxyProtocol::Mode::kV1},
    {"v2", ProxyProtocol::Mode::kV2},
    {"any", ProxyProtocol::Mode::kAny},
};

inline constexpr Spelling<Cluster::SendProxyProtocol> kSendProxyProtocols[] = {
    {"off", Cluster::SendProxyProtocol::kOff},
    {"v1", Cluster::SendProxyProtocol::kV1},
    {"v2", Cluster::SendProxyProtocol::kV2},
};

template <typename E, size_t N>
constexpr std::string_view nameOf(const Spelling<E> (&table)[N], E value) {
  for (const auto& s : table)
    if (s.value == value) return s.name;
  return "?";
}

template <typename E, size_t N>
constexpr std::optional<E> valueOf(const Spelling<E> (&table)[N], std::string_view name) {
  for (const auto& s : table)
    if (s.name == name) return s.value;
  return std::nullopt;
}

inline constexpr std::string_view kHashOnSourceIp = "source_ip";
inline constexpr std::string_view kHashOnHeaderPrefix = "header:";

// ---------------------------------------------------------------- text

std::string toLower(std::string_view s);
std::string toUpper(std::string_view s);
bool isValidUtf8(std::string_view s);
// RFC 9110 token (method names, header names).
bool isToken(std::string_view s);
// A header value we are willing to write: no CR, LF or NUL (which would split or truncate the
// header on the wire), other control characters only as tab.
bool isFieldValue(std::string_view s);
// Object names: 1..kMaxNameLength of [A-Za-z0-9._:/-], starting with a letter or digit. Names end up
// in metrics labels and log lines, so nothing that needs quoting there.
bool isName(std::string_view s);
inline constexpr std::string_view kNameRule =
    "must be 1 to 128 letters, digits or . _ - : / and start with a letter or digit";
// A path as sent on the wire: starts with "/", visible ASCII only, no query or fragment.
std::optional<std::string> checkPath(std::string_view s);

// User text inside a message: in double quotes, control characters escaped (a message must not
// move a terminal's cursor), cut at 80 bytes on a character boundary (a 1 MiB value must not make
// a 1 MiB message).
std::string quote(std::string_view s);

// "443" or "8000-8100" (1 to 65535, low <= high); what the writer writes back for a range.
std::optional<std::pair<uint16_t, uint16_t>> portRange(std::string_view s);
std::string formatPortRange(std::pair<uint16_t, uint16_t> r);

// cpu_affinity written as a word: "auto", or off / false / no (unquoted). Anything else: nullopt
// and the message for the user in *error. (The list form is read by each loader.)
std::optional<CpuAffinity::Mode> cpuAffinityWord(std::string_view word, bool quoted, std::string* error);

// ---------------------------------------------------------------- hosts

bool isIpv4(std::string_view s);
bool isIpv6(std::string_view s);  // without brackets
bool isDnsName(std::string_view s);
// An upstream host: IP literal (IPv6 without brackets) or DNS name.
bool isHost(std::string_view s);
// A virtual-host domain pattern: exact name, "*.suffix" or "*". Error text, or nullopt when valid.
std::optional<std::string> checkDomain(std::string_view s);
// "host" or "host:port" as in a Host header (IPv6 in brackets). Error text, or nullopt when valid.
std::optional<std::string> checkAuthority(std::string_view s);

struct HostPort {
  std::string host;   // brackets removed
  uint32_t port = 0;  // not range-checked here; > 65535 is reported by the caller
};
// "host:port" / "[v6]:port". Error text in *error when it does not parse.
std::optional<HostPort> parseHostPort(std::string_view s, std::string* error);
std::string formatHostPort(std::string_view host, uint32_t port);

// ---------------------------------------------------------------- sizes

// "65536", "64KiB", "1MiB", "1GiB". Error text in *error when it does not parse.
std::optional<uint64_t> parseSize(std::string_view s, std::string* error);

// ---------------------------------------------------------------- suggestions

// The candidate closest to `word` when it is close enough to be a likely typo.
std::optional<std::string_view> closest(std::string_view word, std::span<const std::string_view> candidates);

}  // namespace marchproxy::config::syntax
