// PostgreSQL backend over libpq: text-format parameters and results, `?` rewritten to `$n`.
#include <libpq-fe.h>

#include "manager/store/db.h"

namespace marchproxy::manager::store {
namespace {

// `?` outside quoted literals becomes $1, $2, … (our SQL never puts `?` inside literals, but the
// rewrite still skips them so a future literal cannot shift parameter numbers).
std::string rewritePlaceholders(std::string_view sql) {
  std::string out;
  out.reserve(sql.size() + 16);
  int n = 0;
  char quote = 0;
  for (char c : sql) {
    if (quote) {
      if (c == quote) quote = 0;
      out += c;
    } else if (c == '\'' || c == '"') {
      quote = c;
      out += c;
    } else if (c == '?') {
      out += '$' + std::to_string(++n);
    } else {
      out += c;
    }
  }
  return out;
}

class PgConn final : public Conn {
 public:
  explicit PgConn(const std::string& url) {
    pg_ = PQconnectdb(url.c_str());
    if (!pg_ || PQstatus(pg_) != CONNECTION_OK) {
      std::string msg = pg_ ? PQerrorMessage(pg_) : "out of memory";
      PQfinish(pg_);
      pg_ = nullptr;
      while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
      throw DbError(DbError::Kind::unavailable, "postgres: " + msg);
    }
    PQclear(PQexec(pg_, "SET client_min_messages = warning"));
  }
  ~PgConn() override { PQfinish(pg_); }

  Rows exec(std::string_view sql, const Params& params) override {
    std::string q = rewritePlaceholders(sql);
    std::vector<const char*> values;
    values.reserve(params.size());
    for (const auto& p : params) values.push_back(p ? p->c_str() : nullptr);
    PGresult* res = PQexecParams(pg_, q.c_str(), int(values.size()), nullptr, values.data(), nullptr, nullptr, 0);
    std::unique_ptr<PGresult, decltype(&PQclear)> guard(res, PQclear);
    check(res);
    Rows out;
    int nf = PQnfields(res), nt = PQntuples(res);
    for (int i = 0; i < nf; ++i) out.names->push_back(PQfname(res, i));
    out.rows.reserve(nt);
    for (int t = 0; t < nt; ++t) {
      Row r;
      r.names = out.names;
      r.cells.reserve(nf);
      for (int i = 0; i < nf; ++i) {
        if (PQgetisnull(res, t, i)) r.cells.emplace_back();
        else r.cells.emplace_back(std::string(PQgetvalue(res, t, i), PQgetlength(res, t, i)));
      }
      out.rows.push_back(std::move(r));
    }
    const char* ct = PQcmdTuples(res);
    out.affected = ct && *ct ? std::stoll(ct) : 0;
    return out;
  }

  void script(std::string_view sql) override {
    std::string s(sql);
    PGresult* res = PQexec(pg_, s.c_str());
    std::unique_ptr<PGresult, decltype(&PQclear)> guard(res, PQclear);
    check(res);
  }

  bool healthy() override { return pg_ && PQstatus(pg_) == CONNECTION_OK; }
  Dialect dialect() const override { return Dialect::postgres; }

 private:
  void check(PGresult* res) {
    auto st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) return;
    std::string state = res && PQresultErrorField(res, PG_DIAG_SQLSTATE) ? PQresultErrorField(res, PG_DIAG_SQLSTATE)
                                                                          : "";
    std::string msg = res ? PQresultErrorMessage(res) : PQerrorMessage(pg_);
    while (!msg.empty() && (msg.back() == '\n' || msg.back() == ' ')) msg.pop_back();
    auto kind = DbError::Kind::other;
    if (state == "23505") kind = DbError::Kind::unique;
    else if (state == "23503") kind = DbError::Kind::foreign_key;
    else if (state == "23514") kind = DbError::Kind::check;
    else if (state.rfind("08", 0) == 0 || PQstatus(pg_) != CONNECTION_OK) kind = DbError::Kind::unavailable;
    else if (state == "40001" || state == "40P01" || state == "55P03") kind = DbError::Kind::busy;
    throw DbError(kind, "postgres: " + msg);
  }

  PGconn* pg_ = nullptr;
};

}  // namespace

std::unique_ptr<Conn> openPostgres(const std::string& url) { return std::make_unique<PgConn>(url); }

}  // namespace marchproxy::manager::store
