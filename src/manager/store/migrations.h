#pragma once
// Numbered schema migrations, one list per dialect, applied in order at start-up inside write
// transactions. The schema_version table records what is applied; a database whose version is newer
// than the binary knows is refused (an older binary must not write to a schema it does not know).
#include <stdexcept>

#include "manager/store/db.h"

namespace marchproxy::manager::store {

// The schema version this binary writes.
int latestSchemaVersion();

struct SchemaTooNew : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Applies missing migrations. Returns the version before migrating (0 = fresh database).
// Throws SchemaTooNew or DbError.
int migrate(Db& db);

}  // namespace marchproxy::manager::store
