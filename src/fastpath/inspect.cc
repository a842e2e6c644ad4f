#include "fastpath/inspect.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/if_link.h>
#include <net/if.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <vector>

#include <fmt/format.h>

#include "common/base/cpu.h"
#include "fastpath/fastpath.h"
#include "fastpath_maps.h"

namespace marchproxy::fastpath {

namespace {

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
};

struct Program {
  uint32_t id = 0;
  std::string name;
  std::vector<uint32_t> maps;
};

bool programInfo(uint32_t id, Program& out) {
  Fd fd(bpf_prog_get_fd_by_id(id));
  if (fd.fd < 0) return false;
  bpf_prog_info info{};
  uint32_t len = sizeof info;
  if (bpf_obj_get_info_by_fd(fd.fd, &info, &len) != 0) return false;
  std::vector<uint32_t> ids(info.nr_map_ids);
  out.id = id;
  out.name = info.name;
  if (!ids.empty()) {
    bpf_prog_info again{};
    again.nr_map_ids = static_cast<uint32_t>(ids.size());
    again.map_ids = reinterpret_cast<uint64_t>(ids.data());
    len = sizeof again;
    if (bpf_obj_get_info_by_fd(fd.fd, &again, &len) != 0) return false;
    ids.resize(again.nr_map_ids);
  }
  out.maps = std::move(ids);
  return true;
}

// Opens the program's map with this name; -1 when it has none.
int mapByName(const Program& p, const char* name) {
  for (uint32_t id : p.maps) {
    int fd = bpf_map_get_fd_by_id(id);
    if (fd < 0) continue;
    bpf_map_info info{};
    uint32_t len = sizeof info;
    if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && std::strcmp(info.name, name) == 0) return fd;
    ::close(fd);
  }
  return -1;
}

std::vector<mp_counter> counters(const Program& p, const char* map, uint32_t n) {
  std::vector<mp_counter> out(n);
  Fd fd(mapByName(p, map));
  int cpus = libbpf_num_possible_cpus();
  if (fd.fd < 0 || cpus <= 0) return out;
  std::vector<mp_counter> values(static_cast<size_t>(cpus));
  for (uint32_t i = 0; i < n; ++i) {
    if (bpf_map_lookup_elem(fd.fd, &i, values.data()) != 0) continue;
    for (const auto& v : values) {
      out[i].packets += v.packets;
      out[i].bytes += v.bytes;
    }
  }
  return out;
}

uint32_t generationOf(const Program& p, const char* map) {
  Fd fd(mapByName(p, map));
  uint32_t zero = 0, gen = 0;
  if (fd.fd >= 0) bpf_map_lookup_elem(fd.fd, &zero, &gen);
  return gen;
}

std::string readLine(const std::string& path) {
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  return s;
}

}  // namespace

std::string cpuLayout() {
  namespace fs = std::filesystem;
  std::string online = readLine("/sys/devices/system/cpu/online");
  int cpus = static_cast<int>(sysconf(_SC_NPROCESSORS_ONLN));
  std::map<int, std::string> nodes;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/sys/devices/system/node", ec)) {
    std::string name = e.path().filename().string();
    if (name.rfind("node", 0) != 0 || name.size() == 4 || name.find_first_not_of("0123456789", 4) != std::string::npos)
      continue;
    nodes[std::stoi(name.substr(4))] = readLine(e.path().string() + "/cpulist");
  }
  std::string out = fmt::format("{} CPU{} online ({})", cpus, cpus == 1 ? "" : "s", online.empty() ? "?" : online);
  if (nodes.empty()) return out + ", NUMA: no node information in /sys";
  out += fmt::format(", {} NUMA node{}:", nodes.size(), nodes.size() == 1 ? "" : "s");
  for (const auto& [n, list] : nodes) out += fmt::format(" node{} cpus {}", n, list.empty() ? "-" : list);
  return out;
}

StatusReport inspect() {
  initLibbpf();
  StatusReport r;
  std::string& out = r.text;
  std::map<uint32_t, Program> programs;  // ours, by id
  std::vector<std::string> lines;
  struct if_nameindex* names = if_nameindex();
  bool denied = false;
  for (struct if_nameindex* i = names; i != nullptr && i->if_index != 0; ++i) {
    LIBBPF_OPTS(bpf_xdp_query_opts, q);
    if (bpf_xdp_query(static_cast<int>(i->if_index), 0, &q) == 0 && q.prog_id != 0) {
      Program p;
      if (programInfo(q.prog_id, p)) {
        if (p.name == "mp_xdp" || p.name == "mp_xdp_drop_all") {
          const char* mode = q.attach_mode == XDP_ATTACHED_DRV   ? "native"
                             : q.attach_mode == XDP_ATTACHED_SKB ? "generic"
                             : q.attach_mode == XDP_ATTACHED_HW  ? "offload"
                                                                 : "multi";
          lines.push_back(fmt::format("  {}: XDP {} mode, program {} (id {}), rules generation {}", i->if_name, mode,
                                      p.name, p.id, generationOf(p, "mp_active")));
          programs[p.id] = p;
        }
      } else if (errno == EPERM) {
        denied = true;
      }
    }
    LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = static_cast<int>(i->if_index), .attach_point = BPF_TC_EGRESS);
    LIBBPF_OPTS(bpf_tc_opts, t, .handle = 0x4d50, .priority = 0x4d50);
    if (bpf_tc_query(&hook, &t) == 0 && t.prog_id != 0) {
      Program p;
      if (programInfo(t.prog_id, p) && p.name == "mp_tc_egress") {
        lines.push_back(fmt::format("  {}: TC egress (clsact), program {} (id {}), rules generation {}", i->if_name,
                                    p.name, p.id, generationOf(p, "mp_tc_active")));
        programs[p.id] = p;
      }
    }
  }
  if (names != nullptr) if_freenameindex(names);
  r.permitted = !denied;
  r.attached = !lines.empty();
  if (lines.empty()) {
    out += denied ? "fast path: cannot inspect BPF programs (permission denied: run as root)\n"
                  : "fast path: no MarchProxy XDP or TC program is attached to any interface in this network "
                    "namespace\n";
  } else {
    out += "fast path: attached\n";
    for (const auto& l : lines) out += l + "\n";
  }
  for (const auto& [id, p] : programs) {
    if (p.name == "mp_xdp") {
      out += fmt::format("counters of program {} (packets, bytes):\n", id);
      auto c = counters(p, "mp_xdp_counters", MP_XDP_REASONS);
      for (uint32_t i = 0; i < MP_XDP_REASONS; ++i)
        out += fmt::format("  {:<18} {:>14} {:>16}\n", xdpReasonName(i), c[i].packets, c[i].bytes);
    } else if (p.name == "mp_tc_egress") {
      out += fmt::format("counters of program {} (packets, bytes):\n", id);
      auto c = counters(p, "mp_tc_counters", MP_TC_REASONS);
      for (uint32_t i = 0; i < MP_TC_REASONS; ++i)
        out += fmt::format("  {:<18} {:>14} {:>16}\n", tcReasonName(i), c[i].packets, c[i].bytes);
    }
  }
  out += "CPU layout: " + cpuLayout() + "\n";
  out += workerPinning();
  return r;
}

std::string workerPinning() {
  namespace fs = std::filesystem;
  const cpu::Topology topology = cpu::read();
  std::string out;
  std::error_code ec;
  for (const auto& proc : fs::directory_iterator("/proc", ec)) {
    const std::string pid = proc.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
    if (readLine(proc.path().string() + "/comm") != "marchproxy") continue;
    std::map<int, std::string> workers;  // worker index -> "worker-0 cpus 0 (node 0)"
    std::error_code tec;
    for (const auto& task : fs::directory_iterator(proc.path() / "task", tec)) {
      const std::string comm = readLine(task.path().string() + "/comm");
      const bool egress = comm.rfind("egress-", 0) == 0;  // the egress names its workers so
      if (comm.rfind("worker-", 0) != 0 && !egress) continue;
      std::ifstream st(task.path() / "status");
      std::string line, allowed;
      while (std::getline(st, line))
        if (line.rfind("Cpus_allowed_list:", 0) == 0) allowed = line.substr(line.find(':') + 1);
      std::vector<int> cpus = cpu::parseList(allowed);
      std::string where = cpus.size() == topology.allowed.size() && cpus == topology.allowed
                              ? "not pinned"
                              : "cpus " + cpu::formatList(cpus);
      if (cpus.size() == 1 && topology.nodeOf(cpus[0]) >= 0) where += fmt::format(" (node {})", topology.nodeOf(cpus[0]));
      workers[std::atoi(comm.c_str() + 7)] = (egress ? "egress-" : "worker-") + std::string(comm.substr(7)) + " " + where;
    }
    if (workers.empty()) continue;
    out += fmt::format("marchproxy process {}:", pid);
    for (const auto& [i, where] : workers) out += " " + where + ";";
    out.back() = '\n';
  }
  return out.empty() ? "no running marchproxy workers in this PID namespace\n" : "workers:\n" + out;
}

}  // namespace marchproxy::fastpath
