"""Coroutine frames on the HTTP/1.1 request path stay small enough for asio to recycle them.

asio keeps freed coroutine frames of at most 1,020 bytes in a per-thread cache (255 chunks of 4
bytes); a larger frame costs a malloc and a free every time its coroutine is entered, on every
request (bench/results/callgrind-h1-20261203-2.md). GCC 12 gives every local and every co_await
temporary its own slot, so a frame grows back quietly when code is added to HttpSession::forward()
and friends.

The proxy runs with a small preloaded shim (compiled here with the system C compiler) that logs
every std::aligned_alloc above 1,024 bytes: asio allocates coroutine frames with aligned_alloc, and
a frame that fits the cache is never allocated again after warm-up. After warm-up, keep-alive
requests of each kind (GET with a Content-Length or a chunked response, HEAD, POST with a
Content-Length or a chunked body, a rewritten path) must log none.

bench/frame_sizes.py prints the frame size of every coroutine in an object file, to find the one that
grew."""
import os
import shutil
import subprocess
import unittest

from harness import ProxyTestCase, Conn, find_binary, render

SHIM = r"""
#define _GNU_SOURCE
#include <fcntl.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
static int log_fd = -1;
static int seen_any;
__attribute__((constructor)) static void open_log(void) {
  const char* p = getenv("MP_FRAME_LOG");
  if (p) log_fd = open(p, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
}
void* aligned_alloc(size_t align, size_t size) {
  if (log_fd >= 0) {
    if (!__atomic_exchange_n(&seen_any, 1, __ATOMIC_RELAXED)) (void)!write(log_fd, "any\n", 4);
    if (size > 1024) {
      char b[32];
      int n = snprintf(b, sizeof b, "%zu\n", size);
      (void)!write(log_fd, b, (size_t)n);
    }
  }
  return memalign(align, size);
}
"""

CONFIG = """
schema: 1
workers: 1
admin: { address: 127.0.0.1, port: 0 }
listeners: [ { name: http, address: 127.0.0.1, port: 0 } ]
virtual_hosts:
  - name: app
    domains: ["*"]
    routes:
      - match: { prefix: /rw/ }
        forward: { cluster: o, prefix_rewrite: /echo/ }
      - match: { prefix: / }
        forward: { cluster: o }
clusters:
  - name: o
    endpoints: [ "${O}" ]
access_log: { enabled: false }
"""


def compiler():
    for cc in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc):
            return cc
    return None


def sanitized(binary):
    """True for an ASan/UBSan/TSan build: its runtime must come first in the library list (a
    preloaded shim breaks that) and its coroutine frames are larger anyway."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    return any(lib in out for lib in ("libasan", "libtsan", "libubsan"))


class FrameRecyclingTest(ProxyTestCase):
    def setUp(self):
        if sanitized(find_binary()):
            self.skipTest("sanitizer build: frame sizes are only checked on release builds")
        cc = compiler()
        if not cc:
            self.skipTest("no C compiler for the aligned_alloc shim")
        d = self.tmpdir()
        src = os.path.join(d, "frame_shim.c")
        self.shim = os.path.join(d, "frame_shim.so")
        self.log = os.path.join(d, "frames.log")
        with open(src, "w") as f:
            f.write(SHIM)
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", self.shim, src], check=True)
        self.o = self.start_origin("O")
        saved = {k: os.environ.get(k) for k in ("LD_PRELOAD", "MP_FRAME_LOG")}
        os.environ["LD_PRELOAD"] = self.shim
        os.environ["MP_FRAME_LOG"] = self.log
        try:
            self.p = self.start_proxy(render(CONFIG, O=self.o.address))
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def logged(self):
        with open(self.log) as f:
            return f.read().split()

    def exchange(self, c):
        r = c.request("GET", "/bytes/300")
        self.assertEqual((r.status, len(r.body)), (200, 300))
        r = c.request("GET", "/chunked/5000")
        self.assertEqual((r.status, len(r.body)), (200, 5000))
        r = c.request("HEAD", "/bytes/10")
        self.assertEqual(r.status, 200)
        r = c.request("POST", "/sink", body=b"x" * 2000)
        self.assertEqual(r.status, 200)
        self.assertIn(b'"length": 2000', r.body.replace(b'"length":2000', b'"length": 2000'))
        c.send(b"POST /sink HTTP/1.1\r\nHost: test.local\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n0\r\n\r\n")
        r = c.read_response("POST")
        self.assertEqual(r.status, 200)
        r = c.request("GET", "/rw/x?q=1")
        self.assertEqual(r.status, 200)
        self.assertIn(b"/echo/x", r.body)

    def test_keep_alive_requests_allocate_no_frame_above_the_recycling_size(self):
        with Conn(self.p.port) as c:
            for _ in range(10):  # warm-up: the caches fill, the pool holds its connection
                self.exchange(c)
            before = len(self.logged())
            for _ in range(30):
                self.exchange(c)
            logged = self.logged()
        self.assertIn("any", logged, "the shim saw no aligned_alloc: asio no longer allocates "
                                     "frames with it, and this test checks nothing")
        grown = logged[before:]
        self.assertEqual(len(grown), 0, f"{len(grown)} allocations above 1,024 bytes in 30 rounds of keep-alive "
                                    f"requests (sizes {sorted(set(grown))}): a coroutine frame on the "
                                    "request path outgrew asio's recycling cache (bench/frame_sizes.py)")


if __name__ == "__main__":
    unittest.main()
