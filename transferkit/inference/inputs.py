"""What `predict` reads: image files, folders (recursively), text files of paths, or `-` for paths on stdin."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from transferkit.data.folder import is_image_file
from transferkit.errors import DataError

LIST_SUFFIXES = (".txt", ".lst")


def _paths_in_text(lines, origin: str) -> list[Path]:
    paths = [Path(line.strip()).expanduser() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not paths:
        raise DataError(f"{origin}: no paths in it; give one image path per line")
    return paths


def folder_images(folder: Path) -> list[Path]:
    """Every image file below `folder`, sorted, hidden files and folders left out."""
    return sorted(p for p in folder.rglob("*") if is_image_file(p)
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def collect_inputs(arguments: list[str], stdin: TextIO | None = None) -> list[Path]:
    """Image paths in the order given; a folder adds its images, a .txt/.lst file or `-` adds the paths it lists.

    A named file is kept whatever it holds, so an unreadable one gets a row with its error. Paths in a list
    are relative to the current directory, as `find` writes them.
    """
    paths: list[Path] = []
    for argument in arguments:
        if argument == "-":
            paths.extend(_paths_in_text((stdin or sys.stdin).readlines(), "standard input"))
            continue
        path = Path(argument).expanduser()
        if path.is_dir():
            found = folder_images(path)
            if not found:
                raise DataError(f"{path}: no image files in this folder or below")
            paths.extend(found)
        elif path.suffix.lower() in LIST_SUFFIXES and path.is_file():
            paths.extend(_paths_in_text(path.read_text(encoding="utf-8", errors="replace").splitlines(), str(path)))
        else:
            paths.append(path)
    if not paths:
        raise DataError("no inputs; give image files, folders, a text file of paths, or - for paths on stdin")
    return paths
