"""The servers a benchmark runs: the origin and the proxies under test.

Each Target renders its config from bench/configs/, starts one process tree pinned with taskset,
waits until a request through it reaches the origin, and stops it by PID. Every PID started is
written to the run's pid file (pid + start time) so bench/run.sh can end them by PID if this
Python process dies first.
"""

import hashlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import procstat

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_DIR = os.path.dirname(BENCH_DIR)
CONFIG_DIR = os.path.join(BENCH_DIR, "configs")

# The origin's fixed response body (31 bytes). Checked end to end before every run.
BODY = "marchproxy bench origin 200 ok\n"

BUILD_HINT = "cmake --preset bench && cmake --build --preset bench"


class StartError(Exception):
    """A target did not come up; the message says why and shows the end of its log."""


class PidRegistry:
    """The pid file shared with bench/run.sh: one 'pid starttime name' line per live process."""

    def __init__(self, path):
        self.path = path
        self.live = {}  # pid -> (start_time, name)

    def add(self, pid, name):
        try:
            self.live[pid] = (procstat.start_time(pid), name)
        except OSError:
            return
        self._write()

    def remove(self, pids):
        for pid in pids:
            self.live.pop(pid, None)
        self._write()

    def kill_all(self):
        """SIGKILL every process still recorded (a wrk or client left by an interruption)."""
        for pid, (start, _) in list(self.live.items()):
            try:
                if procstat.start_time(pid) == start:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self.remove(list(self.live))

    def _write(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            for pid, (start, name) in sorted(self.live.items()):
                f.write(f"{pid} {start} {name}\n")
        os.replace(tmp, self.path)


def render(template_name, out_path, values):
    """Fill @NAME@ placeholders of a template in bench/configs/; an unknown name is an error."""
    with open(os.path.join(CONFIG_DIR, template_name)) as f:
        text = f.read()

    def sub(m):
        key = m.group(1)
        if key not in values:
            raise KeyError(f"{template_name}: no value for @{key}@")
        return str(values[key])

    text = re.sub(r"@([A-Z0-9_]+)@", sub, text)
    with open(out_path, "w") as f:
        f.write(text)
    return text


def free_port():
    """A port the kernel says is free now (another process could take it before we bind it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(port, path="/", timeout=2.0):
    """(status, body) of one HTTP/1.1 GET with Connection: close; raises OSError/ValueError."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, body.decode(errors="replace")


def make_certificates(work_dir):
    """Self-signed ECDSA certificates for the TLS scenarios, made with the openssl CLI: template
    values CERT256/KEY256/PEM256 (cert+key in one file, for HAProxy) and the same for 384."""
    values = {}
    for bits, curve in (("256", "P-256"), ("384", "P-384")):
        cert = os.path.join(work_dir, f"bench-{bits}.pem")
        key = os.path.join(work_dir, f"bench-{bits}.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", f"ec_paramgen_curve:{curve}",
                        "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.local",
                        "-addext", "subjectAltName=DNS:bench.local"], check=True, capture_output=True)
        both = os.path.join(work_dir, f"bench-{bits}-combined.pem")
        with open(both, "w") as out:
            for f in (cert, key):
                with open(f) as src:
                    out.write(src.read())
        values.update({f"CERT{bits}": cert, f"KEY{bits}": key, f"PEM{bits}": both})
    return values


def _tail(path, lines=15):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-lines:]).rstrip()
    except OSError:
        return "(no log)"


def _run_text(cmd):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        return (p.stdout + p.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable ({e})"


class Target:
    """One server process tree. Subclasses say how to configure, run and version it."""

    name = "?"
    label = "?"
    template = None  # file in bench/configs/
    config_ext = "conf"

    def __init__(self, work_dir, registry, cpus, values):
        self.work_dir = work_dir
        self.registry = registry
        self.cpus = cpus  # e.g. "0"
        self.values = dict(values)  # template values shared by all targets
        self.port = free_port()
        self.values["PORT"] = self.port
        # TLS listeners (scenarios tls*): ECDSA P-256 and P-384 certificates (make_certificates).
        self.tls_port = free_port()
        self.tls384_port = free_port()
        self.values["TLS_PORT"] = self.tls_port
        self.values["TLS384_PORT"] = self.tls384_port
        # Scenario h2: cleartext HTTP/2 with prior knowledge (h2load), HTTP/1.1 to the origin.
        self.h2c_port = free_port()
        self.values["H2C_PORT"] = self.h2c_port
        self.config_path = os.path.join(work_dir, f"{self.name}.{self.config_ext}")
        self.log_path = os.path.join(work_dir, f"{self.name}.log")
        self.proc = None
        self.known_pids = set()
        self.config_text = None

    # --- subclass hooks
    def command(self):
        raise NotImplementedError

    def version(self):
        raise NotImplementedError

    def prepare(self):
        """Write the config (and any directory it names)."""
        self.config_text = render(self.template, self.config_path, self.values)

    # --- lifecycle
    def full_command(self):
        return ["taskset", "-c", self.cpus] + self.command()

    def start(self, ready_timeout=15.0):
        if self.config_text is None:
            self.prepare()
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start {time.strftime('%H:%M:%S')}: {' '.join(self.full_command())}\n".encode())
            log.flush()
            # A new session: a Ctrl-C on the terminal reaches the harness, which stops us by PID.
            self.proc = subprocess.Popen(self.full_command(), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.work_dir,
                                         start_new_session=True)
        self.registry.add(self.proc.pid, self.name)
        self.known_pids = {self.proc.pid}
        self.wait_ready(ready_timeout)
        self.track()

    def wait_ready(self, timeout):
        """Ready means a GET through us returns the origin's body, not just an open port."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise StartError(f"{self.label} exited with status {self.proc.returncode} "
                                 f"before answering.\n--- {self.log_path} (end):\n{_tail(self.log_path)}")
            try:
                status, body = http_get(self.port, "/", timeout=1.0)
                if status == 200 and body == BODY:
                    return
                last = f"status {status}, body {body[:60]!r}"
            except (OSError, ValueError, IndexError) as e:
                last = str(e)
            time.sleep(0.05)
        self.stop()
        raise StartError(f"{self.label} did not serve the origin's body within {timeout:.0f} s "
                         f"on port {self.port} (last: {last}).\n--- {self.log_path} (end):\n"
                         f"{_tail(self.log_path)}")

    def track(self):
        """Record the current process tree (workers forked after start) in the pid file."""
        for pid in self.pids():
            if pid not in self.known_pids:
                self.known_pids.add(pid)
                self.registry.add(pid, self.name)

    def pids(self):
        if self.proc is None or self.proc.poll() is not None:
            return []
        return procstat.descendants(self.proc.pid)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace=5.0):
        """SIGTERM the root, wait, then SIGKILL whatever of the tree is left. By PID only."""
        if self.proc is None:
            return
        tree = set(self.pids()) | self.known_pids
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in tree - {self.proc.pid}:
            entry = self.registry.live.get(pid)
            try:
                if entry is None or procstat.start_time(pid) == entry[0]:
                    os.kill(pid, signal.SIGKILL)
            except OSError:
                pass  # already gone
        self.registry.remove(tree)
        self.proc = None
        self.known_pids = set()


class Origin(Target):
    name = "origin"
    label = "origin (nginx, 1 worker)"
    template = "origin-nginx.conf"

    def prepare(self):
        os.makedirs(os.path.join(self.work_dir, "origin-tmp"), exist_ok=True)
        super().prepare()

    def command(self):
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", self.work_dir,
                "-e", os.path.join(self.work_dir, "origin-error.log"), "-c", self.config_path]

    def version(self):
        return _run_text([self.command()[0], "-v"])

    def status(self):
        """(accepted connections, requests) from stub_status, counting this probe in both."""
        _, body = http_get(self.port, "/__origin_status")
        nums = body.splitlines()[2].split()
        return int(nums[0]), int(nums[2])


class Nginx(Target):
    name = "nginx"
    label = "nginx"
    template = "nginx.conf"

    def prepare(self):
        os.makedirs(os.path.join(self.work_dir, "nginx-tmp"), exist_ok=True)
        super().prepare()

    def command(self):
        return [shutil.which("nginx") or "/usr/sbin/nginx", "-p", self.work_dir,
                "-e", os.path.join(self.work_dir, "nginx-error.log"), "-c", self.config_path]

    def version(self):
        return _run_text([self.command()[0], "-v"])


class HAProxy(Target):
    name = "haproxy"
    label = "HAProxy"
    template = "haproxy.cfg"
    config_ext = "cfg"

    def command(self):
        # -db: stay in the foreground, one process (its threads are summed in /proc/PID/stat).
        return [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", self.config_path]

    def version(self):
        return _run_text([self.command()[0], "-v"]).splitlines()[0]


def _cmake_build_type(binary):
    """CMAKE_BUILD_TYPE of the build tree the binary lives in, or None."""
    d = os.path.dirname(os.path.abspath(binary))
    while d != "/":
        cache = os.path.join(d, "CMakeCache.txt")
        if os.path.exists(cache):
            with open(cache) as f:
                for line in f:
                    if line.startswith("CMAKE_BUILD_TYPE:"):
                        return line.split("=", 1)[1].strip() or None
            return None
        d = os.path.dirname(d)
    return None


def default_marchproxy_binary():
    for preset in ("bench", "release"):
        path = os.path.join(REPO_DIR, "build", preset, "src", "cli", "marchproxy")
        if os.access(path, os.X_OK):
            return path
    return None


class MarchProxy(Target):
    name = "marchproxy"
    label = "MarchProxy ingress"
    template = "marchproxy.yaml"
    config_ext = "yaml"

    def __init__(self, work_dir, registry, cpus, values, binary):
        super().__init__(work_dir, registry, cpus, values)
        self.source_binary = binary
        self.build_type = _cmake_build_type(binary)
        # Run a copy: a rebuild of the build tree during the run must not change what we measure.
        self.binary = os.path.join(work_dir, "marchproxy-bin")
        shutil.copy2(binary, self.binary)
        with open(self.binary, "rb") as f:
            self.sha256 = hashlib.sha256(f.read()).hexdigest()

    def command(self):
        return [self.binary, "ingress", "--config", self.config_path]

    def version(self):
        v = _run_text([self.binary, "version"]).split("\n")[0]
        git = _run_text(["git", "-C", REPO_DIR, "describe", "--always", "--dirty"])
        return (f"{v} (git {git}, build type {self.build_type or 'unknown'}, "
                f"copied from {self.source_binary}, sha256 {self.sha256[:16]})")


PROXIES = {"nginx": Nginx, "haproxy": HAProxy, "marchproxy": MarchProxy}
