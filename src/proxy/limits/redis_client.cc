#include "proxy/limits/redis_client.h"

#include <fmt/format.h>
#include <openssl/evp.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <stdexcept>

#include "common/base/log.h"

namespace marchproxy::proxy::limits {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;

namespace {

// GCRA over every key of KEYS with (interval, tolerance) pairs in ARGV, in microseconds (Lua numbers
// are doubles: exact to well below a microsecond at today's epoch). The clock is Redis's TIME, so
// proxies with skewed clocks agree. The request passes only if every bucket allows it; then every
// bucket is charged and expires (PX) when it is full again. Reply: {1, 0} or {0, wait in ms}.
constexpr std::string_view kScript = R"lua(
pcall(redis.replicate_commands)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local nexts = {}
local wait = 0
for i = 1, #KEYS do
  local interval = tonumber(ARGV[2 * i - 1])
  local tolerance = tonumber(ARGV[2 * i])
  local tat = tonumber(redis.call('GET', KEYS[i]) or 0) or 0
  if tat < now then tat = now end
  local nxt = tat + interval
  nexts[i] = nxt
  if nxt - now > tolerance then
    local w = nxt - tolerance - now
    if w > wait then wait = w end
  end
end
if wait > 0 then return {0, math.ceil(wait / 1000)} end
for i = 1, #KEYS do
  redis.call('SET', KEYS[i], string.format('%.17g', nexts[i]), 'PX', math.ceil((nexts[i] - now) / 1000) + 1)
end
return {1, 0}
)lua";

std::string hexDigest(std::string_view data, const EVP_MD* md) {
  unsigned char d[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  EVP_Digest(data.data(), data.size(), d, &len, md, nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < len; ++i) {
    out += kHex[d[i] >> 4];
    out += kHex[d[i] & 15];
  }
  return out;
}

const std::string& scriptSha() {
  static const std::string sha = hexDigest(kScript, EVP_sha1());
  return sha;
}

std::string micros(int64_t ns) { return fmt::format("{}.{:03}", ns / 1000, ns % 1000); }

constexpr size_t kMaxReadBuffer = 2 << 20;
constexpr std::chrono::milliseconds kMinBackoff{100}, kMaxBackoff{2000};

}  // namespace

std::string readRedisPassword(const config::Redis& cfg, const std::filesystem::path& base_dir) {
  if (!cfg.password_file.empty()) {
    std::filesystem::path p = cfg.password_file;
    if (p.is_relative() && !base_dir.empty()) p = base_dir / p;
    std::ifstream f(p);
    if (!f) throw std::runtime_error(fmt::format("redis.password_file: cannot read {}: {}", p.string(), std::strerror(errno)));
    std::string line;
    std::getline(f, line);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) throw std::runtime_error(fmt::format("redis.password_file: the first line of {} is empty", p.string()));
    return line;
  }
  if (!cfg.password_env.empty()) {
    const char* v = std::getenv(cfg.password_env.c_str());
    if (!v) throw std::runtime_error("redis.password_env: " + cfg.password_env + " is not set");
    if (!*v) throw std::runtime_error("redis.password_env: " + cfg.password_env + " is empty");
    return v;
  }
  return {};
}

std::string redisBucketKey(std::string_view route_name, std::string_view key) {
  std::string out = "marchproxy:rl:";
  out += route_name;
  out += ':';
  out += hexDigest(key, EVP_sha256()).substr(0, 32);
  return out;
}

struct RedisClient::Pending {
  explicit Pending(asio::io_context& ioc) : timer(ioc) {}
  asio::steady_timer timer;
  bool done = false;    // answered or failed
  bool failed = false;
  bool auth = false;    // our AUTH: an error reply means a wrong password
  net::RespValue reply;
};

RedisClient::RedisClient(asio::io_context& ioc, const config::Redis& cfg, std::string password, RedisStats& stats,
                         unsigned worker)
    : ioc_(ioc), cfg_(cfg), password_(std::move(password)), stats_(stats), worker_(worker), sock_(ioc) {}

RedisClient::~RedisClient() = default;

void RedisClient::close() {
  closed_ = true;
  ++gen_;
  boost::system::error_code ec;
  sock_.close(ec);
  connecting_ = connected_ = writing_ = false;
  wbuf_.clear();
  rbuf_.clear();
  for (auto& p : queue_) {
    p->done = p->failed = true;
    p->timer.cancel();
  }
  queue_.clear();
}

void RedisClient::setUp() {
  backoff_ = std::chrono::milliseconds{0};
  if (stats_.state == 1) return;
  stats_.state = 1;
  spdlog::info("rate limits: redis {}:{} is up (worker {}); global limits are shared", cfg_.address, cfg_.port,
               worker_);
}

// A connection-level failure: close, fail what is in flight, back off.
void RedisClient::fail(std::string_view why) {
  ++stats_.errors;
  ++gen_;
  boost::system::error_code ec;
  sock_.close(ec);
  connecting_ = connected_ = writing_ = false;
  wbuf_.clear();
  rbuf_.clear();
  for (auto& p : queue_) {
    p->done = p->failed = true;
    p->timer.cancel();
  }
  queue_.clear();
  backoff_ = backoff_.count() == 0 ? kMinBackoff : std::min(backoff_ * 2, kMaxBackoff);
  retry_at_ = std::chrono::steady_clock::now() + backoff_;
  if (stats_.state == 2) return;
  stats_.state = 2;
  spdlog::warn("rate limits: redis {}:{} is down (worker {}): {}; global limits are enforced per proxy until it is back",
               cfg_.address, cfg_.port, worker_, why);
}

void RedisClient::startWriter() {
  if (writing_ || !connected_ || wbuf_.empty()) return;
  writing_ = true;
  asio::co_spawn(ioc_, writeLoop(shared_from_this(), gen_), asio::detached);
}

asio::awaitable<void> RedisClient::connectLoop(std::shared_ptr<RedisClient> self, uint64_t gen) {
  boost::system::error_code ec;
  const tcp::endpoint ep(asio::ip::make_address(cfg_.address, ec), cfg_.port);
  if (ec) {
    fail("invalid address");
    co_return;
  }
  co_await sock_.async_connect(ep, asio::redirect_error(asio::use_awaitable, ec));
  if (gen != gen_) co_return;  // timed out or closed meanwhile
  if (ec) {
    fail(ec.message());
    co_return;
  }
  sock_.set_option(tcp::no_delay(true), ec);
  connecting_ = false;
  connected_ = true;
  if (!password_.empty()) {  // first on the wire, before the calls that queued while connecting
    std::string auth;
    net::appendRespCommand(auth, {"AUTH", password_});
    wbuf_.insert(0, auth);
    auto p = std::make_shared<Pending>(ioc_);
    p->auth = true;
    queue_.push_front(p);
  }
  asio::co_spawn(ioc_, readLoop(self, gen), asio::detached);
  startWriter();
}

asio::awaitable<void> RedisClient::writeLoop(std::shared_ptr<RedisClient> self, uint64_t gen) {
  (void)self;
  std::string out;
  while (gen == gen_ && !wbuf_.empty()) {
    out.clear();
    out.swap(wbuf_);
    boost::system::error_code ec;
    co_await asio::async_write(sock_, asio::buffer(out), asio::redirect_error(asio::use_awaitable, ec));
    if (gen != gen_) co_return;
    if (ec) {
      fail(ec.message());
      co_return;
    }
  }
  if (gen == gen_) writing_ = false;
}

asio::awaitable<void> RedisClient::readLoop(std::shared_ptr<RedisClient> self, uint64_t gen) {
  (void)self;  // keeps the client alive while the connection is
  char buf[16 * 1024];
  for (;;) {
    boost::system::error_code ec;
    const size_t n = co_await sock_.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
    if (gen != gen_) co_return;
    if (ec) {
      fail(ec == asio::error::eof ? "connection closed by redis" : ec.message());
      co_return;
    }
    rbuf_.append(buf, n);
    size_t used = 0;
    for (;;) {
      net::RespValue v;
      const net::RespParseResult r = net::parseResp(std::string_view(rbuf_).substr(used), &v);
      if (r.status == net::RespStatus::kIncomplete) break;
      if (r.status == net::RespStatus::kError) {
        fail(fmt::format("not a RESP2 reply ({})", r.error));
        co_return;
      }
      used += r.consumed;
      if (queue_.empty()) {
        fail("a reply nothing asked for");
        co_return;
      }
      std::shared_ptr<Pending> p = std::move(queue_.front());
      queue_.pop_front();
      if (v.type == net::RespValue::Type::kError &&
          (p->auth || v.str.rfind("NOAUTH", 0) == 0 || v.str.rfind("WRONGPASS", 0) == 0)) {
        fail(p->auth ? "AUTH refused" : "redis requires a password (redis.password_file / password_env)");
        co_return;
      }
      setUp();
      p->reply = std::move(v);
      p->done = true;
      p->timer.cancel();
    }
    rbuf_.erase(0, used);
    if (rbuf_.size() > kMaxReadBuffer) {
      fail("reply too large");
      co_return;
    }
  }
}

asio::awaitable<std::optional<net::RespValue>> RedisClient::call(std::string_view command) {
  if (closed_) co_return std::nullopt;
  if (stats_.state == 2 && !connected_ && !connecting_ && std::chrono::steady_clock::now() < retry_at_)
    co_return std::nullopt;  // backing off: the local table decides, without waiting
  auto p = std::make_shared<Pending>(ioc_);
  wbuf_ += command;
  queue_.push_back(p);
  if (!connected_ && !connecting_) {
    connecting_ = true;
    asio::co_spawn(ioc_, connectLoop(shared_from_this(), gen_), asio::detached);
  } else {
    startWriter();
  }
  p->timer.expires_after(cfg_.timeout);
  boost::system::error_code ec;
  co_await p->timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
  if (!p->done) {
    // Too slow: the replies still owed on this connection would be late too.
    fail(fmt::format("no reply within {} ms", cfg_.timeout.count()));
    co_return std::nullopt;
  }
  if (p->failed) co_return std::nullopt;
  co_return std::move(p->reply);
}

asio::awaitable<std::optional<Verdict>> RedisClient::gcra(const std::vector<RedisBucket>& buckets) {
  auto self = shared_from_this();  // a reload may drop the worker's reference meanwhile
  std::vector<std::string> args;
  args.reserve(buckets.size() * 2);
  for (const RedisBucket& b : buckets) {
    args.push_back(micros(b.interval_ns));
    args.push_back(micros(b.tolerance_ns));
  }
  const std::string nkeys = std::to_string(buckets.size());
  auto command = [&](std::string_view verb, std::string_view script) {
    std::vector<std::string_view> a{verb, script, nkeys};
    for (const RedisBucket& b : buckets) a.push_back(b.key);
    for (const std::string& s : args) a.push_back(s);
    std::string out;
    net::appendRespCommand(out, a);
    return out;
  };
  const std::string evalsha = command("EVALSHA", scriptSha());
  std::optional<net::RespValue> r = co_await call(evalsha);
  if (r && r->type == net::RespValue::Type::kError && r->str.rfind("NOSCRIPT", 0) == 0) {
    const std::string eval = command("EVAL", kScript);  // runs it and caches it for the next EVALSHA
    r = co_await call(eval);
  }
  if (!r) co_return std::nullopt;
  if (r->type != net::RespValue::Type::kArray || r->array.size() != 2 ||
      r->array[0].type != net::RespValue::Type::kInteger || r->array[1].type != net::RespValue::Type::kInteger) {
    // An error reply (e.g. OOM, a script error) or an unexpected shape: this call only.
    if (++stats_.errors == 1 || stats_.errors % 1000 == 0)
      spdlog::warn("rate limits: redis {}:{} answered the rate-limit script with {}{} (worker {}; {} errors so far)",
                   cfg_.address, cfg_.port, r->type == net::RespValue::Type::kError ? "an error: " : "an unexpected reply",
                   r->type == net::RespValue::Type::kError ? r->str.substr(0, 200) : std::string(), worker_,
                   stats_.errors);
    co_return std::nullopt;
  }
  if (r->array[0].integer == 1) co_return Verdict{};
  const int64_t wait_ms = std::max<int64_t>(1, r->array[1].integer);
  co_return Verdict{false, static_cast<uint32_t>(std::min<int64_t>((wait_ms + 999) / 1000, UINT32_MAX))};
}

}  // namespace marchproxy::proxy::limits
