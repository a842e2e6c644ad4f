#include "manager/http/message.h"

namespace marchproxy::manager::http {

const char* reasonPhrase(int status) {
  switch (status) {
    case 200: return "OK";
    case 201: return "Created";
    case 204: return "No Content";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 409: return "Conflict";
    case 411: return "Length Required";
    case 412: return "Precondition Failed";
    case 413: return "Content Too Large";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 426: return "Upgrade Required";
    case 428: return "Precondition Required";
    case 429: return "Too Many Requests";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Unknown";
  }
}

Response problem(const ApiError& e, const std::string& instance) {
  Json j = {{"type", "https://marchproxy.dev/problems/" + e.type},
            {"title", reasonPhrase(e.status)},
            {"status", e.status},
            {"detail", e.detail},
            {"instance", instance}};
  if (!e.field.empty()) j["field"] = e.field;
  Response r = Response::json(e.status, j);
  r.content_type = "application/problem+json";
  r.headers = e.headers;
  return r;
}

}  // namespace marchproxy::manager::http
