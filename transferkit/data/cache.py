"""Decoded-image cache: each file decoded and resized once, kept as uint8 in memory or in a file on disk.

Images are stored as (H, W, 3) uint8 and handed out as (3, H, W) tensor views, so epochs after the
first skip JPEG decoding and run their augmentations on uint8 tensors. A JPEG is decoded at the smallest
DCT scale (1/2, 1/4, 1/8) that keeps the side it is stored at, as predict and evaluate decode it.
Evaluation images are stored with their shorter side at the eval resize (so the eval transform's Resize
is a no-op and the pixels are exactly the uncached ones). Training images keep their detail: their shorter side is only shrunk, to
`train_cache_size` (the side at which even RandomResizedCrop's smallest crop still has at least the
output's pixels), never enlarged. Caching them at the eval resize instead made every small crop an
upsampled, blurred patch and cost EfficientNet-Lite0 about 5 points of test accuracy (docs/performance.md).

Where: `auto` keeps them in memory while they fit MEMORY_BUDGET, else in a file on disk read back with
`pread` (the kernel's page cache holds it, not the process), so the memory a run holds does not grow
with the number of images. When: each image is decoded at its first use, during the first epoch, unless
DataLoader worker processes would each fill a copy of their own in memory (the data plan decides). The
disk cache is keyed by path, size and mtime: a changed file is decoded again. Unreadable files are
remembered with their message and raise it on every look-up.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import random
import shutil
import stat
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as F

from transferkit.data.folder import FolderSplits
from transferkit.data.images import open_rgb
from transferkit.data.loading import ReadAhead, available_cores
from transferkit.errors import DataError
from transferkit.model.preprocess import Preprocessing

CACHE_FOLDER = ".transferkit-cache"
MEMORY_BUDGET = 256 * 2**20  # auto keeps decoded images in memory up to this (both sides); beyond, on disk
MEMORY_SHARE = 0.25  # and never above this share of RAM


def decode_resized(path: str | Path, size: int, interpolation: str, shrink_only: bool = False) -> np.ndarray:
    """The file as (H, W, 3) uint8 with its shorter side resized to `size`, exactly as evaluation and predict do:
    a JPEG is decoded at the smallest of 1/2, 1/4 or 1/8 scale whose shorter side stays at least `size`
    (libjpeg's DCT scaling: `open_rgb`'s min_side), then resized.

    With `shrink_only` (training images), an image whose shorter side is `size` or less is kept at its own size.
    """
    image = open_rgb(path, min_side=size)
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


def cache_key(size: int, interpolation: str, shrink_only: bool = False) -> str:
    """'decoded2-[max]<size>-<interpolation>': the name of a cache's decoding (and of its disk folder)."""
    return f"decoded2-{'max' if shrink_only else ''}{size}-{interpolation}"  # 2: the journal format, JPEG drafts


class MemoryStore:
    """Decoded images as (H, W, 3) uint8 tensors in this process's memory, by absolute path."""

    def __init__(self):
        self.entries: dict[str, torch.Tensor | str] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def has(self, path: str) -> bool:
        """True when `path` was decoded already (or found unreadable)."""
        return path in self.entries

    def get(self, path: str) -> torch.Tensor | str | None:
        """The image (or the message saying why it is unreadable); None when not decoded yet."""
        return self.entries.get(path)

    def put(self, path: str, result: np.ndarray | str) -> torch.Tensor | str:
        """Keep a decode's result; return it as `get` will."""
        self.entries[path] = result if isinstance(result, str) else torch.from_numpy(result)
        return self.entries[path]


class DiskStore:
    """Decoded images appended to `pixels.u8` in `folder`, each recorded by a line of `journal.jsonl` (path, size
    and mtime of the file, offset, height, width, CRC-32; or the message of an unreadable file).

    Reads are `pread`s into a fresh buffer, so the images stay in the kernel's page cache, shared by every
    process and reclaimable, instead of in this process's memory (a memory map would count them in its
    RSS). Appends are atomic per write (O_APPEND), so DataLoader workers and concurrent runs share one
    folder: a process that misses an image reads the journal lines written since it last looked before
    decoding it. The last line for a path wins; a line whose file changed since (size or mtime), or whose
    bytes fail their CRC (a run killed mid-write), is ignored and the image decoded again.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.pixels, self.journal = folder / "pixels.u8", folder / "journal.jsonl"
        self.index: dict[str, list] = {}
        self._read_to = 0
        self._fds: tuple[int, int] | None = None
        self.write_error: str | None = None  # why appending stopped (a full disk): decodes are then not kept

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": None}  # a spawned worker opens the files itself

    def __len__(self) -> int:
        return len(self.index)

    def _files(self) -> tuple[int, int]:
        if self._fds is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
            self._fds = (os.open(self.pixels, flags, 0o644), os.open(self.journal, flags, 0o644))
        return self._fds

    def _refresh(self) -> None:
        """Read the journal lines appended since the last look, by this process or any other."""
        fd = self._files()[1]
        size = os.fstat(fd).st_size
        if size <= self._read_to:
            return
        data = os.pread(fd, size - self._read_to, self._read_to)
        complete = data.rfind(b"\n") + 1  # a line still being written is read next time
        for line in data[:complete].splitlines():
            try:
                record = json.loads(line)
                self.index[record[0]] = record[1:]
            except (ValueError, IndexError, TypeError):
                continue  # a line torn by a killed run
        self._read_to += complete

    def _entry(self, path: str) -> list | None:
        entry = self.index.get(path)
        if entry is None:
            self._refresh()
            entry = self.index.get(path)
        return entry if entry is not None and entry[:2] == file_key(path) else None

    def has(self, path: str) -> bool:
        """True when the journal holds `path` as the file is now."""
        return self._entry(path) is not None

    def get(self, path: str) -> torch.Tensor | str | None:
        """The image read back (or its message); None when not cached, changed since, or its bytes are damaged."""
        entry = self._entry(path)
        if entry is None or isinstance(entry[2], str):
            return None if entry is None else entry[2]
        offset, h, w, crc = entry[2:]
        buffer = bytearray(h * w * 3)
        if os.preadv(self._files()[0], [buffer], offset) != len(buffer) or zlib.crc32(buffer) != crc:
            return None
        return torch.from_numpy(np.frombuffer(buffer, dtype=np.uint8).reshape(h, w, 3))

    def put(self, path: str, result: np.ndarray | str) -> torch.Tensor | str:
        """Append a decode's result and its journal line; return it as `get` will."""
        record = [path, *file_key(path)]
        if isinstance(result, str):
            record.append(result)
        else:
            data = memoryview(np.ascontiguousarray(result)).cast("B")
            record += [None, result.shape[0], result.shape[1], zlib.crc32(data)]
        if self.write_error is None:
            try:
                pixels, journal = self._files()
                if len(record) > 4:
                    if os.write(pixels, data) != len(data):
                        raise OSError("short write (disk full?)")
                    record[3] = os.lseek(pixels, 0, os.SEEK_CUR) - len(data)  # where O_APPEND put this write
                line = (json.dumps(record) + "\n").encode()
                os.write(journal, line)
                self.index[path] = record[1:]
                end = os.lseek(journal, 0, os.SEEK_CUR)
                if end - len(line) == self._read_to:  # nobody else wrote since the last look: skip our own line
                    self._read_to = end
            except OSError as exc:
                self.write_error = f"{self.folder}: {exc}"
        return result if isinstance(result, str) else torch.from_numpy(result)


class DecodedImages:
    """path -> its decoded (3, H, W) uint8 tensor, decoded once and kept (`MemoryStore` or `DiskStore`); call it
    as ImageFileDataset's decode function. A file is decoded at its first look-up, by `fill`, or ahead of use by
    `read_ahead` on another thread; a file is never decoded twice at once (the second asker waits for the first).
    """

    def __init__(self, store: MemoryStore | DiskStore, size: int, interpolation: str, shrink_only: bool = False):
        self.store, self.size, self.interpolation, self.shrink_only = store, size, interpolation, shrink_only
        self.key = cache_key(size, interpolation, shrink_only)  # how the images are decoded: equal keys, equal pixels
        self.decoded = 0  # files this process decoded (not read back)
        self._init_threading()

    def _init_threading(self) -> None:
        self._lock = threading.Condition()
        self._claimed: set[str] = set()  # files a thread is decoding now

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_lock", "_claimed")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_threading()

    def __len__(self) -> int:
        return len(self.store)

    @property
    def kind(self) -> str:
        """'memory' or 'disk'."""
        return "memory" if isinstance(self.store, MemoryStore) else "disk"

    def fill(self, paths: list[str], threads: int | None = None) -> list[str]:
        """Decode the files not kept yet, now, on `threads` threads; the messages of the unreadable ones."""
        names = [os.path.abspath(p) for p in paths]
        missing = [p for p in names if not self.store.has(p)]
        for path, result in zip(missing, decode_all(missing, self.size, self.interpolation, threads or
                                                    available_cores(), self.shrink_only)):
            self.store.put(path, result)
        self.decoded += len(missing)
        return [entry for entry in map(self.store.get, names) if isinstance(entry, str)]

    def __call__(self, path: str | Path) -> torch.Tensor:
        """The kept image of `path` as a (3, H, W) uint8 tensor, decoding it first if needed; DataError with the
        original message if unreadable."""
        name = os.path.abspath(path)
        with self._lock:
            while name in self._claimed:  # the read-ahead thread is decoding it: wait rather than decode it twice
                self._lock.wait()
            entry = self.store.get(name)
            if entry is None:
                self._claimed.add(name)
        if entry is None:
            entry = self._decode_claimed(name)
        if isinstance(entry, str):
            raise DataError(entry)
        return entry.permute(2, 0, 1)  # a channels-last view: uint8 resizes run fastest on this layout

    decode = __call__

    def read_ahead(self, paths: Iterable[str | Path], stop: threading.Event) -> None:
        """Decode and keep the files not kept yet, in the order given, until done or `stop` is set (a thread's
        work: `with_read_ahead`)."""
        for path in paths:
            if stop.is_set():
                return
            name = os.path.abspath(path)
            with self._lock:
                if name in self._claimed or self.store.has(name):
                    continue
                self._claimed.add(name)
            self._decode_claimed(name)

    def _decode_claimed(self, name: str) -> torch.Tensor | str:
        """Decode a file this thread claimed and keep it; release the claim and wake the threads waiting for it
        (who decode it themselves if this failed)."""
        entry = None
        try:
            result = _decode_or_error(name, self.size, self.interpolation, self.shrink_only)
            with self._lock:
                entry = self.store.put(name, result)
            return entry
        finally:
            with self._lock:
                self._claimed.discard(name)
                self.decoded += entry is not None
                self._lock.notify_all()


def with_read_ahead(loader, decode):
    """`loader` with a thread decoding its images ahead into the cache (`ReadAhead`) when `decode` is a
    DecodedImages and the loader has no worker processes; else `loader` as it is."""
    if isinstance(decode, DecodedImages) and getattr(loader, "num_workers", 1) == 0:
        return ReadAhead(loader, decode.read_ahead)
    return loader


class DecodedMemo:
    """Memory caches kept across the runs of one process (the folds of `transferkit cv`): each image is decoded
    once per size, however many runs read it. (Disk caches are shared through their files already.)"""

    def __init__(self):
        self._caches: dict[str, DecodedImages] = {}

    def memory_cache(self, size: int, interpolation: str, shrink_only: bool = False) -> DecodedImages:
        """The shared memory cache of this decoding (made empty the first time)."""
        key = cache_key(size, interpolation, shrink_only)
        if key not in self._caches:
            self._caches[key] = DecodedImages(MemoryStore(), size, interpolation, shrink_only)
        return self._caches[key]


def build_cache(paths: list[str | Path], size: int, interpolation: str, mode: str = "auto",
                data_root: Path | None = None, threads: int | None = None, shrink_only: bool = False,
                extra_bytes: int = 0, fill_now: bool = True, memo: DecodedMemo | None = None) -> DecodedImages | None:
    """The decoded-image cache data.cache asks for; auto: memory when it fits the budget, else disk when that
    fits, else none. With `fill_now` every file is decoded here (on `threads` threads), else at its first use.

    `extra_bytes`: memory another cache of the same run takes, counted against auto's memory budget. `memo`: a
    memory cache is shared with the other runs of this process.
    """
    if mode == "none" or not paths:
        return None
    folder = disk_cache_dir(data_root, size, interpolation, shrink_only)
    if mode == "auto":
        mode = auto_cache_mode([os.path.abspath(p) for p in paths], size, folder, shrink_only, extra_bytes)
        if mode == "none":
            return None
    if mode == "memory" and memo is not None:
        cache = memo.memory_cache(size, interpolation, shrink_only)
    else:
        store = MemoryStore() if mode == "memory" else DiskStore(folder)
        cache = DecodedImages(store, size, interpolation, shrink_only)
    if fill_now:
        cache.fill([str(p) for p in paths], threads)
    return cache


def memory_budget() -> int:
    """Bytes of decoded images data.cache auto keeps in memory: MEMORY_BUDGET, or MEMORY_SHARE of RAM if less."""
    ram = physical_memory()
    return min(MEMORY_BUDGET, int(MEMORY_SHARE * ram)) if ram else MEMORY_BUDGET


def auto_cache_mode(paths: list[str], size: int, folder: Path, shrink_only: bool = False, extra_bytes: int = 0) -> str:
    """data.cache auto resolved for these files: memory when they fit in `memory_budget()` (beside `extra_bytes`
    already held), else disk when they fit in half the free disk, else none."""
    need = estimated_bytes(paths, size, shrink_only=shrink_only)
    if need + extra_bytes <= memory_budget():
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
                   fill_now: bool = True, memo: DecodedMemo | None = None) -> tuple[Callable, Callable]:
    """(decode for training images, decode for evaluation images): open_rgb, or look-ups in the decoded-image cache.

    Evaluation images are cached at the eval resize; training images with their shorter side shrunk to at
    most `train_size` (None: exactly at the eval resize, as evaluation images, e.g. for features of their
    eval view). Cached or not, a JPEG is decoded at the reduced scale that keeps the side it is needed at
    (`open_rgb`'s min_side), as `predict` and `evaluate` decode it. `modes` (from
    `cache_modes`, e.g. through the data plan) overrides `mode`. With `fill_now` the caches decode every image
    here, so with on_bad_image 'fail' an unreadable one stops the run before training starts; otherwise each
    image is decoded at its first look-up (in the first epoch), and an unreadable one is met there, as without
    a cache. `memo`: memory caches shared with the other runs of this process.
    """
    train, evaluation = _cached_sides(splits, train_size)
    train_mode, eval_mode = modes or cache_modes(splits, prep, mode, train_size)
    eval_cache = build_cache(evaluation, prep.resize_size, prep.interpolation, eval_mode, splits.root,
                             fill_now=False, memo=memo)
    train_cache = build_cache(train, train_size, prep.interpolation, train_mode, splits.root, shrink_only=True,
                              fill_now=False, memo=memo)
    if fill_now:
        stop_if_unreadable([message for cache, paths in ((eval_cache, evaluation), (train_cache, train))
                            if cache is not None for message in cache.fill(paths)], on_bad_image)
    eval_decode = eval_cache if eval_cache is not None else functools.partial(open_rgb, min_side=prep.resize_size)
    if not train:
        return eval_decode, eval_decode
    if train_cache is not None:
        return train_cache, eval_decode
    return functools.partial(open_rgb, min_side=train_size), eval_decode


def stop_if_unreadable(errors: list[str], on_bad_image: str) -> None:
    """Under on_bad_image 'fail', DataError with the first unreadable file's message and how many there are."""
    if errors and on_bad_image == "fail":
        more = f" ({len(errors)} unreadable images in all; `transferkit check-data` lists them)" if len(errors) > 1 else ""
        raise DataError(errors[0] + more)
