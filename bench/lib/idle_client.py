#!/usr/bin/python3
"""Open N keep-alive connections through a proxy, do one request on each, then hold them idle.

Used by the `idle` scenario (and usable alone):

    idle_client.py --port 8080 --n 10000 [--concurrency 200] [--hold]

Each connection sends `GET / HTTP/1.1` (keep-alive) and reads one full response, so a connection
only counts as established when the request went through the proxy to the origin and back.
It prints one JSON line {"event": "established", ...}. With --hold it then waits for a line on
stdin, checks which connections the proxy has closed meanwhile, prints {"event": "alive", ...},
and closes everything with RST (SO_LINGER 0) so that no TIME_WAIT is left behind on the client.
"""

import argparse
import errno
import json
import resource
import selectors
import socket
import struct
import sys
import time

LINGER_RST = struct.pack("ii", 1, 0)


class Conn:
    __slots__ = ("sock", "state", "buf", "deadline", "status")

    def __init__(self, sock, deadline):
        self.sock = sock
        self.state = "connecting"
        self.buf = b""
        self.deadline = deadline
        self.status = None


def response_complete(buf):
    """(done, status) for a buffered HTTP/1.1 response with Content-Length or chunked body."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return False, None
    head = buf[:head_end].decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    body = buf[head_end + 4:]
    length, chunked = None, False
    for line in lines[1:]:
        k, _, v = line.partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip())
        elif k == "transfer-encoding" and "chunked" in v.lower():
            chunked = True
    if chunked:
        return body.endswith(b"0\r\n\r\n"), status
    if length is not None:
        return len(body) >= length, status
    return status in (204, 304) or 100 <= status < 200, status


def establish(host, port, n, concurrency, timeout, path):
    request = f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode()
    sel = selectors.DefaultSelector()
    idle, failed, non200 = [], 0, 0
    errors = {}
    started = 0
    in_flight = 0

    def fail(c, why):
        nonlocal failed, in_flight
        failed += 1
        in_flight -= 1
        errors[why] = errors.get(why, 0) + 1
        try:
            sel.unregister(c.sock)
        except (KeyError, ValueError):
            pass
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        c.sock.close()

    while started < n or in_flight:
        while started < n and in_flight < concurrency:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c = Conn(s, time.monotonic() + timeout)
            started += 1
            in_flight += 1
            rc = s.connect_ex((host, port))
            if rc not in (0, errno.EINPROGRESS):
                fail(c, f"connect: {errno.errorcode.get(rc, rc)}")
                continue
            sel.register(s, selectors.EVENT_WRITE, c)
        for key, _ in sel.select(timeout=0.5):
            c = key.data
            try:
                if c.state == "connecting":
                    err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(c, f"connect: {errno.errorcode.get(err, err)}")
                        continue
                    c.sock.sendall(request)  # a few dozen bytes: fits the empty send buffer
                    c.state = "reading"
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                else:
                    chunk = c.sock.recv(65536)
                    if not chunk:
                        fail(c, "closed before a full response")
                        continue
                    c.buf += chunk
                    done, status = response_complete(c.buf)
                    if done:
                        sel.unregister(c.sock)
                        in_flight -= 1
                        if status != 200:
                            non200 += 1
                        c.state, c.buf, c.status = "idle", b"", status
                        idle.append(c.sock)
            except (OSError, ValueError, IndexError) as e:
                fail(c, type(e).__name__)
        now = time.monotonic()
        for key in list(sel.get_map().values()):
            if key.data.deadline < now:
                fail(key.data, "timeout")
    sel.close()
    return idle, failed, non200, errors


def check_alive(socks):
    """(open, closed): a socket the proxy closed reads EOF or a reset; an open one would block."""
    open_, closed = 0, 0
    for s in socks:
        try:
            data = s.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
            if data:
                open_ += 1  # unexpected bytes, but the connection is still there
            else:
                closed += 1
        except BlockingIOError:
            open_ += 1
        except OSError:
            closed += 1
    return open_, closed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=200, help="connections being set up at once")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per connection")
    ap.add_argument("--path", default="/")
    ap.add_argument("--hold", action="store_true", help="hold until a line on stdin")
    args = ap.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.n + 64
    if soft < want:
        if hard != resource.RLIM_INFINITY and hard < want:
            print(json.dumps({"event": "error", "error": f"RLIMIT_NOFILE hard limit {hard} < {want}"}),
                  flush=True)
            return 2
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY
                                                    else max(want, hard), hard))

    t0 = time.monotonic()
    idle, failed, non200, errors = establish(args.host, args.port, args.n, args.concurrency,
                                             args.timeout, args.path)
    print(json.dumps({"event": "established", "ok": len(idle), "failed": failed,
                      "non200": non200, "errors": errors,
                      "seconds": round(time.monotonic() - t0, 3)}), flush=True)
    if args.hold:
        sys.stdin.readline()
        open_, closed = check_alive(idle)
        print(json.dumps({"event": "alive", "open": open_, "closed": closed}), flush=True)
    for s in idle:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
