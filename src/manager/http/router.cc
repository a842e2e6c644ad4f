#include "manager/http/router.h"

#include <string_view>

namespace marchproxy::manager::http {
namespace {

std::vector<std::string_view> split(std::string_view p) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i <= p.size()) {
    auto j = p.find('/', i);
    if (j == std::string_view::npos) j = p.size();
    if (j > i) out.push_back(p.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

bool matches(const std::string& pattern, std::string_view path, std::map<std::string, std::string>* params) {
  auto ps = split(pattern), xs = split(path);
  if (ps.size() != xs.size()) return false;
  for (std::size_t i = 0; i < ps.size(); ++i) {
    if (ps[i].size() > 2 && ps[i].front() == '{' && ps[i].back() == '}') {
      if (params) (*params)[std::string(ps[i].substr(1, ps[i].size() - 2))] = std::string(xs[i]);
    } else if (ps[i] != xs[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

void Router::add(std::string method, std::string pattern, Handler h) {
  routes_.push_back({std::move(method), std::move(pattern), std::move(h)});
}

const Route& Router::match(Request& req) const {
  bool path_known = false;
  // Literal segments win over parameters: "/users/me" before "/users/{id}".
  const Route* best = nullptr;
  int best_literals = -1;
  for (const auto& r : routes_) {
    if (!matches(r.pattern, req.path, nullptr)) continue;
    path_known = true;
    if (r.method != req.method) continue;
    int literals = 0;
    for (auto s : split(r.pattern)) literals += s.front() != '{';
    if (literals > best_literals) {
      best = &r;
      best_literals = literals;
    }
  }
  if (best) {
    req.params.clear();
    matches(best->pattern, req.path, &req.params);
    req.route = best->pattern;
    return *best;
  }
  if (path_known) throw ApiError(405, "method-not-allowed", "method " + req.method + " is not allowed on " + req.path);
  throw ApiError(404, "not-found", "no such endpoint: " + req.path);
}

}  // namespace marchproxy::manager::http
