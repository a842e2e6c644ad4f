#pragma once
// What `marchproxy xdp status` shows, read from the kernel (any process may ask; no pins needed):
// which interfaces carry a MarchProxy XDP or TC program, in which mode, the rules generation, the
// per-reason counters, and the machine's CPU / NUMA layout from /sys.
#include <string>

namespace marchproxy::fastpath {

struct StatusReport {
  std::string text;
  bool attached = false;  // at least one interface carries one of our programs
  bool permitted = true;  // false: not allowed to query BPF objects (not root)
};

StatusReport inspect();

// "2 CPUs, 1 NUMA node (node0: cpus 0-1)", from /sys/devices/system/{cpu,node}.
std::string cpuLayout();

// One line per running marchproxy process (read from /proc): the CPUs each worker thread may run
// on, e.g. "marchproxy process 812: worker-0 cpus 0 (node 0); worker-1 cpus 1 (node 0)".
std::string workerPinning();

}  // namespace marchproxy::fastpath
