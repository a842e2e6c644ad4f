#pragma once
// The worker's Redis client for global rate limits (`scope: global`, docs/rate-limiting.md).
//
// One TCP connection per worker, opened lazily by the first request that needs it, pipelined: every
// call appends its command to the write buffer and waits for its reply, replies arrive in order.
// A call that gets no usable answer within `redis.timeout` (connection refused or lost, timeout,
// AUTH refused, a reply that is not RESP2, an error reply) returns nullopt and the caller decides
// with the local table. A connection-level failure closes the connection, fails every call in
// flight and keeps the client down for a backoff (100 ms doubling to 2 s) during which calls return
// nullopt at once; the next call after it reconnects. State changes are logged once each and
// published in RedisStats (marchproxy_ratelimit_redis_up / _errors_total).
#include <boost/asio/awaitable.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/net/resp.h"
#include "config/model.h"
#include "proxy/limits/rate_limiter.h"

namespace marchproxy::proxy::limits {

// One worker's Redis state for /metrics (WorkerStats).
struct RedisStats {
  int state = 0;            // 0 never connected, 1 up, 2 down
  uint64_t errors = 0;      // failed calls and connection failures
};

// One GCRA bucket in Redis: its key and the arithmetic of the local table (rate_limiter.h).
struct RedisBucket {
  std::string key;
  int64_t interval_ns = 0;
  int64_t tolerance_ns = 0;
};

// The password of `redis`, from password_file (first line; a relative path is resolved against
// base_dir, the config file's directory) or password_env; empty when neither is set. Throws
// std::runtime_error naming the field (never the secret) when the file or variable cannot be read or
// is empty. Read at start and on every reload (buildRuntime), and by `marchproxy check`.
std::string readRedisPassword(const config::Redis& cfg, const std::filesystem::path& base_dir = {});

// The Redis key of a bucket: "vhost/route" and a SHA-256 of the key (header values such as API
// keys are never written to Redis in clear).
std::string redisBucketKey(std::string_view route_name, std::string_view key);

class RedisClient : public std::enable_shared_from_this<RedisClient> {
 public:
  RedisClient(boost::asio::io_context& ioc, const config::Redis& cfg, std::string password, RedisStats& stats,
              unsigned worker);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Charges every bucket if each allows one more request (atomically, in one script run); nullopt
  // when Redis gave no usable answer (the caller decides locally).
  boost::asio::awaitable<std::optional<Verdict>> gcra(const std::vector<RedisBucket>& buckets);

  // Closes the connection and fails the calls in flight; later calls return nullopt.
  void close();

  const config::Redis& config() const { return cfg_; }
  const std::string& password() const { return password_; }

 private:
  struct Pending;
  boost::asio::awaitable<std::optional<net::RespValue>> call(std::string_view command);
  boost::asio::awaitable<void> connectLoop(std::shared_ptr<RedisClient> self, uint64_t gen);
  boost::asio::awaitable<void> readLoop(std::shared_ptr<RedisClient> self, uint64_t gen);
  boost::asio::awaitable<void> writeLoop(std::shared_ptr<RedisClient> self, uint64_t gen);
  void startWriter();
  void fail(std::string_view why);
  void setUp();

  boost::asio::io_context& ioc_;
  config::Redis cfg_;
  std::string password_;
  RedisStats& stats_;
  unsigned worker_;
  boost::asio::ip::tcp::socket sock_;
  uint64_t gen_ = 0;  // connection generation: coroutines of an older one exit quietly
  bool closed_ = false, connecting_ = false, connected_ = false, writing_ = false;
  std::string wbuf_, rbuf_;
  std::deque<std::shared_ptr<Pending>> queue_;  // calls awaiting a reply, in send order
  std::chrono::steady_clock::time_point retry_at_{};
  std::chrono::milliseconds backoff_{0};
};

}  // namespace marchproxy::proxy::limits
