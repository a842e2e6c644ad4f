#include "proxy/h2/client_codec.h"

#include <algorithm>
#include <chrono>
#include <vector>

#include "proxy/h2/nghttp2_mem.h"

namespace marchproxy::proxy::h2 {
namespace {

constexpr int32_t kConnectionWindow = 1 << 20;
constexpr size_t kMaxOutputPerTake = 256 * 1024;

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

ClientCodec* self(void* p) { return static_cast<ClientCodec*>(p); }

nghttp2_nv nv(std::string_view n, std::string_view v) {
  return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                    reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(), NGHTTP2_NV_FLAG_NONE};
}

}  // namespace

ClientCodec::ClientCodec(const config::Http2& limits, Handler& handler) : limits_(limits), handler_(handler) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cb, &ClientCodec::onBeginFrame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, &ClientCodec::onBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(cb, &ClientCodec::onHeader);
  // An invalid response field is a stream error, never a silently dropped field.
  nghttp2_session_callbacks_set_on_invalid_header_callback(
      cb, [](nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t, const uint8_t*, size_t, uint8_t,
             void*) { return static_cast<int>(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE); });
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &ClientCodec::onFrameRecv);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, &ClientCodec::onFrameSend);
  nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, &ClientCodec::onFrameNotSend);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &ClientCodec::onDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, &ClientCodec::onStreamClose);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);  // the window follows what the client took
  nghttp2_option_set_max_continuations(opt, limits_.max_continuation_frames + 1);
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
  nghttp2_session_client_new3(&session_, cb, this, opt, pooledNghttp2Mem());
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);

  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits_.initial_stream_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, limits_.max_frame_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits_.max_header_list_bytes},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
}

ClientCodec::~ClientCodec() { nghttp2_session_del(session_); }

void ClientCodec::calm(const char*) {
  if (flooded_) return;
  flooded_ = true;
  nghttp2_session_terminate_session(session_, NGHTTP2_ENHANCE_YOUR_CALM);
}

bool ClientCodec::feed(std::string_view in) {
  if (flooded_) return false;
  const ssize_t n = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(in.data()), in.size());
  if (n < 0) {
    if (!flooded_) nghttp2_session_terminate_session(session_, NGHTTP2_PROTOCOL_ERROR);
    return false;
  }
  // A connection error nghttp2 answered itself (GOAWAY queued) leaves nothing more to read.
  return !flooded_ && nghttp2_session_want_read(session_);
}

void ClientCodec::takeOutput(std::string& out) {
  const size_t start = out.size();
  while (out.size() - start < kMaxOutputPerTake) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n <= 0) break;
    out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
}

bool ClientCodec::wantsIo() const {
  return nghttp2_session_want_read(session_) || nghttp2_session_want_write(session_);
}

int32_t ClientCodec::submitRequest(const Request& head, bool has_body) {
  if (goaway_received_ || goaway_sent_ || flooded_) return -1;
  std::vector<nghttp2_nv> v;
  v.reserve(head.headers.size() + 4);
  v.push_back(nv(":method", head.method));
  v.push_back(nv(":scheme", head.scheme));
  if (!head.authority.empty()) v.push_back(nv(":authority", head.authority));
  v.push_back(nv(":path", head.path));
  for (const auto& [n, val] : head.headers) v.push_back(nv(n, val));
  nghttp2_data_provider prd{};
  prd.read_callback = &ClientCodec::readCallback;
  const int32_t id =
      nghttp2_submit_request(session_, nullptr, v.data(), v.size(), has_body ? &prd : nullptr, nullptr);
  if (id <= 0) return -1;
  streams_[id] = Stream{};
  return id;
}

void ClientCodec::resume(int32_t stream) { nghttp2_session_resume_data(session_, stream); }

void ClientCodec::reset(int32_t stream, uint32_t error) {
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream, error);
}

void ClientCodec::consume(int32_t stream, size_t n) { nghttp2_session_consume(session_, stream, n); }

void ClientCodec::goaway() {
  if (goaway_sent_) return;
  goaway_sent_ = true;
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, nullptr, 0);  // no pushed streams
}

uint32_t ClientCodec::peerMaxConcurrentStreams() const {
  return std::min(nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS),
                  limits_.max_concurrent_streams);
}

bool ClientCodec::canOpenStream() const {
  return !goaway_received_ && !goaway_sent_ && !flooded_ && streams_.size() < peerMaxConcurrentStreams() &&
         nghttp2_session_get_next_stream_id(session_) <= 0x7fffffffu;
}

void ClientCodec::abortAll(uint32_t error) {
  std::vector<std::pair<int32_t, bool>> open;
  open.reserve(streams_.size());
  for (const auto& [id, s] : streams_) open.emplace_back(id, !s.sent);
  std::sort(open.begin(), open.end());
  for (const auto& [id, never_sent] : open) finish(id, never_sent ? uint32_t{NGHTTP2_REFUSED_STREAM} : error, never_sent);
}

void ClientCodec::finish(int32_t stream, uint32_t error, bool retryable) {
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;  // reported already (or never ours)
  streams_.erase(it);
  handler_.onClose(stream, error, retryable);
}

int ClientCodec::onBeginFrame(nghttp2_session*, const nghttp2_frame_hd* hd, void* p) {
  ClientCodec& c = *self(p);
  if ((hd->type == NGHTTP2_SETTINGS || hd->type == NGHTTP2_PING) && !(hd->flags & NGHTTP2_FLAG_ACK)) {
    const int64_t now = nowNs();
    if (now - c.control_window_start_ns_ >= 1'000'000'000) {
      c.control_window_start_ns_ = now;
      c.control_count_ = 0;
    }
    if (++c.control_count_ > c.limits_.max_control_frames_per_second) {
      c.calm(hd->type == NGHTTP2_PING ? "PING flood" : "SETTINGS flood");
      return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
  }
  return 0;
}

int ClientCodec::onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* p) {
  ClientCodec& c = *self(p);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  auto it = c.streams_.find(frame->hd.stream_id);
  if (it == c.streams_.end()) return 0;
  it->second.status = 0;
  it->second.headers.clear();
  it->second.header_bytes = 0;
  return 0;
}

int ClientCodec::onHeader(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                          const uint8_t* value, size_t valuelen, uint8_t, void* p) {
  ClientCodec& c = *self(p);
  if (frame->hd.type != NGHTTP2_HEADERS) return 0;
  auto it = c.streams_.find(frame->hd.stream_id);
  if (it == c.streams_.end()) return 0;
  Stream& st = it->second;
  st.header_bytes += namelen + valuelen + 32;
  if (st.header_bytes > c.limits_.max_header_list_bytes) {
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_PROTOCOL_ERROR);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  const std::string_view n(reinterpret_cast<const char*>(name), namelen);
  const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  if (n == ":status") {
    int code = 0;
    for (char ch : v) code = code * 10 + (ch - '0');  // nghttp2 checked: three digits
    if (code < 100) {
      // nghttp2 lets "000".."099" through as a final status; like the HTTP/1.1 parser (a status
      // code starts with 1-9) this is a malformed response, so the stream fails with a 502.
      nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_PROTOCOL_ERROR);
      return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    st.status = code;
  } else if (!n.empty() && n[0] != ':') {
    st.headers.emplace_back(n, v);
  }
  return 0;
}

int ClientCodec::onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* p) {
  ClientCodec& c = *self(p);
  const int32_t id = frame->hd.stream_id;
  const bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      auto it = c.streams_.find(id);
      if (it == c.streams_.end()) return 0;
      Stream& st = it->second;
      if (!st.final_seen) {
        if (st.status >= 100 && st.status < 200) return 0;  // informational: the final head follows
        st.final_seen = true;
        c.handler_.onResponse(id, st.status, st.headers, end);
      } else {
        c.handler_.onTrailers(id, st.headers);  // nghttp2 requires END_STREAM on trailers
        c.handler_.onEndStream(id);
      }
      st.headers.clear();
      break;
    }
    case NGHTTP2_DATA:
      if (end && c.streams_.count(id)) c.handler_.onEndStream(id);
      break;
    case NGHTTP2_GOAWAY:
      // nghttp2 closes the streams above last_stream_id (REFUSED_STREAM) right after this.
      c.goaway_received_ = true;
      c.goaway_last_id_ = frame->goaway.last_stream_id;
      c.handler_.onGoaway(frame->goaway.last_stream_id, frame->goaway.error_code);
      break;
    default:
      break;
  }
  return 0;
}

int ClientCodec::onFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* p) {
  ClientCodec& c = *self(p);
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    auto it = c.streams_.find(frame->hd.stream_id);
    if (it != c.streams_.end()) it->second.sent = true;
  }
  return 0;
}

int ClientCodec::onFrameNotSend(nghttp2_session*, const nghttp2_frame* frame, int error, void* p) {
  ClientCodec& c = *self(p);
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    // The request never left: after a GOAWAY it may go elsewhere; cancelled by reset() it is done.
    if (error == NGHTTP2_ERR_STREAM_CLOSING)
      c.finish(frame->hd.stream_id, NGHTTP2_CANCEL, false);
    else
      c.finish(frame->hd.stream_id, NGHTTP2_REFUSED_STREAM, true);
  }
  return 0;
}

int ClientCodec::onDataChunk(nghttp2_session* s, uint8_t, int32_t stream, const uint8_t* data, size_t len,
                             void* p) {
  ClientCodec& c = *self(p);
  if (!c.streams_.count(stream)) {
    nghttp2_session_consume(s, stream, len);  // nobody will: keep the connection window open
    return 0;
  }
  c.handler_.onData(stream, std::string_view(reinterpret_cast<const char*>(data), len));
  return 0;
}

int ClientCodec::onStreamClose(nghttp2_session*, int32_t stream, uint32_t error, void* p) {
  ClientCodec& c = *self(p);
  auto it = c.streams_.find(stream);
  if (it == c.streams_.end()) return 0;
  const bool unprocessed =
      error == NGHTTP2_REFUSED_STREAM || (c.goaway_received_ && stream > c.goaway_last_id_);
  c.finish(stream, error, unprocessed && !it->second.final_seen);
  return 0;
}

ssize_t ClientCodec::readCallback(nghttp2_session* s, int32_t stream, uint8_t* buf, size_t len, uint32_t* flags,
                                  nghttp2_data_source*, void* p) {
  ClientCodec& c = *self(p);
  if (!c.streams_.count(stream)) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  BodyChunk b = c.handler_.readBody(stream, buf, len);
  if (b.deferred && b.n == 0 && !b.eof) return NGHTTP2_ERR_DEFERRED;
  if (b.eof) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (b.trailers && !b.trailers->empty()) {
      std::vector<nghttp2_nv> v;
      v.reserve(b.trailers->size());
      for (const auto& [n, val] : *b.trailers) v.push_back(nv(n, val));
      if (nghttp2_submit_trailer(s, stream, v.data(), v.size()) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
  }
  return static_cast<ssize_t>(b.n);
}

}  // namespace marchproxy::proxy::h2
