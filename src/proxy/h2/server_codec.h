#pragma once
// ServerCodec: the server side of one HTTP/2 connection as a pure byte-in/byte-out state machine
// over nghttp2 (no sockets, no coroutines; fuzzed by tests/fuzz/h2_server_fuzz.cc).
//
// It enforces the proxy's rules on top of nghttp2's own RFC 9113 checks and the abuse limits of
// config::Http2 (docs/http2.md):
//   - request heads: nghttp2 refuses connection-specific fields (connection, keep-alive,
//     proxy-connection, transfer-encoding, upgrade), te other than "trailers", upper-case or invalid
//     names, CR/LF/NUL and leading/trailing whitespace in values, bad pseudo-headers: stream error
//     PROTOCOL_ERROR. The codec adds the decoded header-list limit (431) on top.
//   - floods: client RST_STREAM per second (rapid reset, CVE-2023-44487) together with the
//     RST_STREAMs the server sends for client protocol errors ("MadeYouReset", CVE-2025-8671), SETTINGS/PING/PRIORITY/
//     empty DATA per second, CONTINUATION frames per header block (CVE-2024-27316): over a limit the
//     codec queues GOAWAY ENHANCE_YOUR_CALM and feed() returns false; the caller flushes and closes.
//   - request bodies: the window is given back only when the application calls consume(), so a
//     slow upstream slows the client down (no unbounded buffering).
//
// Threading: one worker thread. Callbacks into Handler run inside feed() and takeOutput().
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nghttp2/nghttp2.h>

#include "config/model.h"

namespace marchproxy::proxy::h2 {

struct Request {
  std::string method, scheme, authority, path;
  std::string protocol;  // :protocol of an extended CONNECT (RFC 8441), e.g. "websocket"
  std::vector<std::pair<std::string, std::string>> headers;  // regular fields, lower-case names, in order
  uint64_t header_bytes = 0;                                  // decoded size (name + value + 32 each)
  bool too_large = false;
};

// Pulled by the codec when it may send DATA for a stream.
using Fields = std::vector<std::pair<std::string, std::string>>;

struct BodyChunk {
  size_t n = 0;                      // bytes copied
  bool deferred = false;             // nothing now: call resume() when there is
  bool eof = false;                  // the body ends with these bytes
  const Fields* trailers = nullptr;  // with eof: sent as a trailing HEADERS frame when non-empty
};

class ServerCodec {
 public:
  struct Handler {
    virtual ~Handler() = default;
    // A complete request head. end_stream: no body follows.
    virtual void onRequest(int32_t stream, Request& req, bool end_stream) = 0;
    virtual void onData(int32_t stream, std::string_view data) = 0;
    virtual void onEndStream(int32_t stream) = 0;  // the request body is complete
    // The stream is gone (finished, reset by the client, or refused); error: the RST/GOAWAY code.
    virtual void onClose(int32_t stream, uint32_t error) = 0;
    // Response body bytes into buf; may submit trailers with submitTrailers() before saying eof.
    virtual BodyChunk readBody(int32_t stream, uint8_t* buf, size_t len) = 0;
  };

  ServerCodec(const config::Http2& limits, Handler& handler);
  ~ServerCodec();
  ServerCodec(const ServerCodec&) = delete;
  ServerCodec& operator=(const ServerCodec&) = delete;

  // Processes client bytes. false: the connection must be closed once takeOutput() is flushed.
  bool feed(std::string_view in);
  // Appends every frame ready to send to out. May find a flood (flooded() turns true: the
  // resets sent for client protocol errors are counted as they go out); the GOAWAY is then in out.
  void takeOutput(std::string& out);
  bool wantsIo() const;  // false: both sides are done (GOAWAY exchanged, no stream left)

  // Responses. headers: lower-case names, no connection-specific fields. has_body=false ends the stream.
  // headers_outlive: the caller keeps `headers` (names and values) unchanged until the stream is
  // closed (onClose) or the codec is destroyed; nghttp2 then packs the HEADERS frame straight from
  // them instead of copying every name and value first (NGHTTP2_NV_FLAG_NO_COPY_*).
  bool submitResponse(int32_t stream, int status, const Fields& headers, bool has_body,
                      bool headers_outlive = false);
  void resume(int32_t stream);                   // more body is ready
  void reset(int32_t stream, uint32_t error);    // RST_STREAM
  void consume(int32_t stream, size_t n);        // request body bytes handed on: window back to the client
  void goaway(bool graceful);                    // graceful: in-flight streams finish
  bool flooded() const { return flooded_; }
  const char* floodReason() const { return flood_reason_; }

 private:
  struct Rate {
    int64_t window_start_ns = 0;
    uint32_t count = 0;
    bool hit(uint32_t limit, int64_t now_ns);  // counts one; true when over limit in this second
  };
  static int onBeginFrame(nghttp2_session*, const nghttp2_frame_hd* hd, void* self);
  static int onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t flags, void* self);
  static int onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int onDataChunk(nghttp2_session*, uint8_t flags, int32_t stream, const uint8_t* data, size_t len,
                         void* self);
  static int onStreamClose(nghttp2_session*, int32_t stream, uint32_t error, void* self);
  static int onFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static ssize_t readCallback(nghttp2_session*, int32_t stream, uint8_t* buf, size_t len, uint32_t* flags,
                              nghttp2_data_source* source, void* self);
  void calm(const char* reason);

  config::Http2 limits_;
  Handler& handler_;
  nghttp2_session* session_ = nullptr;
  // The request head being received. Header blocks never interleave (RFC 9113 §4.3: a HEADERS
  // frame and its CONTINUATIONs are contiguous), so one slot is enough; 0: none.
  int32_t pending_id_ = 0;
  Request pending_;
  int32_t continuation_stream_ = 0;
  uint32_t continuations_ = 0;
  Rate resets_, control_;
  bool flooded_ = false;
  const char* flood_reason_ = "";
};

}  // namespace marchproxy::proxy::h2
