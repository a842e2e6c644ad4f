#pragma once
// RESP2, the Redis serialization protocol (https://redis.io/docs/reference/protocol-spec/), for the
// rate limiter's Redis client (proxy/limits/redis_client.h; docs/rate-limiting.md).
//
// The parser is strict and incremental, like the PROXY protocol parser: it is given what has been
// read so far and says kIncomplete (read more), kError (with a reason; the connection must be
// closed: a peer that sends something else than RESP2 is not Redis, or not in a state we can trust)
// or kComplete (one value and the number of bytes it used). A prefix of a value is always
// kIncomplete, never an error and never a different value. Bounds: bulk strings of at most
// `max_bulk` bytes, arrays of at most `max_elements` elements, nested at most `max_depth` deep.
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace marchproxy::net {

struct RespValue {
  enum class Type { kSimple, kError, kInteger, kBulk, kNil, kArray };
  Type type = Type::kNil;
  std::string str;               // kSimple, kError, kBulk
  int64_t integer = 0;           // kInteger
  std::vector<RespValue> array;  // kArray (a nil array "*-1" is kNil)
};

struct RespLimits {
  size_t max_bulk = 1 << 20;
  size_t max_elements = 1024;
  int max_depth = 8;
};

enum class RespStatus { kComplete, kIncomplete, kError };

struct RespParseResult {
  RespStatus status = RespStatus::kIncomplete;
  size_t consumed = 0;     // kComplete: bytes of the value
  std::string_view error;  // kError: why (a static string)
};

// Parses the value at the front of `in` into *out (left unspecified unless kComplete).
RespParseResult parseResp(std::string_view in, RespValue* out, const RespLimits& limits = {});

// Appends a command (an array of bulk strings) to out.
void appendRespCommand(std::string& out, std::span<const std::string_view> args);
inline void appendRespCommand(std::string& out, std::initializer_list<std::string_view> args) {
  appendRespCommand(out, std::span<const std::string_view>(args.begin(), args.size()));
}
// The RESP2 encoding of a value (for tests and the fuzzer's round trip).
void appendResp(std::string& out, const RespValue& v);

}  // namespace marchproxy::net
