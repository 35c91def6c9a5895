"""Keeping freed CPU memory: repeated large tensors stop page-faulting, and the switch turns it off."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the setting is glibc malloc's")

PROBE = """
import resource, sys, torch
from transferkit.cpu_memory import keep_freed_memory
applied = keep_freed_memory()
def step():
    x = torch.empty(16 * 2**20)  # 64 MiB, as an activation of a training step
    x.fill_(1.0)
    return float(x[-1])
step(); step()  # warm-up: the heap grows to its working size
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != "TRANSFERKIT_CPU_ALLOCATOR"}
    if env_value is not None:
        env["TRANSFERKIT_CPU_ALLOCATOR"] = env_value
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    applied, faults = out.stdout.split()
    return applied == "True", int(faults)


def test_freed_activation_memory_is_reused_instead_of_faulted_in_again():
    kept, kept_faults = _faults(None)
    default, default_faults = _faults("default")
    assert kept and not default
    pages = 10 * 64 * 2**20 // 4096
    assert default_faults > pages // 2  # glibc mmaps and unmaps each 64 MiB block: every page faults again
    assert kept_faults < pages // 5  # reused from the heap (at most about one block's pages fault while it settles)
