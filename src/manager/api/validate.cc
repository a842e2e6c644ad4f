#include "manager/api/validate.h"

#include <arpa/inet.h>

#include <cctype>

namespace marchproxy::manager::api::validate {

void fail(const std::string& field, const std::string& reason) {
  throw http::ApiError(422, "invalid-field", field + ": " + reason, field);
}

namespace {
const std::string& str(const Json& v, const std::string& field) {
  if (!v.is_string()) fail(field, "expected a string");
  return v.get_ref<const std::string&>();
}
}  // namespace

bool isIp(const std::string& s) {
  unsigned char buf[16];
  return inet_pton(AF_INET, s.c_str(), buf) == 1 || inet_pton(AF_INET6, s.c_str(), buf) == 1;
}

bool isFqdn(const std::string& host) {
  std::string s = !host.empty() && host.back() == '.' ? host.substr(0, host.size() - 1) : host;
  if (s.empty() || s.size() > 253) return false;
  std::size_t start = 0;
  bool last_numeric = true;
  for (;;) {
    auto dot = s.find('.', start);
    if (dot == std::string::npos) dot = s.size();
    std::size_t len = dot - start;
    if (len == 0 || len > 63 || s[start] == '-' || s[dot - 1] == '-') return false;
    last_numeric = true;
    for (std::size_t i = start; i < dot; ++i) {
      unsigned char c = static_cast<unsigned char>(s[i]);
      if (!(std::isalnum(c) || c == '-')) return false;
      if (!std::isdigit(c)) last_numeric = false;
    }
    if (dot == s.size()) break;
    start = dot + 1;
  }
  return !last_numeric;  // "1.2.3.999" is a broken IP address, not a host name
}

void name(const Json& v, const std::string& field) {
  const auto& s = str(v, field);
  if (s.empty()) fail(field, "must not be empty");
  if (s.size() > 64) fail(field, "longer than 64 characters");
  if (!std::isalnum(static_cast<unsigned char>(s[0]))) fail(field, "must start with a letter or digit");
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-'))
      fail(field, "may contain only letters, digits, '.', '_' and '-'");
}

void text(const Json& v, const std::string& field, std::size_t max) {
  const auto& s = str(v, field);
  if (s.size() > max) fail(field, "longer than " + std::to_string(max) + " bytes");
  if (s.find('\0') != std::string::npos) fail(field, "contains a NUL character");
}

void cidr(const Json& v, const std::string& field) {
  const auto& s = str(v, field);
  auto slash = s.find('/');
  if (slash == std::string::npos) fail(field, "expected address/prefix");
  std::string addr = s.substr(0, slash), pfx = s.substr(slash + 1);
  unsigned char buf[16];
  int max = inet_pton(AF_INET, addr.c_str(), buf) == 1 ? 32 : inet_pton(AF_INET6, addr.c_str(), buf) == 1 ? 128 : -1;
  if (max < 0) fail(field, "\"" + addr + "\" is not an IP address");
  if (pfx.empty() || pfx.size() > 3 || pfx.find_first_not_of("0123456789") != std::string::npos ||
      std::stoi(pfx) > max)
    fail(field, "prefix length must be 0-" + std::to_string(max));
}

void hostOrIp(const Json& v, const std::string& field) {
  const auto& s = str(v, field);
  if (s.find('/') != std::string::npos) return cidr(v, field);
  if (!isIp(s) && !isFqdn(s)) fail(field, "\"" + s + "\" is neither an IP address, a CIDR nor a host name");
}

void hostPattern(const Json& v, const std::string& field) {
  const auto& s = str(v, field);
  std::string rest = s.rfind("*.", 0) == 0 ? s.substr(2) : s;
  if (!isFqdn(rest)) fail(field, "\"" + s + "\" is not a host name (a leading \"*.\" is allowed)");
}

void hostPort(const Json& v, const std::string& field) {
  const auto& s = str(v, field);
  auto colon = s.rfind(':');
  if (colon == std::string::npos || colon == 0) fail(field, "expected host:port");
  std::string host = s.substr(0, colon), p = s.substr(colon + 1);
  if (host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  if (!isIp(host) && !isFqdn(host)) fail(field, "\"" + host + "\" is neither an IP address nor a host name");
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos || std::stoi(p) < 1 ||
      std::stoi(p) > 65535)
    fail(field, "port must be 1-65535");
}

void syslogEndpoint(const Json& v, const std::string& field) {
  if (v.is_string() && v.get_ref<const std::string&>().empty()) return;
  hostPort(v, field);
}

void port(const Json& v, const std::string& field) {
  auto parse = [&](const std::string& s) {
    if (s.empty() || s.size() > 5 || s.find_first_not_of("0123456789") != std::string::npos)
      fail(field, "\"" + s + "\" is not a port number");
    int n = std::stoi(s);
    if (n < 1 || n > 65535) fail(field, "port " + s + " is outside 1-65535");
    return n;
  };
  if (v.is_number_integer()) {
    auto n = v.get<std::int64_t>();
    if (n < 1 || n > 65535) fail(field, "port " + std::to_string(n) + " is outside 1-65535");
    return;
  }
  if (!v.is_string()) fail(field, "expected a port number or a \"low-high\" range");
  const auto& s = v.get_ref<const std::string&>();
  auto dash = s.find('-');
  if (dash == std::string::npos) {
    parse(s);
    return;
  }
  int lo = parse(s.substr(0, dash)), hi = parse(s.substr(dash + 1));
  if (lo > hi) fail(field, "range " + s + " has its low end above its high end");
}

}  // namespace marchproxy::manager::api::validate
