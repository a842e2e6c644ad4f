#pragma once
// Request-field validation: each check throws ApiError 422 naming the field and the reason.
// Also used by the fuzz target (tests/fuzz/manager_json_fuzz.cc) through decodeResource().
#include <string>

#include "manager/http/message.h"

namespace marchproxy::manager::api::validate {

using http::Json;

void name(const Json& v, const std::string& field);         // [A-Za-z0-9][A-Za-z0-9._-]{0,63}
void text(const Json& v, const std::string& field, std::size_t max);  // any UTF-8 but NUL, bounded
void hostOrIp(const Json& v, const std::string& field);     // IPv4/IPv6 address, CIDR, or FQDN
void hostPattern(const Json& v, const std::string& field);  // FQDN or "*.example.com"
void hostPort(const Json& v, const std::string& field);     // "host:port" / "[v6]:port"
void syslogEndpoint(const Json& v, const std::string& field);  // "" or host:port
void port(const Json& v, const std::string& field);         // 1..65535 or "a-b"
void cidr(const Json& v, const std::string& field);
bool isIp(const std::string& s);
bool isFqdn(const std::string& s);
[[noreturn]] void fail(const std::string& field, const std::string& reason);

}  // namespace marchproxy::manager::api::validate
