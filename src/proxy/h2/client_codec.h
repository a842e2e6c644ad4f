#pragma once
// ClientCodec: the client side of one HTTP/2 connection to an upstream as a pure byte-in/byte-out
// state machine over nghttp2 (no sockets, no coroutines; fuzzed by tests/fuzz/h2_client_fuzz.cc).
// The mirror of ServerCodec: the caller submits request heads, the codec pulls request bodies
// (and their trailers) through Handler::readBody, and hands back response heads, body bytes,
// trailers and the close of every stream.
//
// Rules on top of nghttp2's own RFC 9113 checks (invalid response fields, pseudo-headers,
// content-length mismatch: stream error PROTOCOL_ERROR, reported through onClose):
//   - response heads and trailers over config::Http2::max_header_list_bytes (decoded, the limit we
//     advertise in SETTINGS): the stream is reset with PROTOCOL_ERROR.
//   - 1xx informational heads are skipped; the final head is reported once, later HEADERS are trailers.
//   - response bodies: the window is given back only when the application calls consume(), so a
//     slow client slows the upstream down (no unbounded buffering).
//   - SETTINGS/PING floods from the upstream: over max_control_frames_per_second, GOAWAY
//     ENHANCE_YOUR_CALM and feed() returns false.
//   - GOAWAY from the upstream: no new stream may start (canOpenStream() is false); streams above
//     its last_stream_id, streams refused with REFUSED_STREAM and requests never sent are closed
//     with retryable=true: the upstream did not process them, they may go to a new connection.
//
// Threading: one worker thread. Callbacks into Handler run inside feed(), takeOutput() and the
// submit/reset calls.
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>

#include <nghttp2/nghttp2.h>

#include "config/model.h"
#include "proxy/h2/server_codec.h"  // Request, Fields, BodyChunk

namespace marchproxy::proxy::h2 {

class ClientCodec {
 public:
  struct Handler {
    virtual ~Handler() = default;
    // The final response head. end_stream: no body follows.
    virtual void onResponse(int32_t stream, int status, Fields& headers, bool end_stream) = 0;
    virtual void onData(int32_t stream, std::string_view data) = 0;  // call consume() once handed on
    virtual void onTrailers(int32_t stream, Fields& trailers) = 0;   // the response ends with them
    virtual void onEndStream(int32_t stream) = 0;                    // the response is complete
    // The stream is gone (finished, reset, refused). error: the RST/GOAWAY code (0 = done).
    // retryable: the upstream did not process the request; it may be sent again elsewhere.
    virtual void onClose(int32_t stream, uint32_t error, bool retryable) = 0;
    // Request body bytes into buf (see BodyChunk); eof with trailers sends a trailing HEADERS.
    virtual BodyChunk readBody(int32_t stream, uint8_t* buf, size_t len) = 0;
    virtual void onGoaway(int32_t /*last_stream_id*/, uint32_t /*error*/) {}
  };

  ClientCodec(const config::Http2& limits, Handler& handler);
  ~ClientCodec();
  ClientCodec(const ClientCodec&) = delete;
  ClientCodec& operator=(const ClientCodec&) = delete;

  // Processes upstream bytes. false: the connection must be closed once takeOutput() is flushed,
  // then abortAll() closes the streams still open.
  bool feed(std::string_view in);
  // Appends every frame ready to send (the first call includes the connection preface).
  void takeOutput(std::string& out);
  bool wantsIo() const;  // false: both sides are done

  // A new stream: head.method/scheme/authority/path and lower-case regular fields with no
  // connection-specific ones. has_body=false ends the stream with the head. Returns the stream
  // id, or -1 when no stream may start (GOAWAY received, ids exhausted, invalid head).
  int32_t submitRequest(const Request& head, bool has_body);
  void resume(int32_t stream);                 // more request body is ready
  void reset(int32_t stream, uint32_t error);  // RST_STREAM; onClose follows
  void consume(int32_t stream, size_t n);      // response body bytes handed on: window back
  void goaway();                               // graceful: in-flight streams finish, no new ones

  // Capacity: a stream may start now without queueing behind the peer's concurrency limit.
  bool canOpenStream() const;
  bool goawayReceived() const { return goaway_received_; }
  uint32_t peerMaxConcurrentStreams() const;
  size_t openStreams() const { return streams_.size(); }
  bool flooded() const { return flooded_; }

  // Closes every stream still open (the connection is gone): onClose(error, retryable) where
  // retryable holds for streams never sent or refused, not for ones the upstream may have seen.
  void abortAll(uint32_t error);

 private:
  struct Stream {
    int status = 0;
    Fields headers;  // the head (or trailers) being received
    uint64_t header_bytes = 0;
    bool final_seen = false;  // the final head was reported; later HEADERS are trailers
    bool sent = false;        // the request HEADERS left the codec
    bool closed = false;
  };
  static int onBeginFrame(nghttp2_session*, const nghttp2_frame_hd* hd, void* self);
  static int onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int onHeader(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                      const uint8_t* value, size_t valuelen, uint8_t flags, void* self);
  static int onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int onFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* self);
  static int onFrameNotSend(nghttp2_session*, const nghttp2_frame* frame, int error, void* self);
  static int onDataChunk(nghttp2_session*, uint8_t flags, int32_t stream, const uint8_t* data, size_t len,
                         void* self);
  static int onStreamClose(nghttp2_session*, int32_t stream, uint32_t error, void* self);
  static ssize_t readCallback(nghttp2_session*, int32_t stream, uint8_t* buf, size_t len, uint32_t* flags,
                              nghttp2_data_source* source, void* self);
  void finish(int32_t stream, uint32_t error, bool retryable);
  void calm(const char* reason);

  config::Http2 limits_;
  Handler& handler_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, Stream> streams_;
  bool goaway_received_ = false;
  bool goaway_sent_ = false;
  int32_t goaway_last_id_ = 0;
  int64_t control_window_start_ns_ = 0;
  uint32_t control_count_ = 0;
  bool flooded_ = false;
};

}  // namespace marchproxy::proxy::h2
