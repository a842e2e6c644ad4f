#include "proxy/h2/server_codec.h"

#include "proxy/h2/nghttp2_mem.h"

#include <algorithm>
#include <array>
#include <chrono>

namespace marchproxy::proxy::h2 {
namespace {

constexpr int32_t kConnectionWindow = 1 << 20;
constexpr size_t kMaxOutputPerTake = 256 * 1024;

int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

ServerCodec* self(void* p) { return static_cast<ServerCodec*>(p); }

bool edgeWhitespace(std::string_view v) {
  return !v.empty() && (v.front() == ' ' || v.front() == '\t' || v.back() == ' ' || v.back() == '\t');
}

}  // namespace

bool ServerCodec::Rate::hit(uint32_t limit, int64_t now_ns) {
  if (now_ns - window_start_ns >= 1'000'000'000) {
    window_start_ns = now_ns;
    count = 0;
  }
  return ++count > limit;
}

ServerCodec::ServerCodec(const config::Http2& limits, Handler& handler) : limits_(limits), handler_(handler) {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_session_callbacks_new(&cb);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cb, &ServerCodec::onBeginFrame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cb, &ServerCodec::onBeginHeaders);
  nghttp2_session_callbacks_set_on_header_callback(cb, &ServerCodec::onHeader);
  // An invalid regular field (bad name character, CR/LF/NUL or edge whitespace in the value) is a
  // stream error PROTOCOL_ERROR, never a silently dropped field: what the upstream sees is what
  // was sent.
  nghttp2_session_callbacks_set_on_invalid_header_callback(
      cb, [](nghttp2_session*, const nghttp2_frame*, const uint8_t*, size_t, const uint8_t*, size_t, uint8_t,
             void*) { return static_cast<int>(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE); });
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, &ServerCodec::onFrameRecv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, &ServerCodec::onDataChunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, &ServerCodec::onStreamClose);
  nghttp2_session_callbacks_set_on_frame_send_callback(cb, &ServerCodec::onFrameSend);
  nghttp2_option* opt = nullptr;
  nghttp2_option_new(&opt);
  nghttp2_option_set_no_auto_window_update(opt, 1);  // the window follows what the upstream took
  // Our own limits (config::Http2) answer floods first, with ENHANCE_YOUR_CALM; the library's
  // built-in ones (Debian backports) stay as a looser backstop.
  nghttp2_option_set_max_continuations(opt, limits_.max_continuation_frames + 1);
  nghttp2_option_set_stream_reset_rate_limit(opt, uint64_t{limits_.max_resets_per_second} * 4,
                                             uint64_t{limits_.max_resets_per_second} * 2);
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
  nghttp2_session_server_new3(&session_, cb, this, opt, pooledNghttp2Mem());
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cb);

  const nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, limits_.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, limits_.initial_stream_window},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, limits_.max_frame_size},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, limits_.max_header_list_bytes},
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      // RFC 8441: WebSocket over a stream (:method CONNECT + :protocol). nghttp2 accepts
      // :protocol only once this is submitted, and then checks the pseudo-headers of the request.
      {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, kConnectionWindow);
}

ServerCodec::~ServerCodec() { nghttp2_session_del(session_); }

void ServerCodec::calm(const char* reason) {
  if (flooded_) return;
  flooded_ = true;
  flood_reason_ = reason;
  nghttp2_session_terminate_session(session_, NGHTTP2_ENHANCE_YOUR_CALM);
}

bool ServerCodec::feed(std::string_view in) {
  if (flooded_) return false;
  const ssize_t n = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(in.data()), in.size());
  if (n < 0) {
    // Fatal (a connection error nghttp2 already answered with GOAWAY, or a flood we stopped).
    if (!flooded_) nghttp2_session_terminate_session(session_, NGHTTP2_PROTOCOL_ERROR);
    return false;
  }
  return !flooded_;
}

void ServerCodec::takeOutput(std::string& out) {
  const size_t start = out.size();
  while (out.size() - start < kMaxOutputPerTake) {
    const uint8_t* data = nullptr;
    const ssize_t n = nghttp2_session_mem_send(session_, &data);
    if (n <= 0) break;
    out.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
  }
}

bool ServerCodec::wantsIo() const {
  return nghttp2_session_want_read(session_) || nghttp2_session_want_write(session_);
}

bool ServerCodec::submitResponse(int32_t stream, int status, const Fields& headers, bool has_body,
                                 bool headers_outlive) {
  // The nghttp2_nv array is on the stack for a usual response; nghttp2 copies it (and, unless
  // headers_outlive, every name and value) before returning.
  std::array<nghttp2_nv, 24> small;
  std::vector<nghttp2_nv> large;
  nghttp2_nv* nv = small.data();
  if (headers.size() + 1 > small.size()) {
    large.resize(headers.size() + 1);
    nv = large.data();
  }
  size_t count = 0;
  // ":status" and its value are static: never copied.
  static const std::array<char, 3 * 1000> kCodes = [] {
    std::array<char, 3 * 1000> a{};
    for (int i = 0; i < 1000; ++i) {
      a[static_cast<size_t>(i) * 3] = static_cast<char>('0' + i / 100);
      a[static_cast<size_t>(i) * 3 + 1] = static_cast<char>('0' + i / 10 % 10);
      a[static_cast<size_t>(i) * 3 + 2] = static_cast<char>('0' + i % 10);
    }
    return a;
  }();
  const int code = status >= 100 && status <= 999 ? status : 500;
  auto mk = [](std::string_view n, std::string_view v, uint8_t flags) {
    return nghttp2_nv{reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(), flags};
  };
  nv[count++] = mk(":status", std::string_view(kCodes.data() + static_cast<size_t>(code) * 3, 3),
                   NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE);
  const uint8_t flags = headers_outlive ? NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE : NGHTTP2_NV_FLAG_NONE;
  for (const auto& [n, v] : headers) nv[count++] = mk(n, v, flags);
  nghttp2_data_provider prd{};
  prd.read_callback = &ServerCodec::readCallback;
  return nghttp2_submit_response(session_, stream, nv, count, has_body ? &prd : nullptr) == 0;
}

void ServerCodec::resume(int32_t stream) { nghttp2_session_resume_data(session_, stream); }

void ServerCodec::reset(int32_t stream, uint32_t error) {
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream, error);
}

void ServerCodec::consume(int32_t stream, size_t n) { nghttp2_session_consume(session_, stream, n); }

void ServerCodec::goaway(bool graceful) {
  if (graceful) {
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(session_),
                          NGHTTP2_NO_ERROR, nullptr, 0);
  } else {
    nghttp2_session_terminate_session(session_, NGHTTP2_NO_ERROR);
  }
}

int ServerCodec::onBeginFrame(nghttp2_session*, const nghttp2_frame_hd* hd, void* p) {
  ServerCodec& c = *self(p);
  // The clock is read only for the frames that are rate-limited, not for every HEADERS or DATA.
  const auto now = [] { return nowNs(); };
  const uint32_t control = c.limits_.max_control_frames_per_second;
  switch (hd->type) {
    case NGHTTP2_HEADERS:
      c.continuation_stream_ = (hd->flags & NGHTTP2_FLAG_END_HEADERS) ? 0 : hd->stream_id;
      c.continuations_ = 0;
      break;
    case NGHTTP2_CONTINUATION:
      if (++c.continuations_ > c.limits_.max_continuation_frames) {
        c.calm("CONTINUATION flood");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      break;
    case NGHTTP2_RST_STREAM:
      if (c.resets_.hit(c.limits_.max_resets_per_second, now())) {
        c.calm("RST_STREAM flood (rapid reset)");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      break;
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
      if (!(hd->flags & NGHTTP2_FLAG_ACK) && c.control_.hit(control, now())) {
        c.calm(hd->type == NGHTTP2_PING ? "PING flood" : "SETTINGS flood");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      break;
    case NGHTTP2_PRIORITY:
      if (c.control_.hit(control, now())) {
        c.calm("PRIORITY flood");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      break;
    case NGHTTP2_DATA:
      if (hd->length == 0 && !(hd->flags & NGHTTP2_FLAG_END_STREAM) && c.control_.hit(control, now())) {
        c.calm("empty DATA flood");
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
      break;
    default:
      break;
  }
  return 0;
}

int ServerCodec::onBeginHeaders(nghttp2_session*, const nghttp2_frame* frame, void* p) {
  ServerCodec& c = *self(p);
  if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
    c.pending_id_ = frame->hd.stream_id;
    c.pending_ = Request{};
    c.pending_.headers.reserve(8);  // one allocation for a usual request's fields, not one per doubling
  }
  return 0;
}

int ServerCodec::onHeader(nghttp2_session* s, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
                          const uint8_t* value, size_t valuelen, uint8_t, void* p) {
  ServerCodec& c = *self(p);
  if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;  // trailers: dropped
  if (frame->hd.stream_id != c.pending_id_) return 0;
  Request& r = c.pending_;
  r.header_bytes += namelen + valuelen + 32;
  if (r.header_bytes > c.limits_.max_header_list_bytes) {
    r.too_large = true;  // keep decoding (HPACK state), store nothing more; answered 431
    r.headers.clear();
    return 0;
  }
  if (r.too_large) return 0;
  const std::string_view n(reinterpret_cast<const char*>(name), namelen);
  const std::string_view v(reinterpret_cast<const char*>(value), valuelen);
  // nghttp2 1.52 checks RFC 9113 §8.2.1 whitespace itself; kept here so the rule does not depend
  // on a library option.
  if (edgeWhitespace(v)) {
    nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, frame->hd.stream_id, NGHTTP2_PROTOCOL_ERROR);
    return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
  }
  if (n == ":method") r.method = v;
  else if (n == ":scheme") r.scheme = v;
  else if (n == ":authority") r.authority = v;
  else if (n == ":path") r.path = v;
  else if (n == ":protocol") r.protocol = v;
  else if (!n.empty() && n[0] != ':') r.headers.emplace_back(n, v);
  return 0;
}

int ServerCodec::onFrameRecv(nghttp2_session*, const nghttp2_frame* frame, void* p) {
  ServerCodec& c = *self(p);
  const int32_t id = frame->hd.stream_id;
  const bool end = frame->hd.flags & NGHTTP2_FLAG_END_STREAM;
  switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
      c.continuation_stream_ = 0;
      if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        if (id != c.pending_id_) return 0;
        c.pending_id_ = 0;
        Request req = std::move(c.pending_);
        if (req.too_large) {
          c.submitResponse(id, 431, {{"content-length", "0"}}, false);
          return 0;
        }
        c.handler_.onRequest(id, req, end);
      } else if (end) {
        c.handler_.onEndStream(id);  // request trailers end the body (their fields are dropped)
      }
      break;
    }
    case NGHTTP2_DATA:
      if (end) c.handler_.onEndStream(id);
      break;
    default:
      break;
  }
  return 0;
}

int ServerCodec::onDataChunk(nghttp2_session*, uint8_t, int32_t stream, const uint8_t* data, size_t len, void* p) {
  self(p)->handler_.onData(stream, std::string_view(reinterpret_cast<const char*>(data), len));
  return 0;
}

int ServerCodec::onStreamClose(nghttp2_session*, int32_t stream, uint32_t error, void* p) {
  ServerCodec& c = *self(p);
  if (c.pending_id_ == stream) c.pending_id_ = 0;
  c.handler_.onClose(stream, error);
  return 0;
}

// "MadeYouReset" (CVE-2025-8671): a client that makes the server reset streams (a bad field, DATA
// beyond content-length, WINDOW_UPDATE 0 on a stream, DATA on a half-closed stream...) cancels work
// as cheaply as one that resets them itself, without sending a single RST_STREAM. Those resets use
// the rapid-reset budget too. The proxy's own resets (INTERNAL_ERROR for a truncated upstream
// body, CANCEL for a stalled stream) and REFUSED_STREAM are not the client's doing here.
int ServerCodec::onFrameSend(nghttp2_session*, const nghttp2_frame* frame, void* p) {
  ServerCodec& c = *self(p);
  if (frame->hd.type != NGHTTP2_RST_STREAM) return 0;
  switch (frame->rst_stream.error_code) {
    case NGHTTP2_PROTOCOL_ERROR:
    case NGHTTP2_FLOW_CONTROL_ERROR:
    case NGHTTP2_STREAM_CLOSED:
    case NGHTTP2_FRAME_SIZE_ERROR:
      if (c.resets_.hit(c.limits_.max_resets_per_second, nowNs())) c.calm("stream errors provoked by the client (MadeYouReset)");
      break;
    default:
      break;
  }
  return 0;
}

ssize_t ServerCodec::readCallback(nghttp2_session* s, int32_t stream, uint8_t* buf, size_t len, uint32_t* flags,
                                  nghttp2_data_source*, void* p) {
  ServerCodec& c = *self(p);
  BodyChunk b = c.handler_.readBody(stream, buf, len);
  if (b.deferred && b.n == 0 && !b.eof) return NGHTTP2_ERR_DEFERRED;
  if (b.eof) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (b.trailers && !b.trailers->empty()) {
      std::vector<nghttp2_nv> nv;
      for (const auto& [n, v] : *b.trailers)
        nv.push_back({reinterpret_cast<uint8_t*>(const_cast<char*>(n.data())),
                      reinterpret_cast<uint8_t*>(const_cast<char*>(v.data())), n.size(), v.size(),
                      NGHTTP2_NV_FLAG_NONE});
      if (nghttp2_submit_trailer(s, stream, nv.data(), nv.size()) == 0) *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
  }
  return static_cast<ssize_t>(b.n);
}

}  // namespace marchproxy::proxy::h2
