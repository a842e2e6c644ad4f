// Unit tests for the strict HTTP/1.1 parser. Test names say which attack class or RFC rule they
// pin down; docs/http1.md has the same rules as a table.
#include "common/http/h1_parser.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace marchproxy::http {
namespace {

struct ReqOutcome {
  ParseStatus status;
  int http_status;  // meaningful on kError
  std::string reason;
};

ReqOutcome req(std::string_view buf, RequestHead& head, const ParseLimits& limits = {}) {
  ParseError err;
  const ParseStatus st = parseRequest(buf, limits, head, err);
  return {st, st == ParseStatus::kError ? err.http_status : 0, st == ParseStatus::kError ? err.reason : ""};
}

ReqOutcome req(std::string_view buf, const ParseLimits& limits = {}) {
  RequestHead head;
  return req(buf, head, limits);
}

// Expects the request to be rejected with `status`.
void expectReject(std::string_view buf, int status) {
  const ReqOutcome o = req(buf);
  EXPECT_EQ(o.status, ParseStatus::kError) << testing::PrintToString(std::string(buf));
  EXPECT_EQ(o.http_status, status) << testing::PrintToString(std::string(buf)) << " reason: " << o.reason;
}

void expectComplete(std::string_view buf) {
  const ReqOutcome o = req(buf);
  EXPECT_EQ(o.status, ParseStatus::kComplete)
      << testing::PrintToString(std::string(buf)) << " reason: " << o.reason;
}

// A request with the given extra field lines (each ending in CRLF).
std::string withFields(std::string_view fields, std::string_view start = "POST / HTTP/1.1\r\n") {
  return std::string(start) + "Host: example.com\r\n" + std::string(fields) + "\r\n";
}

bool inside(std::string_view view, std::string_view buf) {
  return view.empty() || (view.data() >= buf.data() && view.data() + view.size() <= buf.data() + buf.size());
}

// ---------------------------------------------------------------------------------------------
// Well-formed requests

TEST(H1Request, ParsesSimpleGet) {
  const std::string buf = "GET /index.html?a=1&b=2 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n";
  RequestHead h;
  ASSERT_EQ(req(buf, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.method, "GET");
  EXPECT_EQ(h.target, "/index.html?a=1&b=2");
  EXPECT_EQ(h.path, "/index.html");
  EXPECT_EQ(h.query, "a=1&b=2");
  EXPECT_EQ(h.form, TargetForm::kOrigin);
  EXPECT_EQ(h.minor_version, 1);
  EXPECT_EQ(h.host, "example.com");
  EXPECT_EQ(h.framing, BodyFraming::kNone);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_FALSE(h.expect_continue);
  EXPECT_FALSE(h.upgrade);
  EXPECT_EQ(h.head_size, buf.size());
  ASSERT_EQ(h.headers.size(), 2u);
  EXPECT_EQ(h.headers[1].name, "User-Agent");
  EXPECT_EQ(h.headers[1].value, "t");
}

TEST(H1Request, ViewsPointIntoCallerBuffer) {
  const std::string buf = "GET http://a.example:81/p?q HTTP/1.1\r\nHost: a.example:81\r\nX: y\r\n\r\n";
  RequestHead h;
  ASSERT_EQ(req(buf, h).status, ParseStatus::kComplete);
  for (std::string_view v : {h.method, h.target, h.path, h.query, h.scheme, h.host})
    EXPECT_TRUE(inside(v, buf));
  for (const Header& x : h.headers) {
    EXPECT_TRUE(inside(x.name, buf));
    EXPECT_TRUE(inside(x.value, buf));
  }
}

TEST(H1Request, TrimsOwsAroundFieldValueButKeepsInnerWhitespace) {
  const std::string buf = withFields("X-A: \t a \t b \t\r\nX-B:c\r\nX-C:   \r\n", "GET / HTTP/1.1\r\n");
  RequestHead h;
  ASSERT_EQ(req(buf, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.find("x-a")->value, "a \t b");
  EXPECT_EQ(h.find("x-b")->value, "c");
  EXPECT_EQ(h.find("x-c")->value, "");
}

TEST(H1Request, AcceptsObsTextInFieldValue) {
  const std::string buf = withFields("X-Name: caf\xc3\xa9\xff\r\n", "GET / HTTP/1.1\r\n");
  RequestHead h;
  ASSERT_EQ(req(buf, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.find("x-name")->value, "caf\xc3\xa9\xff");
}

TEST(H1Request, FindIsCaseInsensitiveAndReturnsFirst) {
  const std::string buf = withFields("X-Dup: 1\r\nx-dup: 2\r\n", "GET / HTTP/1.1\r\n");
  RequestHead h;
  ASSERT_EQ(req(buf, h).status, ParseStatus::kComplete);
  ASSERT_NE(h.find("x-dup"), nullptr);
  EXPECT_EQ(h.find("x-dup")->value, "1");
  EXPECT_EQ(h.find("HOST")->value, "example.com");
  EXPECT_EQ(h.find("absent"), nullptr);
}

TEST(H1Request, AcceptsExtensionMethodToken) {
  RequestHead h;
  ASSERT_EQ(req("PROPFIND / HTTP/1.1\r\nHost: h\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.method, "PROPFIND");
}

TEST(H1Request, ContentLengthBody) {
  RequestHead h;
  ASSERT_EQ(req(withFields("Content-Length: 42\r\n"), h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kContentLength);
  EXPECT_EQ(h.content_length, 42u);
}

TEST(H1Request, ContentLengthZeroIsContentLengthFraming) {
  RequestHead h;
  ASSERT_EQ(req(withFields("Content-Length: 0\r\n"), h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kContentLength);
  EXPECT_EQ(h.content_length, 0u);
}

TEST(H1Request, ContentLengthLargestAcceptedIsInt64Max) {
  RequestHead h;
  ASSERT_EQ(req(withFields("Content-Length: 9223372036854775807\r\n"), h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.content_length, 9223372036854775807ull);
  ASSERT_EQ(req(withFields("Content-Length: 000000000000000000000012\r\n"), h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.content_length, 12u);
}

TEST(H1Request, ChunkedBody) {
  RequestHead h;
  ASSERT_EQ(req(withFields("Transfer-Encoding: chunked\r\n"), h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kChunked);
}

TEST(H1Request, ChunkedCodingNameIsCaseInsensitiveAndOwsTrimmed) {
  for (const char* v : {"Chunked", "CHUNKED", "chunked ", " chunked\t", "\tchunked"}) {
    RequestHead h;
    ASSERT_EQ(req(withFields(std::string("Transfer-Encoding:") + v + "\r\n"), h).status,
              ParseStatus::kComplete)
        << v;
    EXPECT_EQ(h.framing, BodyFraming::kChunked) << v;
  }
}

TEST(H1Request, PipelinedRequestsFoundByHeadSize) {
  const std::string first = "GET /a HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string second = "POST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\n";
  const std::string third = "GET /c HTTP/1.1\r\nHost: h\r\n\r\n";
  const std::string buf = first + second + "abc" + third;
  RequestHead h;
  ASSERT_EQ(req(buf, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.path, "/a");
  EXPECT_EQ(h.head_size, first.size());
  std::string_view rest = std::string_view(buf).substr(h.head_size);
  ASSERT_EQ(req(rest, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.path, "/b");
  rest = rest.substr(h.head_size + h.content_length);
  ASSERT_EQ(req(rest, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.path, "/c");
  EXPECT_EQ(h.head_size, rest.size());
}

TEST(H1Request, ReusedHeadIsClearedAndKeepsCapacity) {
  RequestHead h;
  ASSERT_EQ(req(withFields("A: 1\r\nB: 2\r\nC: 3\r\nContent-Length: 5\r\n"), h).status,
            ParseStatus::kComplete);
  const size_t cap = h.headers.capacity();
  ASSERT_EQ(req("GET / HTTP/1.0\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_TRUE(h.headers.empty());
  EXPECT_EQ(h.headers.capacity(), cap);
  EXPECT_EQ(h.framing, BodyFraming::kNone);
  EXPECT_EQ(h.content_length, 0u);
  EXPECT_EQ(h.host, "");
}

TEST(H1Request, IncrementalFeedAtEverySplitPoint) {
  const std::vector<std::string> messages = {
      "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
      "\r\n\r\nPOST /up?x=1 HTTP/1.1\r\nHost: example.com:8080\r\nContent-Length: 10\r\nX-Long: "
      "abcdefghijklmnopqrstuvwxyz0123456789\tABCDEFGH\r\n\r\n",
      "CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\nProxy-Authorization: Bearer x\r\n\r\n",
      "PUT http://u.example/p HTTP/1.1\r\nHost: u.example\r\nTransfer-Encoding: chunked\r\nExpect: "
      "100-continue\r\n\r\n",
  };
  for (const std::string& m : messages) {
    RequestHead whole;
    ASSERT_EQ(req(m, whole).status, ParseStatus::kComplete) << m;
    ASSERT_EQ(whole.head_size, m.size());
    for (size_t cut = 0; cut < m.size(); ++cut) {
      // An exact-size copy, so reading one byte past the prefix is caught by ASan.
      const std::string prefix = m.substr(0, cut);
      EXPECT_EQ(req(prefix).status, ParseStatus::kIncomplete) << "cut " << cut << " of " << m;
    }
    const std::string more = m + "GET /next";
    RequestHead again;
    ASSERT_EQ(req(more, again).status, ParseStatus::kComplete);
    EXPECT_EQ(again.head_size, whole.head_size);
    EXPECT_EQ(again.path, whole.path);
    EXPECT_EQ(again.host, whole.host);
    EXPECT_EQ(again.framing, whole.framing);
    EXPECT_EQ(again.headers.size(), whole.headers.size());
  }
}

TEST(H1Request, IncrementalFeedReportsErrorOnceTheBadByteArrives) {
  const std::string m = "GET / HTTP/1.1\r\nHost: h\r\nX-Bad: a\x01z\r\n\r\n";
  const size_t bad = m.find('\x01');
  for (size_t cut = 0; cut <= m.size(); ++cut) {
    const ReqOutcome o = req(m.substr(0, cut));
    if (cut <= bad)
      EXPECT_EQ(o.status, ParseStatus::kIncomplete) << cut;
    else
      EXPECT_EQ(o.http_status, 400) << cut;
  }
}

// ---------------------------------------------------------------------------------------------
// Request targets (RFC 9112 §3.2)

TEST(H1Target, OriginFormWithEmptyQuery) {
  RequestHead h;
  ASSERT_EQ(req("GET /p? HTTP/1.1\r\nHost: h\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.path, "/p");
  EXPECT_EQ(h.query, "");
  ASSERT_EQ(req("GET /p?a?b HTTP/1.1\r\nHost: h\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.query, "a?b");
}

TEST(H1Target, AbsoluteFormAuthorityWinsOverHostField) {
  RequestHead h;
  ASSERT_EQ(req("GET http://origin.example:8080/a/b?c=d HTTP/1.1\r\nHost: other.example\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.form, TargetForm::kAbsolute);
  EXPECT_EQ(h.scheme, "http");
  EXPECT_EQ(h.host, "origin.example:8080");
  EXPECT_EQ(h.path, "/a/b");
  EXPECT_EQ(h.query, "c=d");
}

TEST(H1Target, AbsoluteFormEmptyPathIsSlash) {
  RequestHead h;
  ASSERT_EQ(req("GET http://a.example HTTP/1.1\r\nHost: a.example\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.path, "/");
  EXPECT_EQ(h.query, "");
  ASSERT_EQ(req("GET https://a.example?x HTTP/1.1\r\nHost: a.example\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.path, "/");
  EXPECT_EQ(h.query, "x");
  EXPECT_EQ(h.host, "a.example");
}

TEST(H1Target, AbsoluteFormStillRequiresHostFieldIn11) {
  expectReject("GET http://a.example/ HTTP/1.1\r\n\r\n", 400);
  expectComplete("GET http://a.example/ HTTP/1.0\r\n\r\n");
}

TEST(H1Target, AbsoluteFormRejectsUserinfoHostConfusion) {
  // "http://trusted.example@evil.example/" routes to evil.example in RFC 3986 terms but reads as
  // trusted.example to a naive matcher; RFC 9110 §4.2.4 says treat userinfo as an error.
  expectReject("GET http://trusted.example@evil.example/ HTTP/1.1\r\nHost: x\r\n\r\n", 400);
  expectReject("GET http://user:pw@a.example/ HTTP/1.1\r\nHost: x\r\n\r\n", 400);
}

TEST(H1Target, AbsoluteFormRejectsEmptyOrInvalidAuthority) {
  for (const char* t : {"http:///p", "http://", "http://:80/", "http://a.example:/",
                        "http://a.example:99999/", "http://a.example:8x/", "http://[::1/", "http://a b/",
                        "http:/a.example/", "1http://a/", "http//a/", "a.example/p", "http://a%zz/"}) {
    std::string m = std::string("GET ") + t + " HTTP/1.1\r\nHost: x\r\n\r\n";
    expectReject(m, 400);
  }
}

TEST(H1Target, AbsoluteFormAcceptsIpLiteralsAndPercentEncodedHost) {
  RequestHead h;
  ASSERT_EQ(req("GET http://[2001:db8::1]:443/ HTTP/1.1\r\nHost: x\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.host, "[2001:db8::1]:443");
  ASSERT_EQ(req("GET http://a%2Db.example/ HTTP/1.1\r\nHost: x\r\n\r\n", h).status, ParseStatus::kComplete);
}

TEST(H1Target, ConnectAuthorityForm) {
  RequestHead h;
  ASSERT_EQ(req("CONNECT api.example:443 HTTP/1.1\r\nHost: api.example:443\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.form, TargetForm::kAuthority);
  EXPECT_EQ(h.host, "api.example:443");
  EXPECT_EQ(h.path, "");
  ASSERT_EQ(req("CONNECT [::1]:22 HTTP/1.1\r\nHost: [::1]:22\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.host, "[::1]:22");
}

TEST(H1Target, ConnectRequiresHostAndPort) {
  for (const char* t :
       {"api.example", "api.example:", "/", "http://api.example:443/", ":443", "*", "user@api.example:443"}) {
    expectReject(std::string("CONNECT ") + t + " HTTP/1.1\r\nHost: api.example\r\n\r\n", 400);
  }
}

TEST(H1Target, AuthorityFormOnlyForConnect) {
  expectReject("GET api.example:443 HTTP/1.1\r\nHost: api.example\r\n\r\n", 400);
}

TEST(H1Target, AsteriskFormOnlyForOptions) {
  RequestHead h;
  ASSERT_EQ(req("OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.form, TargetForm::kAsterisk);
  EXPECT_EQ(h.path, "*");
  expectReject("GET * HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  expectReject("OPTIONS *x HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

TEST(H1Target, ControlCharactersInTargetRejected) {
  for (int c = 0; c < 0x20; ++c) {
    if (c == '\r' || c == '\n') continue;  // covered by the line-terminator tests
    std::string m = "GET /a";
    m += static_cast<char>(c);
    m += "b HTTP/1.1\r\nHost: h\r\n\r\n";
    expectReject(m, 400);
  }
  expectReject("GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

TEST(H1Target, NonAsciiInTargetRejected) {
  // Raw UTF-8 must be percent-encoded (RFC 3986); letting it through lets the proxy and the
  // upstream decode the path differently.
  expectReject("GET /caf\xc3\xa9 HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  expectReject("GET /?q=\xff HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

TEST(H1Target, FragmentInTargetRejected) {
  // A fragment is never sent on the wire; an upstream that strips it sees a different path.
  expectReject("GET /admin#/public HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

TEST(H1Target, LongTargetUsesWordScanCorrectly) {
  // Exercises the 8-byte scan: every position of a bad byte in a long target.
  const std::string good(40, 'a');
  expectComplete("GET /" + good + " HTTP/1.1\r\nHost: h\r\n\r\n");
  for (size_t pos = 0; pos < good.size(); ++pos) {
    for (char bad : {'\x00', '\x1f', '\x7f', '#', '\x80', '\xff', '\t'}) {
      std::string t = good;
      t[pos] = bad;
      expectReject("GET /" + t + " HTTP/1.1\r\nHost: h\r\n\r\n", 400);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Request line shape (RFC 9112 §3)

TEST(H1RequestLine, ExtraOrMisplacedSpacesRejected) {
  for (const char* line : {"GET  / HTTP/1.1", "GET /  HTTP/1.1", " GET / HTTP/1.1", "GET / HTTP/1.1 ",
                           "GET\t/ HTTP/1.1", "GET /\tHTTP/1.1", "GET / HTTP/1.1\t", "GET / x HTTP/1.1"}) {
    expectReject(std::string(line) + "\r\nHost: h\r\n\r\n", 400);
  }
}

TEST(H1RequestLine, MissingPartsRejected) {
  for (const char* line : {"GET", "GET HTTP/1.1", "GET /", "GET / ", "/ HTTP/1.1", "", " / HTTP/1.1"}) {
    expectReject(std::string(line) + "\r\nHost: h\r\n\r\n", 400);
  }
}

TEST(H1RequestLine, Http09SimpleRequestRejected) {
  expectReject("GET /\r\n\r\n", 400);
}

TEST(H1RequestLine, InvalidMethodCharactersRejected) {
  for (const char* line : {"GE(T / HTTP/1.1", "G@T / HTTP/1.1", "GET\x01 / HTTP/1.1", "G\xc3\x89T / HTTP/1.1",
                           "GET: / HTTP/1.1", "\"GET\" / HTTP/1.1"}) {
    expectReject(std::string(line) + "\r\nHost: h\r\n\r\n", 400);
  }
}

TEST(H1RequestLine, UnsupportedVersionIs505) {
  for (const char* v : {"HTTP/2.0", "HTTP/1.2", "HTTP/0.9", "HTTP/3.0", "HTTP/9.9"}) {
    expectReject(std::string("GET / ") + v + "\r\nHost: h\r\n\r\n", 505);
  }
}

TEST(H1RequestLine, MalformedVersionIs400) {
  for (const char* v : {"HTTP/1.10", "http/1.1", "HTTP/1", "HTTP/1.", "HTTP/11", "HTTP/a.b", "HTTP 1.1",
                        "HTTPS/1.1", "HTTP/1.1.1", "HTTP/01.1", "HTTP/+1.1", "xHTTP/1.1"}) {
    expectReject(std::string("GET / ") + v + "\r\nHost: h\r\n\r\n", 400);
  }
}

TEST(H1RequestLine, LeadingEmptyLinesToleratedUpToLimit) {
  std::string crlfs;
  for (int k = 0; k < kMaxLeadingEmptyLines; ++k) crlfs += "\r\n";
  const std::string m = crlfs + "GET / HTTP/1.1\r\nHost: h\r\n\r\n";
  RequestHead h;
  ASSERT_EQ(req(m, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.head_size, m.size());  // the skipped lines count as part of this head
  EXPECT_EQ(h.method, "GET");
  expectReject("\r\n" + m, 400);
  expectReject("\n" + std::string("GET / HTTP/1.1\r\nHost: h\r\n\r\n"), 400);
  expectReject("\r\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  expectReject(" \r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", 400);
}

TEST(H1RequestLine, TooLongRequestLineIs414) {
  ParseLimits lim;
  lim.max_request_line = 64;
  const std::string fits = "GET /" + std::string(64 - 14, 'a') + " HTTP/1.1";  // exactly 64
  ASSERT_EQ(fits.size(), 64u);
  EXPECT_EQ(req(fits + "\r\nHost: h\r\n\r\n", lim).status, ParseStatus::kComplete);
  const std::string over = "GET /" + std::string(65 - 14, 'a') + " HTTP/1.1";
  EXPECT_EQ(req(over + "\r\nHost: h\r\n\r\n", lim).http_status, 414);
}

TEST(H1RequestLine, IncompleteOversizedRequestLineFailsWithoutWaiting) {
  ParseLimits lim;
  lim.max_request_line = 64;
  const std::string partial = "GET /" + std::string(100, 'a');  // no CRLF yet
  EXPECT_EQ(req(partial.substr(0, 60), lim).status, ParseStatus::kIncomplete);
  EXPECT_EQ(req(partial, lim).http_status, 414);
  EXPECT_EQ(req(std::string(66, 'G'), lim).http_status, 414);
}

// ---------------------------------------------------------------------------------------------
// Request smuggling: message framing (RFC 9112 §6)

TEST(H1Smuggling, ContentLengthAndTransferEncodingTogetherRejected) {
  // CL.TE / TE.CL desync: one hop frames by CL, the other by TE.
  expectReject(withFields("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"), 400);
  expectReject(withFields("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n"), 400);
  expectReject(withFields("Transfer-Encoding: chunked\r\nContent-Length: 0\r\n"), 400);
  const ReqOutcome o = req(withFields("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n"));
  EXPECT_STREQ(o.reason.c_str(), "both Content-Length and Transfer-Encoding");
}

TEST(H1Smuggling, ContentLengthAndUnknownTransferEncodingRejected) {
  expectReject(withFields("Content-Length: 5\r\nTransfer-Encoding: gzip\r\n"), 400);
}

TEST(H1Smuggling, DuplicateContentLengthWithDifferentValuesRejected) {
  expectReject(withFields("Content-Length: 5\r\nContent-Length: 6\r\n"), 400);
  expectReject(withFields("Content-Length: 5, 6\r\n"), 400);
  expectReject(withFields("Content-Length: 5\r\nContent-Length: 5, 7\r\n"), 400);
}

TEST(H1Smuggling, DuplicateContentLengthWithIdenticalValuesCollapsed) {
  // RFC 9110 §8.6 allows collapsing identical values; every hop then agrees on the length.
  for (const char* f :
       {"Content-Length: 5\r\nContent-Length: 5\r\n", "Content-Length: 5, 5\r\n", "Content-Length: 5,5\r\n",
        "Content-Length: 5 ,\t5\r\n", "Content-Length: 5\r\ncontent-length: 05\r\n"}) {
    RequestHead h;
    ASSERT_EQ(req(withFields(f), h).status, ParseStatus::kComplete) << f;
    EXPECT_EQ(h.framing, BodyFraming::kContentLength);
    EXPECT_EQ(h.content_length, 5u);
  }
}

TEST(H1Smuggling, InvalidContentLengthRejected) {
  for (const char* v : {"", "abc", "-1", "+5", "5a", "0x10", "5 5", "5.0", "1e3", " ,5", "5,", "5,,5", ",",
                        "\xd9\xa5",  // non-ASCII digit
                        "9223372036854775808", "18446744073709551616", "99999999999999999999999"}) {
    expectReject(withFields(std::string("Content-Length: ") + v + "\r\n"), 400);
  }
}

TEST(H1Smuggling, TransferEncodingWithChunkedNotFinalRejected) {
  // The body length cannot be determined: RFC 9112 §6.3 rule 4 requires 400.
  for (const char* v :
       {"chunked, gzip", "gzip", "xchunked", "chunkedx", "identity", "deflate", "x-chunked"}) {
    expectReject(withFields(std::string("Transfer-Encoding: ") + v + "\r\n"), 400);
  }
}

TEST(H1Smuggling, TransferEncodingUnknownCodingBeforeChunkedIs501) {
  for (const char* v : {"gzip, chunked", "gzip,chunked", "deflate ,\tchunked", "x-custom;a=b, chunked"}) {
    expectReject(withFields(std::string("Transfer-Encoding: ") + v + "\r\n"), 501);
  }
  expectReject(withFields("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n"), 501);
}

TEST(H1Smuggling, TransferEncodingChunkedTwiceRejected) {
  expectReject(withFields("Transfer-Encoding: chunked, chunked\r\n"), 400);
  expectReject(withFields("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n"), 400);
}

TEST(H1Smuggling, TransferEncodingSplitAcrossLinesCombinesAsList) {
  // "TE: chunked" then "TE: gzip" = "chunked, gzip": chunked is not last.
  expectReject(withFields("Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n"), 400);
}

TEST(H1Smuggling, TransferEncodingObfuscationRejected) {
  // Variants that some parsers read as chunked and others do not.
  for (const char* f :
       {"Transfer-Encoding: chunked\x0b\r\n", "Transfer-Encoding: \fchunked\r\n",
        "Transfer-Encoding: chunked\xa0\r\n", "Transfer-Encoding: chun ked\r\n",
        "Transfer-Encoding: ,chunked\r\n", "Transfer-Encoding: chunked,\r\n",
        "Transfer-Encoding: chunked;q=1\r\n", "Transfer-Encoding: \"chunked\"\r\n", "Transfer-Encoding:\r\n",
        "Transfer-Encoding: chunked\r\n\tgzip\r\n", "Transfer-Encoding : chunked\r\n",
        " Transfer-Encoding: chunked\r\n", "Transfer_Encoding: chunked\r\nTransfer-Encoding: gzip\r\n",
        "Transfer-Encoding: x;a=\"b\", chunked\r\n"}) {
    expectReject(withFields(f), 400);
  }
}

TEST(H1Smuggling, LookalikeFieldNamesAreNotFraming) {
  // Names that are valid tokens but not "transfer-encoding" carry no framing meaning.
  RequestHead h;
  ASSERT_EQ(req(withFields("Transfer_Encoding: chunked\r\nContent-Length: 3\r\n"), h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kContentLength);
}

TEST(H1Smuggling, TransferEncodingInHttp10Rejected) {
  // RFC 9112 §6.1: 1.0 recipients may not understand chunked; the framing is treated as faulty.
  expectReject("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400);
}

TEST(H1Smuggling, ObsFoldRejected) {
  expectReject(withFields("X-A: a\r\n b\r\n"), 400);
  expectReject(withFields("X-A: a\r\n\tb\r\n"), 400);
  expectReject(withFields("Content-Length:\r\n 5\r\n"), 400);
}

TEST(H1Smuggling, WhitespaceBeforeFirstFieldRejected) {
  // RFC 9112 §2.2: such a line could be read as a field or as part of the request line.
  expectReject("GET / HTTP/1.1\r\n Host: h\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\n\tHost: h\r\n\r\n", 400);
}

TEST(H1Smuggling, BareCrRejectedEverywhere) {
  expectReject("GET / HTTP/1.1\rHost: h\r\n\r\n", 400);
  expectReject("GET /\r HTTP/1.1\r\nHost: h\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\rb\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\nX-A\r: a\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\r\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\n\r\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\n\rX", 400);
}

TEST(H1Smuggling, BareLfLineTerminatorRejected) {
  // We require CRLF everywhere (RFC 9112 §2.2 permits but does not require accepting bare LF);
  // a proxy accepting LF in front of an upstream that does not is a classic desync.
  expectReject("GET / HTTP/1.1\nHost: h\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\n\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\nX-A: a\nb\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\nX-A\n: a\r\n\r\n", 400);
}

TEST(H1Smuggling, NulInFieldNameOrValueRejected) {
  using namespace std::string_literals;
  expectReject(withFields("X-A: a\0b\r\n"s), 400);
  expectReject(withFields("X-\0A: ab\r\n"s), 400);
  expectReject(withFields("X-A: \0\r\n"s), 400);
  expectReject("GET /\0 HTTP/1.1\r\nHost: h\r\n\r\n"s, 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\0\r\n\r\n"s, 400);
}

TEST(H1Smuggling, ControlCharactersInFieldValueRejectedExceptHtab) {
  for (int c = 0; c < 0x20; ++c) {
    if (c == '\r' || c == '\n' || c == '\t') continue;
    std::string v = "abc";
    v += static_cast<char>(c);
    v += "def";
    expectReject(withFields("X-A: " + v + "\r\n"), 400);
  }
  expectReject(withFields("X-A: abc\177def\r\n"), 400);
  expectComplete(withFields("X-A: abc\tdef\r\n"));
}

TEST(H1Smuggling, EveryByteValueInFieldValueClassifiedAtEveryOffset) {
  // Exercises the word-at-a-time value scan: one odd byte at each offset of a long value.
  const std::string base(24, 'v');
  for (int c = 0; c < 256; ++c) {
    if (c == '\r' || c == '\n') continue;
    const bool valid = c == '\t' || c == ' ' || (c >= 0x21 && c != 0x7f);
    for (size_t pos = 0; pos < base.size(); ++pos) {
      std::string v = base;
      v[pos] = static_cast<char>(c);
      const ReqOutcome o = req(withFields("X-A: " + v + "\r\n"));
      ASSERT_EQ(o.status, valid ? ParseStatus::kComplete : ParseStatus::kError)
          << "byte " << c << " at " << pos;
    }
  }
}

TEST(H1Smuggling, WhitespaceBetweenFieldNameAndColonRejected) {
  // RFC 9112 §5.1 requires 400: some hops would strip the space, others keep a different name.
  expectReject(withFields("Content-Length : 5\r\n"), 400);
  expectReject(withFields("Content-Length\t: 5\r\n"), 400);
  expectReject(withFields("Host : other\r\n", "GET / HTTP/1.1\r\n"), 400);
}

TEST(H1Smuggling, EmptyFieldNameRejected) {
  expectReject(withFields(": value\r\n"), 400);
  expectReject(withFields(":\r\n"), 400);
}

TEST(H1Smuggling, FieldLineWithoutColonRejected) {
  expectReject(withFields("NoColonHere\r\n"), 400);
}

TEST(H1Smuggling, InvalidTokenCharactersInFieldNameRejected) {
  for (const char* n : {"X(A", "X)A", "X/A", "X@A", "X[A", "X=A", "X\"A", "X{A", "X\177A", "X\xc3\xa9", "X,A",
                        "X;A", "X?A", "X\\A"}) {
    expectReject(withFields(std::string(n) + ": v\r\n"), 400);
  }
}

// ---------------------------------------------------------------------------------------------
// Host (RFC 9112 §3.2, RFC 9110 §7.2)

TEST(H1Host, MissingHostIn11Rejected) {
  expectReject("GET / HTTP/1.1\r\n\r\n", 400);
}

TEST(H1Host, MissingHostIn10Accepted) {
  RequestHead h;
  ASSERT_EQ(req("GET / HTTP/1.0\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.host, "");
}

TEST(H1Host, DuplicateHostRejectedRoutingConfusion) {
  // Two Host lines: the proxy might route on one while the upstream serves the other.
  expectReject("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n", 400);
  expectReject("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400);
}

TEST(H1Host, InvalidHostValueRejected) {
  for (const char* v : {"a b", "a/b", "user@a", "a:80:81", "a:99999", "a:", ":80", "[::1", "[::1]x", "a,b:c",
                        "a%2", "a?b", "a\\b", "a#b", "[]", "a:-1", "a:+80", "\xc3\xa9"}) {
    expectReject(std::string("GET / HTTP/1.1\r\nHost: ") + v + "\r\n\r\n", 400);
  }
}

TEST(H1Host, ValidHostValuesAccepted) {
  for (const char* v :
       {"example.com", "example.com:8080", "EXAMPLE.com.", "127.0.0.1:80", "[::1]", "[::1]:443",
        "[2001:db8::a:b]:1", "xn--caf-dma.example", "a_b.example", "a%41.example", "a:0", "a:65535"}) {
    const std::string buf = std::string("GET / HTTP/1.1\r\nHost: ") + v + "\r\n\r\n";
    RequestHead h;
    ASSERT_EQ(req(buf, h).status, ParseStatus::kComplete) << v;
    EXPECT_EQ(h.host, v);
  }
}

TEST(H1Host, EmptyHostValueAcceptedAsRfcAllows) {
  RequestHead h;
  ASSERT_EQ(req("GET / HTTP/1.1\r\nHost:\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.host, "");
}

// ---------------------------------------------------------------------------------------------
// Connection management fields

TEST(H1Connection, Http11PersistentUnlessClose) {
  RequestHead h;
  ASSERT_EQ(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_FALSE(h.keep_alive);
  ASSERT_EQ(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: Keep-Alive, CLOSE\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.keep_alive);
  ASSERT_EQ(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: te\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_TRUE(h.keep_alive);
}

TEST(H1Connection, Http10PersistentOnlyWithKeepAlive) {
  RequestHead h;
  ASSERT_EQ(req("GET / HTTP/1.0\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_FALSE(h.keep_alive);
  ASSERT_EQ(req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_EQ(h.minor_version, 0);
}

TEST(H1Connection, EmptyListElementsIgnoredInvalidTokensRejected) {
  RequestHead h;
  ASSERT_EQ(req("GET / HTTP/1.1\r\nHost: h\r\nConnection: , close ,\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.keep_alive);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\nConnection: clo se\r\n\r\n", 400);
  expectReject("GET / HTTP/1.1\r\nHost: h\r\nConnection: \"close\"\r\n\r\n", 400);
}

TEST(H1Connection, ExpectContinueCaseInsensitive) {
  RequestHead h;
  ASSERT_EQ(req(withFields("Content-Length: 10\r\nExpect: 100-Continue\r\n"), h).status,
            ParseStatus::kComplete);
  EXPECT_TRUE(h.expect_continue);
  ASSERT_EQ(req(withFields("Content-Length: 10\r\nExpect: 100-continuex\r\n"), h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.expect_continue);
}

TEST(H1Connection, ExpectIgnoredForHttp10) {
  RequestHead h;
  ASSERT_EQ(req("POST / HTTP/1.0\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.expect_continue);
}

TEST(H1Connection, UpgradeNeedsConnectionTokenAndUpgradeField) {
  RequestHead h;
  ASSERT_EQ(
      req("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n", h)
          .status,
      ParseStatus::kComplete);
  EXPECT_TRUE(h.upgrade);
  ASSERT_EQ(req("GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.upgrade);
  ASSERT_EQ(req("GET /ws HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.upgrade);
}

TEST(H1Connection, UpgradeIgnoredForHttp10) {
  RequestHead h;
  ASSERT_EQ(req("GET / HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.upgrade);
}

// ---------------------------------------------------------------------------------------------
// Resource limits (RFC 9110 §15.5.15, RFC 6585 §5)

TEST(H1Limits, HeaderSectionTooLargeIs431) {
  ParseLimits lim;
  lim.max_header_bytes = 64;
  // "Host: h\r\n" (9) + "X: " (3) + v + "\r\n" (2) + "\r\n" (2) = 16 + v
  const std::string line = "GET / HTTP/1.1\r\n";
  EXPECT_EQ(req(line + "Host: h\r\nX: " + std::string(48, 'v') + "\r\n\r\n", lim).status,
            ParseStatus::kComplete);
  EXPECT_EQ(req(line + "Host: h\r\nX: " + std::string(49, 'v') + "\r\n\r\n", lim).http_status, 431);
}

TEST(H1Limits, IncompleteOversizedHeaderSectionFailsWithoutWaiting) {
  ParseLimits lim;
  lim.max_header_bytes = 64;
  const std::string partial = "GET / HTTP/1.1\r\nHost: h\r\nX: " + std::string(200, 'v');
  EXPECT_EQ(req(partial.substr(0, 40), lim).status, ParseStatus::kIncomplete);
  EXPECT_EQ(req(partial, lim).http_status, 431);
}

TEST(H1Limits, TooManyFieldsIs431) {
  ParseLimits lim;
  lim.max_headers = 3;
  EXPECT_EQ(req("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\n\r\n", lim).status, ParseStatus::kComplete);
  EXPECT_EQ(req("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n", lim).http_status, 431);
  EXPECT_EQ(req("GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC", lim).http_status, 431);
}

TEST(H1Limits, DefaultLimitsAcceptLargeButSaneHead) {
  std::string fields;
  for (int k = 0; k < 98; ++k)
    fields += "X-Field-" + std::to_string(k) + ": " + std::string(100, 'x') + "\r\n";
  RequestHead h;
  ASSERT_EQ(req(withFields(fields, "GET / HTTP/1.1\r\n"), h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.headers.size(), 99u);
}

// ---------------------------------------------------------------------------------------------
// Responses

struct RespOutcome {
  ParseStatus status;
  int http_status;
  std::string reason;
};

RespOutcome resp(std::string_view buf, ResponseHead& head, bool head_request = false,
                 const ParseLimits& lim = {}) {
  ParseError err;
  const ParseStatus st = parseResponse(buf, lim, head_request, head, err);
  return {st, st == ParseStatus::kError ? err.http_status : 0, st == ParseStatus::kError ? err.reason : ""};
}

RespOutcome resp(std::string_view buf, bool head_request = false) {
  ResponseHead head;
  return resp(buf, head, head_request);
}

void expectBadResponse(std::string_view buf) {
  const RespOutcome o = resp(buf);
  EXPECT_EQ(o.status, ParseStatus::kError) << testing::PrintToString(std::string(buf));
  EXPECT_EQ(o.http_status, 502) << testing::PrintToString(std::string(buf));
}

TEST(H1Response, ParsesSimpleResponse) {
  const std::string buf = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nServer: x\r\n\r\nhi";
  ResponseHead h;
  ASSERT_EQ(resp(buf, h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.status, 200);
  EXPECT_EQ(h.reason, "OK");
  EXPECT_EQ(h.minor_version, 1);
  EXPECT_EQ(h.framing, BodyFraming::kContentLength);
  EXPECT_EQ(h.content_length, 2u);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_EQ(h.head_size, buf.size() - 2);
  EXPECT_EQ(h.find("server")->value, "x");
}

TEST(H1Response, ReasonPhraseMayBeEmptyOrContainSpaces) {
  ResponseHead h;
  ASSERT_EQ(resp("HTTP/1.1 404 \r\nContent-Length: 0\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.reason, "");
  ASSERT_EQ(resp("HTTP/1.1 404\r\nContent-Length: 0\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.status, 404);
  EXPECT_EQ(h.reason, "");
  ASSERT_EQ(resp("HTTP/1.1 500 Internal  Server\tError \r\nContent-Length: 0\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.reason, "Internal  Server\tError ");
}

TEST(H1Response, StatusCodeMustBeThreeDigits) {
  for (const char* line : {"HTTP/1.1 20 OK", "HTTP/1.1 2000 OK", "HTTP/1.1 099 X", "HTTP/1.1 abc OK",
                           "HTTP/1.1  200 OK", "HTTP/1.1 -20 OK", "HTTP/1.1 20x OK", "HTTP/1.1 OK"}) {
    expectBadResponse(std::string(line) + "\r\nContent-Length: 0\r\n\r\n");
  }
  ResponseHead h;
  ASSERT_EQ(resp("HTTP/1.1 999 Whatever\r\nContent-Length: 0\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.status, 999);
}

TEST(H1Response, ControlCharacterInReasonRejected) {
  expectBadResponse("HTTP/1.1 200 O\x01K\r\nContent-Length: 0\r\n\r\n");
  expectBadResponse("HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n");
  expectBadResponse("HTTP/1.1 200 OK\rContent-Length: 0\r\n\r\n");
}

TEST(H1Response, VersionMustBe10Or11) {
  expectBadResponse("HTTP/2.0 200 OK\r\n\r\n");
  expectBadResponse("HTTP/1.10 200 OK\r\n\r\n");
  expectBadResponse("http/1.1 200 OK\r\n\r\n");
  expectBadResponse("HTTP/1.1\r\n\r\n");
}

TEST(H1Response, NoBodyForInformational204And304EvenWithLength) {
  for (int status : {100, 101, 103, 204, 304}) {
    ResponseHead h;
    const std::string m = "HTTP/1.1 " + std::to_string(status) + " X\r\nContent-Length: 10\r\n\r\n";
    ASSERT_EQ(resp(m, h).status, ParseStatus::kComplete) << status;
    EXPECT_EQ(h.framing, BodyFraming::kNone) << status;
    EXPECT_TRUE(h.keep_alive);
  }
}

TEST(H1Response, NoBodyForHeadRequest) {
  ResponseHead h;
  ASSERT_EQ(resp("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", h, true).status, ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kNone);
  EXPECT_EQ(h.content_length, 1234u);
  ASSERT_EQ(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", h, true).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kNone);
  EXPECT_TRUE(h.keep_alive);
}

TEST(H1Response, NoLengthMeansUntilCloseAndNotReusable) {
  ResponseHead h;
  ASSERT_EQ(resp("HTTP/1.1 200 OK\r\n\r\nbody...", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kUntilClose);
  EXPECT_FALSE(h.keep_alive);
}

TEST(H1Response, ChunkedResponse) {
  ResponseHead h;
  ASSERT_EQ(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kChunked);
  EXPECT_TRUE(h.keep_alive);
}

TEST(H1Response, NonChunkedFinalCodingMeansUntilClose) {
  ResponseHead h;
  ASSERT_EQ(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kUntilClose);
  EXPECT_FALSE(h.keep_alive);
  ASSERT_EQ(resp("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_EQ(h.framing, BodyFraming::kUntilClose);
}

TEST(H1Response, SmugglingContentLengthAndTransferEncodingIsError) {
  // RFC 9112 §6.3 would let TE win; a proxy refuses (502) rather than guess for its client.
  const RespOutcome o = resp("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n");
  EXPECT_EQ(o.status, ParseStatus::kError);
  EXPECT_EQ(o.http_status, 502);
  EXPECT_EQ(o.reason, "both Content-Length and Transfer-Encoding");
}

TEST(H1Response, SmugglingConflictingContentLengthIsError) {
  expectBadResponse("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
  expectBadResponse("HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n");
  expectBadResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n");
  expectBadResponse("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
}

TEST(H1Response, SmugglingObsFoldAndBareLfAreErrors) {
  expectBadResponse("HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n");
  expectBadResponse("HTTP/1.1 200 OK\r\nContent-Length: 0\n\r\n");
  expectBadResponse("HTTP/1.1 200 OK\r\nContent-Length : 0\r\n\r\n");
}

TEST(H1Response, LeadingEmptyLineIsError) {
  expectBadResponse("\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
}

TEST(H1Response, Http10KeepAliveSemantics) {
  ResponseHead h;
  ASSERT_EQ(resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", h).status, ParseStatus::kComplete);
  EXPECT_FALSE(h.keep_alive);
  ASSERT_EQ(resp("HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_TRUE(h.keep_alive);
  EXPECT_EQ(h.minor_version, 0);
  ASSERT_EQ(resp("HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n", h).status,
            ParseStatus::kComplete);
  EXPECT_FALSE(h.keep_alive);
}

TEST(H1Response, StatusLineTooLongIsErrorWithoutWaiting) {
  ParseLimits lim;
  lim.max_request_line = 32;
  ResponseHead h;
  EXPECT_EQ(resp("HTTP/1.1 200 " + std::string(40, 'x'), h, false, lim).http_status, 502);
}

TEST(H1Response, IncrementalFeedAtEverySplitPoint) {
  const std::string m = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n";
  ResponseHead whole;
  ASSERT_EQ(resp(m, whole).status, ParseStatus::kComplete);
  for (size_t cut = 0; cut < m.size(); ++cut)
    EXPECT_EQ(resp(m.substr(0, cut)).status, ParseStatus::kIncomplete) << cut;
}

// ---------------------------------------------------------------------------------------------
// Chunked decoder (RFC 9112 §7.1)

struct Decoded {
  std::string data;
  size_t consumed = 0;
  bool done = false;
  bool error = false;
  std::string reason;
};

// Feeds `in` in pieces cut at `cuts` (ascending offsets); stops at done or error.
Decoded decodeSplit(ChunkedDecoder& d, std::string_view in, const std::vector<size_t>& cuts) {
  Decoded out;
  size_t pos = 0;
  std::vector<size_t> bounds = cuts;
  bounds.push_back(in.size());
  for (size_t b : bounds) {
    if (b < pos) continue;
    // Exact-size copy of the piece so ASan catches any read past it.
    const std::string piece(in.substr(pos, b - pos));
    std::vector<std::string_view> views;
    const ChunkedDecoder::Result r = d.decode(piece, &views);
    EXPECT_LE(r.consumed, piece.size());
    for (std::string_view v : views) {
      EXPECT_TRUE(inside(v, piece));
      out.data += v;
    }
    out.consumed += r.consumed;
    pos = b;
    if (r.done || r.error) {
      out.done = r.done;
      out.error = r.error;
      out.reason = r.reason;
      break;
    }
    EXPECT_EQ(r.consumed, piece.size());  // not done: everything is consumed
  }
  return out;
}

Decoded decodeAll(std::string_view in, ChunkedDecoder* dec = nullptr) {
  ChunkedDecoder local;
  return decodeSplit(dec ? *dec : local, in, {});
}

void expectChunkError(std::string_view in) {
  const Decoded d = decodeAll(in);
  EXPECT_TRUE(d.error) << testing::PrintToString(std::string(in));
  EXPECT_FALSE(d.done);
}

TEST(H1Chunked, DecodesSimpleBody) {
  const Decoded d = decodeAll("5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n");
  EXPECT_TRUE(d.done);
  EXPECT_FALSE(d.error);
  EXPECT_EQ(d.data, "hello, world");
}

TEST(H1Chunked, HexSizesAnyCase) {
  const std::string body(0x1a, 'z');
  EXPECT_EQ(decodeAll("1a\r\n" + body + "\r\n0\r\n\r\n").data, body);
  EXPECT_EQ(decodeAll("1A\r\n" + body + "\r\n000\r\n\r\n").data, body);
  EXPECT_EQ(decodeAll("001a\r\n" + body + "\r\n0\r\n\r\n").data, body);
}

TEST(H1Chunked, StopsAtEndOfMessageLeavingPipelinedBytes) {
  const std::string body = "3\r\nabc\r\n0\r\n\r\n";
  const std::string buf = body + "GET / HTTP/1.1\r\n";
  ChunkedDecoder dec;
  std::vector<std::string_view> views;
  const auto r = dec.decode(buf, &views);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.consumed, body.size());
  // Once done, nothing more is consumed.
  const auto again = dec.decode("more", &views);
  EXPECT_TRUE(again.done);
  EXPECT_EQ(again.consumed, 0u);
}

TEST(H1Chunked, EverySplitPointGivesSameResult) {
  const std::string in =
      "4;name=value\r\nWiki\r\n5 ; a = \"q\\\"x\" ;b\r\npedia\r\nE\r\n "
      "in\r\n\r\nchunks.\r\n0;last\r\nX-Trailer: "
      "v\r\nX-T2:\r\n\r\nNEXT";
  ChunkedDecoder ref;
  ref.keep_trailers = true;
  const Decoded whole = decodeAll(in, &ref);
  ASSERT_TRUE(whole.done) << whole.reason;
  EXPECT_EQ(whole.data, "Wikipedia in\r\n\r\nchunks.");
  EXPECT_EQ(whole.consumed, in.size() - 4);
  EXPECT_EQ(ref.trailers(), "X-Trailer: v\r\nX-T2:\r\n");
  for (size_t a = 0; a <= in.size(); ++a) {
    ChunkedDecoder d;
    d.keep_trailers = true;
    const Decoded part = decodeSplit(d, in, {a});
    EXPECT_TRUE(part.done) << a;
    EXPECT_EQ(part.data, whole.data) << a;
    EXPECT_EQ(part.consumed, whole.consumed) << a;
    EXPECT_EQ(d.trailers(), ref.trailers()) << a;
  }
}

TEST(H1Chunked, ByteByByteGivesSameResult) {
  const std::string in = "a\r\n0123456789\r\n1;x=y\r\n!\r\n0\r\nT: 1\r\n\r\n";
  std::vector<size_t> cuts;
  for (size_t k = 1; k < in.size(); ++k) cuts.push_back(k);
  ChunkedDecoder d;
  const Decoded part = decodeSplit(d, in, cuts);
  EXPECT_TRUE(part.done);
  EXPECT_EQ(part.data, "0123456789!");
  EXPECT_EQ(part.consumed, in.size());
}

TEST(H1Chunked, ErrorAtEverySplitPointIsTheSame) {
  const std::string in = "5\r\nhello\r\n3\r\nabcX\r\n0\r\n\r\n";
  const Decoded whole = decodeAll(in);
  ASSERT_TRUE(whole.error);
  for (size_t a = 0; a <= in.size(); ++a) {
    ChunkedDecoder d;
    const Decoded part = decodeSplit(d, in, {a});
    EXPECT_TRUE(part.error) << a;
    EXPECT_EQ(part.reason, whole.reason) << a;
    EXPECT_EQ(part.consumed, whole.consumed) << a;
  }
}

TEST(H1Chunked, NullDataSinkStillConsumes) {
  ChunkedDecoder dec;
  const auto r = dec.decode("3\r\nabc\r\n0\r\n\r\n", nullptr);
  EXPECT_TRUE(r.done);
  EXPECT_EQ(r.consumed, 13u);
}

TEST(H1Chunked, SmugglingNonHexOrSignedSizeRejected) {
  for (const char* in : {"\r\n", "x\r\n", "0x5\r\nhello\r\n0\r\n\r\n", "-1\r\n", "+5\r\nhello\r\n", "5g\r\n",
                         "\xd9\xa5\r\n", ";ext\r\n"}) {
    expectChunkError(in);
  }
}

TEST(H1Chunked, SmugglingWhitespaceAroundSizeRejected) {
  // Leading/trailing whitespace is read as 0 or as an error by different parsers.
  for (const char* in : {" 5\r\nhello\r\n0\r\n\r\n", "5 \r\nhello\r\n0\r\n\r\n", "5\t\r\nhello\r\n0\r\n\r\n",
                         "\t5\r\nhello\r\n0\r\n\r\n", "0 \r\n\r\n", "5;a \r\nhello\r\n"}) {
    expectChunkError(in);
  }
}

TEST(H1Chunked, BadWhitespaceAllowedOnlyBeforeExtension) {
  const Decoded d = decodeAll("5 \t;a\r\nhello\r\n0\r\n\r\n");
  EXPECT_TRUE(d.done);
  EXPECT_EQ(d.data, "hello");
}

TEST(H1Chunked, SmugglingSizeOverflowRejected) {
  // 2^63 and above: a wrapped size would frame the body differently than a peer with 64-bit math.
  expectChunkError("8000000000000000\r\n");
  expectChunkError("ffffffffffffffff\r\n");
  expectChunkError("10000000000000005\r\nhello\r\n");  // 2^64 + 5 wraps to 5 with unchecked math
  ChunkedDecoder dec;
  const auto r = dec.decode("7fffffffffffffff\r\nabc", nullptr);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.consumed, 21u);
}

TEST(H1Chunked, ValidExtensionsAccepted) {
  for (const char* ext : {";a", ";a=b", ";a=\"b c\"", ";a=\"\"", ";a=\"\\\"\"", ";a;b;c=d", " ;a", "; a",
                          ";a =b", ";a= b", ";a=b ;c", ";a=\"x\" ;c", ";a=\"\xc3\xa9\""}) {
    const Decoded d = decodeAll(std::string("5") + ext + "\r\nhello\r\n0" + ext + "\r\n\r\n");
    EXPECT_TRUE(d.done) << ext << " " << d.reason;
    EXPECT_EQ(d.data, "hello") << ext;
  }
}

TEST(H1Chunked, MalformedExtensionsRejected) {
  for (const char* ext : {";", ";=b", ";a=", ";a=b=c", ";a=\"b", ";a=\"b\"c", ";a b", ";a=b c", ";a@b",
                          ";a=\"\x01\"", ";a\x7f", ";a=\"b\\\x01\"", ";a,b", ";a\r\r\n", ";a=b\n"}) {
    expectChunkError(std::string("5") + ext + "\r\nhello\r\n0\r\n\r\n");
  }
}

TEST(H1Chunked, NulInChunkLineOrTrailerRejected) {
  using namespace std::string_literals;
  expectChunkError("5;a\0\r\nhello\r\n0\r\n\r\n"s);
  expectChunkError("5\0\r\nhello\r\n0\r\n\r\n"s);
  expectChunkError("0\r\nX-A: a\0b\r\n\r\n"s);
}

TEST(H1Chunked, ChunkLineLengthBounded) {
  const std::string longext = ";a=" + std::string(ChunkedDecoder::kMaxChunkLineBytes, 'x');
  expectChunkError("5" + longext + "\r\nhello\r\n0\r\n\r\n");
  expectChunkError(std::string(ChunkedDecoder::kMaxChunkLineBytes + 1, '0'));
  // Just under the bound is fine, even when split.
  const std::string ok = ";a=" + std::string(ChunkedDecoder::kMaxChunkLineBytes - 7, 'x');
  ChunkedDecoder d;
  EXPECT_TRUE(decodeSplit(d, "5" + ok + "\r\nhello\r\n0\r\n\r\n", {100, 2000, 4000}).done);
}

TEST(H1Chunked, SmugglingMissingCrlfAfterDataRejected) {
  // The declared size must be exactly the data: trailing bytes would otherwise become a request.
  expectChunkError("3\r\nabcd\r\n0\r\n\r\n");
  expectChunkError("3\r\nabc0\r\n\r\n");
  expectChunkError("3\r\nabc\n0\r\n\r\n");
  expectChunkError("3\r\nabc\r0\r\n\r\n");
}

TEST(H1Chunked, SmugglingBareLfOrBareCrInChunkLineRejected) {
  expectChunkError("3\nabc\r\n0\r\n\r\n");
  expectChunkError("3\rabc\r\n0\r\n\r\n");
  expectChunkError("3\r\nabc\r\n0\n\r\n");
  expectChunkError("3\r\nabc\r\n0\r\n\n");
  expectChunkError("3\r\nabc\r\n0\r\n\r\r");
}

TEST(H1Chunked, TrailersValidatedLikeFields) {
  for (const char* trailer :
       {"X-A : v\r\n", " X-A: v\r\n", "X-A: v\r\n b\r\n", ": v\r\n", "X(A: v\r\n", "X-A: a\x01\r\n",
        "X-A: a\nb\r\n", "X-A: v\n", "NoColon\r\n", "X-A: a\rb\r\n"}) {
    expectChunkError(std::string("0\r\n") + trailer + "\r\n");
  }
  const Decoded d = decodeAll("0\r\nX-A: \tv w\t\r\nX-B:\r\n\r\n");
  EXPECT_TRUE(d.done);
}

TEST(H1Chunked, TrailerSectionSizeBounded) {
  ChunkedDecoder dec;
  dec.max_trailer_bytes = 32;
  const std::string fits = "X-A: " + std::string(23, 'v') + "\r\n\r\n";  // exactly 32
  ASSERT_EQ(fits.size(), 32u);
  EXPECT_TRUE(decodeAll("0\r\n" + fits, &dec).done);
  ChunkedDecoder dec2;
  dec2.max_trailer_bytes = 32;
  const Decoded d = decodeAll("0\r\nX-A: " + std::string(24, 'v') + "\r\n\r\n", &dec2);
  EXPECT_TRUE(d.error);
  EXPECT_EQ(d.reason, "trailer section too large");
}

TEST(H1Chunked, TrailersNotKeptUnlessAsked) {
  ChunkedDecoder dec;
  EXPECT_TRUE(decodeAll("0\r\nX-A: v\r\n\r\n", &dec).done);
  EXPECT_TRUE(dec.trailers().empty());
}

TEST(H1Chunked, ErrorIsStickyUntilReset) {
  ChunkedDecoder dec;
  auto r = dec.decode("zz", nullptr);
  EXPECT_TRUE(r.error);
  EXPECT_TRUE(dec.failed());
  r = dec.decode("5\r\nhello\r\n0\r\n\r\n", nullptr);
  EXPECT_TRUE(r.error);
  EXPECT_EQ(r.consumed, 0u);
  dec.reset();
  r = dec.decode("5\r\nhello\r\n0\r\n\r\n", nullptr);
  EXPECT_TRUE(r.done);
  EXPECT_TRUE(dec.done());
}

TEST(H1Chunked, ResetAllowsNextMessage) {
  ChunkedDecoder dec;
  dec.keep_trailers = true;
  EXPECT_TRUE(decodeAll("1\r\na\r\n0\r\nT: 1\r\n\r\n", &dec).done);
  dec.reset();
  EXPECT_TRUE(dec.trailers().empty());
  const Decoded d = decodeAll("2\r\nbc\r\n0\r\n\r\n", &dec);
  EXPECT_TRUE(d.done);
  EXPECT_EQ(d.data, "bc");
}

TEST(H1Chunked, EmptyInputConsumesNothing) {
  ChunkedDecoder dec;
  const auto r = dec.decode({}, nullptr);
  EXPECT_FALSE(r.done);
  EXPECT_FALSE(r.error);
  EXPECT_EQ(r.consumed, 0u);
}

TEST(H1Chunked, WriteChunkHeader) {
  char buf[20];
  auto w = [&](uint64_t v) { return std::string(buf, writeChunkHeader(v, buf)); };
  EXPECT_EQ(w(0), "0\r\n");
  EXPECT_EQ(w(1), "1\r\n");
  EXPECT_EQ(w(255), "ff\r\n");
  EXPECT_EQ(w(0x1000), "1000\r\n");
  EXPECT_EQ(w(UINT64_MAX), "ffffffffffffffff\r\n");
}

TEST(H1Chunked, WriteChunkHeaderRoundTripsThroughDecoder) {
  for (uint64_t size : {1ull, 9ull, 16ull, 17ull, 4095ull}) {
    char hdr[20];
    std::string in(hdr, writeChunkHeader(size, hdr));
    in += std::string(size, 'q') + "\r\n0\r\n\r\n";
    const Decoded d = decodeAll(in);
    EXPECT_TRUE(d.done);
    EXPECT_EQ(d.data.size(), size);
  }
}


TEST(Header, EqualsIgnoreCaseFoldsOnlyAsciiLetters) {
  EXPECT_TRUE(equalsIgnoreCase("Content-Length", "content-length"));
  EXPECT_TRUE(equalsIgnoreCase("X-FORWARDED-FOR", "x-forwarded-for"));
  EXPECT_TRUE(equalsIgnoreCase("", ""));
  EXPECT_FALSE(equalsIgnoreCase("content-length", "content-lengt"));
  EXPECT_FALSE(equalsIgnoreCase("content-length", "content_length"));
  // Pairs that differ only in bit 0x20 but are not letters must not match.
  EXPECT_FALSE(equalsIgnoreCase("a@", "a`"));
  EXPECT_FALSE(equalsIgnoreCase("[", "{"));
  EXPECT_FALSE(equalsIgnoreCase("\r", "-"));
  EXPECT_FALSE(equalsIgnoreCase("\xC1", "\xE1"));
}

}  // namespace
}  // namespace marchproxy::http
