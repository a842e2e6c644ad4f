#pragma once
// Worker CPU pinning: which CPUs this process may run on (its affinity mask, so container cpusets
// are respected), which NUMA node each belongs to (/sys), and the plan that maps worker threads to
// CPUs. Start-up only; nothing here runs on the request path.
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "common/base/result.h"

namespace marchproxy::cpu {

struct Topology {
  std::vector<int> allowed;  // CPUs in this process's affinity mask, ascending
  std::map<int, int> node;   // cpu -> NUMA node (absent when /sys has no node information)
  int nodeOf(int cpu) const {
    auto it = node.find(cpu);
    return it == node.end() ? -1 : it->second;
  }
};

// Reads the affinity mask and /sys/devices/system/node/node*/cpulist.
Topology read();

// "0-3,8,10-11" -> {0,1,2,3,8,10,11}. Empty on a malformed list.
std::vector<int> parseList(std::string_view s);
// {0,1,2,3,8} -> "0-3,8".
std::string formatList(const std::vector<int>& cpus);

// The CPU of each of `workers` workers (-1 = not pinned).
//   automatic: the allowed CPUs ordered node by node (so that consecutive workers share a memory
//              node), worker i on the i-th, wrapping around when there are more workers than CPUs;
//   explicit:  worker i on list[i % list.size()]; a CPU outside the allowed set is an error that
//              names it and the allowed set.
// Neither: every worker -1.
Result<std::vector<int>> plan(unsigned workers, bool automatic, const std::vector<unsigned>& list,
                              const Topology& t);

// plan() for this process's own topology (read()); *layout = describePlan() of the result.
Result<std::vector<int>> planHere(unsigned workers, bool automatic, const std::vector<unsigned>& list,
                                  std::string* layout);

// Pins the calling thread to one CPU. Returns "" or the error text (strerror).
std::string pinThisThread(int cpu);

// "worker-0 cpu 0 (node 0), worker-1 cpu 1 (node 0)", or "not pinned".
std::string describePlan(const std::vector<int>& plan, const Topology& t);

}  // namespace marchproxy::cpu
