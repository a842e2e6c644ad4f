#pragma once
// DNS for one worker: IP literals as themselves, then the config's static `dns.hosts`, then a
// per-worker cache, then c-ares (asynchronous, on the worker's own event loop: its sockets are
// watched by Asio, its timeouts by a steady_timer). c-ares reads /etc/hosts first, then asks the
// servers of dns.servers (or /etc/resolv.conf). Answers are cached for their DNS TTL clamped to
// [dns.min_ttl, dns.max_ttl]; failures for dns.negative_ttl.
//
// Threading: one Resolver per worker, used only on that worker's thread.
#include <ares.h>

#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <unordered_map>
#include <vector>

#include "common/base/result.h"
#include "egress/acl.h"
#include "egress/config.h"

namespace marchproxy::egress {

class Resolver {
 public:
  explicit Resolver(boost::asio::io_context& ioc);
  ~Resolver();
  Resolver(const Resolver&) = delete;
  Resolver& operator=(const Resolver&) = delete;

  // (Re)creates the c-ares channel for this DNS config and empties the cache. Error text when the
  // channel or the server list cannot be set up (the old channel keeps working then).
  Result<bool> configure(const DnsConfig& dns);

  // Addresses for `host` (lower-case), or an error text such as "no such host".
  boost::asio::awaitable<Result<std::vector<IpAddr>>> resolve(std::string host, const DnsConfig& dns);
  // The answer when it is known without asking DNS (an IP literal, dns.hosts, an unexpired cache
  // entry); nullopt when resolve() would have to send a query. Not a coroutine, and no copy: the
  // forward proxy's per-request path calls it first. The addresses are valid until the next call
  // on this resolver.
  std::optional<Result<std::span<const IpAddr>>> lookupNow(const std::string& host, const DnsConfig& dns);

  void clearCache() { cache_.clear(); }  // after a config change (dns.hosts or TTLs may differ)
  uint64_t lookups() const { return lookups_; }  // queries sent to c-ares (cache misses)

 private:
  struct Entry {
    std::vector<IpAddr> addrs;
    std::string error;
    std::chrono::steady_clock::time_point expires;
  };
  struct Watch {
    explicit Watch(boost::asio::io_context& ioc, int fd) : sd(ioc, fd) {}
    boost::asio::posix::stream_descriptor sd;
    bool want_read = false, want_write = false, reading = false, writing = false;
  };

  static void onSockState(void* self, ares_socket_t fd, int readable, int writable);
  void arm(int fd);
  void armTimer();
  void destroyChannel();

  boost::asio::io_context& ioc_;
  ares_channel channel_ = nullptr;
  std::unordered_map<int, std::unique_ptr<Watch>> watches_;
  boost::asio::steady_timer timer_;
  std::unordered_map<std::string, Entry> cache_;
  uint64_t lookups_ = 0;
  IpAddr literal_;  // lookupNow()'s answer for an IP literal
};

// Once per process, before any Resolver.
void initDnsLibrary();

}  // namespace marchproxy::egress
