// Strict HTTP/1.1 head parser and chunked decoder. See h1_parser.h for the contract and
// docs/http1.md for the rule table. Rules of thumb kept throughout this file:
//  - Single forward pass over the bytes; every decision depends only on bytes already seen, so a
//    prefix of a buffer yields kIncomplete or exactly the error the whole buffer yields (the fuzz
//    target checks this). Nothing is decided from "the buffer ended here".
//  - Limits are applied as a moved-in end of buffer: a line or section that has not ended by its
//    limit is an error whether or not more bytes have arrived.
//  - Indexes, not pointers, for bounds: limits may be SIZE_MAX and pointer overflow is UB.
#include "common/http/h1_parser.h"

#include <array>
#include <bit>
#include <cstring>
#include <limits>

namespace marchproxy::http {
namespace {

// ---------------------------------------------------------------------------------------------
// Character classes (RFC 9110 §5.6.2 token, §5.5 field-vchar, RFC 3986 for targets and hosts).

enum : uint8_t {
  kTok = 1u << 0,     // tchar
  kVal = 1u << 1,     // field-vchar / SP / HTAB (VCHAR and obs-text)
  kTgt = 1u << 2,     // request-target byte: VCHAR except '#' (no fragments on the wire)
  kHex = 1u << 3,     // HEXDIG
  kReg = 1u << 4,     // reg-name: unreserved / sub-delims ('%' handled separately)
  kQd = 1u << 5,      // qdtext of a quoted-string
  kScheme = 1u << 6,  // ALPHA / DIGIT / "+" / "-" / "."
  kVchar = 1u << 7,   // VCHAR (%x21-7E)
};

consteval std::array<uint8_t, 256> makeCharTable() {
  std::array<uint8_t, 256> t{};
  auto isAlpha = [](int c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); };
  auto isDigit = [](int c) { return c >= '0' && c <= '9'; };
  auto in = [](int c, const char* set) {
    for (const char* p = set; *p; ++p)
      if (*p == c) return true;
    return false;
  };
  for (int c = 0; c < 256; ++c) {
    uint8_t v = 0;
    if (isAlpha(c) || isDigit(c) || in(c, "!#$%&'*+-.^_`|~")) v |= kTok;
    if ((c >= 0x21 && c <= 0x7e) || c >= 0x80 || c == ' ' || c == '\t') v |= kVal;
    if (c >= 0x21 && c <= 0x7e && c != '#') v |= kTgt;
    if (isDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) v |= kHex;
    if (isAlpha(c) || isDigit(c) || in(c, "-._~!$&'()*+,;=")) v |= kReg;
    if (c == '\t' || c == ' ' || c == 0x21 || (c >= 0x23 && c <= 0x5b) || (c >= 0x5d && c <= 0x7e) ||
        c >= 0x80)
      v |= kQd;
    if (isAlpha(c) || isDigit(c) || in(c, "+-.")) v |= kScheme;
    if (c >= 0x21 && c <= 0x7e) v |= kVchar;
    t[static_cast<size_t>(c)] = v;
  }
  return t;
}

constexpr std::array<uint8_t, 256> kCharClass = makeCharTable();

inline bool is(uint8_t cls, char c) {
  return (kCharClass[static_cast<unsigned char>(c)] & cls) != 0;
}
inline bool isOws(char c) {
  return c == ' ' || c == '\t';
}
inline bool isDigit(char c) {
  return c >= '0' && c <= '9';
}

// ---------------------------------------------------------------------------------------------
// Bulk scanning for the two long runs in a head: field values and request targets. Each finds the
// first byte outside its class, 16 bytes per step with SSE2 (baseline on x86-64) or 8 with a
// portable word trick; the tail is done byte by byte with the tables above. MP_H1_NO_SIMD forces
// the portable path so tests can cover it on x86 too.

#if defined(__SSE2__) && !defined(MP_H1_NO_SIMD)
#define MP_H1_SSE2 1
#include <emmintrin.h>
#endif

#if !defined(MP_H1_SSE2)
constexpr uint64_t kOnes = 0x0101010101010101ull;
constexpr uint64_t kHigh = 0x8080808080808080ull;
inline uint64_t load8(const char* p) {
  uint64_t w;
  std::memcpy(&w, p, sizeof w);
  if constexpr (std::endian::native == std::endian::big) w = __builtin_bswap64(w);
  return w;
}
// Per-byte flags (0x80 in the byte) for "byte == 0" and "byte < n" (n <= 128). The lowest flagged
// byte is exact (borrows only propagate upwards), which is all we use: ctz finds the first stop.
inline uint64_t zeroBytes(uint64_t w) {
  return (w - kOnes) & ~w & kHigh;
}
inline uint64_t bytesBelow(uint64_t w, uint8_t n) {
  return (w - kOnes * n) & ~w & kHigh;
}
#endif

// Advances over field-value bytes (VCHAR, obs-text, SP, HTAB) from i; returns the first other
// index, or end.
inline size_t scanFieldValue(const char* s, size_t i, size_t end) {
#if defined(MP_H1_SSE2)
  while (end - i >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    // CTL = 0x00-0x1F (signed compare: bytes >= 0x80 are negative, so exclude them) or DEL.
    const __m128i ctl =
        _mm_and_si128(_mm_cmplt_epi8(v, _mm_set1_epi8(0x20)), _mm_cmpgt_epi8(v, _mm_set1_epi8(-1)));
    const auto mask =
        static_cast<unsigned>(_mm_movemask_epi8(_mm_or_si128(ctl, _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)))));
    if (mask == 0) {
      i += 16;
      continue;
    }
    i += static_cast<size_t>(__builtin_ctz(mask));
    if (s[i] != '\t') return i;  // HTAB is the one valid CTL
    ++i;
  }
#else
  while (end - i >= 8) {
    const uint64_t w = load8(s + i);
    const uint64_t mask = bytesBelow(w, 0x20) | zeroBytes(w ^ (kOnes * 0x7f));
    if (mask == 0) {
      i += 8;
      continue;
    }
    i += static_cast<size_t>(__builtin_ctzll(mask)) / 8;
    if (s[i] != '\t') return i;
    ++i;
  }
#endif
  while (i < end && is(kVal, s[i])) ++i;
  return i;
}

// Advances over request-target bytes (VCHAR except '#') from i.
inline size_t scanTarget(const char* s, size_t i, size_t end) {
#if defined(MP_H1_SSE2)
  while (end - i >= 16) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    // Signed "< 0x21" covers CTL, SP and every byte >= 0x80 at once.
    const __m128i bad = _mm_or_si128(
        _mm_cmplt_epi8(v, _mm_set1_epi8(0x21)),
        _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)), _mm_cmpeq_epi8(v, _mm_set1_epi8('#'))));
    const auto mask = static_cast<unsigned>(_mm_movemask_epi8(bad));
    if (mask != 0) return i + static_cast<size_t>(__builtin_ctz(mask));
    i += 16;
  }
#else
  while (end - i >= 8) {
    const uint64_t w = load8(s + i);
    const uint64_t mask =
        bytesBelow(w, 0x21) | (w & kHigh) | zeroBytes(w ^ (kOnes * 0x7f)) | zeroBytes(w ^ (kOnes * '#'));
    if (mask != 0) return i + static_cast<size_t>(__builtin_ctzll(mask)) / 8;
    i += 8;
  }
#endif
  while (i < end && is(kTgt, s[i])) ++i;
  return i;
}

std::string_view trimOws(std::string_view v) {
  while (!v.empty() && isOws(v.front())) v.remove_prefix(1);
  while (!v.empty() && isOws(v.back())) v.remove_suffix(1);
  return v;
}

bool isToken(std::string_view v) {
  if (v.empty()) return false;
  for (char c : v)
    if (!is(kTok, c)) return false;
  return true;
}

// Calls f(element) for each comma-separated element of a list field value, OWS-trimmed (RFC 9110
// §5.6.1). Stops and returns false as soon as f does. Elements may be empty; f decides.
template <typename F>
bool forEachListElement(std::string_view v, F&& f) {
  for (;;) {
    const size_t comma = v.find(',');
    if (!f(trimOws(v.substr(0, comma)))) return false;
    if (comma == std::string_view::npos) return true;
    v.remove_prefix(comma + 1);
  }
}

ParseStatus fail(ParseError& err, int status, const char* reason) {
  err.http_status = status;
  err.reason = reason;
  return ParseStatus::kError;
}

// end-of-scan for a region that starts at `start` and may span at most `limit` bytes.
struct Window {
  size_t end;     // scan no further than this
  bool at_limit;  // end is the limit (not just the bytes received so far)
};
inline Window window(size_t n, size_t start, size_t limit) {
  if (n - start >= limit) return {start + limit, true};
  return {n, false};
}
inline size_t saturatingAdd(size_t a, size_t b) {
  return a > std::numeric_limits<size_t>::max() - b ? std::numeric_limits<size_t>::max() : a + b;
}

// ---------------------------------------------------------------------------------------------
// Semantic fields. Values are OWS-trimmed field values.

constexpr uint64_t kMaxLength = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());

// Content-Length = 1*DIGIT (RFC 9110 §8.6). A list of identical values ("5, 5") and repeated
// identical lines are collapsed (§8.6 allows it); any difference, empty element, sign, space
// inside a number or value above 2^63-1 is an error.
const char* addContentLength(std::string_view v, bool& seen, uint64_t& out) {
  if (v.empty()) return "empty Content-Length";
  const char* reason = nullptr;
  forEachListElement(v, [&](std::string_view e) {
    if (e.empty()) {
      reason = "invalid Content-Length";
      return false;
    }
    uint64_t n = 0;
    for (char c : e) {
      if (!isDigit(c)) {
        reason = "invalid Content-Length";
        return false;
      }
      const auto d = static_cast<uint64_t>(c - '0');
      if (n > (kMaxLength - d) / 10) {
        reason = "Content-Length too large";
        return false;
      }
      n = n * 10 + d;
    }
    if (seen && n != out) {
      reason = "conflicting Content-Length values";
      return false;
    }
    seen = true;
    out = n;
    return true;
  });
  return reason;
}

struct TransferCodings {
  int lines = 0;
  int chunked = 0;            // times "chunked" appears across all TE lines
  bool last_chunked = false;  // the final coding of the combined list is chunked
  bool other = false;         // some coding other than chunked appears
};

// Transfer-Encoding = #transfer-coding (RFC 9112 §6.1, §7). Lines combine into one list. Empty
// elements, non-token names, quoted parameters and parameters on "chunked" are refused outright:
// each is a known way to make two parsers disagree on whether the body is chunked.
const char* addTransferEncoding(std::string_view v, TransferCodings& te) {
  ++te.lines;
  if (v.empty()) return "empty Transfer-Encoding";
  const char* reason = nullptr;
  forEachListElement(v, [&](std::string_view e) {
    if (e.empty()) {
      reason = "empty element in Transfer-Encoding";
      return false;
    }
    size_t k = 0;
    while (k < e.size() && is(kTok, e[k])) ++k;
    const std::string_view name = e.substr(0, k);
    if (name.empty()) {
      reason = "invalid Transfer-Encoding";
      return false;
    }
    const bool chunked = equalsIgnoreCase(name, "chunked");
    if (k != e.size()) {
      if (chunked) {
        reason = "invalid Transfer-Encoding";
        return false;
      }
      // transfer-parameter list: *( OWS ";" OWS token "=" token ), quoted values not accepted.
      std::string_view rest = e.substr(k);
      while (!rest.empty()) {
        rest = trimOws(rest);
        if (rest.empty() || rest.front() != ';') {
          reason = "invalid Transfer-Encoding";
          return false;
        }
        rest = trimOws(rest.substr(1));
        size_t j = 0;
        while (j < rest.size() && is(kTok, rest[j])) ++j;
        if (j == 0 || j == rest.size() || rest[j] != '=') {
          reason = "invalid Transfer-Encoding";
          return false;
        }
        size_t m = j + 1;
        while (m < rest.size() && is(kTok, rest[m])) ++m;
        if (m == j + 1) {
          reason = "invalid Transfer-Encoding";
          return false;
        }
        rest.remove_prefix(m);
      }
    }
    if (chunked)
      ++te.chunked;
    else
      te.other = true;
    te.last_chunked = chunked;
    return true;
  });
  return reason;
}

struct ConnectionOptions {
  bool close = false;
  bool keep_alive = false;
  bool upgrade = false;
};

// Connection = #connection-option (RFC 9110 §7.6.1); empty elements are ignored as §5.6.1 asks.
const char* addConnection(std::string_view v, ConnectionOptions& c) {
  const bool ok = forEachListElement(v, [&](std::string_view e) {
    if (e.empty()) return true;
    if (!isToken(e)) return false;
    if (equalsIgnoreCase(e, "close"))
      c.close = true;
    else if (equalsIgnoreCase(e, "keep-alive"))
      c.keep_alive = true;
    else if (equalsIgnoreCase(e, "upgrade"))
      c.upgrade = true;
    return true;
  });
  return ok ? nullptr : "invalid Connection";
}

}  // namespace

// uri-host [ ":" port ] (RFC 9110 §4.2, §7.2; RFC 3986 §3.2). Strict on purpose: the result is
// what routing and egress policy match on, so userinfo ('@'), empty hosts, empty or oversize ports
// and stray characters are refused rather than normalised.
bool isValidAuthority(std::string_view a, bool require_port) {
  size_t k = 0;
  if (!a.empty() && a[0] == '[') {
    // IP-literal: IPv6 characters only (IPvFuture and zone IDs are not accepted).
    k = 1;
    while (k < a.size() && (is(kHex, a[k]) || a[k] == ':' || a[k] == '.')) ++k;
    if (k == 1 || k == a.size() || a[k] != ']') return false;
    ++k;
  } else {
    while (k < a.size() && a[k] != ':') {
      if (a[k] == '%') {
        if (a.size() - k < 3 || !is(kHex, a[k + 1]) || !is(kHex, a[k + 2])) return false;
        k += 3;
      } else if (is(kReg, a[k])) {
        ++k;
      } else {
        return false;
      }
    }
    if (k == 0) return false;  // empty host
  }
  if (k == a.size()) return !require_port;
  if (a[k] != ':') return false;
  const std::string_view port = a.substr(k + 1);
  if (port.empty() || port.size() > 5) return false;
  uint32_t p = 0;
  for (char c : port) {
    if (!isDigit(c)) return false;
    p = p * 10 + static_cast<uint32_t>(c - '0');
  }
  return p <= 65535;
}

namespace {

// Everything the field lines of a message say about framing and connection handling.
struct FieldSemantics {
  bool cl_seen = false;
  uint64_t content_length = 0;
  TransferCodings te;
  ConnectionOptions conn;
  bool upgrade_field = false;
  bool expect_continue = false;
  int host_count = 0;
  std::string_view host;
};

// Per-field hook: returns nullptr or the 400 reason. Names are compared by length first so the
// common case (a field we do not interpret) costs one switch.
template <bool kRequest>
const char* interpretField(const Header& h, FieldSemantics& f) {
  switch (h.name.size()) {
    case 4:
      if (kRequest && equalsIgnoreCase(h.name, "host")) {
        if (++f.host_count > 1) return "multiple Host fields";
        if (!h.value.empty() && !isValidAuthority(h.value, false)) return "invalid Host";
        f.host = h.value;
      }
      break;
    case 6:
      if (kRequest && equalsIgnoreCase(h.name, "expect") && equalsIgnoreCase(h.value, "100-continue"))
        f.expect_continue = true;
      break;
    case 7:
      if (kRequest && equalsIgnoreCase(h.name, "upgrade") && !h.value.empty()) f.upgrade_field = true;
      break;
    case 10:
      if (equalsIgnoreCase(h.name, "connection")) return addConnection(h.value, f.conn);
      break;
    case 14:
      if (equalsIgnoreCase(h.name, "content-length"))
        return addContentLength(h.value, f.cl_seen, f.content_length);
      break;
    case 17:
      if (equalsIgnoreCase(h.name, "transfer-encoding")) return addTransferEncoding(h.value, f.te);
      break;
    default:
      break;
  }
  return nullptr;
}

// Parses field lines from `pos` up to and including the empty line that ends the section
// (RFC 9112 §5). On kComplete, pos is just past that empty line.
template <bool kRequest>
ParseStatus parseFields(const char* s, size_t n, size_t& pos, const ParseLimits& limits,
                        std::vector<Header>& headers, FieldSemantics& sem, ParseError& err) {
  const Window w = window(n, pos, limits.max_header_bytes);
  const size_t end = w.end;
  auto outOfBytes = [&] {
    return w.at_limit ? fail(err, 431, "header section too large") : ParseStatus::kIncomplete;
  };
  size_t i = pos;
  for (;;) {
    if (i >= end) return outOfBytes();
    const char c = s[i];
    if (c == '\r') {
      if (i + 1 >= end) return outOfBytes();
      if (s[i + 1] != '\n') return fail(err, 400, "bare CR");
      pos = i + 2;
      return ParseStatus::kComplete;
    }
    if (c == '\n') return fail(err, 400, "bare LF line terminator");
    // obs-fold, or whitespace between the start-line and the first field (RFC 9112 §5.2, §2.2).
    if (isOws(c)) return fail(err, 400, "obs-fold or line starting with whitespace");
    if (headers.size() >= limits.max_headers) return fail(err, 431, "too many header fields");

    const size_t name_start = i;
    while (i < end && is(kTok, s[i])) ++i;
    if (i >= end) return outOfBytes();
    if (s[i] != ':') {
      if (isOws(s[i])) return fail(err, 400, "whitespace between field name and colon");
      if (s[i] == '\r' || s[i] == '\n') return fail(err, 400, "field line without colon");
      return fail(err, 400, "invalid character in field name");
    }
    if (i == name_start) return fail(err, 400, "empty field name");
    const std::string_view name(s + name_start, i - name_start);
    ++i;  // ':'

    while (i < end && isOws(s[i])) ++i;
    const size_t value_start = i;
    i = scanFieldValue(s, i, end);
    if (i >= end) return outOfBytes();
    if (s[i] != '\r')
      return fail(err, 400, s[i] == '\n' ? "bare LF line terminator" : "control character in field value");
    if (i + 1 >= end) return outOfBytes();
    if (s[i + 1] != '\n') return fail(err, 400, "bare CR");
    size_t value_end = i;
    while (value_end > value_start && isOws(s[value_end - 1])) --value_end;
    const Header field{name, std::string_view(s + value_start, value_end - value_start)};
    headers.push_back(field);
    if (const char* reason = interpretField<kRequest>(field, sem)) return fail(err, 400, reason);
    i += 2;
  }
}

// Case-sensitive "HTTP/" DIGIT "." DIGIT (RFC 9112 §2.3). Returns the minor version (0, 1), -1 for
// well-formed but unsupported, -2 for malformed.
int classifyVersion(std::string_view v) {
  if (v.size() != 8 || v.substr(0, 5) != "HTTP/" || !isDigit(v[5]) || v[6] != '.' || !isDigit(v[7]))
    return -2;
  if (v[5] != '1' || (v[7] != '0' && v[7] != '1')) return -1;
  return v[7] - '0';
}

// Splits an origin-form or absolute-form remainder "path[?query]".
void splitPathQuery(std::string_view t, std::string_view& path, std::string_view& query) {
  const size_t q = t.find('?');
  if (q == std::string_view::npos) {
    path = t;
    query = {};
  } else {
    path = t.substr(0, q);
    query = t.substr(q + 1);
  }
}

// Classifies and splits the request-target (RFC 9112 §3.2). Returns nullptr or a 400 reason.
const char* parseTarget(RequestHead& out) {
  const std::string_view t = out.target;
  if (out.method == "CONNECT") {
    // authority-form is the only form for CONNECT and is used by nothing else (§3.2.3).
    if (!isValidAuthority(t, true)) return "CONNECT target must be host:port";
    out.form = TargetForm::kAuthority;
    out.host = t;
    return nullptr;
  }
  if (t[0] == '/') {
    out.form = TargetForm::kOrigin;
    splitPathQuery(t, out.path, out.query);
    return nullptr;
  }
  if (t == "*") {
    if (out.method != "OPTIONS") return "asterisk-form is only for OPTIONS";
    out.form = TargetForm::kAsterisk;
    out.path = t;
    return nullptr;
  }
  // absolute-form: scheme "://" authority path-abempty [ "?" query ]
  size_t k = 0;
  if (!((t[0] >= 'a' && t[0] <= 'z') || (t[0] >= 'A' && t[0] <= 'Z'))) return "invalid request target";
  while (k < t.size() && is(kScheme, t[k])) ++k;
  if (t.substr(k, 3) != "://") return "invalid request target";
  const size_t auth_start = k + 3;
  size_t auth_end = auth_start;
  while (auth_end < t.size() && t[auth_end] != '/' && t[auth_end] != '?') ++auth_end;
  const std::string_view authority = t.substr(auth_start, auth_end - auth_start);
  if (!isValidAuthority(authority, false)) return "invalid authority in request target";
  out.form = TargetForm::kAbsolute;
  out.scheme = t.substr(0, k);
  out.host = authority;
  splitPathQuery(t.substr(auth_end), out.path, out.query);
  // A static "/" rather than a view into the buffer: there is no such byte when the path is empty.
  if (out.path.empty()) out.path = "/";
  return nullptr;
}

}  // namespace

// -----------------------------------------------------------------------------------------------

void RequestHead::clear() {
  method = target = path = query = scheme = host = {};
  form = TargetForm::kOrigin;
  minor_version = 1;
  headers.clear();
  framing = BodyFraming::kNone;
  content_length = 0;
  keep_alive = true;
  expect_continue = false;
  upgrade = false;
  head_size = 0;
}

const Header* RequestHead::find(std::string_view lower_name) const {
  for (const Header& h : headers)
    if (equalsIgnoreCase(h.name, lower_name)) return &h;
  return nullptr;
}

void ResponseHead::clear() {
  minor_version = 1;
  status = 0;
  reason = {};
  headers.clear();
  framing = BodyFraming::kNone;
  content_length = 0;
  keep_alive = true;
  head_size = 0;
}

const Header* ResponseHead::find(std::string_view lower_name) const {
  for (const Header& h : headers)
    if (equalsIgnoreCase(h.name, lower_name)) return &h;
  return nullptr;
}

ParseStatus parseRequest(std::string_view buf, const ParseLimits& limits, RequestHead& out, ParseError& err) {
  out.clear();
  const char* const s = buf.data();
  const size_t n = buf.size();
  size_t i = 0;

  // Empty lines before the request line (RFC 9112 §2.2), a bounded number of them.
  for (int empty = 0;; ++empty) {
    if (i >= n) return ParseStatus::kIncomplete;
    if (s[i] == '\n') return fail(err, 400, "bare LF line terminator");
    if (s[i] != '\r') break;
    if (empty == kMaxLeadingEmptyLines) return fail(err, 400, "too many empty lines before request");
    if (i + 1 >= n) return ParseStatus::kIncomplete;
    if (s[i + 1] != '\n') return fail(err, 400, "bare CR");
    i += 2;
  }

  // request-line = method SP request-target SP HTTP-version CRLF, single SPs only (§3).
  const size_t line = i;
  const Window w = window(n, line, saturatingAdd(limits.max_request_line, 2));
  const size_t end = w.end;
  auto outOfBytes = [&] {
    return w.at_limit ? fail(err, 414, "request line too long") : ParseStatus::kIncomplete;
  };

  while (i < end && is(kTok, s[i])) ++i;
  if (i >= end) return outOfBytes();
  if (i == line) return fail(err, 400, "invalid request line");
  if (s[i] != ' ') {
    if (s[i] == '\r' || s[i] == '\n') return fail(err, 400, "request line missing target and version");
    return fail(err, 400, "invalid character in method");
  }
  out.method = std::string_view(s + line, i - line);
  const size_t target_start = ++i;
  i = scanTarget(s, i, end);
  if (i >= end) return outOfBytes();
  if (s[i] != ' ') {
    if (i == target_start) return fail(err, 400, "invalid request line");
    if (s[i] == '\r' || s[i] == '\n') return fail(err, 400, "missing HTTP version");
    return fail(err, 400, "invalid character in request target");
  }
  if (i == target_start) return fail(err, 400, "invalid request line");
  out.target = std::string_view(s + target_start, i - target_start);
  const size_t version_start = ++i;
  while (i < end && is(kVchar, s[i])) ++i;
  if (i >= end) return outOfBytes();
  if (s[i] != '\r') {
    if (s[i] == '\n') return fail(err, 400, "bare LF line terminator");
    return fail(err, 400, "invalid request line");
  }
  if (i + 1 >= end) return outOfBytes();
  if (s[i + 1] != '\n') return fail(err, 400, "bare CR");
  const int minor = classifyVersion(std::string_view(s + version_start, i - version_start));
  if (minor == -2) return fail(err, 400, "malformed HTTP version");
  if (minor == -1) return fail(err, 505, "unsupported HTTP version");
  out.minor_version = minor;
  i += 2;
  if (const char* reason = parseTarget(out)) return fail(err, 400, reason);

  FieldSemantics sem;
  const ParseStatus st = parseFields<true>(s, n, i, limits, out.headers, sem, err);
  if (st != ParseStatus::kComplete) return st;

  // Host (RFC 9112 §3.2): required once in 1.1, never twice (checked per line). For absolute-form
  // and CONNECT the target's authority was already taken as host and wins.
  if (sem.host_count == 0 && minor == 1) return fail(err, 400, "missing Host");
  if (out.form == TargetForm::kOrigin || out.form == TargetForm::kAsterisk) out.host = sem.host;

  // Framing (RFC 9112 §6.1, §6.3). Refuse every combination two parsers might read differently.
  if (sem.te.lines > 0) {
    if (sem.cl_seen) return fail(err, 400, "both Content-Length and Transfer-Encoding");
    if (minor == 0) return fail(err, 400, "Transfer-Encoding in HTTP/1.0 request");
    if (sem.te.chunked > 1) return fail(err, 400, "chunked applied more than once");
    if (!sem.te.last_chunked) return fail(err, 400, "chunked is not the final transfer coding");
    if (sem.te.other) return fail(err, 501, "unsupported transfer coding");
    out.framing = BodyFraming::kChunked;
  } else if (sem.cl_seen) {
    out.framing = BodyFraming::kContentLength;
    out.content_length = sem.content_length;
  }

  out.keep_alive = minor == 1 ? !sem.conn.close : (sem.conn.keep_alive && !sem.conn.close);
  // Expect and Upgrade must be ignored in HTTP/1.0 requests (RFC 9110 §10.1.1, §7.8).
  out.expect_continue = minor == 1 && sem.expect_continue;
  out.upgrade = minor == 1 && sem.conn.upgrade && sem.upgrade_field;
  out.head_size = i;
  return ParseStatus::kComplete;
}

namespace {

ParseStatus parseResponseImpl(std::string_view buf, const ParseLimits& limits, bool request_method_head,
                              ResponseHead& out, ParseError& err) {
  const char* const s = buf.data();
  const size_t n = buf.size();
  // No empty lines are skipped before a status line: a stray CRLF there means the previous
  // response's framing was wrong, and guessing past it would resynchronise on attacker bytes.
  size_t i = 0;
  const Window w = window(n, 0, saturatingAdd(limits.max_request_line, 2));
  const size_t end = w.end;
  auto outOfBytes = [&] {
    return w.at_limit ? fail(err, 502, "status line too long") : ParseStatus::kIncomplete;
  };

  // status-line = HTTP-version SP status-code SP [ reason-phrase ] CRLF (RFC 9112 §4). A missing
  // SP before an empty reason is accepted: common in the wild and unambiguous.
  while (i < end && is(kVchar, s[i])) ++i;
  if (i >= end) return outOfBytes();
  if (s[i] != ' ') return fail(err, 400, "invalid status line");
  const int minor = classifyVersion(std::string_view(s, i));
  if (minor == -2) return fail(err, 400, "malformed HTTP version");
  if (minor == -1) return fail(err, 400, "unsupported HTTP version");
  out.minor_version = minor;
  ++i;
  int status = 0;
  for (int d = 0; d < 3; ++d, ++i) {
    if (i >= end) return outOfBytes();
    if (!isDigit(s[i]) || (d == 0 && s[i] == '0')) return fail(err, 400, "invalid status code");
    status = status * 10 + (s[i] - '0');
  }
  out.status = status;
  if (i >= end) return outOfBytes();
  const bool has_reason = s[i] == ' ';
  if (has_reason) {
    const size_t reason_start = ++i;
    while (i < end && is(kVal, s[i])) ++i;
    if (i >= end) return outOfBytes();
    out.reason = std::string_view(s + reason_start, i - reason_start);
  }
  if (s[i] != '\r') {
    if (s[i] == '\n') return fail(err, 400, "bare LF line terminator");
    return fail(err, 400, has_reason ? "control character in reason" : "invalid status code");
  }
  if (i + 1 >= end) return outOfBytes();
  if (s[i + 1] != '\n') return fail(err, 400, "bare CR");
  i += 2;

  FieldSemantics sem;
  const ParseStatus st = parseFields<false>(s, n, i, limits, out.headers, sem, err);
  if (st != ParseStatus::kComplete) return st;

  if (sem.te.lines > 0) {
    if (sem.cl_seen) return fail(err, 400, "both Content-Length and Transfer-Encoding");
    if (minor == 0) return fail(err, 400, "Transfer-Encoding in HTTP/1.0 response");
    if (sem.te.chunked > 1) return fail(err, 400, "chunked applied more than once");
  }
  out.keep_alive = minor == 1 ? !sem.conn.close : (sem.conn.keep_alive && !sem.conn.close);
  out.content_length = sem.content_length;
  const bool no_body = request_method_head || status < 200 || status == 204 || status == 304;
  if (no_body) {
    out.framing = BodyFraming::kNone;
  } else if (sem.te.lines > 0 && sem.te.last_chunked) {
    out.framing = BodyFraming::kChunked;
  } else if (sem.te.lines == 0 && sem.cl_seen) {
    out.framing = BodyFraming::kContentLength;
  } else {
    // No length, or a final coding other than chunked: read until close (RFC 9112 §6.3 rules 4, 8).
    out.framing = BodyFraming::kUntilClose;
    out.keep_alive = false;
  }
  out.head_size = i;
  return ParseStatus::kComplete;
}

}  // namespace

ParseStatus parseResponse(std::string_view buf, const ParseLimits& limits, bool request_method_head,
                          ResponseHead& out, ParseError& err) {
  out.clear();
  // One allocation for a typical response head instead of one per doubling (1, 2, 4, 8...).
  if (out.headers.capacity() == 0) out.headers.reserve(16);
  const ParseStatus st = parseResponseImpl(buf, limits, request_method_head, out, err);
  // Whatever is wrong with an upstream's response, the client is told 502.
  if (st == ParseStatus::kError) err.http_status = 502;
  return st;
}

// -----------------------------------------------------------------------------------------------
// ChunkedDecoder

void ChunkedDecoder::reset() {
  state_ = State::kSizeStart;
  size_ = 0;
  remaining_ = 0;
  line_bytes_ = 0;
  trailer_bytes_ = 0;
  reason_ = "";
  trailers_.clear();
}

ChunkedDecoder::Result ChunkedDecoder::decode(std::string_view in, std::vector<std::string_view>* data) {
  Result r;
  if (state_ == State::kDone) {
    r.done = true;
    return r;
  }
  if (state_ == State::kError) {
    r.error = true;
    r.reason = reason_;
    return r;
  }
  const char* const s = in.data();
  const size_t n = in.size();
  size_t i = 0;
  auto failAt = [&](const char* reason) {
    state_ = State::kError;
    reason_ = reason;
    r.consumed = i;
    r.error = true;
    r.reason = reason;
    return r;
  };

  while (i < n) {
    if (state_ == State::kData) {
      const size_t take = remaining_ < n - i ? static_cast<size_t>(remaining_) : n - i;
      if (data != nullptr) data->push_back(in.substr(i, take));
      i += take;
      remaining_ -= take;
      if (remaining_ == 0) state_ = State::kDataCr;
      continue;
    }
    const char c = s[i];
    const State prev = state_;
    if (state_ <= State::kSizeLf) {
      if (++line_bytes_ > kMaxChunkLineBytes) return failAt("chunk line too long");
    } else if (state_ >= State::kTrailerLineStart && state_ <= State::kFinalLf) {
      if (++trailer_bytes_ > max_trailer_bytes) return failAt("trailer section too large");
    }
    switch (state_) {
      // chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF; chunk-size = 1*HEXDIG
      case State::kSizeStart:
      case State::kSize: {
        if (is(kHex, c)) {
          const uint64_t d =
              isDigit(c) ? static_cast<uint64_t>(c - '0') : static_cast<uint64_t>((c | 0x20) - 'a' + 10);
          if (size_ > (kMaxLength - d) / 16) return failAt("chunk size too large");
          size_ = size_ * 16 + d;
          state_ = State::kSize;
        } else if (state_ == State::kSizeStart) {
          return failAt("missing chunk size");
        } else if (c == '\r') {
          state_ = State::kSizeLf;
        } else if (c == ';') {
          state_ = State::kExtBeforeName;
        } else if (isOws(c)) {
          state_ = State::kSizeWs;
        } else {
          return failAt("invalid chunk size");
        }
        break;
      }
      // chunk-ext = *( BWS ";" BWS chunk-ext-name [ BWS "=" BWS chunk-ext-val ] ) (§7.1.1).
      // Whitespace only where BWS stands: never before CRLF, so "5 \r\n" is refused.
      case State::kSizeWs:
        if (c == ';')
          state_ = State::kExtBeforeName;
        else if (!isOws(c))
          return failAt("invalid chunk size");
        break;
      case State::kExtBeforeName:
        if (is(kTok, c))
          state_ = State::kExtName;
        else if (!isOws(c))
          return failAt("invalid chunk extension");
        break;
      case State::kExtName:
        if (c == '\r')
          state_ = State::kSizeLf;
        else if (c == ';')
          state_ = State::kExtBeforeName;
        else if (c == '=')
          state_ = State::kExtBeforeValue;
        else if (isOws(c))
          state_ = State::kExtAfterName;
        else if (!is(kTok, c))
          return failAt("invalid chunk extension");
        break;
      case State::kExtAfterName:
        if (c == ';')
          state_ = State::kExtBeforeName;
        else if (c == '=')
          state_ = State::kExtBeforeValue;
        else if (!isOws(c))
          return failAt("invalid chunk extension");
        break;
      case State::kExtBeforeValue:
        if (c == '"')
          state_ = State::kExtQuoted;
        else if (is(kTok, c))
          state_ = State::kExtToken;
        else if (!isOws(c))
          return failAt("invalid chunk extension");
        break;
      case State::kExtToken:
        if (c == '\r')
          state_ = State::kSizeLf;
        else if (c == ';')
          state_ = State::kExtBeforeName;
        else if (isOws(c))
          state_ = State::kExtAfterValueWs;
        else if (!is(kTok, c))
          return failAt("invalid chunk extension");
        break;
      case State::kExtQuoted:
        if (c == '"')
          state_ = State::kExtAfterQuoted;
        else if (c == '\\')
          state_ = State::kExtQuotedPair;
        else if (!is(kQd, c))
          return failAt("invalid chunk extension");
        break;
      case State::kExtQuotedPair:
        // quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
        if (!is(kVal, c)) return failAt("invalid chunk extension");
        state_ = State::kExtQuoted;
        break;
      case State::kExtAfterQuoted:
        if (c == '\r')
          state_ = State::kSizeLf;
        else if (c == ';')
          state_ = State::kExtBeforeName;
        else if (isOws(c))
          state_ = State::kExtAfterValueWs;
        else
          return failAt("invalid chunk extension");
        break;
      case State::kExtAfterValueWs:
        if (c == ';')
          state_ = State::kExtBeforeName;
        else if (!isOws(c))
          return failAt("invalid chunk extension");
        break;
      case State::kSizeLf:
        if (c != '\n') return failAt("bare CR in chunk line");
        line_bytes_ = 0;
        if (size_ == 0) {
          state_ = State::kTrailerLineStart;  // last-chunk
          trailer_bytes_ = 0;
        } else {
          remaining_ = size_;
          size_ = 0;
          state_ = State::kData;
        }
        break;
      case State::kDataCr:
        if (c != '\r') return failAt("missing CRLF after chunk data");
        state_ = State::kDataLf;
        break;
      case State::kDataLf:
        if (c != '\n') return failAt("missing CRLF after chunk data");
        state_ = State::kSizeStart;
        break;
      // trailer-section = *( field-line CRLF ) CRLF, validated like header fields (§7.1.2).
      case State::kTrailerLineStart:
        if (c == '\r') {
          state_ = State::kFinalLf;
          break;
        }
        if (isOws(c)) return failAt("obs-fold in trailer section");
        if (!is(kTok, c)) return failAt("invalid trailer field name");
        state_ = State::kTrailerName;
        break;
      case State::kTrailerName:
        if (c == ':')
          state_ = State::kTrailerValue;
        else if (!is(kTok, c))
          return failAt("invalid trailer field name");
        break;
      case State::kTrailerValue:
        if (c == '\r')
          state_ = State::kTrailerLf;
        else if (!is(kVal, c))
          return failAt("control character in trailer field");
        break;
      case State::kTrailerLf:
        if (c != '\n') return failAt("bare CR in trailer section");
        state_ = State::kTrailerLineStart;
        break;
      case State::kFinalLf:
        if (c != '\n') return failAt("bare CR in trailer section");
        state_ = State::kDone;
        break;
      case State::kData:
      case State::kDone:
      case State::kError:
        break;  // unreachable: handled above the switch or by the loop condition
    }
    // Every trailer byte except the final empty line belongs to a field line worth keeping.
    if (keep_trailers && prev >= State::kTrailerLineStart && prev <= State::kTrailerLf &&
        !(prev == State::kTrailerLineStart && c == '\r'))
      trailers_.push_back(c);
    ++i;
    if (state_ == State::kDone) break;
  }
  r.consumed = i;
  r.done = state_ == State::kDone;
  return r;
}

size_t writeChunkHeader(uint64_t size, char* out) {
  static constexpr char kDigits[] = "0123456789abcdef";
  char tmp[16];
  size_t len = 0;
  do {
    tmp[len++] = kDigits[size & 0xf];
    size >>= 4;
  } while (size != 0);
  for (size_t k = 0; k < len; ++k) out[k] = tmp[len - 1 - k];
  out[len] = '\r';
  out[len + 1] = '\n';
  return len + 2;
}

}  // namespace marchproxy::http
