#include "common/http/path.h"

#include <gtest/gtest.h>

namespace marchproxy::http {
namespace {

std::string norm(std::string_view in) {
  std::string out;
  switch (normalizePath(in, &out)) {
    case PathNormalization::kUnchanged: return std::string(in);
    case PathNormalization::kNormalized: return out;
    case PathNormalization::kInvalid: return "<invalid>";
  }
  return "?";
}

TEST(PathNormalization, PlainPathsAreUntouched) {
  std::string out = "sentinel";
  EXPECT_EQ(normalizePath("/api/v1/users", &out), PathNormalization::kUnchanged);
  EXPECT_EQ(out, "sentinel");
  EXPECT_EQ(norm("/"), "/");
  EXPECT_EQ(norm("/a//b"), "/a//b");  // empty segments are kept
  EXPECT_EQ(norm("/file.txt"), "/file.txt");
}

TEST(PathNormalization, EncodedUnreservedCharactersAreDecodedSoRulesCannotBeBypassed) {
  EXPECT_EQ(norm("/%61dmin"), "/admin");
  EXPECT_EQ(norm("/%41%42%7e"), "/AB~");
}

TEST(PathNormalization, OtherEscapesStayEncodedWithUpperCaseHex) {
  EXPECT_EQ(norm("/a%2fb"), "/a%2Fb");  // an encoded slash does not become a segment boundary
  EXPECT_EQ(norm("/a%20b"), "/a%20b");
}

TEST(PathNormalization, DotSegmentsAreRemoved) {
  EXPECT_EQ(norm("/a/./b"), "/a/b");
  EXPECT_EQ(norm("/a/b/../c"), "/a/c");
  EXPECT_EQ(norm("/x/../admin"), "/admin");
  EXPECT_EQ(norm("/../../etc/passwd"), "/etc/passwd");  // never above the root
  EXPECT_EQ(norm("/a/b/.."), "/a/");
  EXPECT_EQ(norm("/a/."), "/a/");
  EXPECT_EQ(norm("/.hidden/..x"), "/.hidden/..x");  // dots inside names are not dot segments
}

TEST(PathNormalization, EncodedDotSegmentsAreRemovedToo) {
  EXPECT_EQ(norm("/x/%2e%2e/admin"), "/admin");
  EXPECT_EQ(norm("/x/.%2E/admin"), "/admin");
}

TEST(PathNormalization, BrokenEscapesAreInvalid) {
  EXPECT_EQ(norm("/%zz"), "<invalid>");
  EXPECT_EQ(norm("/abc%4"), "<invalid>");
  EXPECT_EQ(norm("/abc%"), "<invalid>");
}

TEST(PathNormalization, NonOriginFormIsLeftAlone) {
  EXPECT_EQ(norm("*"), "*");
  EXPECT_EQ(norm(""), "");
}

}  // namespace
}  // namespace marchproxy::http
