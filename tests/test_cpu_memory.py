"""The CPU allocator: a `transferkit` command re-executes itself once under tcmalloc (or the library
TRANSFERKIT_CPU_ALLOCATOR names), falls back to glibc's malloc with the reason printed, and library code
(`transferkit.load()`, imports) leaves the process's allocator alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder, run_cli, tiny_recipe
from transferkit.cpu_memory import ENV_SWITCH, MALLOC_CONF, PREFERRED, PRELOADED, library

pytestmark = pytest.mark.skipif(platform.system() != "Linux", reason="LD_PRELOAD and /proc/self/maps are Linux's")

# as the command line does it, in a process started with `python -c`: re-executed once, then reports
REEXEC = """
import os, sys
sys.argv = ["transferkit", "run", "recipe.yaml"]
from transferkit.cpu_memory import fallback_reason, in_force, preload
print("start", os.getpid(), flush=True)
preload()
print(in_force(), os.getpid(), os.environ.get("LD_PRELOAD", ""), os.environ.get("MALLOC_CONF", ""), fallback_reason() or "-")
"""

# glibc's untouched malloc maps and unmaps each 64 MiB block, so its pages fault in again every time
FAULTS = """
import os, resource, sys, torch
import transferkit
from transferkit.cpu_memory import in_force
model = transferkit.load(sys.argv[1])
def step():
    x = torch.empty(16 * 2**20)
    x.fill_(1.0)
step(); step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(in_force(), os.environ.get("LD_PRELOAD", "-"), resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _clean_env(**settings: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (ENV_SWITCH, PRELOADED, "LD_PRELOAD", "MALLOC_CONF")}
    return {**env, **settings}


def _python(code: str, *args: str, **settings: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code, *args], env=_clean_env(**settings), capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout.splitlines()


@pytest.mark.parametrize("kind", ["tcmalloc", "jemalloc"])
def test_the_command_re_executes_itself_once_under_the_allocator(kind):
    path = library(kind)
    if path is None:
        pytest.skip(f"{kind} is not installed (Debian: libtcmalloc-minimal4, libjemalloc2)")
    first, again, line = _python(REEXEC, **({ENV_SWITCH: kind} if kind != PREFERRED else {}))
    running, pid, preload, conf, reason = line.split(" ", 4)
    assert first == again == f"start {pid}"  # ran twice in the same process: re-executed in place, its parent waits on it
    assert running == kind and preload == str(path) and reason == "-"
    assert conf == MALLOC_CONF.get(kind, "")


def test_any_library_path_is_preloaded_the_same_way():
    libc = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                if "/libc.so" in line or "/libc-" in line)  # always there: the mechanism, not an allocator
    first, again, line = _python(REEXEC, **{ENV_SWITCH: libc})
    running, pid, preload, conf, reason = line.split(" ", 4)
    assert first == again and preload == libc and reason == "-"


def test_glibc_asked_for_or_an_allocator_preloaded_already_is_left_as_it_is():
    start, line = _python(REEXEC, **{ENV_SWITCH: "default"})
    assert line.split(" ")[0] == "glibc" and line.endswith(" -")
    start, line = _python(REEXEC, LD_PRELOAD="/opt/none/libjemalloc.so")  # not loadable: ld.so warns, runs on
    assert line.split(" ")[2] == "/opt/none/libjemalloc.so"  # not re-executed with tcmalloc on top of it


def test_an_unknown_setting_is_refused_with_the_choices(tmp_path: Path):
    out = run_cli("run", str(tmp_path / "recipe.yaml"), env={ENV_SWITCH: "huge-pages"})
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "TRANSFERKIT_CPU_ALLOCATOR=huge-pages: use one of tcmalloc, jemalloc, default" in out.stderr


def test_a_missing_library_falls_back_to_glibc_with_the_reason_and_load_changes_nothing(tmp_path: Path):
    root = make_image_folder(tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(tiny_recipe(root)))
    out = run_cli("run", str(recipe), "--output", str(tmp_path / "runs"), "--no-progress",
                  env=_clean_env(**{ENV_SWITCH: "/opt/none/libtcmalloc.so.4"}))
    assert out.returncode == 0, out.stderr
    said = " ".join((out.stdout + out.stderr).split())
    assert "CPU allocator: glibc's malloc (no /opt/none/libtcmalloc.so.4 found)" in said
    checkpoint = next((tmp_path / "runs").rglob("*.pt"))
    if library(PREFERRED):  # installed: a plain run gets it, so nothing is said
        out = run_cli("run", str(recipe), "--output", str(tmp_path / "again"), "--no-progress", env=_clean_env())
        assert out.returncode == 0, out.stderr
        assert "CPU allocator" not in out.stdout + out.stderr
    # transferkit.load() in a script: no preload, no exec, and glibc's malloc behaves as glibc's (no pool, no
    # mallopt: every page of a repeated 64 MiB block faults again)
    running, preload, faults = _python(FAULTS, str(checkpoint))[-1].split()
    assert running == "glibc" and preload == "-"
    assert int(faults) > 10 * 64 * 2**20 // 4096 // 2
