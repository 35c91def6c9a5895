"""The package's C++ helpers, compiled on first use against the installed PyTorch and cached.

A helper is one .cpp file beside this module that exports C functions; `load(name)` compiles it with the
system's C++ compiler (`$CXX`, else `c++`) into `$TRANSFERKIT_NATIVE_CACHE` (default
`~/.cache/transferkit/native`), once per source, PyTorch build and compiler, and opens it with ctypes.
Nothing is downloaded. A machine without a compiler or PyTorch's headers gets a NativeBuildError that says
which, and the caller falls back to a pure-Python path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCES = Path(__file__).parent
BUILD_SECONDS = 300

_loaded: dict[str, ctypes.CDLL] = {}


class NativeBuildError(RuntimeError):
    """A helper could not be compiled or opened; the message is one line that says why."""


def cache_dir() -> Path:
    """Where compiled helpers are kept: $TRANSFERKIT_NATIVE_CACHE, else ~/.cache/transferkit/native."""
    return Path(os.environ.get("TRANSFERKIT_NATIVE_CACHE") or Path.home() / ".cache" / "transferkit" / "native")


def _compiler() -> list[str]:
    command = shlex.split(os.environ.get("CXX", "c++"))
    if not command or shutil.which(command[0]) is None:
        raise NativeBuildError(f"no C++ compiler ({' '.join(command) or 'CXX is empty'}): install g++ or set CXX")
    return command


def _compile_command(source: Path, output: Path) -> list[str]:
    import torch

    torch_dir = Path(torch.__file__).parent
    include, lib = torch_dir / "include", torch_dir / "lib"
    if not (include / "c10" / "core" / "CPUAllocator.h").is_file():
        raise NativeBuildError(f"PyTorch's C++ headers are missing from {include}")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    return [*_compiler(), "-O2", "-std=c++17", "-shared", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
            f"-I{include}", str(source), f"-L{lib}", "-lc10", f"-Wl,-rpath,{lib}", "-o", str(output)]


def library_path(name: str) -> Path:
    """The compiled helper `name`, built now if this source, PyTorch and compiler have no build in the cache."""
    import torch

    source = SOURCES / f"{name}.cpp"
    probe = _compile_command(source, Path("OUT"))
    key = hashlib.sha256(source.read_bytes() + "\0".join([torch.__version__, *probe]).encode()).hexdigest()[:16]
    target = cache_dir() / f"{name}-{key}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # concurrent builds (ranks of one launch) each write their own file; the rename makes either one whole
    fd, partial = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(_compile_command(source, Path(partial)), capture_output=True, text=True,
                              timeout=BUILD_SECONDS)
        if done.returncode != 0:
            first_error = next((line for line in done.stderr.splitlines() if "error" in line), done.stderr.strip())
            raise NativeBuildError(f"compiling {source.name} failed: {first_error[:300]}")
        os.replace(partial, target)
    except subprocess.TimeoutExpired:
        raise NativeBuildError(f"compiling {source.name} took over {BUILD_SECONDS} s") from None
    finally:
        Path(partial).unlink(missing_ok=True)
    return target


def load(name: str) -> ctypes.CDLL:
    """The helper `name` opened with ctypes (compiled first where needed); NativeBuildError if it cannot be."""
    if name not in _loaded:
        path = library_path(name)
        try:
            _loaded[name] = ctypes.CDLL(str(path))
        except OSError as error:
            raise NativeBuildError(f"{path}: {error}") from None
    return _loaded[name]
