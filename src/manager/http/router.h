#pragma once
// Method + path-pattern routing ("/api/v1/clusters/{id}"). The route table is public so tests can
// walk it (the OpenAPI document must describe every route).
#include <functional>
#include <string>
#include <vector>

#include "manager/http/message.h"

namespace marchproxy::manager::http {

using Handler = std::function<Response(Request&)>;

struct Route {
  std::string method;
  std::string pattern;
  Handler handler;
};

class Router {
 public:
  void add(std::string method, std::string pattern, Handler h);
  // Finds the handler, fills req.params and req.route. Throws ApiError 404/405.
  const Route& match(Request& req) const;
  const std::vector<Route>& routes() const { return routes_; }

 private:
  std::vector<Route> routes_;
};

}  // namespace marchproxy::manager::http
