#include "manager/audit/audit.h"

#include <nlohmann/json.hpp>

#include "manager/crypto/crypto.h"
#include "manager/events/bus.h"
#include "manager/util/time.h"

namespace marchproxy::manager::audit {
namespace {
// The first row links to this fixed value, so removing the first row is detected too.
const std::string kGenesis(64, '0');
}  // namespace

std::string rowHash(const std::string& prev_hash, const std::string& ts, const Entry& e) {
  // A JSON array is an unambiguous encoding: no field can bleed into the next.
  nlohmann::json content = {ts, e.actor, e.source_ip, e.action, e.resource, e.summary, e.outcome};
  return crypto::sha256Hex(prev_hash + "\n" + content.dump());
}

void append(store::Conn& c, const Entry& e) {
  auto last = c.exec("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1");
  std::string prev = last.empty() ? kGenesis : last.front().str("hash");
  std::string ts = util::nowIso();
  auto ins = c.exec(
      "INSERT INTO audit_log (ts, actor, source_ip, action, resource, summary, outcome, prev_hash, hash) "
      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
      {ts, e.actor, e.source_ip, e.action, e.resource, e.summary, e.outcome, prev, rowHash(prev, ts, e)});
  // Announced to live subscribers (admins: the audit log is theirs) once the row is committed.
  events::Event ev;
  ev.type = "audit";
  ev.resource = "audit";
  ev.id = ins.empty() ? 0 : ins.front().i64("id");
  ev.action = e.action;
  ev.data = {{"id", ev.id},         {"ts", ts},           {"actor", e.actor},     {"source_ip", e.source_ip},
             {"action", e.action}, {"resource", e.resource}, {"summary", e.summary}, {"outcome", e.outcome}};
  c.afterCommit([ev = std::move(ev)] { events::bus().publish(ev); });
}

VerifyResult verify(store::Conn& c) {
  VerifyResult r;
  std::string prev = kGenesis;
  std::int64_t after = 0;
  // Walk in pages so a long log does not load into memory at once.
  for (;;) {
    auto rows = c.exec("SELECT id, ts, actor, source_ip, action, resource, summary, outcome, prev_hash, hash "
                       "FROM audit_log WHERE id > ? ORDER BY id LIMIT 5000",
                       {std::to_string(after)});
    if (rows.empty()) break;
    for (const auto& row : rows.rows) {
      Entry e{row.str("actor"), row.str("source_ip"), row.str("action"), row.str("resource"), row.str("summary"),
              row.str("outcome")};
      std::int64_t id = row.i64("id");
      if (row.str("prev_hash") != prev) {
        r.ok = false;
        r.first_broken_id = id;
        r.reason = "prev_hash does not match the hash of the row before it (a row was removed or reordered)";
        return r;
      }
      if (rowHash(prev, row.str("ts"), e) != row.str("hash")) {
        r.ok = false;
        r.first_broken_id = id;
        r.reason = "content does not match its hash (the row was modified)";
        return r;
      }
      prev = row.str("hash");
      after = id;
      ++r.rows;
    }
  }
  return r;
}

}  // namespace marchproxy::manager::audit
