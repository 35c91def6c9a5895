"""CPU allocator settings: repeated large tensors stop page-faulting, huge-pages mode gives freed memory back,
and the switches choose the mode."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest

from transferkit.cpu_memory import transparent_huge_pages

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the settings are glibc malloc's")

PROBE = """
import resource, sys, torch
from transferkit.cpu_memory import configure_cpu_allocator
mode = configure_cpu_allocator()
def step():
    x = torch.empty(16 * 2**20)  # 64 MiB, as an activation of a training step
    x.fill_(1.0)
    return float(x[-1])
step(); step()  # warm-up: the heap grows to its working size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(mode, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

GIVES_BACK = """
import torch
from transferkit.cpu_memory import configure_cpu_allocator
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) // 1024
mode = configure_cpu_allocator()
x = torch.empty(256 * 2**20, dtype=torch.uint8)
x.fill_(1)
held = rss()
del x
print(mode, held - rss())
"""


def _run(code: str, env_value: str | None, first: str = "") -> list[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFERKIT_CPU_ALLOCATOR", "THP_MEM_ALLOC_ENABLE")}
    if env_value is not None:
        env["TRANSFERKIT_CPU_ALLOCATOR"] = env_value
    out = subprocess.run([sys.executable, "-c", first + code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def _default_mode() -> str:
    return "page-pool" if shutil.which(os.environ.get("CXX", "c++")) else "kept-heap"


def test_freed_activation_memory_is_not_faulted_in_again_page_by_page():
    pages = 10 * 64 * 2**20 // 4096
    expected = {None: _default_mode(), "page-pool": _default_mode(), "heap": "kept-heap",
                "huge-pages": "huge-pages" if transparent_huge_pages() else "kept-heap"}
    for switch, wanted in expected.items():
        mode, faults = _run(PROBE, switch)
        assert mode == wanted
        # pool and kept heap: reused (about one block's pages fault while it settles); huge pages: 1 fault per 2 MiB
        assert int(faults) < pages // 5
    mode, faults = _run(PROBE, "default")
    assert mode == "default"
    assert int(faults) > pages // 2  # glibc mmaps and unmaps each 64 MiB block: every page faults again


@pytest.mark.skipif(not transparent_huge_pages(), reason="the kernel offers no transparent huge pages")
def test_huge_pages_mode_gives_freed_memory_back_and_needs_to_come_first():
    mode, returned_mib = _run(GIVES_BACK, "huge-pages")
    assert mode == "huge-pages" and int(returned_mib) > 200  # of 256 MiB: the peak is only what is alive
    mode, returned_mib = _run(GIVES_BACK, "heap")
    assert mode == "kept-heap" and int(returned_mib) < 50  # kept for reuse
    # PyTorch reads its huge-page switch at its first CPU allocation: after one, the kept heap instead
    mode, _ = _run(GIVES_BACK, "huge-pages", first="import torch; torch.zeros(1)\n")
    assert mode == "kept-heap"


def test_an_unknown_allocator_setting_is_refused_with_the_choices():
    out = subprocess.run([sys.executable, "-c", "from transferkit.cpu_memory import configure_cpu_allocator as c; c()"],
                         env={**os.environ, "TRANSFERKIT_CPU_ALLOCATOR": "huge"}, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0 and "TRANSFERKIT_CPU_ALLOCATOR=huge: use one of" in out.stderr
