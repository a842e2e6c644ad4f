#include "egress/resolver.h"

#include <netinet/in.h>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <cstring>
#include <mutex>

#include <fmt/format.h>

namespace marchproxy::egress {

namespace asio = boost::asio;

void initDnsLibrary() {
  static std::once_flag once;
  std::call_once(once, [] { ares_library_init(ARES_LIB_INIT_ALL); });
}

Resolver::Resolver(asio::io_context& ioc) : ioc_(ioc), timer_(ioc) {}

Resolver::~Resolver() { destroyChannel(); }

void Resolver::destroyChannel() {
  if (!channel_) return;
  // ares_destroy() runs pending callbacks with ARES_EDESTRUCTION and closes its sockets; the
  // watches must let go of the descriptors first (c-ares owns them).
  for (auto& [fd, w] : watches_) w->sd.release();
  watches_.clear();
  ares_destroy(channel_);
  channel_ = nullptr;
}

Result<bool> Resolver::configure(const DnsConfig& dns) {
  initDnsLibrary();
  ares_options opts{};
  opts.sock_state_cb = &Resolver::onSockState;
  opts.sock_state_cb_data = this;
  opts.timeout = static_cast<int>(std::max<int64_t>(100, dns.timeout.count() / 2));
  opts.tries = 2;
  char lookups[] = "fb";  // /etc/hosts, then DNS
  opts.lookups = lookups;
  ares_channel ch = nullptr;
  int rc = ares_init_options(&ch, &opts, ARES_OPT_SOCK_STATE_CB | ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES | ARES_OPT_LOOKUPS);
  if (rc != ARES_SUCCESS) return Error{fmt::format("dns: {}", ares_strerror(rc))};
  if (!dns.servers.empty()) {
    std::string csv;
    for (const auto& s : dns.servers) csv += (csv.empty() ? "" : ",") + s;
    rc = ares_set_servers_ports_csv(ch, csv.c_str());
    if (rc != ARES_SUCCESS) {
      ares_destroy(ch);
      return Error{fmt::format("dns.servers: {}", ares_strerror(rc))};
    }
  }
  destroyChannel();
  channel_ = ch;
  cache_.clear();
  return true;
}

void Resolver::onSockState(void* data, ares_socket_t fd, int readable, int writable) {
  auto* self = static_cast<Resolver*>(data);
  auto it = self->watches_.find(fd);
  if (!readable && !writable) {
    if (it != self->watches_.end()) {
      it->second->sd.release();  // c-ares closes it
      self->watches_.erase(it);
    }
    return;
  }
  if (it == self->watches_.end()) it = self->watches_.emplace(fd, std::make_unique<Watch>(self->ioc_, fd)).first;
  it->second->want_read = readable;
  it->second->want_write = writable;
  self->arm(fd);
}

void Resolver::arm(int fd) {
  auto it = watches_.find(fd);
  if (it == watches_.end()) return;
  Watch& w = *it->second;
  if (w.want_read && !w.reading) {
    w.reading = true;
    w.sd.async_wait(asio::posix::stream_descriptor::wait_read, [this, fd](boost::system::error_code ec) {
      auto i = watches_.find(fd);
      if (i != watches_.end()) i->second->reading = false;
      if (ec || i == watches_.end() || !channel_) return;
      ares_process_fd(channel_, fd, ARES_SOCKET_BAD);
      arm(fd);
      armTimer();
    });
  }
  if (w.want_write && !w.writing) {
    w.writing = true;
    w.sd.async_wait(asio::posix::stream_descriptor::wait_write, [this, fd](boost::system::error_code ec) {
      auto i = watches_.find(fd);
      if (i != watches_.end()) i->second->writing = false;
      if (ec || i == watches_.end() || !channel_) return;
      ares_process_fd(channel_, ARES_SOCKET_BAD, fd);
      arm(fd);
      armTimer();
    });
  }
}

// c-ares retries and gives up on its own schedule: wake it when it asks.
void Resolver::armTimer() {
  if (!channel_) return;
  timeval tv{}, max{1, 0};
  timeval* t = ares_timeout(channel_, &max, &tv);
  timer_.expires_after(std::chrono::seconds(t->tv_sec) + std::chrono::microseconds(t->tv_usec));
  timer_.async_wait([this](boost::system::error_code ec) {
    if (ec || !channel_) return;
    ares_process_fd(channel_, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    if (!watches_.empty()) armTimer();
  });
}

namespace {

struct Query {
  bool done = false;
  int status = ARES_SUCCESS;
  std::vector<IpAddr> addrs;
  int ttl = -1;
  asio::steady_timer* wake = nullptr;
};

void onAddrinfo(void* arg, int status, int /*timeouts*/, ares_addrinfo* res) {
  std::unique_ptr<std::shared_ptr<Query>> holder(static_cast<std::shared_ptr<Query>*>(arg));
  Query* q = holder->get();
  q->status = status;
  if (status == ARES_SUCCESS && res) {
    for (ares_addrinfo_node* n = res->nodes; n; n = n->ai_next) {
      IpAddr ip;
      if (n->ai_family == AF_INET) {
        std::memcpy(ip.bytes.data(), &reinterpret_cast<sockaddr_in*>(n->ai_addr)->sin_addr, 4);
      } else if (n->ai_family == AF_INET6) {
        ip.v6 = true;
        std::memcpy(ip.bytes.data(), &reinterpret_cast<sockaddr_in6*>(n->ai_addr)->sin6_addr, 16);
      } else {
        continue;
      }
      if (std::find(q->addrs.begin(), q->addrs.end(), ip) == q->addrs.end()) q->addrs.push_back(ip);
      if (q->ttl < 0 || n->ai_ttl < q->ttl) q->ttl = n->ai_ttl;
    }
  }
  if (res) ares_freeaddrinfo(res);
  q->done = true;
  if (q->wake) q->wake->cancel();
}

}  // namespace

std::optional<Result<std::span<const IpAddr>>> Resolver::lookupNow(const std::string& host, const DnsConfig& dns) {
  using Span = std::span<const IpAddr>;
  if (auto ip = parseIp(host)) {
    literal_ = *ip;
    return Result<Span>(Span(&literal_, 1));
  }
  if (auto it = dns.hosts.find(host); it != dns.hosts.end()) return Result<Span>(Span(it->second));
  if (auto it = cache_.find(host); it != cache_.end()) {
    if (it->second.expires > std::chrono::steady_clock::now()) {
      if (!it->second.error.empty()) return Result<Span>(Error{it->second.error});
      return Result<Span>(Span(it->second.addrs));
    }
    cache_.erase(it);
  }
  return std::nullopt;
}

asio::awaitable<Result<std::vector<IpAddr>>> Resolver::resolve(std::string host, const DnsConfig& dns) {
  if (auto known = lookupNow(host, dns)) {
    if (!*known) co_return Error{known->error()};
    co_return std::vector<IpAddr>(known->value().begin(), known->value().end());
  }
  if (!channel_) co_return Error{"DNS is not configured"};
  ++lookups_;
  // c-ares calls back on this thread, from ares_process_fd() (or ares_destroy(), with
  // ARES_EDESTRUCTION); the callback wakes this coroutine by cancelling `wake`.
  auto q = std::make_shared<Query>();
  asio::steady_timer wake(ioc_, std::chrono::hours(24));
  q->wake = &wake;
  // If this frame is destroyed first (the worker stops), the callback must not touch `wake`.
  struct Unhook {
    Query* q;
    ~Unhook() { q->wake = nullptr; }
  } unhook{q.get()};
  ares_addrinfo_hints hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_flags = ARES_AI_NOSORT;
  // c-ares holds its own reference until it calls back.
  ares_getaddrinfo(channel_, host.c_str(), nullptr, &hints, &onAddrinfo, new std::shared_ptr<Query>(q));
  armTimer();
  while (!q->done) {
    auto [ec] = co_await wake.async_wait(asio::as_tuple(asio::use_awaitable));
    (void)ec;
  }
  Entry e;
  if (q->status != ARES_SUCCESS || q->addrs.empty()) {
    e.error = q->status == ARES_ENOTFOUND || q->status == ARES_SUCCESS ? std::string("no such host")
                                                                       : std::string(ares_strerror(q->status));
    e.expires = std::chrono::steady_clock::now() + dns.negative_ttl;
  } else {
    auto ttl = std::chrono::milliseconds(std::max(0, q->ttl) * 1000LL);
    ttl = std::clamp(ttl, dns.min_ttl, std::max(dns.min_ttl, dns.max_ttl));
    e.addrs = q->addrs;
    e.expires = std::chrono::steady_clock::now() + ttl;
  }
  if (cache_.size() > 10'000) cache_.clear();  // bounded: a flood of distinct names cannot grow it
  auto out = e.error.empty() ? Result<std::vector<IpAddr>>(e.addrs) : Result<std::vector<IpAddr>>(Error{e.error});
  cache_[host] = std::move(e);
  co_return out;
}

}  // namespace marchproxy::egress
