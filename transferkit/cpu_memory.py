"""CPU allocator for training: activation memory without a page fault per 4 KiB every step.

glibc's malloc serves each large block (activations and their gradients: tens to hundreds of MB) with a
fresh `mmap` and gives it back with `munmap` when freed, so every training step on the CPU faults in and
zeroes all its activation memory again, 4 KiB at a time. `keep_freed_memory()` picks one of three cures:

- "page-pool" (the default): PyTorch's CPU tensors of 1 MiB and more come from a pool of resident pages
  (transferkit/native/page_pool.cpp, compiled on first use): freed blocks stay resident and new ones are
  assembled from them by moving pages, never faulted in again, and the pool never holds more than the
  peak of what was alive. As fast as the kept heap and below glibc's own peak (docs/performance.md). Where
  it cannot be compiled (no C++ compiler, no PyTorch headers) the kept heap is used and `fallback_reason()`
  says why.
- "kept-heap" (TRANSFERKIT_CPU_ALLOCATOR=heap): no mmap'd blocks and up to 1 GiB of free memory kept at the
  top of glibc's heap, so freed memory is reused without faults, but the heap fragments: it holds its
  largest extent for the rest of the process, a quarter to a third above the live peak.
- "huge-pages" (TRANSFERKIT_CPU_ALLOCATOR=huge-pages, where the kernel offers transparent huge pages):
  blocks of 2 MiB and more stay mmap'd, so freed memory goes back to the system at once and the peak is
  what is alive, but PyTorch asks for huge pages for them (its THP_MEM_ALLOC_ENABLE switch), so each step
  faults and zeroes its activations again in 2 MiB pages: slower than glibc's default, for a machine
  short of memory. PyTorch reads that switch at its first CPU allocation: this mode needs to be chosen
  before any tensor exists in the process, and is checked, not assumed.

Results are bit-identical in every mode: only where memory comes from changes. Nothing happens where the
C library is not glibc (or the system not Linux), or with TRANSFERKIT_CPU_ALLOCATOR=default.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from pathlib import Path

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_MMAP_THRESHOLD = -3
KEEP_AT_HEAP_TOP = 1 << 30
HUGE_PAGE = 2 << 20  # PyTorch madvises blocks from this size on (c10 alloc_cpu)
TRIM_WITH_HUGE_PAGES = 64 << 20
ENV_SWITCH = "TRANSFERKIT_CPU_ALLOCATOR"
CHOICES = ("", "page-pool", "heap", "kept-heap", "huge-pages", "default")
TORCH_THP_SWITCH = "THP_MEM_ALLOC_ENABLE"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_mode: str | None = None
_fallback_reason = ""


def transparent_huge_pages() -> bool:
    """True when the kernel gives transparent huge pages to memory that asks for them (always or madvise)."""
    try:
        setting = THP_SETTING.read_text()
    except OSError:
        return False
    return "[always]" in setting or "[madvise]" in setting


def _torch_uses_huge_pages() -> bool:
    import torch

    # Under the switch PyTorch aligns blocks to a page, else to 64 bytes, which an mmap'd glibc block (this
    # size always is one while glibc's own thresholds apply) never is page-aligned at. Never touched: no RSS.
    probe = torch.empty(64 << 20, dtype=torch.uint8)
    return probe.data_ptr() % os.sysconf("SC_PAGE_SIZE") == 0


def _mallopt():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _install_page_pool() -> bool:
    global _fallback_reason
    from transferkit.native import NativeBuildError
    from transferkit.native.page_pool import install

    try:
        if install():
            return True
        _fallback_reason = "another CPU allocator was installed first"
    except NativeBuildError as error:
        _fallback_reason = str(error)
    return False


def fallback_reason() -> str:
    """Why the page pool (the default) is not in force, or "" when it is or another mode was asked for."""
    return _fallback_reason


def configure_cpu_allocator() -> str:
    """Set the CPU allocator up for training once per process; the mode in force: "page-pool", "huge-pages",
    "kept-heap" or "default"."""
    global _mode
    if _mode is not None:
        return _mode
    choice = os.environ.get(ENV_SWITCH, "").lower()
    if choice not in CHOICES:
        from transferkit.errors import SpecError

        raise SpecError(f"{ENV_SWITCH}={choice}: use one of {', '.join(sorted(c for c in CHOICES if c))}, "
                        f"or leave it unset (page-pool)")
    mallopt = None
    if choice != "default" and platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        mallopt = _mallopt()
    if mallopt is None:
        _mode = "default"
        return _mode
    if choice in ("", "page-pool") and _install_page_pool():
        _mode = "page-pool"
        return _mode
    if choice == "huge-pages" and transparent_huge_pages():
        set_here = TORCH_THP_SWITCH not in os.environ
        os.environ.setdefault(TORCH_THP_SWITCH, "1")  # read once, at PyTorch's first CPU allocation
        # fixed thresholds also stop glibc raising them (to 32 MiB) as blocks are freed, which grew a
        # fragmented heap of GBs under the mmap'd activations
        if _torch_uses_huge_pages() and mallopt(M_MMAP_THRESHOLD, HUGE_PAGE) == 1 \
                and mallopt(M_TRIM_THRESHOLD, TRIM_WITH_HUGE_PAGES) == 1:
            _mode = "huge-pages"
            return _mode
        if set_here:
            del os.environ[TORCH_THP_SWITCH]
    ok = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_AT_HEAP_TOP) == 1
    _mode = "kept-heap" if ok else "default"
    return _mode


def keep_freed_memory() -> bool:
    """Stop CPU training steps from faulting their activation memory in again (configure_cpu_allocator); True if set."""
    return configure_cpu_allocator() != "default"
