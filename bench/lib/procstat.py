"""What the kernel says about a process tree and the machine, read from /proc.

CPU time comes from /proc/PID/stat (utime + stime, in clock ticks), summed over a root process and
all of its descendants (nginx master + workers; HAProxy and MarchProxy are one process whose stat
already sums every thread). Memory comes from /proc/PID/status (VmRSS, VmHWM) and
/proc/PID/smaps_rollup (Pss). Nothing here starts or stops processes.
"""

import os
import platform
import subprocess

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _read(path):
    with open(path) as f:
        return f.read()


def _stat_fields(pid):
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    text = _read(f"/proc/{pid}/stat")
    return text[text.rindex(")") + 2:].split()


def start_time(pid):
    """Start time of PID in clock ticks since boot: with the pid, identifies one process."""
    return int(_stat_fields(pid)[19])


def descendants(root):
    """root and every process below it, by scanning /proc (children files miss grandchildren)."""
    parent_of = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            parent_of[int(name)] = int(_stat_fields(name)[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
    tree, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        for child, parent in parent_of.items():
            if parent == p and child not in tree:
                tree.add(child)
                frontier.append(child)
    return sorted(p for p in tree if p in parent_of)


def cpu_ticks(pids):
    """{pid: (start_time, utime + stime)} for the pids still alive."""
    out = {}
    for pid in pids:
        try:
            f = _stat_fields(pid)
            out[pid] = (int(f[19]), int(f[11]) + int(f[12]))
        except (OSError, ValueError, IndexError):
            pass
    return out


def cpu_delta_seconds(before, after):
    """CPU seconds spent between two cpu_ticks() samples, and whether the process set was stable.

    A process present only in `after` (a worker started during the run) counts from zero; a process
    present only in `before` exited during the run and its time is lost, so the sample is flagged.
    """
    ticks, stable = 0, True
    for pid, (start, t_after) in after.items():
        b = before.get(pid)
        if b is not None and b[0] == start:
            ticks += t_after - b[1]
        else:
            ticks += t_after
            stable = False
    for pid, (start, _) in before.items():
        if pid not in after or after[pid][0] != start:
            stable = False
    return ticks / CLK_TCK, stable


def ctx_switches(pids):
    """(voluntary, involuntary) context switches summed over every thread of pids.

    Voluntary ones are mostly the event loop going to sleep in epoll_wait: per request, they say
    how well a proxy batches. Involuntary ones are preemptions, by noise or by the origin.
    """
    vol = invol = 0
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                for line in _read(f"/proc/{pid}/task/{tid}/status").splitlines():
                    if line.startswith("voluntary_ctxt_switches:"):
                        vol += int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches:"):
                        invol += int(line.split()[1])
            except OSError:
                pass
    return vol, invol


def memory_kb(pids):
    """Sum over pids of VmRSS, VmHWM (kB, from /proc/PID/status) and Pss (kB, smaps_rollup).

    RSS counts pages shared between nginx's master and workers once per process; Pss splits them.
    """
    rss = hwm = pss = 0
    for pid in pids:
        try:
            for line in _read(f"/proc/{pid}/status").splitlines():
                if line.startswith("VmRSS:"):
                    rss += int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm += int(line.split()[1])
            for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
                if line.startswith("Pss:"):
                    pss += int(line.split()[1])
        except OSError:
            pass
    return {"rss_kb": rss, "hwm_kb": hwm, "pss_kb": pss}


def set_affinity(root, cpus):
    """Pin every thread of root and of its descendants to `cpus` (a set of ints)."""
    for pid in descendants(root):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), cpus)
        except OSError:
            pass


def core_ticks(cpus):
    """{cpu: {'busy': ticks, 'steal': ticks, 'total': ticks}} from /proc/stat for the given cpus."""
    out = {}
    for line in _read("/proc/stat").splitlines():
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        cpu = int(name[3:])
        if cpu not in cpus:
            continue
        v = [int(x) for x in vals] + [0] * 10
        user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
        out[cpu] = {
            "busy": user + nice + system + irq + softirq,
            "steal": steal,
            "total": user + nice + system + idle + iowait + irq + softirq + steal,
        }
    return out


def core_delta(before, after):
    """Busy/steal/total seconds summed over the cpus of two core_ticks() samples."""
    d = {"busy": 0, "steal": 0, "total": 0}
    for cpu, a in after.items():
        for k in d:
            d[k] += a[k] - before[cpu][k]
    return {k: v / CLK_TCK for k, v in d.items()}


def parse_cpus(spec):
    """'0', '0,1', '0-1' -> {0, 1}."""
    cpus = set()
    for part in spec.split(","):
        if "-" in part:
            lo, hi = part.split("-")
            cpus.update(range(int(lo), int(hi) + 1))
        elif part:
            cpus.add(int(part))
    return cpus


def machine():
    """The machine as a results file records it."""
    model = "unknown"
    try:
        for line in _read("/proc/cpuinfo").splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    try:
        distro = subprocess.run(["sh", "-c", ". /etc/os-release && echo $PRETTY_NAME"],
                                capture_output=True, text=True).stdout.strip()
    except OSError:
        distro = ""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "distro": distro,
        "mem_total_mib": mem_kb // 1024,
        "hostname": platform.node(),
        "clk_tck": CLK_TCK,
    }


def loadavg():
    return [float(x) for x in _read("/proc/loadavg").split()[:3]]
