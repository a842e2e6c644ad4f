#include "manager/store/db.h"

#include <algorithm>

namespace marchproxy::manager::store {

const std::optional<std::string>& Row::at(std::string_view name) const {
  for (std::size_t i = 0; names && i < names->size(); ++i)
    if ((*names)[i] == name) return cells[i];
  throw std::out_of_range("no column " + std::string(name));
}

std::int64_t Row::i64(std::string_view name) const {
  const auto& v = at(name);
  return v && !v->empty() ? std::stoll(*v) : 0;
}

std::unique_ptr<Db> Db::open(const std::string& url, std::size_t pool_size) {
  std::function<std::unique_ptr<Conn>()> factory;
  Dialect d;
  if (url.rfind("postgres://", 0) == 0 || url.rfind("postgresql://", 0) == 0) {
    d = Dialect::postgres;
    factory = [url] { return openPostgres(url); };
  } else {
    d = Dialect::sqlite;
    std::string path = url.rfind("sqlite://", 0) == 0 ? url.substr(9) : url;
    factory = [path] { return openSqlite(path); };
  }
  std::unique_ptr<Db> db(new Db(d, std::move(factory), std::max<std::size_t>(1, pool_size)));
  db->release(db->acquire(), false);  // fail now, with the reason, if the database is unreachable
  return db;
}

Db::Db(Dialect d, std::function<std::unique_ptr<Conn>()> factory, std::size_t size)
    : dialect_(d), factory_(std::move(factory)), size_(size) {}

Db::~Db() = default;

std::unique_ptr<Conn> Db::acquire() {
  std::unique_lock lk(mu_);
  bool waited = false;
  for (;;) {
    if (!idle_.empty()) {
      auto c = std::move(idle_.back());
      idle_.pop_back();
      ++in_use_;
      ++acquired_;
      return c;
    }
    if (open_ < size_) {
      ++open_;
      ++in_use_;
      ++acquired_;
      lk.unlock();
      try {
        return factory_();
      } catch (...) {
        std::lock_guard g(mu_);
        --open_;
        --in_use_;
        cv_.notify_one();
        throw;
      }
    }
    if (!waited) {
      waited = true;
      ++waits_;
    }
    cv_.wait(lk);
  }
}

void Db::release(std::unique_ptr<Conn> c, bool broken) {
  std::lock_guard g(mu_);
  --in_use_;
  if (broken || !c) {
    --open_;
  } else {
    idle_.push_back(std::move(c));
  }
  cv_.notify_one();
}

void Db::begin(Conn& c, bool write) {
  if (dialect_ == Dialect::sqlite) {
    c.exec(write ? "BEGIN IMMEDIATE" : "BEGIN");
  } else if (write) {
    c.exec("BEGIN");
    // One writer at a time across every manager process sharing this database.
    c.exec("SELECT pg_advisory_xact_lock(7263540117)");
  } else {
    c.exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  }
}

bool Db::ping() {
  try {
    return read([](Conn& c) { return !c.exec("SELECT 1").empty(); });
  } catch (const std::exception&) {
    return false;
  }
}

PoolStats Db::stats() {
  std::lock_guard g(mu_);
  return {open_, in_use_, waits_, acquired_};
}

}  // namespace marchproxy::manager::store
