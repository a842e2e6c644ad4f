#pragma once
// Licensing: community edition (at most 3 registered proxies, no enterprise features) or an
// enterprise licence file signed with Ed25519 and verified offline against the configured public
// key. See docs/licensing.md.
//
// Threading: state() and the checks are safe from any thread.
#include <cstdint>
#include <string>
#include <vector>

namespace marchproxy::manager::license {

struct State {
  std::string edition = "community";  // community | enterprise
  std::string status = "valid";       // valid | grace | expired | invalid (falls back to community limits)
  std::string customer;
  int max_proxies = 3;
  std::vector<std::string> features;
  std::string expires_at;             // ISO-8601, empty for community
  std::string grace_ends_at;
  std::string problem;                // why status is invalid/expired, for the API and the log
};

class Licensing {
 public:
  // `license_file` may be empty (community). `public_key` is the Ed25519 public key (PEM or base64).
  Licensing(std::string license_file, std::string public_key, int grace_days = 14);
  State state() const;                      // re-evaluated against the clock on every call
  int proxyLimit() const;                   // the limit that applies now
  bool hasFeature(const std::string& name) const;
};

}  // namespace marchproxy::manager::license
