// libFuzzer target for what the egress proxy parses from untrusted clients before any
// authorisation: the SOCKS5 handshake (greeting, RFC 1929 user/password, request, UDP header), the
// TLS ClientHello SNI peek, destination/CIDR syntax and JWT verification.
//
// Beyond "no crash under ASan/UBSan" it checks that a parser never uses more bytes than it was
// given and that feeding a prefix never decides differently from feeding the whole (a prefix is
// kIncomplete or the same verdict) - the property that makes reading a socket piecewise safe.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "egress/acl.h"
#include "egress/jwt.h"
#include "egress/socks5.h"
#include "egress/tls_peek.h"

namespace {

using namespace marchproxy::egress;  // NOLINT(google-build-using-namespace): test harness

#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      __builtin_printf("FUZZ_CHECK failed: %s (%s:%d)\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)

template <typename F>
void prefixConsistent(std::string_view in, F parse) {
  size_t used = 0;
  socks5::Parse whole = parse(in, used);
  if (whole == socks5::Parse::kOk) FUZZ_CHECK(used <= in.size());
  for (size_t cut : {size_t{0}, in.size() / 2, in.size() ? in.size() - 1 : 0}) {
    if (cut >= in.size()) continue;
    size_t u = 0;
    socks5::Parse part = parse(in.substr(0, cut), u);
    if (part == socks5::Parse::kOk) FUZZ_CHECK(whole == socks5::Parse::kOk && u == used);
    if (part == socks5::Parse::kError) FUZZ_CHECK(whole == socks5::Parse::kError);
  }
}

const JwtVerifier& verifier() {
  static std::shared_ptr<const JwtVerifier> v = [] {
    JwtConfig c;
    c.keys.push_back({"k", JwtAlg::kHs256, std::string(32, 's'), ""});
    return *JwtVerifier::create(c);
  }();
  return *v;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // Exact-size heap copy: a one-byte over-read is an ASan report.
  std::string buf(reinterpret_cast<const char*>(data), size);
  std::string_view in(buf);

  prefixConsistent(in, [](std::string_view s, size_t& used) {
    socks5::Greeting g;
    return socks5::parseGreeting(s, g, used);
  });
  prefixConsistent(in, [](std::string_view s, size_t& used) {
    socks5::UserPass up;
    return socks5::parseUserPass(s, up, used);
  });
  prefixConsistent(in, [](std::string_view s, size_t& used) {
    socks5::Request r;
    socks5::Reply rep{};
    socks5::Parse p = socks5::parseRequest(s, r, used, &rep);
    if (p == socks5::Parse::kOk && r.dest.is_name) {
      for (char c : r.dest.host) FUZZ_CHECK(c != '/' && c != ' ' && c != '\0' && !(c >= 'A' && c <= 'Z'));
    }
    return p;
  });
  {
    socks5::Address a;
    size_t off = 0;
    if (socks5::parseUdpHeader(in, a, off) == socks5::Parse::kOk) FUZZ_CHECK(off <= in.size());
  }
  {
    std::string sni;
    PeekResult whole = peekClientHello(in, sni);
    if (size > 0) {
      std::string s2;
      PeekResult part = peekClientHello(in.substr(0, size - 1), s2);
      if (part == PeekResult::kTls) FUZZ_CHECK(whole == PeekResult::kTls);
    }
  }
  if (size < 300) {
    std::string err;
    auto d = parseDestination(in, &err);
    if (d && d->kind == Destination::Kind::kCidr) FUZZ_CHECK(parseCidr(formatCidr(d->cidr)).has_value());
    std::string portErr;
    auto pr = parsePortRange(in, &portErr);
    if (pr) FUZZ_CHECK(pr->lo >= 1 && pr->lo <= pr->hi);
  }
  (void)verifier().verify(in, 1'800'000'000);
  return 0;
}
