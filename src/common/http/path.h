#pragma once
// Request-path normalisation before routing (RFC 3986 §6.2.2): routes, and the upstream, must see
// one spelling of a path, or a rule for "/admin" is bypassed with "/%61dmin" or "/x/../admin".
//  - percent-encoded unreserved characters (ALPHA DIGIT - . _ ~) are decoded; other escapes are kept
//    with upper-case hex; a '%' not followed by two hex digits is invalid (400);
//  - dot segments ("." and "..") are removed (§5.2.4), after that decoding, so "%2e%2e" counts;
//  - encoded slashes ("%2F") stay encoded: decoding them would change which segments exist.
#include <string>
#include <string_view>

namespace marchproxy::http {

enum class PathNormalization { kUnchanged, kNormalized, kInvalid };

// `path` is an origin-form path without the query. On kNormalized the result is in *out.
PathNormalization normalizePath(std::string_view path, std::string* out);

}  // namespace marchproxy::http
