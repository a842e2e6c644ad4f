#include "common/net/resp.h"

#include <gtest/gtest.h>

#include <string>

namespace marchproxy::net {
namespace {

using S = RespStatus;
using T = RespValue::Type;
using namespace std::string_literals;

RespParseResult parse(std::string_view in, RespValue* v) { return parseResp(in, v); }

// Every strict prefix of a complete value is incomplete (never an error, never another value).
void expectPrefixesIncomplete(std::string_view in) {
  for (size_t i = 0; i < in.size(); ++i) {
    RespValue v;
    EXPECT_EQ(parseResp(in.substr(0, i), &v).status, S::kIncomplete) << "prefix of length " << i << " of " << in;
  }
}

TEST(Resp, SimpleErrorInteger) {
  RespValue v;
  auto r = parse("+OK\r\nrest", &v);
  ASSERT_EQ(r.status, S::kComplete);
  EXPECT_EQ(r.consumed, 5u);
  EXPECT_EQ(v.type, T::kSimple);
  EXPECT_EQ(v.str, "OK");
  r = parse("-NOSCRIPT No matching script. Please use EVAL.\r\n", &v);
  ASSERT_EQ(r.status, S::kComplete);
  EXPECT_EQ(v.type, T::kError);
  EXPECT_EQ(v.str.rfind("NOSCRIPT", 0), 0u);
  r = parse(":-9223372036854775808\r\n", &v);
  ASSERT_EQ(r.status, S::kComplete);
  EXPECT_EQ(v.integer, INT64_MIN);
  r = parse(":9223372036854775807\r\n", &v);
  ASSERT_EQ(r.status, S::kComplete);
  EXPECT_EQ(v.integer, INT64_MAX);
}

TEST(Resp, BulkNilAndNestedArray) {
  const std::string in = "*3\r\n:1\r\n$4\r\na\r\nb\r\n*2\r\n$-1\r\n$0\r\n\r\n";
  RespValue v;
  auto r = parse(in, &v);
  ASSERT_EQ(r.status, S::kComplete) << r.error;
  EXPECT_EQ(r.consumed, in.size());
  ASSERT_EQ(v.type, T::kArray);
  ASSERT_EQ(v.array.size(), 3u);
  EXPECT_EQ(v.array[0].integer, 1);
  EXPECT_EQ(v.array[1].str, "a\r\nb");  // a bulk string is binary: CRLF inside is data
  ASSERT_EQ(v.array[2].array.size(), 2u);
  EXPECT_EQ(v.array[2].array[0].type, T::kNil);
  EXPECT_EQ(v.array[2].array[1].type, T::kBulk);
  EXPECT_TRUE(v.array[2].array[1].str.empty());
  expectPrefixesIncomplete(in);
  r = parse("*-1\r\n", &v);
  ASSERT_EQ(r.status, S::kComplete);
  EXPECT_EQ(v.type, T::kNil);
  // Round trip through our own encoder.
  std::string out;
  ASSERT_EQ(parse(in, &v).status, S::kComplete);
  appendResp(out, v);
  EXPECT_EQ(out, in);
}

TEST(Resp, RejectsWhatRedisNeverSends) {
  for (std::string bad : {"HTTP/1.1 200 OK\r\n"s, "+OK\n"s, "+O\rK\r\n"s, ":12a\r\n"s, ":+1\r\n"s, ":\r\n"s,
                          ":01\r\n"s, ":-0\r\n"s, ":9223372036854775808\r\n"s, ":-9223372036854775809\r\n"s,
                          "$-2\r\n"s, "$3\r\nabcd\r\n"s, "$3\r\nabc\n\n"s, "$03\r\nabc\r\n"s, "*-2\r\n"s,
                          "*1\r\n!\r\n"s, "\r\n"s, "_\r\n"s}) {
    RespValue v;
    auto r = parse(bad, &v);
    EXPECT_EQ(r.status, S::kError) << bad;
    EXPECT_FALSE(r.error.empty()) << bad;
  }
}

TEST(Resp, Bounds) {
  RespLimits small;
  small.max_bulk = 4;
  small.max_elements = 2;
  small.max_depth = 2;
  RespValue v;
  EXPECT_EQ(parseResp("$4\r\nabcd\r\n", &v, small).status, S::kComplete);
  EXPECT_EQ(parseResp("$5\r\n", &v, small).status, S::kError);  // refused before the data arrives
  EXPECT_EQ(parseResp("*3\r\n", &v, small).status, S::kError);
  EXPECT_EQ(parseResp("*1\r\n*1\r\n:1\r\n", &v, small).status, S::kComplete);
  EXPECT_EQ(parseResp("*1\r\n*1\r\n*1\r\n:1\r\n", &v, small).status, S::kError);
  // A huge announced length is refused at once and allocates nothing.
  EXPECT_EQ(parseResp("$9223372036854775807\r\n", &v).status, S::kError);
  EXPECT_EQ(parseResp("*1000000000\r\n", &v).status, S::kError);
}

TEST(Resp, CommandEncoding) {
  std::string out;
  appendRespCommand(out, {"EVALSHA", "abc", "1", "k"});
  EXPECT_EQ(out, "*4\r\n$7\r\nEVALSHA\r\n$3\r\nabc\r\n$1\r\n1\r\n$1\r\nk\r\n");
  RespValue v;
  auto r = parse(out, &v);
  ASSERT_EQ(r.status, S::kComplete);
  ASSERT_EQ(v.array.size(), 4u);
  EXPECT_EQ(v.array[3].str, "k");
}

}  // namespace
}  // namespace marchproxy::net
