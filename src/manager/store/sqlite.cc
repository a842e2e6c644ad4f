// SQLite backend: one sqlite3 handle per Conn, WAL journal (readers never block the writer),
// foreign keys enforced, synchronous=FULL so a write acknowledged with 2xx survives power loss.
#include <sqlite3.h>

#include <cstring>

#include "manager/store/db.h"

namespace marchproxy::manager::store {
namespace {

class SqliteConn final : public Conn {
 public:
  explicit SqliteConn(const std::string& path) {
    int rc = sqlite3_open_v2(path.c_str(), &db_, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                             nullptr);
    if (rc != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
      sqlite3_close(db_);
      db_ = nullptr;
      throw DbError(DbError::Kind::unavailable, "sqlite: cannot open " + path + ": " + msg);
    }
    sqlite3_busy_timeout(db_, 10000);
    script("PRAGMA journal_mode=WAL; PRAGMA foreign_keys=ON; PRAGMA synchronous=FULL;");
  }
  ~SqliteConn() override { sqlite3_close_v2(db_); }

  Rows exec(std::string_view sql, const Params& params) override {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(db_, sql.data(), static_cast<int>(sql.size()), &st, nullptr) != SQLITE_OK) fail();
    std::unique_ptr<sqlite3_stmt, decltype(&sqlite3_finalize)> guard(st, sqlite3_finalize);
    for (std::size_t i = 0; i < params.size(); ++i) {
      int rc = params[i] ? sqlite3_bind_text(st, int(i + 1), params[i]->data(), int(params[i]->size()),
                                             SQLITE_TRANSIENT)
                         : sqlite3_bind_null(st, int(i + 1));
      if (rc != SQLITE_OK) fail();
    }
    Rows out;
    int n = sqlite3_column_count(st);
    for (int i = 0; i < n; ++i) out.names->push_back(sqlite3_column_name(st, i));
    for (;;) {
      int rc = sqlite3_step(st);
      if (rc == SQLITE_DONE) break;
      if (rc != SQLITE_ROW) fail();
      Row r;
      r.names = out.names;
      r.cells.reserve(n);
      for (int i = 0; i < n; ++i) {
        if (sqlite3_column_type(st, i) == SQLITE_NULL) {
          r.cells.emplace_back();
        } else {
          auto* t = reinterpret_cast<const char*>(sqlite3_column_text(st, i));
          r.cells.emplace_back(std::string(t, sqlite3_column_bytes(st, i)));
        }
      }
      out.rows.push_back(std::move(r));
    }
    out.affected = sqlite3_changes(db_);
    return out;
  }

  void script(std::string_view sql) override {
    std::string s(sql);
    char* err = nullptr;
    if (sqlite3_exec(db_, s.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      throw DbError(DbError::Kind::other, "sqlite: " + msg);
    }
  }

  bool healthy() override { return db_ != nullptr; }
  Dialect dialect() const override { return Dialect::sqlite; }

 private:
  [[noreturn]] void fail() {
    int ext = sqlite3_extended_errcode(db_);
    auto kind = DbError::Kind::other;
    if (ext == SQLITE_CONSTRAINT_UNIQUE || ext == SQLITE_CONSTRAINT_PRIMARYKEY) kind = DbError::Kind::unique;
    else if (ext == SQLITE_CONSTRAINT_FOREIGNKEY) kind = DbError::Kind::foreign_key;
    else if (ext == SQLITE_CONSTRAINT_CHECK) kind = DbError::Kind::check;
    else if ((ext & 0xff) == SQLITE_CONSTRAINT && std::strstr(sqlite3_errmsg(db_), "FOREIGN KEY"))
      kind = DbError::Kind::foreign_key;  // RESTRICT actions report the primary code only
    else if ((ext & 0xff) == SQLITE_BUSY || (ext & 0xff) == SQLITE_LOCKED) kind = DbError::Kind::busy;
    throw DbError(kind, std::string("sqlite: ") + sqlite3_errmsg(db_));
  }

  sqlite3* db_ = nullptr;
};

}  // namespace

std::unique_ptr<Conn> openSqlite(const std::string& path) { return std::make_unique<SqliteConn>(path); }

}  // namespace marchproxy::manager::store
