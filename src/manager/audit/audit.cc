#include "manager/audit/audit.h"

#include <nlohmann/json.hpp>

#include "manager/crypto/crypto.h"
#include "manager/events/bus.h"
#include "manager/util/time.h"

namespace marchproxy::manager::audit {
namespace {
// The first row links to this fixed value, so removing the first row is detected too.
const std::string kGenesis(64, '0');

std::string& anchorKey() {
  static std::string key;
  return key;
}

std::string anchorMac(std::int64_t last_id, const std::string& last_hash, std::int64_t count) {
  if (anchorKey().empty()) return "";
  return crypto::hex(crypto::hmacSha256(
      anchorKey(), "audit-anchor\n" + std::to_string(last_id) + "\n" + last_hash + "\n" + std::to_string(count)));
}
}  // namespace

void setAnchorKey(const std::string& master_key) {
  anchorKey() = master_key.empty() ? std::string() : crypto::hmacSha256(master_key, "marchproxy audit anchor v1");
}

void sealAnchor(store::Db& db) {
  db.write([](store::Conn& c) {
    auto a = c.exec("SELECT last_id, last_hash, row_count FROM audit_anchor WHERE id = 1 AND mac = ''");
    if (a.empty()) return;
    const auto& r = a.front();
    c.exec("UPDATE audit_anchor SET mac = ? WHERE id = 1",
           {anchorMac(r.i64("last_id"), r.str("last_hash"), r.i64("row_count"))});
  });
}

std::string rowHash(const std::string& prev_hash, const std::string& ts, const Entry& e) {
  // A JSON array is an unambiguous encoding: no field can bleed into the next.
  nlohmann::json content = {ts, e.actor, e.source_ip, e.action, e.resource, e.summary, e.outcome};
  return crypto::sha256Hex(prev_hash + "\n" + content.dump());
}

void append(store::Conn& c, const Entry& e) {
  auto last = c.exec("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1");
  std::string prev = last.empty() ? kGenesis : last.front().str("hash");
  std::string ts = util::nowIso();
  std::string hash = rowHash(prev, ts, e);
  auto ins = c.exec(
      "INSERT INTO audit_log (ts, actor, source_ip, action, resource, summary, outcome, prev_hash, hash) "
      "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
      {ts, e.actor, e.source_ip, e.action, e.resource, e.summary, e.outcome, prev, hash});
  std::int64_t id = ins.empty() ? 0 : ins.front().i64("id");
  auto anchor = c.exec("SELECT row_count FROM audit_anchor WHERE id = 1");
  if (!anchor.empty()) {
    std::int64_t n = anchor.front().i64("row_count") + 1;
    c.exec("UPDATE audit_anchor SET last_id = ?, last_hash = ?, row_count = ?, mac = ?, updated_at = ? WHERE id = 1",
           {std::to_string(id), hash, std::to_string(n), anchorMac(id, hash, n), ts});
  } else if (last.empty()) {
    // The first row ever. (A log with rows but no anchor had its anchor deleted: verify() says so, and
    // appending does not paper over it.)
    c.exec("INSERT INTO audit_anchor (id, last_id, last_hash, row_count, mac, updated_at) VALUES (1, ?, ?, 1, ?, ?)",
           {std::to_string(id), hash, anchorMac(id, hash, 1), ts});
  }
  // Announced to live subscribers (admins: the audit log is theirs) once the row is committed.
  events::Event ev;
  ev.type = "audit";
  ev.resource = "audit";
  ev.id = id;
  ev.action = e.action;
  ev.data = {{"id", ev.id},         {"ts", ts},           {"actor", e.actor},     {"source_ip", e.source_ip},
             {"action", e.action}, {"resource", e.resource}, {"summary", e.summary}, {"outcome", e.outcome}};
  c.afterCommit([ev = std::move(ev)] { events::bus().publish(ev); });
}

VerifyResult verify(store::Conn& c) {
  VerifyResult r;
  std::string prev = kGenesis;
  std::int64_t after = 0;
  // Read in the same snapshot as the rows (Db::read), so a concurrent append cannot skew the counts.
  auto anchor = c.exec("SELECT last_id, last_hash, row_count, mac FROM audit_anchor WHERE id = 1");
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
  if (anchor.empty()) {
    if (r.rows > 0) {
      r.ok = false;
      r.reason = "the chain's anchor (table audit_anchor) is missing: removed rows at the end cannot be ruled out";
    }
    return r;
  }
  const auto& a = anchor.front();
  std::int64_t last_id = a.i64("last_id"), count = a.i64("row_count");
  std::string last_hash = a.str("last_hash");
  if (!anchorKey().empty() && !crypto::safeEqual(a.str("mac"), anchorMac(last_id, last_hash, count))) {
    r.ok = false;
    r.first_broken_id = last_id;
    r.reason = "the chain's anchor does not match its MAC (it was changed outside the manager)";
  } else if (last_id != after || last_hash != prev || count != r.rows) {
    r.ok = false;
    r.first_broken_id = last_id;
    r.reason = "the log ends at row " + std::to_string(after) + " after " + std::to_string(r.rows) +
               " rows, but the anchor names row " + std::to_string(last_id) + " as the newest of " +
               std::to_string(count) + " rows: rows were removed from the end";
  }
  return r;
}

}  // namespace marchproxy::manager::audit
