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
    actors = {k.split("(")[0] for k in funcs if k.endswith("[clone .actor]")}
    result = {}
    for fn, body in funcs.items():
        if "[clone" in fn or fn.split("(")[0] not in actors:
            continue
        # The ramp passes the frame size to the promise's operator new (mov $N,%edi), or, with
        # asio's allocator inlined, the rounded size of the aligned_new for a frame too big for the
        # cache (mov $N,%esi; mov $0x10,%edi). Not found: a small frame (its size is folded into
        # the inlined cache lookup).
        size = None
        for i, ins in enumerate(body[:60]):
            m = re.search(r"mov\s+\$0x([0-9a-f]+),%edi", ins)
            if m and int(m.group(1), 16) != 0x10:
                size = int(m.group(1), 16)
                break
            m = re.search(r"mov\s+\$0x([0-9a-f]+),%esi", ins)
            if m and i + 1 < len(body) and re.search(r"mov\s+\$0x10,%edi", body[i + 1]):
                size = int(m.group(1), 16)
                break
        if size is not None:
            result[fn] = size
    return result


def main():
    for obj in sys.argv[1:]:
        for fn, size in sorted(frames(obj).items(), key=lambda kv: -kv[1]):
            mark = "!" if size > LIMIT else " "
            print(f"{mark} {size:6d}  {re.sub(r'marchproxy::proxy::', '', fn)[:150]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
