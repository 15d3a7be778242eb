"""What made sim_node grow (issue 17): every LIBERO reset frees and rebuilds the MuJoCo model
and its render context, and glibc kept the freed memory in its per-thread arenas (RSS +9 MB per
episode, memory in use unchanged). ``release_freed_heap`` hands it back; this checks that it
does, on the mechanism itself (memory freed in a thread's arena, one chunk pinning the top), in
a fresh process so nothing else moves the numbers. The LIBERO tier checks that a reset does it
(``tests/e2e/test_libero_env.py``)."""
from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="glibc and /proc: Linux only")


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def hold_freed_memory(mb: int = 200) -> None:
    """Leave ~``mb`` MB freed but held by the allocator, as a hard reset did: allocated and
    written on a worker thread (its own arena), all freed but the last chunk, which pins the
    top of the arena so nothing can be trimmed from the end."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]

    def churn() -> None:
        ptrs = [libc.malloc(4000) for _ in range(mb * 256)]
        for p in ptrs:
            ctypes.memset(p, 1, 4000)
        for p in ptrs[:-1]:
            libc.free(p)

    t = threading.Thread(target=churn)
    t.start()
    t.join()


SCRIPT = """
import json
from prevla_sim.libero_env import release_freed_heap
from tests.unit.test_heap_release import hold_freed_memory, rss_mb

start = rss_mb()
hold_freed_memory(200)
held = rss_mb()
released = release_freed_heap()
print(json.dumps({"start": start, "held": held, "after": rss_mb(), "released": released}))
"""


@linux_only
def test_memory_freed_in_a_thread_arena_goes_back_to_the_os():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         timeout=120, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if not r["released"]:
        pytest.skip("the C library has no malloc_trim (not glibc)")
    assert r["held"] - r["start"] > 150, r  # the allocator kept what was freed: the growth
    assert r["held"] - r["after"] > 150, r  # ... and gave it back
