#pragma once
// Snapshot -> text: the canonical JSON form (what the manager sends and the proxy caches on disk),
// the content hash, and the one-line summary printed by `marchproxy check`.
#include <string>

#include "config/model.h"

namespace marchproxy::config {

// Canonical JSON of the file schema: every field written, defaults included, in a fixed order, so
// that two snapshots with the same content give the same bytes however they were written. The
// output reads back through loadString() to a snapshot with the same toJson(). `hash` is written
// only when set.
std::string toJson(const Snapshot& s, bool pretty = false);

// Hex SHA-256 of toJson(s) without the version and hash fields: the identity of the content, so
// that a manager re-publishing the same config under a new version is recognisably a no-op.
std::string computeHash(const Snapshot& s);

// "OK: 2 listeners, 3 virtual hosts, 7 routes, 2 clusters (5 endpoints); version 0; hash 1a2b3c4d…"
// Uses s.hash when set, computes it otherwise.
std::string summary(const Snapshot& s);

}  // namespace marchproxy::config
