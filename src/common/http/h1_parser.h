#pragma once
// Strict HTTP/1.1 message-head parser and chunked-body decoder (RFC 9112, RFC 9110).
//
// This is the proxy's security boundary: every byte a client or upstream sends goes through here
// before anything routes on it. The parser refuses every construct that two HTTP implementations
// could frame differently (CL+TE, duplicate/odd Content-Length, obs-fold, bare CR/LF, control
// characters, odd transfer-codings), because a proxy and its upstream disagreeing on where a
// message ends is request smuggling. docs/http1.md lists every rule with the status it yields.
//
// Ownership: every std::string_view in RequestHead/ResponseHead (and the chunk-data views the
// decoder emits) points into the caller's buffer and is valid only while that buffer is unchanged.
// Threading: free functions are reentrant; a ChunkedDecoder belongs to one message on one worker.
// No exceptions and no allocation on the parse path, except growth of the reused headers vector.
//
// May depend on: header.h and the standard library only.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "common/http/header.h"

namespace marchproxy::http {

enum class BodyFraming {
  kNone,           // no body follows the head
  kContentLength,  // exactly content_length bytes follow (may be 0)
  kChunked,        // feed the bytes after the head to a ChunkedDecoder
  kUntilClose,     // responses only: the body ends when the upstream closes the connection
};

// How the request-target was written (RFC 9112 §3.2).
enum class TargetForm { kOrigin, kAbsolute, kAuthority, kAsterisk };

struct ParseLimits {
  size_t max_request_line = 8192;   // request/status line, excluding its CRLF -> 414 (requests)
  size_t max_header_bytes = 65536;  // field lines plus the final empty line's CRLF -> 431
  size_t max_headers = 100;         // field lines -> 431
};

// At most this many empty lines (CRLF) may precede a request line; RFC 9112 §2.2 says a server
// SHOULD ignore "at least one". More is treated as garbage (400), never as an unbounded skip.
inline constexpr int kMaxLeadingEmptyLines = 4;

enum class ParseStatus { kComplete, kIncomplete, kError };

struct ParseError {
  // Requests: 400, 414 (request line too long), 431 (header section too large or too many fields),
  // 501 (transfer-coding we do not implement), 505 (HTTP version other than 1.0/1.1).
  // Responses: always 502, the status the proxy answers its client with when an upstream response
  // is malformed.
  int http_status = 400;
  const char* reason = "";  // short static text; safe to log, never contains input bytes
};

struct RequestHead {
  std::string_view method;  // case-sensitive token as sent
  std::string_view target;  // as sent: origin-form, absolute-form, authority-form or "*"
  std::string_view path;    // origin-form: target before '?'; absolute-form: its path ("/" if empty);
                            // asterisk-form: "*"; authority-form: empty
  std::string_view query;   // after the first '?', without it; empty if none
  std::string_view scheme;  // absolute-form only, as sent (compare case-insensitively)
  TargetForm form = TargetForm::kOrigin;
  int minor_version = 1;  // 0 or 1
  std::vector<Header> headers;
  BodyFraming framing = BodyFraming::kNone;
  uint64_t content_length = 0;
  bool keep_alive = true;        // 1.1: unless "Connection: close"; 1.0: only with "keep-alive"
  bool expect_continue = false;  // "Expect: 100-continue" on a 1.1 request (ignored for 1.0)
  bool upgrade = false;          // 1.1, Connection has the "upgrade" token and Upgrade is present
  // Host header value, or the authority of an absolute-form/authority-form target, which RFC 9112
  // §3.2.2 says wins over the Host header. Validated as uri-host [":" port]; may be empty only
  // when the Host field is present and empty (RFC 9110 §7.2). A forwarder must send this value as
  // the upstream Host, never the client's Host line, so both hops route on the same name.
  std::string_view host;
  size_t head_size = 0;  // bytes of the head, including leading empty lines and the final CRLF CRLF

  void clear();                                           // keeps the headers vector's capacity
  const Header* find(std::string_view lower_name) const;  // first match, case-insensitive
};

// Parses one request head at the start of buf.
// kComplete: out is filled; the body (per out.framing) starts at buf[out.head_size].
// kIncomplete: every byte so far is valid; call again with the same bytes plus more. A buffer that
//   can no longer complete within limits fails at once (414/431), so callers never buffer unboundedly.
// kError: err says what to answer; the connection must be closed after answering (the framing of
//   anything that follows is unknown).
// out is cleared first and is meaningful only on kComplete.
ParseStatus parseRequest(std::string_view buf, const ParseLimits& limits, RequestHead& out, ParseError& err);

// uri-host [ ":" port ] (RFC 9110 §4.2, §7.2; RFC 3986 §3.2), as a Host field, an absolute-form
// authority or an HTTP/2 :authority must be. Strict: userinfo, empty hosts, empty or oversize ports
// and stray characters are refused. require_port: authority-form (CONNECT) needs host:port.
bool isValidAuthority(std::string_view a, bool require_port);

struct ResponseHead {
  int minor_version = 1;
  int status = 0;  // 100..999
  std::string_view reason;
  std::vector<Header> headers;
  BodyFraming framing = BodyFraming::kNone;
  uint64_t content_length = 0;  // also set (informational) when framing is kNone, e.g. for HEAD
  bool keep_alive = true;       // false whenever framing is kUntilClose
  size_t head_size = 0;

  void clear();
  const Header* find(std::string_view lower_name) const;
};

// Parses one response head at the start of buf. request_method_head: the request was HEAD, so no
// body follows whatever the fields say. 1xx, 204 and 304 have no body either. Without CL or TE the
// body runs until close (and keep_alive=false). Both CL and TE is kError (not "TE wins", RFC 9112
// §6.3 rule 3): an upstream that sends both is broken or attacked, and relaying either reading
// risks desynchronising the client; the caller answers 502 and drops the upstream connection.
// A 2xx answer to CONNECT (a tunnel) is the caller's to recognise; this function does not know
// the request method beyond HEAD.
ParseStatus parseResponse(std::string_view buf, const ParseLimits& limits, bool request_method_head,
                          ResponseHead& out, ParseError& err);

// Incremental, validating decoder for the chunked transfer coding (RFC 9112 §7.1). Feed it the raw
// body bytes as they arrive, split anywhere. It keeps only a small fixed state between calls (no
// buffering is needed: a partial chunk line is carried as parser state), so memory stays bounded
// whatever the peer sends.
class ChunkedDecoder {
 public:
  struct Result {
    size_t consumed = 0;  // bytes of `in` used; on done, everything after belongs to the next message
    bool done = false;    // last-chunk and trailer section (with its final CRLF) consumed
    bool error = false;   // sticky until reset(); the connection must be closed
    const char* reason = "";
  };

  // Consumes as much of `in` as possible. When data != nullptr, appends the chunk-data pieces found
  // in `in` (views into it) to *data. Once done or failed, further calls consume nothing.
  Result decode(std::string_view in, std::vector<std::string_view>* data);
  void reset();

  bool done() const { return state_ == State::kDone; }
  bool failed() const { return state_ == State::kError; }
  // The raw trailer field lines (each with its CRLF, without the final empty line), collected only
  // when keep_trailers is set; they were validated like header fields but never merged into the
  // head's semantics (RFC 9110 §6.5.1). A re-encoder writes "0\r\n" + trailers() + "\r\n".
  const std::string& trailers() const { return trailers_; }

  uint64_t max_trailer_bytes = 16384;  // trailer section limit, including its final CRLF
  bool keep_trailers = false;

  // A chunk line (size, extensions, CRLF) longer than this is an error; it bounds the time and the
  // leniency spent on extensions, which nothing in the proxy consumes.
  static constexpr uint32_t kMaxChunkLineBytes = 4096;

 private:
  enum class State : uint8_t {
    // chunk line: keep these contiguous (line-length accounting relies on the range)
    kSizeStart,
    kSize,
    kSizeWs,         // BWS after the size: only ';' may follow
    kExtBeforeName,  // after ';'
    kExtName,
    kExtAfterName,    // BWS after a name: '=' or ';'
    kExtBeforeValue,  // after '='
    kExtToken,
    kExtQuoted,
    kExtQuotedPair,
    kExtAfterQuoted,
    kExtAfterValueWs,
    kSizeLf,
    // chunk data
    kData,
    kDataCr,
    kDataLf,
    // trailer section: keep these contiguous
    kTrailerLineStart,
    kTrailerName,
    kTrailerValue,
    kTrailerLf,
    kFinalLf,
    kDone,
    kError,
  };

  State state_ = State::kSizeStart;
  uint64_t size_ = 0;       // chunk size being parsed
  uint64_t remaining_ = 0;  // chunk-data bytes still expected
  uint32_t line_bytes_ = 0;
  uint64_t trailer_bytes_ = 0;
  const char* reason_ = "";
  std::string trailers_;
};

// Writes a chunk header "<hex>\r\n" (lower-case, no leading zeros) into out, which must hold at
// least 20 bytes, and returns its length. For re-encoding a body towards a peer.
size_t writeChunkHeader(uint64_t size, char* out);

}  // namespace marchproxy::http
