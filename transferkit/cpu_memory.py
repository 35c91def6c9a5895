"""The CPU allocator of a `transferkit` command: tcmalloc preloaded, as PyTorch's CPU launcher does it.

glibc's malloc serves each large block (activations and their gradients: tens to hundreds of MB) with a
fresh `mmap` and gives it back with `munmap` when freed, so every CPU training step faults in and zeroes
all its activation memory again, 4 KiB at a time. tcmalloc keeps freed blocks for reuse (docs/performance.md,
"The CPU allocator", has the measurements: jemalloc with the launcher's MALLOC_CONF faults more than glibc).

A process's malloc is chosen before it starts, so the command line calls `preload()` first: a command
that runs a network re-executes itself once with LD_PRELOAD naming the library, where the library is
installed (Debian: libtcmalloc-minimal4) and LD_PRELOAD names no allocator yet. Nothing else changes the allocator: importing transferkit, `transferkit.load()` and
`Experiment.run` in a script keep the one the process started with, and `fallback_reason()` says how
to start it with the preferred one.

TRANSFERKIT_CPU_ALLOCATOR: tcmalloc (the default), jemalloc, default (glibc's malloc: no preload), or
the path of an allocator's shared library. Results are the same under every allocator.
"""

from __future__ import annotations

import os
import platform
import sys
import sysconfig
from pathlib import Path

ENV_SWITCH = "TRANSFERKIT_CPU_ALLOCATOR"
PRELOADED = "TRANSFERKIT_PRELOADED"  # set in the re-executed process: a command re-executes itself once at most
CHOICES = ("tcmalloc", "jemalloc", "default")
PREFERRED = "tcmalloc"  # run_cpu.py's first choice too
LIBRARIES = {"jemalloc": ("libjemalloc.so.2", "libjemalloc.so"),
             "tcmalloc": ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4", "libtcmalloc.so")}
PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}  # Debian and Ubuntu
MALLOC_CONF = {"jemalloc": "oversize_threshold:1,background_thread:true,metadata_thp:auto"}  # run_cpu.py's
ALLOCATOR_NAMES = ("jemalloc", "tcmalloc", "mimalloc")
COMMANDS = ("run", "fit", "lr-find", "compare-backbones", "evaluate", "predict", "export", "serve")  # the ones that run a network


def choice() -> str:
    """TRANSFERKIT_CPU_ALLOCATOR, checked: tcmalloc (when unset), jemalloc, default or a library's path."""
    value = os.environ.get(ENV_SWITCH, "").strip() or PREFERRED
    if value.lower() in CHOICES:
        return value.lower()
    if "/" in value:
        return value
    from transferkit.errors import SpecError

    raise SpecError(f"{ENV_SWITCH}={value}: use one of {', '.join(CHOICES)}, the path of an allocator library, "
                    f"or leave it unset ({PREFERRED})")


def _folders() -> list[Path]:
    # where run_cpu.py looks, with Debian's multiarch folder first
    multiarch = sysconfig.get_config_var("MULTIARCH") or f"{platform.machine()}-linux-gnu"
    prefixes = [os.environ[v] + "/lib" for v in ("CONDA_PREFIX", "VIRTUAL_ENV") if v in os.environ]
    return [Path(p) for p in (*prefixes, f"/usr/lib/{multiarch}", f"/lib/{multiarch}", "/usr/local/lib",
                              "/usr/local/lib64", "/usr/lib64", "/usr/lib")]


def library(wanted: str) -> Path | None:
    """The shared library a choice names, where it is installed; None when it is not (or for "default")."""
    if "/" in wanted:
        return Path(wanted) if Path(wanted).is_file() else None
    for folder in _folders():
        for name in LIBRARIES.get(wanted, ()):
            if (folder / name).is_file():
                return folder / name
    return None


def in_force() -> str:
    """The allocator library this process runs with: jemalloc, tcmalloc, mimalloc, a preloaded path's file
    name, or "glibc" (the C library's own)."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "glibc"
    wanted = os.environ.get(ENV_SWITCH, "")
    if "/" in wanted and Path(wanted).name in maps:
        return Path(wanted).name
    return next((name for name in ALLOCATOR_NAMES if f"lib{name}" in maps), "glibc")


def _wants(wanted: str) -> str:
    return Path(wanted).name if "/" in wanted else wanted


def fallback_reason() -> str:
    """Why this process does not run with the allocator TRANSFERKIT_CPU_ALLOCATOR asks for; "" when it does,
    when glibc's is asked for, or off Linux."""
    wanted, running = choice(), in_force()
    if wanted == "default" or platform.system() != "Linux" or running == _wants(wanted):
        return ""
    if running != "glibc":
        return f"LD_PRELOAD names {running} already"
    path = library(wanted)
    if path is None:
        hint = f": apt-get install {PACKAGES[wanted]}" if wanted in PACKAGES else ""
        return f"no {LIBRARIES[wanted][0] if wanted in LIBRARIES else wanted} found{hint}"
    if os.environ.get(PRELOADED):
        return f"{path} could not be preloaded"
    settings = f"LD_PRELOAD={path}" + (f" MALLOC_CONF={MALLOC_CONF[wanted]}" if wanted in MALLOC_CONF else "")
    return f"not started by the transferkit command; start the process with {settings}"


def preload_environment(environ: dict[str, str], command: str | None) -> dict[str, str] | None:
    """The environment to re-execute `command` with under the chosen allocator, or None to run as it is: a
    command that runs no network, glibc asked for, an allocator preloaded already, or its library absent."""
    if command not in COMMANDS or environ.get(PRELOADED) or platform.system() != "Linux":
        return None
    wanted = choice()
    preloads = environ.get("LD_PRELOAD", "")
    if wanted == "default" or any(name in preloads for name in ALLOCATOR_NAMES) or \
            ("/" in wanted and wanted in preloads):
        return None
    path = library(wanted)
    if path is None:
        return None
    env = {**environ, "LD_PRELOAD": ":".join(p for p in (str(path), preloads) if p), PRELOADED: str(path)}
    if wanted in MALLOC_CONF:
        env.setdefault("MALLOC_CONF", MALLOC_CONF[wanted])
    return env


def command_name(argv: list[str]) -> str | None:
    """The sub-command in a command line's arguments (the first that is not an option), or None."""
    return next((arg for arg in argv if not arg.startswith("-")), None)


def preload() -> None:
    """For the command line only, before it does anything: re-execute this process once under the chosen
    allocator (preload_environment); returns when it runs as it is."""
    env = preload_environment(dict(os.environ), command_name(sys.argv[1:]))
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError:
        return  # cannot re-execute: run on as it is; fallback_reason() says so
