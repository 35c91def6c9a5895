"""The page pool (transferkit/native/page_pool.cpp): PyTorch's CPU tensors reuse resident pages without
faults, resident memory stays at the peak of what was alive, results are unchanged, forks and a missing
compiler are handled. Each check runs in a fresh process: an allocator is installed once per process."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                       reason="the pool is for Linux with glibc"),
    pytest.mark.skipif(shutil.which(os.environ.get("CXX", "c++")) is None, reason="no C++ compiler to build the pool"),
]

MIB = 2**20

# Blocks of many sizes freed out of order, with long-lived ones in between: the pattern that fragments a
# heap. Prints peak RSS growth over the largest amount alive, page faults after warm-up, pool counters.
FRAGMENTING = """
import resource, sys, torch
from transferkit.native import page_pool
assert page_pool.install(one_mapping_per_move=bool(int(sys.argv[1])))
def rss_hwm():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:")) * 1024
def step(keep):
    blocks = [torch.empty((1 + (i * 7) % 23) * 2**20, dtype=torch.uint8).fill_(i) for i in range(40)]
    if len(keep) < 4:
        keep.append(torch.empty(2**20, dtype=torch.uint8).fill_(1))  # long-lived, placed among the others
    for i in range(0, 40, 2):
        blocks[i] = None                                           # half freed mid-way
    more = [torch.empty((2 + (i * 5) % 31) * 2**20, dtype=torch.uint8).fill_(i) for i in range(20)]
    assert all(int(b[0]) == i for i, b in enumerate(more))
    return sum(b.numel() for b in blocks if b is not None) + sum(b.numel() for b in more)
base, keep = rss_hwm(), []
step(keep); step(keep)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    step(keep)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
stats = page_pool.stats()
print((rss_hwm() - base) // 2**20, stats["peak_live"] // 2**20, faults, stats["failed_moves"])
"""

IDENTICAL = """
import sys, torch
from transferkit.cpu_memory import configure_cpu_allocator
mode = configure_cpu_allocator()
torch.manual_seed(0)
model = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                            torch.nn.Linear(64, 5))
optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
for step in range(4):
    x = torch.randn(16, 3, 64, 64)   # activations of 8 MiB: all in the pool when it is in force
    loss = torch.nn.functional.cross_entropy(model(x), torch.arange(16) % 5)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(mode, sum(float(p.double().abs().sum()) for p in model.parameters()).hex())
"""

FORKED_WORKERS = """
import torch
from torch.utils.data import DataLoader, Dataset
from transferkit.cpu_memory import configure_cpu_allocator
from transferkit.native import page_pool
assert configure_cpu_allocator() == "page-pool"
held = torch.empty(64 * 2**20, dtype=torch.uint8).fill_(3)
del held                                   # 64 MiB free in the parent's pool when the workers fork
class Big(Dataset):
    def __len__(self):
        return 8
    def __getitem__(self, i):
        return torch.full((2**20,), float(i))  # 4 MiB per item: pooled in the worker
total = sum(float(batch.sum()) for batch in DataLoader(Big(), batch_size=2, num_workers=2))
print(total == sum(i * 2**20 for i in range(8)), page_pool.stats()["pooled"] >= 64 * 2**20)
"""

TRIM = """
import torch
from transferkit.cpu_memory import configure_cpu_allocator
from transferkit.native import page_pool
def rss():
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmRSS:")) // 1024
assert configure_cpu_allocator() == "page-pool"
x = torch.empty(256 * 2**20, dtype=torch.uint8).fill_(1)
del x
kept = rss()
page_pool.trim()
print(page_pool.stats()["pooled"], kept - rss())
"""


def _python(code: str, *args: str, env: dict | None = None) -> list[str]:
    environment = {k: v for k, v in os.environ.items() if k != "TRANSFERKIT_CPU_ALLOCATOR"}
    environment.update(env or {})
    out = subprocess.run([sys.executable, "-c", code, *args], env=environment, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


@pytest.mark.parametrize("one_mapping_per_move", ["0", "1"])
def test_resident_memory_stays_at_the_peak_alive_and_reuse_does_not_fault(one_mapping_per_move):
    growth, peak_live, faults, failed = map(int, _python(FRAGMENTING, one_mapping_per_move))
    assert peak_live > 400  # MiB alive at the peak of a step
    assert growth <= peak_live + 40, (growth, peak_live)  # a heap would hold the fragments on top of that
    assert faults < 20 * 256, faults  # under one MiB faulted in per step, against hundreds of MiB allocated
    assert failed == 0


def test_training_is_bit_identical_with_and_without_the_pool():
    pooled = _python(IDENTICAL)
    plain = _python(IDENTICAL, env={"TRANSFERKIT_CPU_ALLOCATOR": "default"})
    assert pooled[0] == "page-pool" and plain[0] == "default"
    assert pooled[1] == plain[1]


def test_dataloader_workers_fork_from_a_process_with_a_pool():
    assert _python(FORKED_WORKERS) == ["True", "True"]


def test_trim_gives_the_free_pages_back():
    pooled, returned_mib = map(int, _python(TRIM))
    assert pooled == 0 and returned_mib > 200


def test_without_a_compiler_the_kept_heap_is_used_and_the_run_says_why(tmp_path):
    code = ("from transferkit.cpu_memory import configure_cpu_allocator, fallback_reason\n"
            "print(configure_cpu_allocator()); print(fallback_reason())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "CXX": str(tmp_path / "no-such-c++"),
                              "TRANSFERKIT_NATIVE_CACHE": str(tmp_path / "native")})
    assert out.returncode == 0, out.stderr
    mode, reason = out.stdout.splitlines()
    assert mode == "kept-heap" and "no C++ compiler" in reason and "no-such-c++" in reason


def test_the_build_is_cached_per_source_and_torch(tmp_path):
    code = "from transferkit.native import library_path; print(library_path('page_pool'))"
    env = {**os.environ, "TRANSFERKIT_NATIVE_CACHE": str(tmp_path)}
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    built = first.stdout.strip()
    stamp = os.stat(built).st_mtime_ns
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert second.stdout.strip() == built and os.stat(built).st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [os.path.basename(built)]  # no partial files left
