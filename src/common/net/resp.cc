#include "common/net/resp.h"

#include <limits>

namespace marchproxy::net {

namespace {

struct Parser {
  std::string_view in;
  const RespLimits& limits;
  size_t pos = 0;
  std::string_view error;

  // The line from pos to its CRLF (exclusive); false with error empty = incomplete.
  bool line(std::string_view* out) {
    for (size_t i = pos; i < in.size(); ++i) {
      if (in[i] == '\n') {
        error = "bare LF in a line";
        return false;
      }
      if (in[i] == '\r') {
        if (i + 1 >= in.size()) return false;
        if (in[i + 1] != '\n') {
          error = "CR not followed by LF";
          return false;
        }
        *out = in.substr(pos, i - pos);
        pos = i + 2;
        return true;
      }
    }
    return false;
  }

  // A signed 64-bit decimal: optional '-', then 1..19 digits, no '+', no leading zero (but "0").
  bool integer(std::string_view s, int64_t* out) {
    bool neg = false;
    if (!s.empty() && s[0] == '-') {
      neg = true;
      s.remove_prefix(1);
    }
    if (s.empty() || (s.size() > 1 && s[0] == '0') || (neg && s == "0")) return false;
    uint64_t v = 0;
    const uint64_t max = neg ? uint64_t{1} << 63 : static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    for (char c : s) {
      if (c < '0' || c > '9') return false;
      const uint64_t d = static_cast<uint64_t>(c - '0');
      if (v > (max - d) / 10) return false;
      v = v * 10 + d;
    }
    *out = neg ? static_cast<int64_t>(0 - v) : static_cast<int64_t>(v);
    return true;
  }

  // kComplete / kIncomplete (error empty) / kError (error set).
  RespStatus value(RespValue* out, int depth) {
    if (pos >= in.size()) return RespStatus::kIncomplete;
    const char type = in[pos++];
    std::string_view l;
    if (!line(&l)) return error.empty() ? RespStatus::kIncomplete : RespStatus::kError;
    switch (type) {
      case '+':
      case '-':
        out->type = type == '+' ? RespValue::Type::kSimple : RespValue::Type::kError;
        out->str.assign(l);
        return RespStatus::kComplete;
      case ':':
        out->type = RespValue::Type::kInteger;
        if (!integer(l, &out->integer)) return fail("invalid integer");
        return RespStatus::kComplete;
      case '$': {
        int64_t n = 0;
        if (!integer(l, &n) || n < -1) return fail("invalid bulk string length");
        if (n == -1) {
          out->type = RespValue::Type::kNil;
          return RespStatus::kComplete;
        }
        if (static_cast<uint64_t>(n) > limits.max_bulk) return fail("bulk string too long");
        const size_t len = static_cast<size_t>(n);
        if (in.size() - pos < len + 2) {
          // Whatever has arrived of the terminator must already be right.
          if (in.size() - pos > len && in[pos + len] != '\r') return fail("bulk string not followed by CRLF");
          return RespStatus::kIncomplete;
        }
        if (in[pos + len] != '\r' || in[pos + len + 1] != '\n') return fail("bulk string not followed by CRLF");
        out->type = RespValue::Type::kBulk;
        out->str.assign(in.substr(pos, len));
        pos += len + 2;
        return RespStatus::kComplete;
      }
      case '*': {
        int64_t n = 0;
        if (!integer(l, &n) || n < -1) return fail("invalid array length");
        if (n == -1) {
          out->type = RespValue::Type::kNil;
          return RespStatus::kComplete;
        }
        if (static_cast<uint64_t>(n) > limits.max_elements) return fail("array too long");
        if (n > 0 && depth >= limits.max_depth) return fail("arrays nested too deep");
        out->type = RespValue::Type::kArray;
        out->array.clear();
        for (int64_t i = 0; i < n; ++i) {  // grown as elements arrive, not by the announced length
          const RespStatus st = value(&out->array.emplace_back(), depth + 1);
          if (st != RespStatus::kComplete) return st;
        }
        return RespStatus::kComplete;
      }
      default:
        return fail("unknown RESP2 type byte");
    }
  }

  RespStatus fail(std::string_view why) {
    error = why;
    return RespStatus::kError;
  }
};

}  // namespace

RespParseResult parseResp(std::string_view in, RespValue* out, const RespLimits& limits) {
  Parser p{in, limits, 0, {}};
  RespParseResult r;
  r.status = p.value(out, 0);
  if (r.status == RespStatus::kComplete) r.consumed = p.pos;
  if (r.status == RespStatus::kError) r.error = p.error;
  return r;
}

void appendRespCommand(std::string& out, std::span<const std::string_view> args) {
  out += '*';
  out += std::to_string(args.size());
  out += "\r\n";
  for (std::string_view a : args) {
    out += '$';
    out += std::to_string(a.size());
    out += "\r\n";
    out += a;
    out += "\r\n";
  }
}

void appendResp(std::string& out, const RespValue& v) {
  switch (v.type) {
    case RespValue::Type::kSimple:
      out += '+';
      out += v.str;
      break;
    case RespValue::Type::kError:
      out += '-';
      out += v.str;
      break;
    case RespValue::Type::kInteger:
      out += ':';
      out += std::to_string(v.integer);
      break;
    case RespValue::Type::kNil:
      out += "$-1";
      break;
    case RespValue::Type::kBulk:
      out += '$';
      out += std::to_string(v.str.size());
      out += "\r\n";
      out += v.str;
      break;
    case RespValue::Type::kArray:
      out += '*';
      out += std::to_string(v.array.size());
      out += "\r\n";
      for (const RespValue& e : v.array) appendResp(out, e);
      return;
  }
  out += "\r\n";
}

}  // namespace marchproxy::net
