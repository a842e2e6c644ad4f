#include "control/state_dir.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

namespace marchproxy::control {
namespace {

namespace fs = std::filesystem;

class StateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mp-state-XXXXXX";
    root_ = ::mkdtemp(tmpl);
  }
  void TearDown() override { fs::remove_all(root_); }
  std::string read(const fs::path& p) {
    std::ifstream in(p);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  fs::path root_;
};

TEST(SafeFileName, AcceptsRelativeNames) {
  EXPECT_TRUE(isSafeFileName("certs/web.pem"));
  EXPECT_TRUE(isSafeFileName("ca/crl.pem"));
  EXPECT_TRUE(isSafeFileName("a..b/c"));  // dots inside a name are fine
}

TEST(SafeFileName, RefusesTraversalAbsoluteAndReserved) {
  for (const char* bad : {"../x", "a/../../x", "..", "/etc/passwd", "certs//x", "./x", "a/./b", "a/", "",
                          "a\\..\\b", "config.json", "manager.json"})
    EXPECT_FALSE(isSafeFileName(bad)) << bad;
  EXPECT_FALSE(isSafeFileName(std::string("a\0b", 3)));
  EXPECT_FALSE(isSafeFileName(std::string(256, 'a')));
}

TEST_F(StateDirTest, MaterialiseWritesConfigAndFilesPrivately) {
  StateDir s(root_);
  ASSERT_EQ(s.ensure(), "");
  auto dir = s.materialise(7, "{\"x\":1}", {{"certs/web.pem", "PEM"}, {"ca/crl.pem", "CRL"}});
  ASSERT_TRUE(dir) << dir.error().message;
  EXPECT_EQ(*dir, root_ / "snapshots" / "7");
  EXPECT_EQ(read(*dir / "config.json"), "{\"x\":1}");
  EXPECT_EQ(read(*dir / "certs" / "web.pem"), "PEM");
  struct stat st {};
  ASSERT_EQ(::stat((*dir / "certs" / "web.pem").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(::stat(root_.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(StateDirTest, MaterialiseRefusesTraversalBeforeWritingAnything) {
  StateDir s(root_);
  ASSERT_EQ(s.ensure(), "");
  for (const char* bad : {"../x", "/tmp/evil", "certs/../../escape"}) {
    auto dir = s.materialise(8, "{}", {{"certs/ok.pem", "ok"}, {bad, "evil"}});
    ASSERT_FALSE(dir) << bad;
    EXPECT_NE(dir.error().message.find(bad), std::string::npos) << dir.error().message;
  }
  EXPECT_FALSE(fs::exists(root_ / "snapshots" / "8"));
  EXPECT_FALSE(fs::exists(root_ / "x"));
  EXPECT_FALSE(fs::exists(root_.parent_path() / "escape"));
}

TEST_F(StateDirTest, SwitchCurrentIsASymlinkAndKeepsOnlyThePrevious) {
  StateDir s(root_);
  ASSERT_EQ(s.ensure(), "");
  EXPECT_FALSE(s.hasCurrent());
  EXPECT_FALSE(s.currentVersion());
  for (uint64_t v : {1, 2, 3}) {
    ASSERT_TRUE(s.materialise(v, "{\"v\":" + std::to_string(v) + "}", {}));
    ASSERT_EQ(s.switchCurrent(v), "");
    EXPECT_TRUE(fs::is_symlink(root_ / "current"));
    EXPECT_EQ(s.currentVersion(), v);
    EXPECT_EQ(read(s.currentConfig()), "{\"v\":" + std::to_string(v) + "}");
  }
  EXPECT_FALSE(fs::exists(root_ / "snapshots" / "1"));
  EXPECT_TRUE(fs::exists(root_ / "snapshots" / "2"));  // the previous one (last-known-good before 3)
  EXPECT_TRUE(fs::exists(root_ / "snapshots" / "3"));
  EXPECT_FALSE(fs::exists(root_ / "current.tmp"));
}

TEST_F(StateDirTest, RejectMovesTheSnapshotAsideAndLeavesCurrent) {
  StateDir s(root_);
  ASSERT_EQ(s.ensure(), "");
  ASSERT_TRUE(s.materialise(4, "{\"good\":true}", {}));
  ASSERT_EQ(s.switchCurrent(4), "");
  ASSERT_TRUE(s.materialise(5, "{\"bad\":true}", {}));
  s.reject(5);
  EXPECT_FALSE(fs::exists(root_ / "snapshots" / "5"));
  EXPECT_EQ(read(root_ / "rejected" / "5" / "config.json"), "{\"bad\":true}");
  EXPECT_EQ(s.currentVersion(), 4u);
  EXPECT_EQ(read(s.currentConfig()), "{\"good\":true}");
}

TEST_F(StateDirTest, IdentityFilesArePrivateAndReplaceable) {
  StateDir s(root_);
  ASSERT_EQ(s.ensure(), "");
  ASSERT_EQ(s.writeIdentity("token", "one"), "");
  ASSERT_EQ(s.writeIdentity("token", "two"), "");
  EXPECT_EQ(s.readIdentity("token"), "two");
  struct stat st {};
  ASSERT_EQ(::stat((root_ / "identity" / "token").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  EXPECT_FALSE(s.readIdentity("missing"));
}

}  // namespace
}  // namespace marchproxy::control
