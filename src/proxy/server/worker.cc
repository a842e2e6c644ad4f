#include "proxy/server/worker.h"

#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>
#include <array>
#include <cstring>

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/executor_work_guard.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/use_awaitable.hpp>

#include "common/base/clock.h"
#include "common/base/hash.h"
#include "common/base/cpu.h"
#include "common/base/log.h"
#include "common/net/accept.h"
#include "proxy/server/http_session.h"
#include "proxy/server/server.h"

namespace marchproxy::proxy::server {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
constexpr auto kNoThrow = asio::as_tuple(asio::use_awaitable);

struct Worker::Acceptor {
  Acceptor(asio::io_context& ioc, ListenerInfo i) : acceptor(ioc), info(std::move(i)), backoff(ioc) {}
  tcp::acceptor acceptor;
  ListenerInfo info;
  tcp protocol = tcp::v4();
  std::optional<net::AcceptWait> wait;  // set once the acceptor is open
  asio::steady_timer backoff;           // after an accept error (out of descriptors or memory)
  int64_t last_error_log = 0;
  bool closed = false;
};

Worker::Worker(unsigned index, Server& server)
    // Every socket of a worker is created, used and cancelled on the worker's own thread, so the
    // reactor's per-descriptor locking can go (posting from other threads stays safe).
    : index_(index),
      server_(server),
      ioc_(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE_IO),
      rng_(std::random_device{}()),
      rate_limiter_(server.rateTable()),
      sweep_timer_(ioc_) {
  id_seq_ = rng_();
  id_key_ = rng_();
  work_.emplace(ioc_.get_executor());
}

Worker::~Worker() { join(); }

void Worker::start(int cpu) {
  thread_ = std::thread([this, cpu] {
    char name[16];
    std::snprintf(name, sizeof name, "worker-%u", index_);
    pthread_setname_np(pthread_self(), name);
    if (std::string err = cpu::pinThisThread(cpu); !err.empty()) spdlog::warn("{}: {}", name, err);
    asio::co_spawn(ioc_, sweepLoop(), asio::detached);
    for (;;) {
      try {
        ioc_.run();
        break;
      } catch (const std::exception& e) {
        // A handler must never throw; if one does, log it and keep this worker serving.
        spdlog::error("worker {}: unexpected exception: {}", index_, e.what());
      }
    }
    if (access_log_) access_log_->flush();
  });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::post(std::function<void()> fn) { asio::post(ioc_, std::move(fn)); }

void Worker::applyRuntime(std::shared_ptr<const Runtime> rt) {
  auto w = std::make_shared<WorkerRuntime>();
  const config::Snapshot& snap = *rt->snapshot;
  w->rt = rt;
  const size_t nc = rt->clusters.size();
  w->lbs.reserve(nc);
  w->pools.resize(nc);
  w->cluster_stats.resize(nc);
  w->active_requests.assign(nc, 0);
  w->retries_in_flight.assign(nc, 0);
  for (size_t ci = 0; ci < nc; ++ci) {
    const ClusterRuntime& cr = rt->clusters[ci];
    w->lbs.push_back(upstream::makeLoadBalancer(*cr.config, rng_(), cr.hash_table));
    for (size_t ei = 0; ei < cr.addresses.size(); ++ei)
      w->pools[ci].push_back(pools_.get(cr.addresses[ei], cr.pool_keys[ei]));
    w->cluster_stats[ci] = &stats_.clusters[cr.config->name];
  }
  const router::RouteTable& routes = *rt->routes;
  w->route_stats.resize(routes.routeCount());
  for (uint32_t id = 0; id < routes.routeCount(); ++id) {
    const std::string& vhost = routes.vhostName(routes.routeVhost(id));
    const std::string& route = routes.routeName(id);
    RouteStats& rs = stats_.routes[vhost + '\x1f' + route];
    rs.vhost = vhost;
    rs.route = route;
    // Every route of a vhost is a distinct object in the snapshot; find this one's action.
    const config::VirtualHost& vh = snap.virtual_hosts[routes.routeVhost(id)];
    for (const config::Route& r : vh.routes)
      if (r.name == route) rs.cluster = r.action == config::ActionKind::kForward ? r.forward.cluster : "";
    w->route_stats[id] = &rs;
  }
  // Access log: reopen only when its settings change.
  const std::string want = snap.access_log.enabled ? snap.access_log.path : std::string();
  if (want != access_log_path_) {
    if (access_log_) access_log_->flush();
    access_log_.reset();
    access_log_path_.clear();
    if (!want.empty()) {
      try {
        access_log_ = std::make_unique<AccessLogWriter>(want);
        access_log_path_ = want;
      } catch (const std::exception& e) {
        spdlog::error("worker {}: access log disabled: {}", index_, e.what());
      }
    }
  }
  applyRedis(*rt);
  wrt_ = std::move(w);
}

// Global rate limits: a new Redis client when the redis settings (or the password) change; the old
// one is closed (its calls in flight fall back to the local table).
void Worker::applyRedis(const Runtime& rt) {
  const config::Snapshot& snap = *rt.snapshot;
  std::string password = rt.redis_password;
  const auto& cur = rate_limiter_.redis();
  if (cur && snap.redis) {
    const config::Redis& a = cur->config();
    const config::Redis& b = *snap.redis;
    if (a.address == b.address && a.port == b.port && a.timeout == b.timeout && a.password_file == b.password_file &&
        a.password_env == b.password_env && cur->password() == password)
      return;
  }
  if (!cur && !snap.redis) return;
  if (cur) cur->close();
  redis_stats_.state = 0;
  rate_limiter_.setRedis(snap.redis ? std::make_shared<limits::RedisClient>(ioc_, *snap.redis, std::move(password),
                                                                            redis_stats_, index_)
                                    : nullptr);
}

void Worker::addListener(const std::string& key, int fd, ListenerInfo info) {
  auto acc = std::make_shared<Acceptor>(ioc_, std::move(info));
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  acc->protocol = ss.ss_family == AF_INET6 ? tcp::v6() : tcp::v4();
  boost::system::error_code ec;
  acc->acceptor.assign(acc->protocol, fd, ec);
  if (ec) {
    spdlog::error("worker {}: listener {}: {}", index_, acc->info.name, ec.message());
    ::close(fd);
    return;
  }
  if (draining_) {
    acc->acceptor.close(ec);
    return;
  }
  acceptors_[key] = acc;
  // The pending wait holds acc (keep) and hands it back to the callback.
  Acceptor* raw = acc.get();
  acc->wait.emplace(acc->acceptor,
                    [this, raw](const net::Accepted& a, std::shared_ptr<void> keep) { onAccept(*raw, a, std::move(keep)); });
  acc->wait->start(std::move(acc), false);
}

void Worker::removeListener(const std::string& key) {
  auto it = acceptors_.find(key);
  if (it == acceptors_.end()) return;
  it->second->closed = true;
  boost::system::error_code ec;
  it->second->acceptor.close(ec);  // completes a pending wait with ECANCELED
  it->second->backoff.cancel();
  acceptors_.erase(it);
}

// One readiness event of a listener: the connection the wait accepted, then more with accept4()
// until the backlog is empty (the next wait then skips the attempt known to fail) or a batch is
// done (the next wait tries at once; its result is queued behind the sessions started here).
void Worker::onAccept(Acceptor& acc, const net::Accepted& first, std::shared_ptr<void> keep) {
  constexpr int kBatch = 32;
  if (acc.closed || draining_ || first.error == ECANCELED) {
    if (first.fd >= 0) ::close(first.fd);
    return;
  }
  net::Accepted a = first;
  for (int n = 0;; ++n) {
    if (a.fd < 0) {
      if (a.error == EAGAIN) {
        acc.wait->start(std::move(keep), true);
        return;
      }
      // Out of descriptors or memory: say so at most once a second and back off briefly, rather
      // than spinning on a listener that stays readable. The wait after the pause tries at once.
      const int64_t now = coarseNowNs();
      if (now - acc.last_error_log > 1'000'000'000) {
        spdlog::warn("listener {}: accept failed: {}", acc.info.name, std::strerror(a.error));
        acc.last_error_log = now;
      }
      ++stats_.accept_errors;
      acc.backoff.expires_after(std::chrono::milliseconds(50));
      acc.backoff.async_wait([&acc, keep = std::move(keep)](const boost::system::error_code& ec) mutable {
        if (!ec && !acc.closed) acc.wait->start(std::move(keep), false);
      });
      return;
    }
    acceptConnection(acc, a, keep);
    if (n + 1 == kBatch) break;
    a = net::acceptOne(acc.acceptor.native_handle());
  }
  acc.wait->start(std::move(keep), false);
}

// Limits first, on the raw descriptor: a refused connection is closed before Asio registers it.
void Worker::acceptConnection(Acceptor& acc, const net::Accepted& a, const std::shared_ptr<void>& keep) {
  tcp::endpoint peer;  // from accept4 itself: no getpeername() per connection
  std::memcpy(peer.data(), &a.peer, std::min<size_t>(a.peer_len, peer.capacity()));
  peer.resize(std::min<size_t>(a.peer_len, peer.capacity()));
  if (!server_.fastPathAdmit(peer.data())) {
    ::close(a.fd);
    return;
  }
  if (!server_.admitConnection()) {
    ++stats_.connections_rejected;
    ::close(a.fd);
    return;
  }
  boost::system::error_code ec;
  tcp::socket socket = net::adoptAccepted(ioc_, acc.protocol, a.fd, ec);
  if (ec) {  // the reactor refused it (epoll_ctl: out of memory)
    spdlog::warn("listener {}: accepted connection dropped: {}", acc.info.name, ec.message());
    ::close(a.fd);
    server_.releaseConnection();
    return;
  }
  // keep owns acc: the session holds the listener's settings as long as it lives.
  HttpSession::start(new HttpSession(std::move(socket), peer, *this, std::shared_ptr<const ListenerInfo>(keep, &acc.info)));
}

asio::awaitable<void> Worker::sweepLoop() {
  int ticks = 0;
  while (!stopped_) {
    sweep_timer_.expires_after(std::chrono::milliseconds(100));
    auto [ec] = co_await sweep_timer_.async_wait(kNoThrow);
    if (stopped_) co_return;
    const int64_t now = coarseNowNs();
    // expire() only cancels I/O; completions run later, so the list is stable during the walk.
    for (HttpSession* s = sessions_head_; s; s = s->next) {
      if (s->deadline() <= now) s->expire();
      else s->maybeSleep(now);
    }
    if (++ticks % 10 == 0) {
      pools_.sweep(now);
      if (access_log_) access_log_->flush();
    }
  }
}

void Worker::beginDrain() {
  draining_ = true;
  for (auto& [key, acc] : acceptors_) {
    acc->closed = true;
    boost::system::error_code ec;
    acc->acceptor.close(ec);
    acc->backoff.cancel();
  }
  acceptors_.clear();
  for (HttpSession* s = sessions_head_; s; s = s->next) s->cancelIfIdle();
}

void Worker::stop() {
  stopped_ = true;
  draining_ = true;
  sweep_timer_.cancel();
  for (auto& [key, acc] : acceptors_) {
    acc->closed = true;
    boost::system::error_code ec;
    acc->acceptor.close(ec);
    acc->backoff.cancel();
  }
  acceptors_.clear();
  for (HttpSession* s = sessions_head_; s; s = s->next) s->forceClose();
  pools_.closeAll();
  if (rate_limiter_.redis()) rate_limiter_.redis()->close();
  if (access_log_) access_log_->flush();
  work_.reset();
}

void Worker::collect(WorkerStats* out) {
  *out = stats_;
  out->connections_active = session_count_;
  out->read_buffers_held = 0;
  out->connections_asleep = 0;
  for (const HttpSession* s = sessions_head_; s; s = s->next) {
    out->read_buffers_held += s->holdsReadBuffer();
    out->connections_asleep += s->asleep();
  }
  out->redis_up = redis_stats_.state == 1;
  out->redis_down = redis_stats_.state == 2;
  out->redis_errors = redis_stats_.errors;
  for (auto& [name, cs] : out->clusters) cs.active = cs.idle = 0;
  if (wrt_) {
    for (size_t ci = 0; ci < wrt_->rt->clusters.size(); ++ci) {
      ClusterStats& cs = out->clusters[wrt_->rt->clusters[ci].config->name];
      for (const auto& p : wrt_->pools[ci]) {
        cs.active += p->active;
        cs.idle += p->idle();
      }
    }
  }
}

void Worker::newRequestId(char (&out)[32]) {
  // Two hex digits per table entry: 16 lookups per id instead of 32 shifts and masks, and two
  // splitmix64 steps instead of two Mersenne Twister draws (~240 instructions per request before).
  static constexpr auto kHexPairs = [] {
    std::array<char, 512> t{};
    constexpr char kHex[] = "0123456789abcdef";
    for (size_t i = 0; i < 256; ++i) {
      t[2 * i] = kHex[i >> 4];
      t[2 * i + 1] = kHex[i & 0xf];
    }
    return t;
  }();
  id_seq_ += 0x9e3779b97f4a7c15ULL;
  const uint64_t a = mix64(id_seq_);
  const uint64_t b = mix64(a ^ id_key_);
  for (int i = 0; i < 8; ++i) {
    std::memcpy(out + 2 * i, &kHexPairs[((a >> (i * 8)) & 0xff) * 2], 2);
    std::memcpy(out + 16 + 2 * i, &kHexPairs[((b >> (i * 8)) & 0xff) * 2], 2);
  }
}

std::unique_ptr<Exchange> Worker::acquireExchange() {
  if (exchanges_.empty()) return std::make_unique<Exchange>();
  std::unique_ptr<Exchange> x = std::move(exchanges_.back());
  exchanges_.pop_back();
  return x;
}

void Worker::releaseExchange(std::unique_ptr<Exchange> x) {
  constexpr size_t kMaxPooled = 256;
  if (exchanges_.size() >= kMaxPooled) return;
  x->ubuf.clear();
  x->ubuf.shrinkTo(16 * 1024);  // a streaming exchange may have grown it to 64 KiB
  x->pieces.clear();
  exchanges_.push_back(std::move(x));
}

std::unique_ptr<char[]> Worker::takeReadBuffer() {
  if (read_buffers_.empty()) return std::unique_ptr<char[]>(new char[HttpSession::kIdleBufferBytes]);
  std::unique_ptr<char[]> b = std::move(read_buffers_.back());
  read_buffers_.pop_back();
  return b;
}

void Worker::giveReadBuffer(std::unique_ptr<char[]> b) {
  constexpr size_t kMaxPooled = 256;  // 256 KiB at most, kept for the next burst of requests
  if (read_buffers_.size() < kMaxPooled) read_buffers_.push_back(std::move(b));
}

void Worker::link(HttpSession* s) {
  s->prev = nullptr;
  s->next = sessions_head_;
  if (sessions_head_) sessions_head_->prev = s;
  sessions_head_ = s;
  ++session_count_;
  session_gauge_.store(session_count_, std::memory_order_relaxed);
}

void Worker::unlink(HttpSession* s) {
  if (s->prev) s->prev->next = s->next;
  else sessions_head_ = s->next;
  if (s->next) s->next->prev = s->prev;
  --session_count_;
  session_gauge_.store(session_count_, std::memory_order_relaxed);
}

}  // namespace marchproxy::proxy::server
