// Every file under examples/ is a config users will copy: each must load cleanly (no errors, no
// warnings) and survive the JSON round trip.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "config/loader.h"

namespace marchproxy::config {
namespace {

TEST(Examples, EveryExampleLoadsCleanly) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(MP_SOURCE_DIR) / "examples";
  ASSERT_TRUE(fs::is_directory(dir)) << dir;
  int count = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    auto ext = entry.path().extension();
    if (ext != ".yaml" && ext != ".yml" && ext != ".json") continue;
    {  // egress configs (top-level "kind: egress") have their own loader and test (src/egress)
      std::ifstream in(entry.path());
      std::string line;
      bool egress = false;
      while (std::getline(in, line))
        if (line.rfind("kind: egress", 0) == 0) egress = true;
      if (egress) continue;
    }
    ++count;
    SCOPED_TRACE(entry.path().string());
    LoadResult r = loadFile(entry.path().string());
    for (const auto& e : r.errors) ADD_FAILURE() << "error: " << e.toString();
    for (const auto& w : r.warnings) ADD_FAILURE() << "warning: " << w.toString();
    if (!r.ok()) continue;
    std::string json = toJson(*r.snapshot, true);
    LoadResult again = loadString(json);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(toJson(*again.snapshot, true), json);
    EXPECT_EQ(again.snapshot->hash, r.snapshot->hash);
  }
  EXPECT_GE(count, 3);
}

TEST(Examples, BasicIsWhatTheReadmeRuns) {
  LoadResult r = loadFile(std::string(MP_SOURCE_DIR) + "/examples/basic.yaml");
  ASSERT_TRUE(r.ok());
  const Snapshot& s = *r.snapshot;
  ASSERT_EQ(s.listeners.size(), 1u);
  EXPECT_EQ(s.listeners[0].address, "127.0.0.1");
  EXPECT_EQ(s.listeners[0].port, 8080);
  EXPECT_EQ(s.admin.address, "127.0.0.1");
  EXPECT_EQ(s.admin.port, 9901);
  ASSERT_EQ(s.clusters.size(), 1u);
  EXPECT_EQ(s.clusters[0].name, "app");
  ASSERT_EQ(s.clusters[0].endpoints.size(), 2u);
  EXPECT_EQ(s.clusters[0].endpoints[0].port, 9001);
  EXPECT_EQ(s.clusters[0].endpoints[1].port, 9002);
  EXPECT_EQ(s.clusters[0].health_check.type, HealthCheck::Type::kHttp);
}

}  // namespace
}  // namespace marchproxy::config
