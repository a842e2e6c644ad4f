#pragma once
// The configuration resources administrators edit (clusters, services, mappings, ingress routes,
// certificates), described as data: fields with their JSON kind, validation and mutability. One
// generic implementation serves list/get/create/update/delete for all of them (resources.cc).
#include <string>

#include "manager/http/message.h"
#include "manager/store/db.h"

namespace marchproxy::manager::api {

// Validates a request body for `resource` ("clusters", "services", "mappings", "forwards", "routes",
// "certificates") as create (all required fields) or update (only updatable fields). Throws
// ApiError (422 with the field, or 400) on the first problem; checks that need the database
// (references) are not made here. The fuzz target drives this.
void validateResourceBody(const std::string& resource, const http::Json& body, bool create);

// One row of `resource` as the API shows it (404 ApiError when absent).
http::Json resourceJson(store::Conn& c, const std::string& resource, std::int64_t id);

}  // namespace marchproxy::manager::api
