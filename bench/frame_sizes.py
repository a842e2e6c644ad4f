#!/usr/bin/env python3
"""Coroutine frame sizes in compiled objects (GCC): for each coroutine (a function with an
`[clone .actor]`), the constant its ramp passes to the frame's operator new.

  bench/frame_sizes.py build/release/src/proxy/CMakeFiles/mp_proxy.dir/server/http_session.cc.o [...]

asio recycles a frame only when it is <= 1,020 bytes (thread_info_base: 255 chunks of 4 bytes);
larger frames cost a malloc/free every time they are entered. Frames above that are marked '!'.
"""
import re
import subprocess
import sys

LIMIT = 1020


def frames(obj):
    out = subprocess.run(["objdump", "-d", "-C", "--no-show-raw-insn", obj], check=True,
                         capture_output=True, text=True).stdout
    funcs = {}
    name = None
    for line in out.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if m:
            name = m.group(1)
            funcs[name] = []
        elif name is not None:
            funcs[name].append(line)
    result = {}
    for fn, body in funcs.items():
        if "[clone" in fn or (fn + "::") not in "".join(k for k in funcs if k.endswith("[clone .actor]") and k.startswith(fn)):
            pass
        if "[clone" in fn:
            continue
        if not any(k.startswith(fn.split("(")[0] + "(") and k.endswith("[clone .actor]") for k in funcs):
            continue
        for ins in body[:20]:
            m = re.search(r"mov\s+\$0x([0-9a-f]+),%edi", ins)
            if m:
                result[fn] = int(m.group(1), 16)
                break
    return result


def main():
    worst = 0
    for obj in sys.argv[1:]:
        for fn, size in sorted(frames(obj).items(), key=lambda kv: -kv[1]):
            mark = "!" if size > LIMIT else " "
            print(f"{mark} {size:6d}  {re.sub(r'marchproxy::proxy::', '', fn)[:150]}")
            worst = max(worst, size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
