// Document::parseJson: a strict RFC 8259 reader that builds the same value tree as the YAML path.
//
// Why our own: snapshots from the manager are JSON and can be large (10,000 routes is ~1 MB);
// yaml-cpp spends ~75% of a load in its scanner on such input. This reader is one pass over the
// bytes with no recursion (open containers are an explicit stack), so it is both fast and safe on
// hostile input (depth-bounded like the YAML path, every error with its line and column).
//
// The tree it builds follows the YAML builder's conventions exactly, so the decoder cannot tell the
// two apart: strings are quoted scalars, numbers/true/false are plain scalars with their text as
// written, null is a null value, and each value's position is where it starts.
#include <fmt/format.h>

#include <cstdint>
#include <string>

#include "config/yaml_document.h"

namespace marchproxy::config::yaml {

namespace {

// The YAML path stops at yaml-cpp's limit; keep the same bound for JSON.
constexpr size_t kMaxDepth = 500;

class JsonReader {
 public:
  JsonReader(std::string_view text, std::vector<Value>& values) : s_(text), values_(values) {}

  std::optional<Diagnostic> run() {
    if (s_.substr(0, 3) == "\xEF\xBB\xBF") advance(3);  // a UTF-8 byte-order mark
    skipSpace();
    if (eof()) return std::nullopt;  // empty document, as in YAML
    if (!value()) return error_;
    for (;;) {
      skipSpace();
      if (open_.empty()) {  // the root was a scalar
        if (!eof()) return fail("unexpected content after the end of the JSON document");
        return std::nullopt;
      }
      if (eof()) return fail("unexpected end of input: an object or array is not closed");
      Frame& top = open_.back();  // non-empty: after the root value closed, only space may follow
      const char c = s_[i_];
      if (top.expect == Expect::kCommaOrEnd) {
        if (c == ',') {
          advance(1);
          top.expect = top.is_map ? Expect::kKey : Expect::kValue;
          top.after_comma = true;
          continue;
        }
        if (c == (top.is_map ? '}' : ']')) {
          advance(1);
          open_.pop_back();
          if (open_.empty()) {
            skipSpace();
            if (!eof()) return fail("unexpected content after the end of the JSON document");
            return std::nullopt;
          }
          continue;
        }
        return fail(top.is_map ? "expected ',' or '}' after an object member"
                               : "expected ',' or ']' after an array element");
      }
      if (top.expect == Expect::kKey) {
        if (c == '}' && !top.after_comma) {
          advance(1);
          open_.pop_back();
          if (open_.empty()) {
            skipSpace();
            if (!eof()) return fail("unexpected content after the end of the JSON document");
            return std::nullopt;
          }
          continue;
        }
        if (c != '"') return fail(top.after_comma ? "expected a member name in double quotes after ','"
                                                  : "expected a member name in double quotes or '}'");
        if (!string()) return error_;
        skipSpace();
        if (eof() || s_[i_] != ':') return fail("expected ':' after the member name");
        advance(1);
        skipSpace();
        open_.back().expect = Expect::kValue;
        continue;
      }
      // Expect::kValue
      if (!top.is_map && c == ']' && !top.after_comma) {
        advance(1);
        open_.pop_back();
        if (open_.empty()) {
          skipSpace();
          if (!eof()) return fail("unexpected content after the end of the JSON document");
          return std::nullopt;
        }
        continue;
      }
      top.expect = Expect::kCommaOrEnd;
      top.after_comma = false;
      if (!value()) return error_;
    }
  }

 private:
  enum class Expect : uint8_t { kKey, kValue, kCommaOrEnd };
  struct Frame {
    uint32_t index;
    bool is_map;
    Expect expect;
    bool after_comma = false;
  };

  bool eof() const { return i_ >= s_.size(); }

  void advance(size_t n) {
    for (size_t k = 0; k < n && i_ < s_.size(); ++k, ++i_) {
      if (s_[i_] == '\n') {
        ++line_;
        line_start_ = i_ + 1;
      }
    }
  }

  SourcePos here() const { return {line_, static_cast<int>(i_ - line_start_) + 1}; }

  std::optional<Diagnostic> fail(std::string message) {
    SourcePos p = here();
    error_ = Diagnostic{p.line, p.column, "", "invalid JSON: " + std::move(message)};
    return error_;
  }

  void skipSpace() {
    while (i_ < s_.size()) {
      const char c = s_[i_];
      if (c == '\n') {
        ++i_;
        ++line_;
        line_start_ = i_;
      } else if (c == ' ' || c == '\t' || c == '\r') {
        ++i_;
      } else {
        break;
      }
    }
  }

  uint32_t add(Value::Kind kind, SourcePos pos) {
    auto index = static_cast<uint32_t>(values_.size());
    Value& v = values_.emplace_back();
    v.kind = kind;
    v.pos = pos;
    if (!open_.empty()) values_[open_.back().index].items.push_back(index);
    return index;
  }

  // Reads one value at i_. Containers are opened (pushed) and filled by run().
  bool value() {
    if (eof()) {
      fail("unexpected end of input: a value is missing");
      return false;
    }
    const SourcePos pos = here();
    const char c = s_[i_];
    if (c == '{' || c == '[') {
      if (open_.size() >= kMaxDepth) {
        error_ = Diagnostic{pos.line, pos.column, "", fmt::format("nesting is too deep (over {} levels)", kMaxDepth)};
        return false;
      }
      const bool is_map = c == '{';
      uint32_t index = add(is_map ? Value::Kind::kMap : Value::Kind::kList, pos);
      advance(1);
      open_.push_back({index, is_map, is_map ? Expect::kKey : Expect::kValue});
      return true;
    }
    if (c == '"') return string();
    if (c == '-' || (c >= '0' && c <= '9')) return number(pos);
    for (std::string_view word : {"true", "false", "null"}) {
      if (s_.substr(i_, word.size()) == word) {
        const size_t end = i_ + word.size();
        if (end < s_.size() && isWordChar(s_[end])) break;
        if (word == "null") {
          add(Value::Kind::kNull, pos);
        } else {
          values_[add(Value::Kind::kScalar, pos)].text = std::string(word);
        }
        advance(word.size());
        return true;
      }
    }
    if (c == '\'') {
      fail("strings must be in double quotes");
    } else if (c == '}' || c == ']') {
      fail(fmt::format("unexpected '{}': a value is missing", c));
    } else {
      fail(fmt::format("unexpected character {} where a value should start", describe(c)));
    }
    return false;
  }

  static bool isWordChar(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  }

  static std::string describe(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (u >= 0x21 && u < 0x7f) return fmt::format("'{}'", c);
    return fmt::format("0x{:02X}", u);
  }

  bool number(SourcePos pos) {
    const size_t start = i_;
    size_t j = i_;
    auto digits = [&] {
      size_t k = j;
      while (j < s_.size() && s_[j] >= '0' && s_[j] <= '9') ++j;
      return j - k;
    };
    if (s_[j] == '-') ++j;
    if (j >= s_.size() || s_[j] < '0' || s_[j] > '9') {
      i_ = j;
      fail("a number needs a digit after '-'");
      return false;
    }
    if (s_[j] == '0') {
      ++j;
      if (j < s_.size() && s_[j] >= '0' && s_[j] <= '9') {
        i_ = j;
        fail("numbers must not have leading zeros");
        return false;
      }
    } else {
      digits();
    }
    if (j < s_.size() && s_[j] == '.') {
      ++j;
      if (digits() == 0) {
        i_ = j;
        fail("a number needs a digit after '.'");
        return false;
      }
    }
    if (j < s_.size() && (s_[j] == 'e' || s_[j] == 'E')) {
      ++j;
      if (j < s_.size() && (s_[j] == '+' || s_[j] == '-')) ++j;
      if (digits() == 0) {
        i_ = j;
        fail("a number needs a digit in its exponent");
        return false;
      }
    }
    if (j < s_.size() && isWordChar(s_[j])) {
      i_ = j;
      fail(fmt::format("unexpected character {} after a number", describe(s_[j])));
      return false;
    }
    values_[add(Value::Kind::kScalar, pos)].text.assign(s_.substr(start, j - start));
    i_ = j;  // numbers hold no newlines
    return true;
  }

  static void appendUtf8(std::string& out, uint32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  bool hex4(size_t at, uint32_t& out) {
    if (at + 4 > s_.size()) return false;
    out = 0;
    for (size_t k = at; k < at + 4; ++k) {
      const char c = s_[k];
      out <<= 4;
      if (c >= '0' && c <= '9') out |= static_cast<uint32_t>(c - '0');
      else if (c >= 'a' && c <= 'f') out |= static_cast<uint32_t>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') out |= static_cast<uint32_t>(c - 'A' + 10);
      else return false;
    }
    return true;
  }

  // Length of the valid UTF-8 sequence at s_[j] (0 if invalid): no overlong forms, no surrogates,
  // nothing above U+10FFFF.
  size_t utf8Length(size_t j) const {
    const auto b0 = static_cast<unsigned char>(s_[j]);
    auto cont = [&](size_t k) { return k < s_.size() && (static_cast<unsigned char>(s_[k]) & 0xC0) == 0x80; };
    if (b0 >= 0xC2 && b0 <= 0xDF) return cont(j + 1) ? 2 : 0;
    if (b0 >= 0xE0 && b0 <= 0xEF) {
      if (!cont(j + 1) || !cont(j + 2)) return 0;
      const auto b1 = static_cast<unsigned char>(s_[j + 1]);
      if (b0 == 0xE0 && b1 < 0xA0) return 0;   // overlong
      if (b0 == 0xED && b1 >= 0xA0) return 0;  // UTF-16 surrogate
      return 3;
    }
    if (b0 >= 0xF0 && b0 <= 0xF4) {
      if (!cont(j + 1) || !cont(j + 2) || !cont(j + 3)) return 0;
      const auto b1 = static_cast<unsigned char>(s_[j + 1]);
      if (b0 == 0xF0 && b1 < 0x90) return 0;  // overlong
      if (b0 == 0xF4 && b1 >= 0x90) return 0;  // above U+10FFFF
      return 4;
    }
    return 0;
  }

  // Reads a string at i_ (on its opening quote) and adds it to the innermost open container: a
  // member name and its value are consecutive items of a map, as in the YAML tree.
  bool string() {
    const SourcePos pos = here();
    std::string out;
    size_t j = i_ + 1;
    for (;;) {
      // Copy the plain run in one go.
      size_t run = j;
      while (run < s_.size()) {
        const auto u = static_cast<unsigned char>(s_[run]);
        if (u == '"' || u == '\\' || u < 0x20 || u >= 0x80) break;
        ++run;
      }
      out.append(s_.data() + j, run - j);
      j = run;
      if (j >= s_.size()) {
        i_ = j;
        fail("unexpected end of input inside a string");
        return false;
      }
      const auto u = static_cast<unsigned char>(s_[j]);
      if (u == '"') break;
      if (u < 0x20) {
        i_ = j;
        fail(u == '\n' ? "a string must not contain a raw line break (write \\n)"
                       : fmt::format("a string must not contain the control character 0x{:02X} unescaped", u));
        return false;
      }
      if (u >= 0x80) {
        size_t n = utf8Length(j);
        if (n == 0) {
          i_ = j;
          fail("invalid UTF-8 in a string");
          return false;
        }
        out.append(s_.data() + j, n);
        j += n;
        continue;
      }
      // A backslash escape.
      if (j + 1 >= s_.size()) {
        i_ = j;
        fail("unexpected end of input inside a string");
        return false;
      }
      const char e = s_[j + 1];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          uint32_t cp;
          if (!hex4(j + 2, cp)) {
            i_ = j;
            fail("\\u must be followed by four hex digits");
            return false;
          }
          size_t used = 6;
          if (cp >= 0xD800 && cp <= 0xDBFF) {  // a high surrogate needs its low half next
            uint32_t lo;
            if (j + 7 < s_.size() && s_[j + 6] == '\\' && s_[j + 7] == 'u' && hex4(j + 8, lo) && lo >= 0xDC00 &&
                lo <= 0xDFFF) {
              cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
              used = 12;
            } else {
              i_ = j;
              fail("a \\u escape of a high surrogate must be followed by its low surrogate");
              return false;
            }
          } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            i_ = j;
            fail("a \\u escape of a lone low surrogate");
            return false;
          }
          appendUtf8(out, cp);
          j += used;
          continue;
        }
        default:
          i_ = j;
          fail(fmt::format("invalid escape \\{} in a string", describe(e)));
          return false;
      }
      j += 2;
    }
    i_ = j + 1;  // strings hold no raw newlines, so the line is unchanged
    uint32_t index = add(Value::Kind::kScalar, pos);
    values_[index].quoted = true;
    values_[index].text = std::move(out);
    return true;
  }

  std::string_view s_;
  std::vector<Value>& values_;
  std::vector<Frame> open_;
  size_t i_ = 0;
  int line_ = 1;
  size_t line_start_ = 0;
  std::optional<Diagnostic> error_;
};

}  // namespace

std::optional<Diagnostic> Document::parseJson(std::string_view text) {
  values_.clear();
  auto error = JsonReader(text, values_).run();
  if (error) values_.clear();
  return error;
}

}  // namespace marchproxy::config::yaml
