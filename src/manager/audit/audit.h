#pragma once
// The audit log: append-only, hash-chained rows. Each row's hash is SHA-256 over the previous row's
// hash and this row's content, so editing, deleting or reordering any row breaks every later link.
// The database also refuses UPDATE/DELETE on the table (triggers, see store/migrations.cc).
//
// append() must run inside the same write transaction as the change it records, so a change and its
// audit row commit or vanish together (Db::write serialises writers, which fixes the chain order).
#include <cstdint>
#include <optional>
#include <string>

#include "manager/store/db.h"

namespace marchproxy::manager::audit {

struct Entry {
  std::string actor;      // username, "cluster:<name>", or "-" when unknown
  std::string source_ip;
  std::string action;     // "cluster.create", "auth.login", "auth.login_failed", …
  std::string resource;   // "clusters/3"
  std::string summary;    // what changed, never secrets
  std::string outcome = "success";
};

void append(store::Conn& c, const Entry& e);

// The chain's anchor (table audit_anchor, one row): the newest row's id and hash and the number of
// rows, updated by append() in the same transaction and authenticated with an HMAC under a key
// derived from the master key. The chain alone cannot tell a log whose newest rows were deleted from
// a shorter log; the anchor can, so verify() reports a removed tail. Call setAnchorKey() once at
// start-up, before any append (without a key the anchor is kept but not authenticated).
void setAnchorKey(const std::string& master_key);
// Authenticates an anchor written by the v5 migration (which has no key). Run right after that
// migration, at start-up.
void sealAnchor(store::Db& db);

struct VerifyResult {
  bool ok = true;
  std::int64_t rows = 0;
  std::optional<std::int64_t> first_broken_id;
  std::string reason;
};
VerifyResult verify(store::Conn& c);

// The hash of one row given its predecessor's hash (exposed for tests).
std::string rowHash(const std::string& prev_hash, const std::string& ts, const Entry& e);

}  // namespace marchproxy::manager::audit
