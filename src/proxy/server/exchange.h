#pragma once
// Exchange: the scratch state of one request/response exchange (parsed heads, upstream read
// buffer, head serialisation buffer, log fields). A session borrows one from its worker when a
// request starts arriving and gives it back when the connection goes idle, so an idle keep-alive
// connection holds only its socket and a small read buffer, and busy ones reuse warm allocations
// instead of calling malloc per request. Owned by one worker thread.
#include <string>
#include <string_view>
#include <vector>

#include "common/base/buffer.h"
#include "common/http/h1_parser.h"

namespace marchproxy::proxy::server {

struct Exchange {
  Buffer ubuf{16 * 1024};  // upstream bytes: response heads and body
  std::string wbuf;        // heads being written to the client
  std::string up_head;
  std::string norm_path;   // the request path after normalisation, when it changed     // the request head for the upstream (kept for retries)
  http::RequestHead req;
  http::ResponseHead resp;
  http::ChunkedDecoder chunks;
  std::vector<std::string_view> pieces;
  std::string request_id;  // the client's X-Request-Id when sane, else generated
  std::string log_method, log_host, log_path, log_upstream;
};

}  // namespace marchproxy::proxy::server
