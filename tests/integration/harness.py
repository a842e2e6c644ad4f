"""Shared helpers for the MarchProxy integration tests (standard library only).

What lives here (see README.md beside this file):
  * ProxyTestCase  - unittest.TestCase with start_proxy()/start_origin() that register cleanups and
                     dump the proxy's stderr when a test fails;
  * Proxy          - one `marchproxy ingress` process: inline YAML written to a temp dir, ports parsed
                     from its `listening:` log lines, admin/metrics helpers, reload, stop;
  * Origin         - a threaded HTTP/1.1 origin server on raw sockets with behaviours by path;
  * Conn / request - a raw-socket HTTP/1.1 client (exact bytes out, exact parsing in);
  * metrics parsing, RSS (VmHWM) reading, the deterministic byte pattern used for big bodies,
    render() for ${var} substitution in inline YAML, wait_until() for polls with deadlines.

Nothing here asserts timing: waits are generous polls with deadlines, tests assert behaviour.
"""

import atexit
import glob
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import urllib.parse

SOURCE_DIR = os.environ.get(
    "MARCHPROXY_SOURCE_DIR",
    os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")))

LOCALHOST = "127.0.0.1"

# How long a proxy may take to print its listening lines, and to exit after SIGTERM in cleanup.
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0


# ------------------------------------------------------------------------------------------------
# locating the binary

def find_binary():
    """MARCHPROXY_BIN (set by ctest), else the newest build/*/src/cli/marchproxy under the source."""
    env = os.environ.get("MARCHPROXY_BIN")
    if env:
        if not os.access(env, os.X_OK):
            raise RuntimeError(f"MARCHPROXY_BIN={env} is not an executable file")
        return env
    cands = [p for p in glob.glob(os.path.join(SOURCE_DIR, "build", "*", "src", "cli", "marchproxy"))
             if os.access(p, os.X_OK)]
    if not cands:
        raise unittest.SkipTest("marchproxy binary not found: set MARCHPROXY_BIN or build it "
                                "(cmake --preset dev && cmake --build build/dev)")
    path = max(cands, key=os.path.getmtime)
    global _announced
    if not _announced:
        _announced = True
        sys.stderr.write(f"[harness] MARCHPROXY_BIN not set; using the newest build: {path}\n")
    return path


_announced = False


# ------------------------------------------------------------------------------------------------
# small utilities

def render(template, **values):
    """Substitutes ${name} in an inline YAML template. Unknown names are an error (typo guard)."""
    def sub(m):
        name = m.group(1)
        if name not in values:
            raise KeyError(f"render: no value for ${{{name}}}")
        return str(values[name])
    return re.sub(r"\$\{(\w+)\}", sub, template)


def wait_until(predicate, timeout=10.0, interval=0.05, message="condition"):
    """Polls predicate() until it returns a truthy value; returns that value or raises AssertionError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - a poll may hit transient errors; keep the last
            last_exc = e
        if time.monotonic() >= deadline:
            extra = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {message}{extra}")
        time.sleep(interval)


def free_port(kind=socket.SOCK_STREAM):
    """A port that was free a moment ago and has nothing listening (for 'dead endpoint' tests);
    kind=socket.SOCK_DGRAM for a UDP port."""
    s = socket.socket(socket.AF_INET, kind)
    s.bind((LOCALHOST, 0))
    port = s.getsockname()[1]
    s.close()
    return port


def connection_refused(port, host=LOCALHOST):
    """True when a TCP connect to host:port is refused (nothing listens there any more)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect((host, port))
        return False
    except ConnectionRefusedError:
        return True
    finally:
        s.close()


def process_tree(pid):
    """pid and all of its descendants (the proxy might fork workers)."""
    children = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat", "rb") as f:
                stat = f.read().decode("latin-1")
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])
            children.setdefault(ppid, []).append(int(d))
        except (OSError, ValueError, IndexError):
            pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def proc_status_kib(pid, field):
    """A 'kB' field of /proc/PID/status (VmHWM = peak RSS, VmRSS = current RSS), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


# ------------------------------------------------------------------------------------------------
# deterministic big-body pattern: a 1 MiB + 7 bytes cycle, so proxy buffer boundaries never line up
# with the cycle and a lost, duplicated or reordered buffer shows in the hash.

PATTERN_LEN = (1 << 20) + 7


def _make_pattern():
    out = bytearray()
    i = 0
    while len(out) < PATTERN_LEN:
        out += hashlib.sha256(i.to_bytes(8, "big")).digest()
        i += 1
    del out[PATTERN_LEN:]
    return bytes(out)


_PATTERN = _make_pattern()
_PATTERN2 = memoryview(_PATTERN + _PATTERN)  # any slice of <= PATTERN_LEN bytes is contiguous
_pattern_sha_cache = {}
_pattern_sha_lock = threading.Lock()


def pattern_chunks(n, chunk=1 << 20, offset=0):
    """Yields memoryviews covering bytes [offset, offset+n) of the infinite pattern."""
    pos, end = offset, offset + n
    while pos < end:
        k = min(chunk, end - pos, PATTERN_LEN)
        s = pos % PATTERN_LEN
        yield _PATTERN2[s:s + k]
        pos += k


def pattern_bytes(n):
    return b"".join(pattern_chunks(n))


def pattern_sha256(n):
    with _pattern_sha_lock:
        if n in _pattern_sha_cache:
            return _pattern_sha_cache[n]
    h = hashlib.sha256()
    for c in pattern_chunks(n):
        h.update(c)
    d = h.hexdigest()
    with _pattern_sha_lock:
        _pattern_sha_cache[n] = d
    return d


# ------------------------------------------------------------------------------------------------
# raw-socket HTTP/1.1 client

class ConnectionClosed(Exception):
    """The peer closed (or reset) the connection before a complete response."""

    def __init__(self, msg, got_bytes=0):
        super().__init__(msg)
        self.got_bytes = got_bytes  # 0 = closed before any response byte (a retryable situation)


class Response:
    def __init__(self, version, status, reason, headers, body, interim=()):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in wire order and case
        self.body = body
        self.interim = list(interim)  # 1xx responses seen before this one

    def header(self, name, default=None):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return default

    def header_all(self, name):
        name = name.lower()
        return [v for k, v in self.headers if k.lower() == name]

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        b = self.body[:200]
        return f"<Response {self.status} {self.reason!r} headers={self.headers!r} body={b!r}>"


class Conn:
    """One client TCP connection. send() writes exact bytes; read_response() parses one response."""

    def __init__(self, port, host=LOCALHOST, timeout=10.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.eof = False
        self.bytes_read = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def settimeout(self, t):
        self.sock.settimeout(t)

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("latin-1")
        self.sock.sendall(data)

    def _fill(self, want=65536):
        if self.eof:
            return False
        try:
            d = self.sock.recv(max(want, 65536))
        except (ConnectionResetError, BrokenPipeError):
            d = b""
        if not d:
            self.eof = True
            return False
        self.bytes_read += len(d)
        self.buf += d
        return True

    def _readline(self, limit=1 << 20):
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            start = len(self.buf)
            if len(self.buf) > limit:
                raise ValueError("response line too long")
            if not self._fill():
                raise ConnectionClosed(
                    f"connection closed mid-line (buffered {bytes(self.buf[:200])!r})", self.bytes_read)

    def _readexact(self, n):
        while len(self.buf) < n:
            if not self._fill(n - len(self.buf)):
                raise ConnectionClosed(f"connection closed with {len(self.buf)} of {n} body bytes",
                                       self.bytes_read)
        d = bytes(self.buf[:n])
        del self.buf[:n]
        return d

    def read_head(self):
        """Reads one status line + headers. Returns (version, status, reason, headers)."""
        line = self._readline()
        try:
            version, rest = line.decode("latin-1").rstrip("\r\n").split(" ", 1)
            parts = rest.split(" ", 1)
            status = int(parts[0])
            reason = parts[1] if len(parts) > 1 else ""
        except ValueError:
            raise ValueError(f"bad status line {line!r}") from None
        headers = []
        while True:
            h = self._readline()
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").rstrip("\r\n").partition(":")
            headers.append((k, v.strip(" \t")))
        return version, status, reason, headers

    def read_response(self, method="GET", sink=None, skip_interim=True):
        """Reads one complete response. With sink (callable(bytes)) the body is streamed to it and
        Response.body holds b''. 1xx responses are collected in .interim (unless skip_interim=False,
        then a 1xx is returned as is)."""
        interim = []
        while True:
            version, status, reason, headers = self.read_head()
            if 100 <= status < 200 and status != 101 and skip_interim:
                interim.append(Response(version, status, reason, headers, b""))
                continue
            break
        r = Response(version, status, reason, headers, b"", interim)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return r
        body = bytearray() if sink is None else None

        def out(d):
            if sink is None:
                body.extend(d)
            else:
                sink(d)

        te = ",".join(r.header_all("transfer-encoding")).lower()
        if "chunked" in te:
            while True:
                sz = self._readline().split(b";")[0].strip()
                n = int(sz, 16)
                if n == 0:
                    while self._readline() not in (b"\r\n", b"\n"):
                        pass
                    break
                self._read_body_exact(n, out)
                if self._readexact(2) != b"\r\n":
                    raise ValueError("bad chunk terminator")
        elif r.header("content-length") is not None:
            self._read_body_exact(int(r.header("content-length")), out)
        else:
            while True:
                if self.buf:
                    out(bytes(self.buf))
                    self.buf.clear()
                if not self._fill():
                    break
        if sink is None:
            r.body = bytes(body)
        return r

    def _read_body_exact(self, n, out):
        while n > 0:
            if not self.buf and not self._fill(min(n, 1 << 20)):
                raise ConnectionClosed(f"connection closed with {n} body bytes missing", self.bytes_read)
            k = min(n, len(self.buf))
            out(bytes(self.buf[:k]))
            del self.buf[:k]
            n -= k

    def request(self, method, path, headers=None, body=None, host="test.local", version="HTTP/1.1",
                read=True):
        """Sends one request (Host first, then headers, then Content-Length if body is given and no
        framing header was) and, with read=True, returns its response."""
        self.send(build_request(method, path, headers, body, host, version))
        if read:
            return self.read_response(method)
        return None

    def closed_by_peer(self, timeout=5.0):
        """True once the peer has closed (EOF or reset) within timeout; False if still open.
        Any bytes that arrive meanwhile are kept in .buf (so a caller can check for stray data)."""
        deadline = time.monotonic() + timeout
        old = self.sock.gettimeout()
        try:
            while not self.eof:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.sock.settimeout(left)
                try:
                    self._fill()
                except socket.timeout:
                    return False
                except OSError:
                    self.eof = True
            return True
        finally:
            try:
                self.sock.settimeout(old)
            except OSError:
                pass


def build_request(method, path, headers=None, body=None, host="test.local", version="HTTP/1.1"):
    lines = [f"{method} {path} {version}"]
    hdrs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
    names = {k.lower() for k, _ in hdrs}
    if host is not None and "host" not in names:
        lines.append(f"Host: {host}")
    for k, v in hdrs:
        lines.append(f"{k}: {v}")
    if body is not None and "content-length" not in names and "transfer-encoding" not in names:
        lines.append(f"Content-Length: {len(body)}")
    data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    if body is not None:
        data += body if isinstance(body, (bytes, bytearray)) else body.encode()
    return data


def conn_from(source_ip, port, timeout=10.0):
    """A Conn to 127.0.0.1:port from a chosen loopback source address (127.0.0.2, ...): another client."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    s.bind((source_ip, 0))
    s.connect((LOCALHOST, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c = Conn.__new__(Conn)
    c.sock, c.buf, c.eof, c.bytes_read = s, bytearray(), False, 0
    return c


def request(port, method="GET", path="/", headers=None, body=None, host="test.local", timeout=10.0):
    """One request on a fresh connection; the connection is closed afterwards."""
    with Conn(port, timeout=timeout) as c:
        return c.request(method, path, headers, body, host)


def get(port, path="/", **kw):
    return request(port, "GET", path, **kw)


def raw_exchange(port, data, timeout=10.0):
    """Sends exact bytes, reads one response. Returns (Response or None, conn); caller closes conn."""
    c = Conn(port, timeout=timeout)
    c.send(data)
    try:
        return c.read_response(), c
    except ConnectionClosed:
        return None, c


def connect_tunnel(proxy_port, host, port, auth, timeout=10.0):
    """Sends `CONNECT host:port` with `Proxy-Authorization: auth` to a forward proxy on loopback and
    reads the response head byte by byte (nothing of the tunnel). Returns (socket, head bytes)."""
    s = socket.create_connection((LOCALHOST, proxy_port), timeout=timeout)
    s.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n"
              f"Proxy-Authorization: {auth}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        d = s.recv(1)
        if not d:
            break
        head += d
    return s, head


def read_to_eof(sock):
    """Everything the peer sends until it closes (a tunnel answered with Connection: close)."""
    data = b""
    while True:
        d = sock.recv(65536)
        if not d:
            return data
        data += d


def chunked_encode(chunks, trailers=None):
    out = bytearray()
    for ch in chunks:
        if ch:
            out += b"%x\r\n" % len(ch) + ch + b"\r\n"
    out += b"0\r\n"
    for k, v in (trailers or []):
        out += f"{k}: {v}\r\n".encode()
    out += b"\r\n"
    return bytes(out)


def connect_refused(port, timeout=1.0):
    """True when a TCP connect to the port is refused (nothing listening)."""
    try:
        s = socket.create_connection((LOCALHOST, port), timeout=timeout)
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    s.close()
    return False


# ------------------------------------------------------------------------------------------------
# Prometheus text format

_SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\S+)?\s*$')
_LABEL_RE = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def parse_metrics(text):
    """Returns a list of (name, {label: value}, float)."""
    out = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = _SAMPLE_RE.match(line)
        if not m:
            raise ValueError(f"unparseable metrics line: {line!r}")
        name, _, lbl, value, _ = m.groups()
        labels = {}
        if lbl:
            pos = 0
            while pos < len(lbl):
                lm = _LABEL_RE.match(lbl, pos)
                if not lm:
                    raise ValueError(f"bad labels in {line!r}")
                labels[lm.group(1)] = (lm.group(2).replace(r"\"", '"').replace(r"\n", "\n")
                                       .replace("\\\\", "\\"))
                pos = lm.end()
        out.append((name, labels, float(value)))
    return out


def metric_sum(samples, name, **labels):
    """Sum of the samples named `name` whose labels include all of `labels` (values compared as
    strings; a callable value is a predicate). None when no sample matches."""
    total, found = 0.0, False
    for n, lb, v in samples:
        if n != name:
            continue
        ok = True
        for k, want in labels.items():
            have = lb.get(k)
            if callable(want):
                if have is None or not want(have):
                    ok = False
                    break
            elif have != str(want):
                ok = False
                break
        if ok:
            total += v
            found = True
    return total if found else None


# ------------------------------------------------------------------------------------------------
# the proxy process

SETPRIV = shutil.which("setpriv")
_live = set()  # proxies not yet stopped, killed at interpreter exit whatever happened


@atexit.register
def _kill_leftovers():
    for p in list(_live):
        try:
            os.kill(p.pid, signal.SIGKILL)
            p.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass


def _sigterm_exits(signum, frame):
    # Stop the run as ^C does (unittest lets KeyboardInterrupt through), so atexit kills the rest.
    raise KeyboardInterrupt(f"signal {signum}")


if threading.current_thread() is threading.main_thread():
    signal.signal(signal.SIGTERM, _sigterm_exits)

_SANITIZER_RE = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|WARNING: ThreadSanitizer|"
                           r"runtime error: ")
_LISTEN_RE = re.compile(r"listening: listener=(\S+) address=(\S+):(\d+)")


class Proxy:
    """One `marchproxy ingress` process started from an inline YAML config.

    Ports: listener ports from the `listening:` lines (self.ports by listener name, self.port = the
    first non-admin one), self.admin_port. Every stderr line is kept in self.lines."""

    def __init__(self, config_yaml, workdir, watch=False, expect_listeners=("http",), admin=True,
                 extra_args=(), log_level=None, wait_ready=True, config_path=None, command="ingress",
                 manager_args=None):
        self.binary = find_binary()
        self.workdir = workdir
        self.stderr_path = os.path.join(workdir, "proxy.stderr")
        if manager_args is not None:  # under a manager (--manager …): no config file
            self.config_path = None
            args = [self.binary, command] + list(manager_args)
        else:
            if config_path:  # the caller laid the file out itself (e.g. a ConfigMap-style symlink)
                self.config_path = config_path
            else:
                self.config_path = os.path.join(workdir, "config.yaml")
                self.write_config(config_yaml)
            args = [self.binary, command, "--config", self.config_path]  # command: ingress | egress
        if not watch and manager_args is None:
            args.append("--no-watch")
        log_level = log_level or os.environ.get("MARCHPROXY_ITEST_LOG_LEVEL")
        if log_level:
            args += ["--log-level", log_level]
        args += list(extra_args)
        self.args = args
        # If the test runner itself dies (ctest timeout, ^C, kill), take the proxy with it:
        # setpriv sets the parent-death signal and execs the binary, so the PID is the proxy's.
        launch = ([SETPRIV, "--pdeathsig", "KILL", "--"] if SETPRIV else []) + args
        self.lines = []
        self.ports = {}
        self.addresses = {}
        self.port_conflicts = []
        self._cv = threading.Condition()
        self._log = open(self.stderr_path, "w", buffering=1)
        self.proc = subprocess.Popen(launch, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True)
        self.pid = self.proc.pid
        _live.add(self)
        self.returncode = None
        self.signals_sent = []
        self.killed = False            # stop() had to SIGKILL it
        self.exit_observed = False     # wait_exit() returned a code to the test
        self.exited_on_its_own = False  # it was gone before stop() and nobody signalled it
        self.stopped = False           # stop() ran
        self._reader = threading.Thread(target=self._read_output, daemon=True)
        self._reader.start()
        want = set(expect_listeners) | ({"admin"} if admin else set())
        try:
            self._wait_ports(want)
            self.port = next((self.ports[n] for n in expect_listeners), None)
            self.admin_port = self.ports.get("admin")
            if admin and wait_ready:
                self._wait_ready()
        except BaseException:
            self.stop(timeout=2)
            raise

    # -- output

    def _read_output(self):
        for raw in self.proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self._log.write(line + "\n")
            with self._cv:
                m = _LISTEN_RE.search(line)
                if m:
                    name, addr, port = m.group(1), m.group(2), int(m.group(3))
                    if name in self.ports and self.ports[name] != port:
                        self.port_conflicts.append(line)
                    self.ports.setdefault(name, port)
                    self.addresses.setdefault(name, addr)
                self.lines.append(line)
                self._cv.notify_all()
        with self._cv:
            self._cv.notify_all()

    def _wait_ports(self, want):
        deadline = time.monotonic() + START_DEADLINE
        with self._cv:
            while not want.issubset(self.ports):
                if self.proc.poll() is not None:
                    self._reader.join(2)
                    raise AssertionError(
                        f"marchproxy exited with {self.proc.returncode} before listening on "
                        f"{sorted(want - set(self.ports))}:\n{self.tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"marchproxy did not log listening lines for {sorted(want - set(self.ports))} "
                        f"within {START_DEADLINE}s:\n{self.tail()}")
                self._cv.wait(min(left, 0.1))

    def _wait_ready(self):
        """/ready answers 503 while starting; a test starts once it says 200."""
        deadline = time.monotonic() + START_DEADLINE
        last = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"marchproxy exited with {self.proc.returncode} while starting:\n"
                                     f"{self.tail()}")
            try:
                last = self.admin("/ready", timeout=2)
                if last.status == 200:
                    return
            except (OSError, ConnectionClosed, ValueError) as e:
                last = e
            time.sleep(0.02)
        raise AssertionError(f"/ready not 200 within {START_DEADLINE}s (last: {last!r}):\n{self.tail()}")

    def tail(self, n=80):
        with self._cv:
            return "\n".join(self.lines[-n:])

    def output(self):
        with self._cv:
            return "\n".join(self.lines)

    def mark(self):
        """Position in the log; pass to wait_log(since=...) to see only later lines."""
        with self._cv:
            return len(self.lines)

    def wait_log(self, pattern, timeout=10.0, since=0):
        """Waits for a log line (after index `since`) matching the regex; returns the line."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cv:
            while True:
                for line in self.lines[since:]:
                    if rx.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; "
                                         f"log since mark:\n" + "\n".join(self.lines[since:][-60:]))
                self._cv.wait(min(left, 0.1))

    def log_lines_since(self, since):
        with self._cv:
            return list(self.lines[since:])

    # -- config and signals

    def write_config(self, config_yaml, atomic=True):
        if atomic:
            tmp = self.config_path + ".tmp"
            with open(tmp, "w") as f:
                f.write(config_yaml)
            os.replace(tmp, self.config_path)
        else:
            with open(self.config_path, "w") as f:
                f.write(config_yaml)

    def signal(self, sig):
        if self.proc.poll() is None:
            self.signals_sent.append(sig)
            os.kill(self.pid, sig)

    def reload(self, config_yaml):
        """Writes the new config and sends SIGHUP."""
        self.write_config(config_yaml)
        self.signal(signal.SIGHUP)

    def alive(self):
        return self.proc.poll() is None

    def wait_exit(self, timeout):
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(2)
        self.exit_observed = True  # the test looked at the exit code itself
        return self.returncode

    def stop(self, timeout=STOP_DEADLINE):
        """SIGTERM, wait, then SIGKILL. Returns the exit code (negative = killed by that signal)."""
        if self.proc.poll() is not None and not self.signals_sent and not self.stopped:
            self.exited_on_its_own = True
        self.stopped = True  # a second stop() (the test's, then the cleanup's) is not an exit of its own
        if self.proc.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.killed = True
                self.proc.wait(5)
                with self._cv:
                    self.lines.append(f"[harness] marchproxy did not exit within {timeout}s of "
                                      "SIGTERM; killed with SIGKILL")
        self._reader.join(2)
        self.returncode = self.proc.returncode
        _live.discard(self)
        try:
            self.proc.stdout.close()
        except OSError:
            pass
        self._log.close()
        return self.returncode

    # -- admin endpoint

    def admin(self, path, method="GET", timeout=5.0):
        return request(self.admin_port, method, path, host=f"127.0.0.1:{self.admin_port}",
                       timeout=timeout)

    def metrics_text(self):
        r = self.admin("/metrics")
        if r.status != 200:
            raise AssertionError(f"/metrics answered {r.status}: {r.body[:300]!r}")
        return r.text

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def metric(self, name, **labels):
        """Sum of matching samples, 0.0 when none match (a counter never incremented may be absent)."""
        v = metric_sum(self.metrics(), name, **labels)
        return 0.0 if v is None else v

    def config_info(self):
        r = self.admin("/config")
        if r.status != 200:
            raise AssertionError(f"/config answered {r.status}: {r.body[:300]!r}")
        return r.json()

    # -- memory

    def vm_hwm_kib(self):
        """Peak RSS (VmHWM) summed over the proxy process and any children it forked."""
        total = 0
        for p in process_tree(self.pid):
            try:
                total += proc_status_kib(p, "VmHWM")
            except OSError:
                pass
        return total


# ------------------------------------------------------------------------------------------------
# origin server

class Origin:
    """A threaded HTTP/1.1 origin (keep-alive, CL and chunked bodies, Expect: 100-continue).

    Behaviours by path, from the first segment that names one, so /x/y/id behaves as /id (query
    strings are ignored for dispatch; the echo reports the full original path):
      /id            body = the origin's name
      /echo          JSON: name, method, path, query, version, headers (pairs, original case),
                     body_length, body_sha256 (also the default for any unknown path)
      /status/NNN    that status
      /sleep/MS      sleeps MS ms, then 200 with the name
      /bytes/N       N pattern bytes with Content-Length, streamed
      /chunked/N     N pattern bytes, chunked
      /eof/N         N pattern bytes delimited by closing the connection (no length, no chunks)
      /sink          reads any body, answers {"length", "sha256"}
                     (any path: ?pause_ms=N waits N ms before reading the request body)
      /health        200, or 503 while .healthy is False
      /close         answers with Connection: close, then closes
      /hop           answers with hop-by-hop headers that a proxy must not pass on
    Every response carries X-Origin-Name. Controls: .healthy, .fail_status (every non-/health
    response becomes that status), .gate (a threading.Event: non-/health requests wait for it),
    .keepalive_timeout (seconds: idle keep-alive connections are closed silently after it).
    Counters: .count (non-/health requests), .health_count, .inflight, .connections (accepted),
    .log (list of (method, target) of non-/health requests), .last_headers."""

    def __init__(self, name, backlog=128):
        self.name = name
        self.healthy = True
        self.fail_status = None
        self.gate = None
        self.keepalive_timeout = None  # seconds; an idle keep-alive connection is closed after it
        self.idle_closes = 0
        self.lock = threading.Lock()
        self.count = 0
        self.health_count = 0
        self.inflight = 0
        self.connections = 0
        self.data_connections = 0  # connections that carried at least one non-/health request
        self._data_conns = set()
        self.log = []
        self.requests = []  # dicts: method, target, headers (non-/health)
        self.errors = []
        self._conns = set()
        self._closed = False
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((LOCALHOST, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.address = f"{LOCALHOST}:{self.port}"
        self._thread = threading.Thread(target=self._accept_loop, name=f"origin-{name}", daemon=True)
        self._thread.start()

    def __repr__(self):
        return f"<Origin {self.name} {self.address}>"

    def reset_counters(self):
        with self.lock:
            self.count = 0
            self.health_count = 0
            self.log = []
            self.requests = []

    def close(self):
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        if self.gate is not None:
            self.gate.set()
        with self.lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        self._thread.join(2)

    def _accept_loop(self):
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self._conns.add(c)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    # -- one connection

    def _serve(self, c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rfile = c.makefile("rb", buffering=256 * 1024)
        try:
            while not self._closed:
                if not self._one(c, rfile):
                    break
        except (OSError, ValueError) as e:
            if not self._closed:
                with self.lock:
                    self.errors.append(repr(e))
        finally:
            with self.lock:
                self._conns.discard(c)
            try:
                rfile.close()
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass

    def _one(self, c, rfile):
        ka = self.keepalive_timeout
        c.settimeout(ka)  # None = wait forever for the next request
        try:
            line = rfile.readline(65537)
        except socket.timeout:
            with self.lock:
                self.idle_closes += 1
            return False  # our keep-alive timeout: close silently, as servers do
        finally:
            c.settimeout(None)
        if not line:
            return False
        while line in (b"\r\n", b"\n"):  # tolerate stray CRLF between requests (RFC 9112 2.2)
            line = rfile.readline(65537)
            if not line:
                return False
        parts = line.decode("latin-1").rstrip("\r\n").split(" ")
        if len(parts) != 3:
            self._write(c, 400, [], b"bad request line", close=True)
            return False
        method, target, version = parts
        headers = []
        while True:
            h = rfile.readline(65537)
            if not h:
                return False
            if h in (b"\r\n", b"\n"):
                break
            k, _, v = h.decode("latin-1").rstrip("\r\n").partition(":")
            headers.append((k, v.strip(" \t")))
        hmap = {}
        for k, v in headers:
            hmap.setdefault(k.lower(), []).append(v)
        path, _, query = target.partition("?")
        is_health = path == "/health"
        path = _behaviour_path(path)
        req = {"method": method, "target": target, "headers": headers, "version": version}
        with self.lock:
            if is_health:
                self.health_count += 1
            else:
                self.count += 1
                self.log.append((method, target))
                self.requests.append(req)
                if c not in self._data_conns:  # the connection carried proxied traffic
                    self._data_conns.add(c)
                    self.data_connections += 1
            self.inflight += 0 if is_health else 1
        try:
            conn_hdr = ",".join(hmap.get("connection", [])).lower()
            close = ("close" in conn_hdr) or (version == "HTTP/1.0" and "keep-alive" not in conn_hdr)
            if "100-continue" in ",".join(hmap.get("expect", [])).lower():
                c.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            pause = urllib.parse.parse_qs(query).get("pause_ms")
            if pause:  # let the proxy's buffers towards us fill up before reading the body
                time.sleep(int(pause[0]) / 1000.0)
            length, sha = self._read_body(rfile, hmap)
            req["body_length"] = length
            if self.gate is not None and not is_health:
                self.gate.wait(30)
            return self._dispatch(c, method, target, path, query, version, headers, length, sha,
                                  close)
        finally:
            with self.lock:
                self.inflight -= 0 if is_health else 1

    @staticmethod
    def _read_body(rfile, hmap):
        h = hashlib.sha256()
        n = 0
        te = ",".join(hmap.get("transfer-encoding", [])).lower()
        buf = bytearray(1 << 20)
        mv = memoryview(buf)
        if "chunked" in te:
            while True:
                sz = rfile.readline(4096)
                if not sz:
                    raise ValueError("eof in chunk size")
                size = int(sz.split(b";")[0].strip(), 16)
                if size == 0:
                    while True:
                        t = rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                while size > 0:
                    k = rfile.readinto(mv[:min(size, len(buf))])
                    if not k:
                        raise ValueError("eof in chunk")
                    h.update(mv[:k])
                    n += k
                    size -= k
                if rfile.read(2) != b"\r\n":
                    raise ValueError("bad chunk end")
        elif "content-length" in hmap:
            left = int(hmap["content-length"][0])
            while left > 0:
                k = rfile.readinto(mv[:min(left, len(buf))])
                if not k:
                    raise ValueError("eof in body")
                h.update(mv[:k])
                n += k
                left -= k
        return n, h.hexdigest()

    def _write(self, c, status, headers, body, close=False, reason=None):
        reason = reason or _REASONS.get(status, "Status")
        lines = [f"HTTP/1.1 {status} {reason}", f"X-Origin-Name: {self.name}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if status >= 200 and status not in (204, 304):
            lines.append(f"Content-Length: {len(body)}")
        if close:
            lines.append("Connection: close")
        c.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
        return not close

    def _dispatch(self, c, method, target, path, query, version, headers, length, sha, close):
        body_for = lambda b: b"" if method == "HEAD" else b  # noqa: E731
        if path == "/health":
            if self.healthy:
                return self._write(c, 200, [("Content-Type", "text/plain")], b"ok", close)
            return self._write(c, 503, [("Content-Type", "text/plain")], b"unhealthy", close)
        if self.fail_status:
            st = self.fail_status
            return self._write(c, st, [("Content-Type", "text/plain")],
                               body_for(f"forced {st} from {self.name}".encode()), close)
        if path == "/id":
            return self._write(c, 200, [("Content-Type", "text/plain")], body_for(self.name.encode()),
                               close)
        if path.startswith("/status/"):
            st = int(path.split("/")[2])
            body = b"" if st in (204, 304) else body_for(f"status {st} from {self.name}".encode())
            return self._write(c, st, [("Content-Type", "text/plain")], body, close)
        if path.startswith("/sleep/"):
            time.sleep(int(path.split("/")[2]) / 1000.0)
            return self._write(c, 200, [("Content-Type", "text/plain")], body_for(self.name.encode()),
                               close)
        if path.startswith("/bytes/"):
            n = int(path.split("/")[2])
            hdr = [f"HTTP/1.1 200 OK", f"X-Origin-Name: {self.name}",
                   "Content-Type: application/octet-stream", f"Content-Length: {n}"]
            if close:
                hdr.append("Connection: close")
            c.sendall(("\r\n".join(hdr) + "\r\n\r\n").encode())
            if method != "HEAD":
                for chunk in pattern_chunks(n):
                    c.sendall(chunk)
            return not close
        if path.startswith("/chunked/"):
            n = int(path.split("/")[2])
            hdr = [f"HTTP/1.1 200 OK", f"X-Origin-Name: {self.name}",
                   "Content-Type: application/octet-stream", "Transfer-Encoding: chunked"]
            if close:
                hdr.append("Connection: close")
            c.sendall(("\r\n".join(hdr) + "\r\n\r\n").encode())
            if method != "HEAD":
                for chunk in pattern_chunks(n, chunk=65536 + 13):
                    c.sendall(b"%x\r\n" % len(chunk))
                    c.sendall(chunk)
                    c.sendall(b"\r\n")
                c.sendall(b"0\r\n\r\n")
            return not close
        if path == "/sink":
            body = json.dumps({"name": self.name, "length": length, "sha256": sha}).encode()
            return self._write(c, 200, [("Content-Type", "application/json")], body_for(body), close)
        if path.startswith("/eof/"):  # no Content-Length, no chunking: the body ends at close
            n = int(path.split("/")[2])
            hdr = [f"HTTP/1.1 200 OK", f"X-Origin-Name: {self.name}",
                   "Content-Type: application/octet-stream", "Connection: close"]
            c.sendall(("\r\n".join(hdr) + "\r\n\r\n").encode())
            if method != "HEAD":
                for chunk in pattern_chunks(n):
                    c.sendall(chunk)
            return False
        if path == "/close":
            self._write(c, 200, [("Content-Type", "text/plain")], body_for(self.name.encode()),
                        close=True)
            return False
        if path == "/hop":
            hop = [("Connection", "X-Origin-Hop"), ("X-Origin-Hop", "1"),
                   ("Keep-Alive", "timeout=99"), ("Proxy-Connection", "keep-alive"),
                   ("Trailer", "X-Origin-Trailer"), ("Upgrade", "foo/1"),
                   ("Content-Type", "text/plain")]
            return self._write(c, 200, hop, body_for(self.name.encode()), close)
        # /echo and anything else
        body = json.dumps({
            "name": self.name, "method": method, "path": target.partition("?")[0], "query": query, "target": target,
            "version": version, "headers": headers, "body_length": length, "body_sha256": sha,
        }).encode()
        return self._write(c, 200, [("Content-Type", "application/json")], body_for(body), close)


class RawServer:
    """A listening socket whose accepted connections are handed to handler(sock) in a thread, for
    upstreams that misbehave at the byte level. With handler=None it never accepts (backlog tests)."""

    def __init__(self, handler=None, backlog=128):
        self.handler = handler
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((LOCALHOST, 0))
        self.sock.listen(backlog)
        self.port = self.sock.getsockname()[1]
        self.address = f"{LOCALHOST}:{self.port}"
        self.accepted = 0
        self._closed = False
        self._conns = []
        self._fillers = []
        if handler is not None:
            threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while not self._closed:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            self._conns.append(c)
            threading.Thread(target=self._run, args=(c,), daemon=True).start()

    def _run(self, c):
        try:
            self.handler(c)
        except OSError:
            pass
        finally:
            try:
                c.close()
            except OSError:
                pass

    def fill_backlog(self, attempts=64):
        """For a server that never accepts: connect until a connect no longer completes, so that
        further SYNs are dropped by the kernel (a connect to it then hangs). True on success."""
        for _ in range(attempts):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            try:
                s.connect((LOCALHOST, self.port))
            except (socket.timeout, OSError):
                s.close()
                return True
            self._fillers.append(s)
        return False

    def close(self):
        self._closed = True
        for s in [self.sock] + self._conns + self._fillers:
            try:
                s.close()
            except OSError:
                pass


def read_request_head(sock, limit=1 << 20):
    """Reads from a raw socket up to the end of a request head; returns the bytes (b'' on EOF)."""
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        d = sock.recv(65536)
        if not d:
            return data
        data += d
    return data


_KEYWORDS = {"id", "echo", "status", "sleep", "bytes", "chunked", "eof", "sink", "close", "hop"}


def _behaviour_path(path):
    """/any/prefix/sleep/100 behaves as /sleep/100, so routes with prefixes need no rewrite."""
    segs = path.split("/")
    for i, s in enumerate(segs):
        if s in _KEYWORDS:
            return "/" + "/".join(segs[i:])
    return path


_REASONS = {100: "Continue", 200: "OK", 201: "Created", 204: "No Content", 301: "Moved Permanently",
            302: "Found", 304: "Not Modified", 400: "Bad Request", 403: "Forbidden",
            404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error",
            502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}


def header_pairs_get(pairs, name):
    """All values of a header in a list of [name, value] pairs (case-insensitive)."""
    name = name.lower()
    return [v for k, v in pairs if k.lower() == name]


# ------------------------------------------------------------------------------------------------
# the test case base

class ProxyTestCase(unittest.TestCase):
    """Starts proxies and origins that are stopped (by PID) when the test ends. On failure, or with
    MARCHPROXY_ITEST_VERBOSE=1, the proxy's output is printed to stderr."""

    def tmpdir(self):
        if not hasattr(self, "_tmpdir"):
            self._tmpdir = tempfile.mkdtemp(prefix="mp-itest-")
            self.addCleanup(self._remove_tmpdir)
        return self._tmpdir

    def _remove_tmpdir(self):
        if os.environ.get("MARCHPROXY_ITEST_KEEP"):
            sys.stderr.write(f"[harness] kept {self._tmpdir}\n")
            return
        shutil.rmtree(self._tmpdir, ignore_errors=True)

    def start_origin(self, name, **kw):
        o = Origin(name, **kw)
        self.addCleanup(o.close)
        return o

    def start_proxy(self, config_yaml, **kw):
        workdir = tempfile.mkdtemp(prefix="proxy-", dir=self.tmpdir())
        p = Proxy(config_yaml, workdir, **kw)
        self.addCleanup(self._stop_proxy, p)
        return p

    def _failed(self):
        # unittest (3.11) reports a failure to the result as it happens; outcome.success is reset
        # while a cleanup runs, so look at the result itself.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        for t, _ in list(getattr(result, "failures", [])) + list(getattr(result, "errors", [])):
            if t is self or getattr(t, "test_case", None) is self:
                return True
        return False

    def _stop_proxy(self, p):
        p.stop()
        problems = []
        if p.killed:
            problems.append(f"did not exit within {STOP_DEADLINE}s of SIGTERM (killed)")
        elif p.returncode is not None and p.returncode < 0 and not p.exit_observed:
            problems.append(f"died of signal {-p.returncode} ({signal.Signals(-p.returncode).name})")
        elif p.exited_on_its_own:
            problems.append(f"exited on its own during the test with code {p.returncode}")
        elif p.returncode not in (0, None) and not p.exit_observed:
            problems.append(f"exit code {p.returncode} after SIGTERM (the contract says 0)")
        sanitizer = [ln for ln in p.lines if _SANITIZER_RE.search(ln)]
        if sanitizer:
            problems.append("sanitizer report: " + sanitizer[0])
        if problems or self._failed() or os.environ.get("MARCHPROXY_ITEST_VERBOSE"):
            sys.stderr.write(f"\n----- marchproxy output ({self.id()}, pid {p.pid}, "
                             f"exit {p.returncode}, {p.binary}) -----\n{p.tail(200)}\n----- end -----\n")
        if problems:
            raise AssertionError(f"marchproxy (pid {p.pid}) " + "; ".join(problems))

    # -- assertions used everywhere

    def assertStatus(self, resp, status, msg=None):
        if resp is None:
            self.fail(f"expected {status}, got no response (connection closed){' - ' + msg if msg else ''}")
        if resp.status != status:
            self.fail(f"expected status {status}, got {resp!r}{' - ' + msg if msg else ''}")

    def assertClosed(self, conn, timeout=5.0, msg=""):
        if not conn.closed_by_peer(timeout):
            self.fail(f"connection still open {timeout}s after the response {msg}")

    def assertServes(self, proxy, path="/id", host="test.local", status=200):
        """The proxy still answers a normal request on a fresh connection."""
        self.assertTrue(proxy.alive(), f"marchproxy died:\n{proxy.tail()}")
        r = get(proxy.port, path, host=host)
        self.assertStatus(r, status, "a normal request right after")
        return r


def main():
    unittest.main(verbosity=2)
