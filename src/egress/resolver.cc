#include "egress/resolver.h"

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/use_awaitable.hpp>

namespace marchproxy::egress {

namespace asio = boost::asio;

asio::awaitable<Result<std::vector<IpAddr>>> Resolver::resolve(std::string host, const DnsConfig& dns) {
  if (auto ip = parseIp(host)) co_return std::vector<IpAddr>{*ip};
  if (auto it = dns.hosts.find(host); it != dns.hosts.end()) co_return it->second;
  auto now = std::chrono::steady_clock::now();
  if (auto it = cache_.find(host); it != cache_.end()) {
    if (it->second.expires > now) {
      if (!it->second.error.empty()) co_return Error{it->second.error};
      co_return it->second.addrs;
    }
    cache_.erase(it);
  }
  asio::ip::tcp::resolver r(ioc_);
  auto [ec, results] = co_await r.async_resolve(host, "", asio::as_tuple(asio::use_awaitable));
  Entry e;
  if (ec) {
    e.error = ec == asio::error::host_not_found ? std::string("no such host") : ec.message();
    e.expires = std::chrono::steady_clock::now() + dns.negative_ttl;
  } else {
    for (const auto& res : results) {
      auto a = res.endpoint().address();
      IpAddr ip;
      if (a.is_v4()) {
        auto b = a.to_v4().to_bytes();
        std::copy(b.begin(), b.end(), ip.bytes.begin());
      } else {
        ip.v6 = true;
        auto b = a.to_v6().to_bytes();
        std::copy(b.begin(), b.end(), ip.bytes.begin());
      }
      if (std::find(e.addrs.begin(), e.addrs.end(), ip) == e.addrs.end()) e.addrs.push_back(ip);
    }
    if (e.addrs.empty()) e.error = "no addresses";
    e.expires = std::chrono::steady_clock::now() + (e.error.empty() ? dns.min_ttl : dns.negative_ttl);
  }
  if (cache_.size() > 10'000) cache_.clear();  // bounded: a flood of distinct names cannot grow it
  auto out = e.error.empty() ? Result<std::vector<IpAddr>>(e.addrs) : Result<std::vector<IpAddr>>(Error{e.error});
  cache_[host] = std::move(e);
  co_return out;
}

}  // namespace marchproxy::egress
