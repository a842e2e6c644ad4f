#pragma once
// The storage interface of the manager: a pool of connections to SQLite or PostgreSQL that run the
// same SQL. Statements use `?` placeholders (rewritten to $n for PostgreSQL); every value travels as
// a bound parameter, never spliced into SQL text. Dialect differences live only in migrations.cc.
//
// Threading: Db is shared by all request threads; a Conn is used by one thread at a time (leased
// from the pool for the length of one read or one transaction).
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace marchproxy::manager::store {

enum class Dialect { sqlite, postgres };

using Param = std::optional<std::string>;  // nullopt = SQL NULL; numbers travel as decimal text
using Params = std::vector<Param>;

struct Row {
  std::vector<std::optional<std::string>> cells;
  std::shared_ptr<const std::vector<std::string>> names;
  // Column by name; throws std::out_of_range on an unknown name (a programming error).
  const std::optional<std::string>& at(std::string_view name) const;
  std::string str(std::string_view name) const { return at(name).value_or(""); }
  std::int64_t i64(std::string_view name) const;
  bool isNull(std::string_view name) const { return !at(name).has_value(); }
};

struct Rows {
  std::shared_ptr<std::vector<std::string>> names = std::make_shared<std::vector<std::string>>();
  std::vector<Row> rows;
  std::int64_t affected = 0;
  bool empty() const { return rows.empty(); }
  const Row& front() const { return rows.front(); }
};

// What went wrong, in the terms the API maps to status codes.
struct DbError : std::runtime_error {
  enum class Kind { unique, foreign_key, check, busy, unavailable, other };
  Kind kind;
  DbError(Kind k, const std::string& msg) : std::runtime_error(msg), kind(k) {}
};

class Conn {
 public:
  virtual ~Conn() = default;
  virtual Rows exec(std::string_view sql, const Params& params = {}) = 0;
  // Runs several `;`-separated statements without parameters (migrations).
  virtual void script(std::string_view sql) = 0;
  virtual bool healthy() = 0;
  virtual Dialect dialect() const = 0;
  // Runs `fn` after the current write transaction commits (Db::write); dropped on rollback. For
  // announcing a change (events) only once it is durable.
  void afterCommit(std::function<void()> fn) { after_commit_.push_back(std::move(fn)); }
  std::vector<std::function<void()>> takeAfterCommit() { return std::exchange(after_commit_, {}); }

 private:
  std::vector<std::function<void()>> after_commit_;
};

struct PoolStats {
  std::size_t size = 0, in_use = 0;
  std::uint64_t waits = 0, acquired = 0;
};

class Db {
 public:
  // url: "sqlite:///abs/path.db", a plain file path, or "postgres://…"/"postgresql://…".
  // Throws DbError(unavailable) if the first connection cannot be opened.
  static std::unique_ptr<Db> open(const std::string& url, std::size_t pool_size);
  ~Db();

  Dialect dialect() const { return dialect_; }

  // Runs fn inside one write transaction. Writes are serialised (SQLite BEGIN IMMEDIATE; PostgreSQL
  // takes a transaction-scoped advisory lock) so the audit chain and config versions have one
  // order. Commits when fn returns, rolls back if it throws, and rethrows.
  template <typename F>
  auto write(F&& fn) -> decltype(fn(std::declval<Conn&>()));
  // Runs fn on a leased connection in one read-only snapshot.
  template <typename F>
  auto read(F&& fn) -> decltype(fn(std::declval<Conn&>()));

  bool ping();
  PoolStats stats();

 private:
  struct Lease;
  Db(Dialect d, std::function<std::unique_ptr<Conn>()> factory, std::size_t size);
  std::unique_ptr<Conn> acquire();
  void release(std::unique_ptr<Conn> c, bool broken);
  void begin(Conn& c, bool write);

  Dialect dialect_;
  std::function<std::unique_ptr<Conn>()> factory_;
  std::size_t size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::unique_ptr<Conn>> idle_;
  std::size_t open_ = 0, in_use_ = 0;
  std::uint64_t waits_ = 0, acquired_ = 0;
  std::mutex write_mu_;  // one writer per process; the database lock covers other processes
};

template <typename F>
auto Db::write(F&& fn) -> decltype(fn(std::declval<Conn&>())) {
  std::lock_guard wl(write_mu_);
  auto c = acquire();
  try {
    begin(*c, true);
    if constexpr (std::is_void_v<decltype(fn(*c))>) {
      fn(*c);
      c->exec("COMMIT");
      auto done = c->takeAfterCommit();
      release(std::move(c), false);
      for (auto& f : done) f();
    } else {
      auto r = fn(*c);
      c->exec("COMMIT");
      auto done = c->takeAfterCommit();
      release(std::move(c), false);
      for (auto& f : done) f();
      return r;
    }
  } catch (...) {
    bool broken = false;
    try {
      c->exec("ROLLBACK");
    } catch (...) {
      broken = true;
    }
    broken = broken || !c->healthy();
    c->takeAfterCommit();
    release(std::move(c), broken);
    throw;
  }
}

template <typename F>
auto Db::read(F&& fn) -> decltype(fn(std::declval<Conn&>())) {
  auto c = acquire();
  try {
    begin(*c, false);
    if constexpr (std::is_void_v<decltype(fn(*c))>) {
      fn(*c);
      c->exec("COMMIT");
      auto done = c->takeAfterCommit();
      release(std::move(c), false);
      for (auto& f : done) f();
    } else {
      auto r = fn(*c);
      c->exec("COMMIT");
      auto done = c->takeAfterCommit();
      release(std::move(c), false);
      for (auto& f : done) f();
      return r;
    }
  } catch (...) {
    bool broken = false;
    try {
      c->exec("ROLLBACK");
    } catch (...) {
      broken = true;
    }
    broken = broken || !c->healthy();
    c->takeAfterCommit();
    release(std::move(c), broken);
    throw;
  }
}

std::unique_ptr<Conn> openSqlite(const std::string& path);
std::unique_ptr<Conn> openPostgres(const std::string& url);

}  // namespace marchproxy::manager::store
