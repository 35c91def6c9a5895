"""Keep freed CPU memory for reuse, as a GPU's caching allocator does, instead of handing it back every step.

glibc's malloc serves each large block (activations and their gradients: tens to hundreds of MB) with a
fresh `mmap` and gives it back with `munmap` when freed, so every training step on the CPU faults in
and zeroes all its activation memory again. Measured on this project's 2-core machine (training step,
batch 32, 224 px, channels_last): 10-30x fewer page faults, EfficientNet-Lite0 1.35-1.55x and ResNet-18
1.03-1.19x the images/s, for 0-20% more peak resident memory. Results are bit-identical: only where memory
comes from changes.

`keep_freed_memory()` sets two malloc options for the whole process: no mmap'd blocks (M_MMAP_MAX 0),
and up to 1 GiB of free memory kept at the top of the heap (M_TRIM_THRESHOLD). It does nothing where
the C library is not glibc, and nothing when TRANSFERKIT_CPU_ALLOCATOR=default is set.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_AT_HEAP_TOP = 1 << 30
ENV_SWITCH = "TRANSFERKIT_CPU_ALLOCATOR"

_applied = False


def keep_freed_memory() -> bool:
    """Make glibc malloc reuse freed blocks instead of unmapping them; True if the settings are (now) in force."""
    global _applied
    if _applied:
        return True
    if os.environ.get(ENV_SWITCH, "").lower() == "default" or platform.system() != "Linux":
        return False
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _applied = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, KEEP_AT_HEAP_TOP) == 1
    return _applied
