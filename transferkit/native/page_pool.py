"""PyTorch's CPU tensors from a pool of resident pages (page_pool.cpp): no page faults, no fragmentation."""

from __future__ import annotations

import ctypes

from transferkit.native import load

SMALLEST_POOLED = 1 << 20  # smaller tensors stay with PyTorch's own allocator (glibc's malloc)
STATS = ("live", "pooled", "peak_live", "faulted", "moved", "failed_moves", "free_pieces", "moves_span_mappings")


def _library() -> ctypes.CDLL:
    library = load("page_pool")
    library.transferkit_page_pool_install.argtypes = [ctypes.c_uint64, ctypes.c_int]
    library.transferkit_page_pool_install.restype = ctypes.c_int
    library.transferkit_page_pool_stats.argtypes = [ctypes.POINTER(ctypes.c_uint64)]
    return library


def install(smallest: int = SMALLEST_POOLED, one_mapping_per_move: bool = False) -> bool:
    """Make the pool PyTorch's CPU allocator for tensors of `smallest` bytes and more; False if another won.

    Tensors that exist already keep their own deleter, so this may come at any time; NativeBuildError
    where the pool cannot be compiled. `one_mapping_per_move` behaves as on kernels before 6.17 (tests)."""
    import torch  # noqa: F401  (libc10 is loaded before the pool links against it)

    return _library().transferkit_page_pool_install(smallest, int(one_mapping_per_move)) == 1


def stats() -> dict[str, int]:
    """Bytes alive in pooled tensors, free in the pool, the peak alive, faulted in and moved; counters."""
    values = (ctypes.c_uint64 * len(STATS))()
    _library().transferkit_page_pool_stats(values)
    return dict(zip(STATS, values))


def trim() -> None:
    """Give every free page in the pool back to the system."""
    _library().transferkit_page_pool_trim()
