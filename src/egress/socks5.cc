#include "egress/socks5.h"

namespace marchproxy::egress::socks5 {

namespace {

uint8_t byte(std::string_view in, size_t i) { return static_cast<uint8_t>(in[i]); }

// ATYP DST.ADDR DST.PORT at in[at]. On kOk, *end is the offset after the port.
Parse parseAddress(std::string_view in, size_t at, Address& out, size_t& end, Reply* reply) {
  if (in.size() < at + 1) return Parse::kIncomplete;
  uint8_t atyp = byte(in, at);
  size_t addr_at = at + 1, len = 0;
  if (atyp == 1) {
    len = 4;
  } else if (atyp == 4) {
    len = 16;
  } else if (atyp == 3) {
    if (in.size() < at + 2) return Parse::kIncomplete;
    len = byte(in, at + 1);
    addr_at = at + 2;
    if (len == 0) {
      if (reply) *reply = Reply::kGeneralFailure;
      return Parse::kError;
    }
  } else {
    if (reply) *reply = Reply::kAddressTypeNotSupported;
    return Parse::kError;
  }
  if (in.size() < addr_at + len + 2) return Parse::kIncomplete;
  if (atyp == 3) {
    std::string name(in.substr(addr_at, len));
    for (char& c : name) {
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + 32);
      // A name is matched against rules and sent to DNS: nothing but host-name characters.
      bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
      if (!ok) {
        if (reply) *reply = Reply::kGeneralFailure;
        return Parse::kError;
      }
    }
    out.host = std::move(name);
    out.is_name = true;
  } else {
    IpAddr a;
    a.v6 = atyp == 4;
    for (size_t i = 0; i < len; ++i) a.bytes[i] = byte(in, addr_at + i);
    out.host = formatIp(a);
    out.is_name = false;
  }
  out.port = static_cast<uint16_t>(byte(in, addr_at + len) << 8 | byte(in, addr_at + len + 1));
  end = addr_at + len + 2;
  return Parse::kOk;
}

void appendAddress(std::string& out, const IpAddr& a, uint16_t port) {
  out += static_cast<char>(a.v6 ? 4 : 1);
  out.append(reinterpret_cast<const char*>(a.bytes.data()), a.v6 ? 16 : 4);
  out += static_cast<char>(port >> 8);
  out += static_cast<char>(port & 0xff);
}

}  // namespace

Parse parseGreeting(std::string_view in, Greeting& out, size_t& used) {
  if (in.size() < 2) return Parse::kIncomplete;
  if (byte(in, 0) != kVersion || byte(in, 1) == 0) return Parse::kError;
  size_t n = byte(in, 1);
  if (in.size() < 2 + n) return Parse::kIncomplete;
  out.methods.assign(in.begin() + 2, in.begin() + 2 + static_cast<std::ptrdiff_t>(n));
  used = 2 + n;
  return Parse::kOk;
}

Parse parseUserPass(std::string_view in, UserPass& out, size_t& used) {
  if (in.size() < 2) return Parse::kIncomplete;
  if (byte(in, 0) != 1) return Parse::kError;
  size_t ulen = byte(in, 1);
  if (ulen == 0) return Parse::kError;
  if (in.size() < 2 + ulen + 1) return Parse::kIncomplete;
  size_t plen = byte(in, 2 + ulen);
  if (in.size() < 3 + ulen + plen) return Parse::kIncomplete;
  out.user.assign(in.substr(2, ulen));
  out.password.assign(in.substr(3 + ulen, plen));
  used = 3 + ulen + plen;
  return Parse::kOk;
}

Parse parseRequest(std::string_view in, Request& out, size_t& used, Reply* reply) {
  if (in.size() < 3) return Parse::kIncomplete;
  if (byte(in, 0) != kVersion || byte(in, 2) != 0) {
    if (reply) *reply = Reply::kGeneralFailure;
    return Parse::kError;
  }
  out.command = byte(in, 1);
  return parseAddress(in, 3, out.dest, used, reply);
}

Parse parseUdpHeader(std::string_view in, Address& out, size_t& payload_offset) {
  if (in.size() < 4) return Parse::kError;  // a datagram is complete or nothing
  if (byte(in, 0) != 0 || byte(in, 1) != 0 || byte(in, 2) != 0) return Parse::kError;
  Parse p = parseAddress(in, 3, out, payload_offset, nullptr);
  return p == Parse::kOk ? p : Parse::kError;
}

std::string buildReply(Reply code, const IpAddr& bound, uint16_t port) {
  std::string out{static_cast<char>(kVersion), static_cast<char>(code), 0};
  appendAddress(out, bound, port);
  return out;
}

std::string buildUdpHeader(const IpAddr& from, uint16_t port) {
  std::string out(3, '\0');
  appendAddress(out, from, port);
  return out;
}

}  // namespace marchproxy::egress::socks5
