#include "egress/tls_peek.h"

#include <cstdint>

namespace marchproxy::egress {

namespace {

constexpr size_t kMaxHello = 16 * 1024;

struct Reader {
  std::string_view s;
  size_t pos = 0;
  bool ok = true;
  size_t u8() {
    if (pos + 1 > s.size()) return ok = false, 0;
    return static_cast<uint8_t>(s[pos++]);
  }
  size_t u16() {
    size_t hi = u8();
    return hi << 8 | u8();
  }
  size_t u24() {
    size_t hi = u8();
    return hi << 16 | u16();
  }
  void skip(size_t n) {
    if (pos + n > s.size()) ok = false;
    else pos += n;
  }
};

}  // namespace

PeekResult peekClientHello(std::string_view in, std::string& sni) {
  sni.clear();
  // Reassemble the handshake bytes from consecutive records (a big ClientHello may span several).
  std::string hs;
  size_t pos = 0;
  size_t need = 0;  // handshake message length (+4), once known
  while (true) {
    if (in.size() < pos + 5) return in.size() > kMaxHello ? PeekResult::kNotTls : PeekResult::kIncomplete;
    auto b = [&](size_t i) { return static_cast<uint8_t>(in[pos + i]); };
    if (b(0) != 22 || b(1) != 3) return PeekResult::kNotTls;  // handshake record, TLS 1.x
    size_t len = static_cast<size_t>(b(3)) << 8 | b(4);
    if (len == 0 || len > 16384 + 256) return PeekResult::kNotTls;
    if (in.size() < pos + 5 + len) return pos + 5 + len > kMaxHello + 5 ? PeekResult::kNotTls : PeekResult::kIncomplete;
    hs.append(in.substr(pos + 5, len));
    pos += 5 + len;
    if (hs.size() >= 4 && need == 0) {
      if (static_cast<uint8_t>(hs[0]) != 1) return PeekResult::kNotTls;  // ClientHello
      need = 4 + (static_cast<size_t>(static_cast<uint8_t>(hs[1])) << 16 |
                  static_cast<size_t>(static_cast<uint8_t>(hs[2])) << 8 | static_cast<uint8_t>(hs[3]));
      if (need > kMaxHello) return PeekResult::kNotTls;
    }
    if (need && hs.size() >= need) break;
    if (hs.size() > kMaxHello) return PeekResult::kNotTls;
  }
  Reader r{std::string_view(hs).substr(4, need - 4)};
  r.skip(2 + 32);      // version, random
  r.skip(r.u8());      // session id
  r.skip(r.u16());     // cipher suites
  r.skip(r.u8());      // compression methods
  if (!r.ok) return PeekResult::kNotTls;
  if (r.pos == r.s.size()) return PeekResult::kTls;  // no extensions
  size_t ext_end = r.u16();
  ext_end += r.pos;
  if (!r.ok || ext_end > r.s.size()) return PeekResult::kNotTls;
  while (r.pos + 4 <= ext_end) {
    size_t type = r.u16(), len = r.u16();
    if (!r.ok || r.pos + len > ext_end) return PeekResult::kNotTls;
    if (type == 0) {  // server_name
      Reader e{r.s.substr(r.pos, len)};
      size_t list_len = e.u16();
      size_t list_end = e.pos + list_len;
      while (e.ok && e.pos + 3 <= list_end && list_end <= e.s.size()) {
        size_t name_type = e.u8(), name_len = e.u16();
        if (!e.ok || e.pos + name_len > list_end) return PeekResult::kNotTls;
        if (name_type == 0) {
          sni.assign(e.s.substr(e.pos, name_len));
          for (char& c : sni)
            if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
          return PeekResult::kTls;
        }
        e.skip(name_len);
      }
      return PeekResult::kTls;
    }
    r.skip(len);
  }
  return PeekResult::kTls;
}

}  // namespace marchproxy::egress
