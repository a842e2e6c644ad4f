#include "common/base/cpu.h"

#include <fmt/format.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>

namespace marchproxy::cpu {

namespace {

bool parseInt(std::string_view s, int& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size() && out >= 0 && out < CPU_SETSIZE;
}

}  // namespace

std::vector<int> parseList(std::string_view s) {
  auto space = [](char c) { return c == ' ' || c == '\t' || c == '\n'; };
  while (!s.empty() && space(s.back())) s.remove_suffix(1);
  while (!s.empty() && space(s.front())) s.remove_prefix(1);
  std::vector<int> out;
  if (s.empty()) return out;
  size_t start = 0;
  for (;;) {
    size_t comma = s.find(',', start);
    std::string_view part = s.substr(start, comma == std::string_view::npos ? std::string_view::npos : comma - start);
    size_t dash = part.find('-');
    int lo = 0, hi = 0;
    if (dash == std::string_view::npos) {
      if (!parseInt(part, lo)) return {};
      hi = lo;
    } else if (!parseInt(part.substr(0, dash), lo) || !parseInt(part.substr(dash + 1), hi) || hi < lo) {
      return {};
    }
    for (int c = lo; c <= hi; ++c) out.push_back(c);
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

std::string formatList(const std::vector<int>& cpus) {
  std::string out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    if (!out.empty()) out += ',';
    out += j == i ? fmt::format("{}", cpus[i]) : fmt::format("{}-{}", cpus[i], cpus[j]);
    i = j + 1;
  }
  return out;
}

Topology read() {
  Topology t;
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) t.allowed.push_back(c);
  }
  namespace fs = std::filesystem;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/devices/system/node", ec)) {
    std::string name = e.path().filename().string();
    int node = 0;
    if (name.rfind("node", 0) != 0 || !parseInt(std::string_view(name).substr(4), node)) continue;
    std::ifstream f(e.path() / "cpulist");
    std::string line;
    std::getline(f, line);
    for (int c : parseList(line)) t.node[c] = node;
  }
  return t;
}

Result<std::vector<int>> plan(unsigned workers, bool automatic, const std::vector<unsigned>& list,
                              const Topology& t) {
  std::vector<int> out(workers, -1);
  if (!automatic && list.empty()) return out;
  if (t.allowed.empty()) return Error{"cannot read this process's CPU affinity mask"};
  if (automatic) {
    std::vector<int> order = t.allowed;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return t.nodeOf(a) < t.nodeOf(b); });
    for (unsigned i = 0; i < workers; ++i) out[i] = order[i % order.size()];
    return out;
  }
  for (unsigned c : list) {
    if (!std::binary_search(t.allowed.begin(), t.allowed.end(), static_cast<int>(c)))
      return Error{fmt::format("cpu_affinity: CPU {} is not available to this process (allowed: {})", c,
                               formatList(t.allowed))};
  }
  for (unsigned i = 0; i < workers; ++i) out[i] = static_cast<int>(list[i % list.size()]);
  return out;
}

Result<std::vector<int>> planHere(unsigned workers, bool automatic, const std::vector<unsigned>& list,
                                  std::string* layout) {
  const Topology t = read();
  auto p = plan(workers, automatic, list, t);
  if (p) *layout = describePlan(*p, t);
  return p;
}

std::string pinThisThread(int cpu) {
  if (cpu < 0) return {};
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  int rc = pthread_setaffinity_np(pthread_self(), sizeof set, &set);
  return rc == 0 ? std::string() : fmt::format("cannot pin to CPU {}: {}", cpu, std::strerror(rc));
}

std::string describePlan(const std::vector<int>& plan, const Topology& t) {
  if (std::all_of(plan.begin(), plan.end(), [](int c) { return c < 0; })) return "not pinned";
  std::string out;
  for (size_t i = 0; i < plan.size(); ++i) {
    if (!out.empty()) out += ", ";
    out += fmt::format("worker-{} cpu {}", i, plan[i]);
    if (int n = t.nodeOf(plan[i]); n >= 0) out += fmt::format(" (node {})", n);
  }
  return out;
}

}  // namespace marchproxy::cpu
