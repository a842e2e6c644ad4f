// Fuzzes the manager's request decoding and validation: JSON bodies for every resource (create and
// update) and request-target query strings. Never crashes; every refusal is a 400/422 ApiError with
// a detail; a refusal that names a field names one the body has or one the resource requires; an
// accepted body is accepted again (validation is deterministic and has no hidden state).
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>

#include "manager/api/resources.h"
#include "manager/http/server.h"

namespace {

const char* const kResources[] = {"clusters", "services", "mappings", "routes", "certificates"};

bool validates(const std::string& res, const nlohmann::json& body, bool create) {
  try {
    marchproxy::manager::api::validateResourceBody(res, body, create);
    return true;
  } catch (const marchproxy::manager::http::ApiError& e) {
    if ((e.status != 400 && e.status != 422) || e.detail.empty()) std::abort();
    if (!e.field.empty() && body.is_object()) {
      std::string top = e.field.substr(0, e.field.find_first_of(".["));
      bool known = body.contains(e.field) || body.contains(top) || top == "name" || top == "cluster_id" || top == "ip_fqdn" ||
                   top == "destination_services" || top == "protocols" || top == "hosts" || top == "backends" ||
                   top == "cert_pem" || top == "key_pem" || top == "source_services" || top == "ports";
      if (!known) std::abort();
    }
    return false;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string in(reinterpret_cast<const char*>(data) + 1, size - 1);
  const std::string res = kResources[data[0] % 5];
  const bool create = (data[0] / 5) % 2 == 0;
  if (data[0] >= 250) {
    std::map<std::string, std::string> q;
    std::string decoded;
    marchproxy::manager::http::parseQuery(in, q);
    marchproxy::manager::http::percentDecode(in, decoded);
    return 0;
  }
  auto body = nlohmann::json::parse(in, nullptr, false);
  if (body.is_discarded()) return 0;
  if (validates(res, body, create) && !validates(res, body, create)) std::abort();
  return 0;
}
