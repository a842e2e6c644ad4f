#pragma once
// DNS for one worker: IP literals as themselves, then the config's static `dns.hosts`, then a
// per-worker cache, then the system resolver (getaddrinfo on Asio's resolver thread). Positive
// answers are cached for dns.min_ttl (getaddrinfo reports no TTL), failures for dns.negative_ttl.
//
// Threading: one Resolver per worker, used only on that worker's thread.
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/result.h"
#include "egress/acl.h"
#include "egress/config.h"

namespace marchproxy::egress {

class Resolver {
 public:
  explicit Resolver(boost::asio::io_context& ioc) : ioc_(ioc) {}

  // Addresses for `host` (lower-case), or an error text such as "no such host".
  boost::asio::awaitable<Result<std::vector<IpAddr>>> resolve(std::string host, const DnsConfig& dns);

  void clear() { cache_.clear(); }  // after a config change (dns.hosts may differ)

 private:
  struct Entry {
    std::vector<IpAddr> addrs;
    std::string error;
    std::chrono::steady_clock::time_point expires;
  };
  boost::asio::io_context& ioc_;
  std::unordered_map<std::string, Entry> cache_;
};

}  // namespace marchproxy::egress
