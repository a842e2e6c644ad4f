#pragma once
// Test support for the manager's unit tests: a migrated SQLite database in a fresh temporary
// directory, removed afterwards.
#include <unistd.h>

#include <filesystem>
#include <memory>

#include "manager/store/db.h"
#include "manager/store/migrations.h"

namespace marchproxy::manager::testing {

struct TempDb {
  std::filesystem::path dir;
  std::unique_ptr<store::Db> db;
  TempDb() {
    char tmpl[] = "/tmp/mp-manager-test-XXXXXX";
    dir = mkdtemp(tmpl);
    db = store::Db::open("sqlite://" + (dir / "m.db").string(), 2);
    store::migrate(*db);
  }
  ~TempDb() {
    db.reset();
    std::filesystem::remove_all(dir);
  }
};

}  // namespace marchproxy::manager::testing
