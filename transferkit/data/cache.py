"""Decoded-image cache: each file decoded and resized once, kept as uint8 in memory or in a memory-mapped file.

Images are stored as (H, W, 3) uint8 and handed out as (3, H, W) tensor views, so epochs after the
first skip JPEG decoding and run their augmentations on uint8 tensors. Evaluation images are stored
with their shorter side at the eval resize (so the eval transform's Resize is a no-op and the pixels are
exactly the uncached ones). Training images keep their detail: their shorter side is only shrunk, to
`train_cache_size` (the side at which even RandomResizedCrop's smallest crop still has at least the
output's pixels), never enlarged. Caching them at the eval resize instead made every small crop an
upsampled, blurred patch and cost EfficientNet-Lite0 about 5 points of test accuracy (docs/performance.md).
The disk cache is keyed by path, size and mtime: a changed file is decoded again. Unreadable files are
remembered with their message and raise it on every look-up.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import math
import os
import random
import shutil
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from transferkit.data.folder import FolderSplits
from transferkit.data.images import open_rgb
from transferkit.data.loading import available_cores
from transferkit.errors import DataError
from transferkit.model.preprocess import Preprocessing

CACHE_FOLDER = ".transferkit-cache"
MEMORY_SHARE = 0.25  # auto keeps the cache in memory while its estimate stays under this share of RAM


def decode_resized(path: str | Path, size: int, interpolation: str, shrink_only: bool = False) -> np.ndarray:
    """The file as (H, W, 3) uint8 with its shorter side resized to `size`, exactly as the eval Resize does.

    With `shrink_only`, an image whose shorter side is `size` or less is kept at its own size.
    """
    image = open_rgb(path)
    if not (shrink_only and min(image.size) <= size):
        image = F.resize(image, size, interpolation=InterpolationMode(interpolation), antialias=True)
    return np.array(image, dtype=np.uint8)  # a writable copy, as torch.from_numpy wants


def train_cache_size(input_size: int, resize_size: int, min_crop_scale: float) -> int:
    """Shorter side training images are cached at (at most): where RandomResizedCrop's smallest crop still
    spans `input_size` pixels, and never below the eval resize."""
    return max(resize_size, math.ceil(input_size / math.sqrt(min_crop_scale)))


def file_key(path: str) -> list[int]:
    """[size, mtime_ns] of a file: what tells a cached decode is stale; [-1, -1] when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _decode_or_error(path: str, size: int, interpolation: str, shrink_only: bool) -> np.ndarray | str:
    try:
        return decode_resized(path, size, interpolation, shrink_only)
    except DataError as exc:
        return str(exc)


def decode_all(paths: list[str], size: int, interpolation: str, threads: int,
               shrink_only: bool = False) -> list[np.ndarray | str]:
    """Each file decoded and resized as `decode_resized` does, on `threads` threads; a message where it is unreadable."""
    # Pillow releases the GIL while decoding and resampling, so threads scale without copying pixels.
    with ThreadPoolExecutor(max(1, threads)) as pool:
        return list(pool.map(lambda p: _decode_or_error(p, size, interpolation, shrink_only), paths))


def header_size(path: str) -> tuple[int, int] | None:
    """(width, height) from the file's header, without decoding it; None when unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None  # decoding it later raises the DataError that names the file


def stored_shape(image_size: tuple[int, int] | None, size: int, shrink_only: bool) -> tuple[int, int]:
    """(shorter, longer) side an image of `image_size` (w, h) is cached at; size x size when unknown."""
    if image_size is None:
        return size, size
    short, long = min(image_size), max(image_size)
    target = min(short, size) if shrink_only else size
    return target, max(target, round(target * long / max(1, short)))


def estimated_bytes(paths: list[str], size: int, sample: int = 64, shrink_only: bool = False) -> int:
    """Bytes the decoded images will take, from the headers of a seeded sample of the files."""
    chosen = random.Random(0).sample(paths, min(sample, len(paths)))
    total = sum(math.prod(stored_shape(header_size(path), size, shrink_only)) * 3 for path in chosen)
    return total * len(paths) // max(1, len(chosen))


def physical_memory() -> int:
    """Total RAM in bytes (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def is_writable_dir(path: Path) -> bool:
    """True when `path` is a folder we may write into: write access and a write bit (root ignores the bits)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & 0o222) and os.access(path, os.W_OK)


def disk_cache_dir(data_root: Path | None, size: int, interpolation: str, shrink_only: bool = False) -> Path:
    """Where the disk cache lives: `.transferkit-cache/` in the data folder, or the TRANSFERKIT cache dir if read-only."""
    name = cache_key(size, interpolation, shrink_only)
    if data_root is not None and is_writable_dir(data_root):
        return data_root / CACHE_FOLDER / name
    from transferkit.download import data_cache_dir

    origin = str(data_root.resolve()) if data_root is not None else "no-root"
    return data_cache_dir() / "decoded" / f"{hashlib.sha1(origin.encode()).hexdigest()[:16]}-{name}"


class DecodedImages:
    """path -> cached (3, H, W) uint8 tensor; use `decode` as ImageFileDataset's decode function."""

    def __init__(self, entries: dict[str, tuple | str], pixels: list[torch.Tensor] | None = None,
                 file: Path | None = None, key: str = ""):
        self.entries = entries  # memory: path -> index in pixels; disk: path -> (offset, h, w); or an error
        self.pixels = pixels
        self.file = file
        self.key = key  # how the images were decoded (cache_key): equal keys give equal pixels
        self._map = None

    def __len__(self) -> int:
        return len(self.entries)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_map": None}  # a spawned worker maps the file again instead of copying it

    def _mapped(self) -> np.ndarray:
        if self._map is None:
            # copy-on-write mapping: torch wants writable arrays; nothing writes, so the file never changes
            self._map = np.memmap(self.file, dtype=np.uint8, mode="c") if self.file.stat().st_size else np.empty(0, np.uint8)
        return self._map

    def decode(self, path: str | Path) -> torch.Tensor:
        """The cached image of `path` as a (3, H, W) uint8 tensor; DataError with the original message if unreadable."""
        entry = self.entries.get(os.path.abspath(path))
        if entry is None:
            raise DataError(f"{path}: not in the decoded-image cache; set data.cache: none to read files directly")
        if isinstance(entry, str):
            raise DataError(entry)
        if self.pixels is not None:
            hwc = self.pixels[entry]
        else:
            offset, h, w = entry
            hwc = torch.from_numpy(self._mapped()[offset: offset + h * w * 3].reshape(h, w, 3))
        return hwc.permute(2, 0, 1)  # a channels-last view: uint8 resizes run fastest on this layout


def cache_key(size: int, interpolation: str, shrink_only: bool = False) -> str:
    """'decoded-[max]<size>-<interpolation>': the name of a cache's decoding (and of its disk folder)."""
    return f"decoded-{'max' if shrink_only else ''}{size}-{interpolation}"


def memory_cache(paths: list[str], size: int, interpolation: str, threads: int, shrink_only: bool = False,
                 into: DecodedImages | None = None) -> DecodedImages:
    """Decode every file once into memory (`into`: add them to that memory cache)."""
    cache = into if into is not None else DecodedImages({}, pixels=[], key=cache_key(size, interpolation, shrink_only))
    for path, result in zip(paths, decode_all(paths, size, interpolation, threads, shrink_only)):
        if isinstance(result, str):
            cache.entries[path] = result
        else:
            cache.entries[path] = len(cache.pixels)
            cache.pixels.append(torch.from_numpy(result))
    return cache


class DecodedMemo:
    """Memory caches kept across the runs of one process (the folds of `transferkit cv`): each image is decoded
    once per size, however many runs read it. (Disk caches are shared through their files already.)"""

    def __init__(self):
        self._caches: dict[str, DecodedImages] = {}

    def memory_cache(self, paths: list[str], size: int, interpolation: str, threads: int,
                     shrink_only: bool = False) -> DecodedImages:
        """The shared memory cache of this decoding, with the files it lacked decoded into it."""
        key = cache_key(size, interpolation, shrink_only)
        cache = self._caches.get(key)
        missing = [p for p in paths if cache is None or p not in cache.entries]
        self._caches[key] = cache = memory_cache(missing, size, interpolation, threads, shrink_only, into=cache)
        return cache


def disk_cache(paths: list[str], size: int, interpolation: str, folder: Path, threads: int,
               shrink_only: bool = False) -> DecodedImages:
    """Decode the files not cached yet (or changed since) and append them to the memory-mapped file in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    index_path, pixel_path = folder / "index.json", folder / "pixels.u8"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs sharing a cache take turns updating it
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        keys = {p: file_key(p) for p in paths}
        stale = [p for p in paths if p not in index or index[p]["key"] != keys[p]]
        if stale:
            with open(pixel_path, "ab") as out:
                for path, result in zip(stale, decode_all(stale, size, interpolation, threads, shrink_only)):
                    if isinstance(result, str):
                        index[path] = {"key": keys[path], "error": result}
                    else:
                        h, w, _ = result.shape
                        index[path] = {"key": keys[path], "offset": out.tell(), "h": h, "w": w}
                        out.write(np.ascontiguousarray(result).tobytes())
            tmp = index_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(index))
            os.replace(tmp, index_path)
        pixel_path.touch()
    entries = {p: index[p]["error"] if "error" in index[p] else (index[p]["offset"], index[p]["h"], index[p]["w"])
               for p in paths}
    return DecodedImages(entries, file=pixel_path, key=cache_key(size, interpolation, shrink_only))


def build_cache(paths: list[str | Path], size: int, interpolation: str, mode: str = "auto",
                data_root: Path | None = None, threads: int | None = None, shrink_only: bool = False,
                extra_bytes: int = 0, memo: DecodedMemo | None = None) -> DecodedImages | None:
    """The decoded-image cache data.cache asks for; auto: memory when it fits, else disk when that fits, else none.

    `extra_bytes`: memory another cache of the same run takes, counted against auto's memory share. `memo`: a
    memory cache is shared with the other runs of this process.
    """
    if mode == "none" or not paths:
        return None
    names = list(dict.fromkeys(os.path.abspath(p) for p in paths))
    threads = threads or available_cores()
    folder = disk_cache_dir(data_root, size, interpolation, shrink_only)
    if mode == "auto":
        mode = auto_cache_mode(names, size, folder, shrink_only, extra_bytes)
        if mode == "none":
            return None
    if mode == "memory":
        if memo is not None:
            return memo.memory_cache(names, size, interpolation, threads, shrink_only)
        return memory_cache(names, size, interpolation, threads, shrink_only)
    return disk_cache(names, size, interpolation, folder, threads, shrink_only)


def auto_cache_mode(paths: list[str], size: int, folder: Path, shrink_only: bool = False, extra_bytes: int = 0) -> str:
    """data.cache auto resolved for these files: memory when they fit in MEMORY_SHARE of RAM (beside
    `extra_bytes` already held), else disk when they fit in half the free disk, else none."""
    need = estimated_bytes(paths, size, shrink_only=shrink_only)
    if need + extra_bytes <= MEMORY_SHARE * physical_memory():
        return "memory"
    return "disk" if need <= free_disk(folder) // 2 else "none"


def free_disk(folder: Path) -> int:
    """Free bytes on the file system that holds (or will hold) `folder`."""
    existing = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    return shutil.disk_usage(existing).free


def _cached_sides(splits: FolderSplits, train_size: int | None) -> tuple[list[str], list[str]]:
    """(training files, evaluation files) as cached: with train_size None the training files join the eval side."""
    train = [os.path.abspath(path) for path, _ in splits.train]
    evaluation = [os.path.abspath(path) for samples in (splits.test, splits.val or []) for path, _ in samples]
    return ([], evaluation + train) if train_size is None else (train, evaluation)


def cache_modes(splits: FolderSplits, prep: Preprocessing, mode: str, train_size: int | None) -> tuple[str, str]:
    """(training cache mode, evaluation cache mode) with auto resolved from the files' header sizes.

    auto: the evaluation images first (they are small); if they find no room, none for either side.
    """
    train, evaluation = _cached_sides(splits, train_size)
    if mode != "auto":
        return (mode if train else "none"), (mode if evaluation else "none")
    root = Path(splits.root) if splits.root else None
    eval_mode = (auto_cache_mode(evaluation, prep.resize_size, disk_cache_dir(root, prep.resize_size, prep.interpolation))
                 if evaluation else "none")
    if not train:
        return "none", eval_mode
    if eval_mode == "none" and evaluation:
        return "none", "none"
    held = estimated_bytes(evaluation, prep.resize_size) if eval_mode == "memory" else 0
    folder = disk_cache_dir(root, train_size, prep.interpolation, shrink_only=True)
    return auto_cache_mode(train, train_size, folder, True, held), eval_mode


def image_decoders(splits: FolderSplits, prep: Preprocessing, mode: str, on_bad_image: str = "skip",
                   train_size: int | None = None, modes: tuple[str, str] | None = None,
                   memo: DecodedMemo | None = None) -> tuple[Callable, Callable]:
    """(decode for training images, decode for evaluation images): open_rgb, or look-ups in the decoded-image cache.

    Evaluation images are cached at the eval resize; training images with their shorter side shrunk to at
    most `train_size` (None: exactly at the eval resize, as evaluation images, e.g. for features of their
    eval view). `modes` (from `cache_modes`, e.g. through the data plan) overrides `mode`. Building the caches
    reads every image, so with on_bad_image 'fail' an unreadable one stops the run here, before training starts.
    """
    train, evaluation = _cached_sides(splits, train_size)
    train_mode, eval_mode = modes or cache_modes(splits, prep, mode, train_size)
    eval_cache = build_cache(evaluation, prep.resize_size, prep.interpolation, eval_mode, splits.root, memo=memo)
    train_cache = build_cache(train, train_size, prep.interpolation, train_mode, splits.root, shrink_only=True,
                              memo=memo)
    wanted = {os.path.abspath(p) for samples in (splits.train, splits.test, splits.val or []) for p, _ in samples}
    stop_if_unreadable([entry for cache in (eval_cache, train_cache) if cache is not None
                        for path, entry in cache.entries.items() if isinstance(entry, str) and path in wanted],
                       on_bad_image)
    eval_decode = eval_cache.decode if eval_cache is not None else open_rgb
    if not train:
        return eval_decode, eval_decode
    return (train_cache.decode if train_cache is not None else open_rgb), eval_decode


def stop_if_unreadable(errors: list[str], on_bad_image: str) -> None:
    """Under on_bad_image 'fail', DataError with the first unreadable file's message and how many there are."""
    if errors and on_bad_image == "fail":
        more = f" ({len(errors)} unreadable images in all; `transferkit check-data` lists them)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
