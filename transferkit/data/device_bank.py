"""Training images resident on the device: no loader workers, no per-step host-to-device copies.

With `data.cache: device` (or `auto` on CUDA when it fits) every training image is decoded once, its
shorter side shrunk to at most the training cache size (`cache.train_cache_size`), pasted on a fixed
square uint8 canvas (`device_augment.paste_on_canvas`), and the whole set is kept in one (N, 3, S, S)
tensor on the device. An epoch is then index arithmetic: the order comes from `EpochSampler` (so
shuffling, resume and the dropped lone last image are as with a DataLoader), the RandomResizedCrop
boxes and flips of the whole epoch are drawn at once from a generator seeded by (seed, epoch), and each
step gathers its canvases on the device and crops them there with `crop_on_device`. The CPU's only
work per step is launching kernels, which is what a fast GPU needs.

The boxes follow torchvision's RandomResizedCrop rule (ten tries at a random area and log-aspect, else
a centre crop within the ratio range), vectorised; they are a function of (seed, epoch, position in
the epoch).
"""

from __future__ import annotations

import math
import torch

from transferkit.data.cache import decode_all, header_size, stop_if_unreadable, stored_shape
from transferkit.data.device_augment import canvas_side, crop_on_device, fit_to_canvas, paste_on_canvas
from transferkit.data.loading import BadImage, Batch, EpochSampler, Shard, available_cores, target_tensor
from transferkit.errors import DataError

GPU_MEMORY_SHARE = 0.25  # cache auto keeps training images on a CUDA device while they take under this share of its free memory
TRIES = 10  # RandomResizedCrop's attempts before its centre-crop fallback


def canvas_side_for(paths: list, max_shorter_side: int) -> int:
    """Canvas side holding every image once cached (shorter side shrunk to at most `max_shorter_side`), from file headers."""
    shorter = [stored_shape(header_size(str(path)), max_shorter_side, shrink_only=True)[0] for path in paths]
    return canvas_side(max(shorter, default=max_shorter_side))


def fits_on_device(count: int, side: int, batch_size: int, device: torch.device) -> bool:
    """True on a CUDA device whose free memory holds `count` canvases of `side` and a step's float copy of a batch of
    them (crop_on_device) with room to spare (GPU_MEMORY_SHARE)."""
    if device.type != "cuda" or not count:
        return False
    free, _ = torch.cuda.mem_get_info(device)
    canvas = 3 * side * side
    return count * canvas + batch_size * canvas * 4 <= GPU_MEMORY_SHARE * free


def random_resized_boxes(sizes: torch.Tensor, scale: tuple[float, float], ratio: tuple[float, float],
                         generator: torch.Generator) -> torch.Tensor:
    """RandomResizedCrop boxes (x1, y1, x2, y2) for images of `sizes` (N, 2) = (h, w), drawn all at once.

    Per image: up to TRIES draws of area ~ U(scale) x h x w and log-aspect ~ U(log ratio); the first whose
    rounded width and height fit is placed uniformly; if none fits, the largest centred box within the
    ratio range. The same rule as torchvision's `RandomResizedCrop.make_params`, one image per row.
    """
    n = sizes.shape[0]
    height, width = sizes[:, 0:1].double(), sizes[:, 1:2].double()
    area = height * width * torch.empty(n, TRIES, dtype=torch.float64).uniform_(*scale, generator=generator)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(torch.empty(n, TRIES, dtype=torch.float64).uniform_(log_lo, log_hi, generator=generator))
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits (0 when none does)
    found = fits.any(dim=1)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    height, width = height[:, 0], width[:, 0]
    u_top, u_left = torch.rand(n, generator=generator, dtype=torch.float64), torch.rand(n, generator=generator, dtype=torch.float64)
    top = torch.floor(u_top * (height - h + 1)).clamp(max=height - h)
    left = torch.floor(u_left * (width - w + 1)).clamp(max=width - w)
    # Fallback: the whole image, narrowed to the ratio range.
    in_ratio = width / height
    fb_w = torch.where(in_ratio > ratio[1], torch.round(height * ratio[1]), width)
    fb_h = torch.where(in_ratio < ratio[0], torch.round(width / ratio[0]), height)
    fb_top, fb_left = torch.floor((height - fb_h) / 2), torch.floor((width - fb_w) / 2)
    w, h = torch.where(found, w, fb_w), torch.where(found, h, fb_h)
    top, left = torch.where(found, top, fb_top), torch.where(found, left, fb_left)
    return torch.stack([left, top, left + w, top + h], dim=1).float()


class DeviceImageBank:
    """Training canvases (N, 3, S, S) uint8, their image sizes and labels, all on one device; bad files apart."""

    def __init__(self, canvases: torch.Tensor, sizes: torch.Tensor, labels: torch.Tensor, bad: list[BadImage]):
        self.canvases, self.sizes, self.labels, self.bad = canvases, sizes, labels, bad

    def __len__(self) -> int:
        return self.canvases.shape[0]

    @classmethod
    def build(cls, samples: list[tuple], max_shorter_side: int, interpolation: str, device: torch.device,
              on_bad_image: str = "fail", threads: int | None = None, chunk: int = 256,
              side: int | None = None) -> "DeviceImageBank":
        """Decode, shrink, fit and paste every sample, a chunk at a time (decoded on `threads` threads), onto the device.

        Unreadable files stop the build under on_bad_image 'fail' (the decoded-image cache's message), else are kept
        aside. `side`: the canvas side, when the caller has read it already (`canvas_side_for`).
        """
        side = side or canvas_side_for([p for p, _ in samples], max_shorter_side)
        threads = threads or available_cores()
        canvases = torch.empty(len(samples), 3, side, side, dtype=torch.uint8, device=device)
        cuda = device.type == "cuda"
        staging = torch.empty(min(chunk, len(samples)), 3, side, side, dtype=torch.uint8, pin_memory=cuda)
        sizes, labels, bad, count = [], [], [], 0
        for start in range(0, len(samples), chunk):
            part = samples[start:start + chunk]
            decoded = decode_all([str(path) for path, _ in part], max_shorter_side, interpolation, threads, shrink_only=True)
            filled = 0
            for (path, label), pixels in zip(part, decoded):
                if isinstance(pixels, str):
                    bad.append(BadImage(str(path), pixels))
                    continue
                hwc = fit_to_canvas(torch.from_numpy(pixels), side)
                paste_on_canvas(hwc, staging[filled].zero_().permute(1, 2, 0))
                sizes.append(hwc.shape[:2])
                labels.append(label)
                filled += 1
            canvases[count:count + filled].copy_(staging[:filled], non_blocking=cuda)
            count += filled
            if cuda:
                torch.cuda.current_stream(device).synchronize()  # the staging buffer is refilled next
        stop_if_unreadable([item.message for item in bad], on_bad_image)
        if count == 0:
            raise DataError("no readable training images; run `transferkit check-data` on the data root")
        return cls(canvases[:count], torch.tensor(sizes, dtype=torch.int64),
                   target_tensor(labels).to(device), bad)


class DeviceBatches:
    """Training batches from a DeviceImageBank: a DataLoader stand-in (len, iteration, `sampler.set_epoch`).

    Each batch is a `Batch` whose images are the gathered canvases on the device, with crop boxes and
    flips for `crop_on_device`. The first batch of an epoch carries the bank's unreadable files, so they
    are reported (or stop the run) as with a DataLoader.
    """

    def __init__(self, bank: DeviceImageBank, batch_size: int, seed: int, scale: tuple[float, float],
                 ratio: tuple[float, float], hflip: bool, weights: torch.Tensor | None = None,
                 crop_size: int | None = None, channels_last: bool = False, shard: Shard = Shard()):
        self.bank, self.batch_size, self.seed, self.shard = bank, batch_size // shard.world, seed, shard
        self.global_batch = batch_size
        self.scale, self.ratio, self.hflip = scale, ratio, hflip
        self.weights = weights
        self.crop_size, self.channels_last = crop_size, channels_last  # crop_size set: yield ready crops
        # As make_loader: the global order, this process's share of each global batch, a too-small last batch left out.
        self.sampler = EpochSampler(len(bank), seed, shuffle=True, weights=weights, batch=batch_size, shard=shard)

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The whole epoch's image order (N,), boxes (N, 4) and flips (N,), by position: a function of (seed, epoch)."""
        full = EpochSampler(len(self.bank), self.seed, shuffle=True, weights=self.weights)  # every position, unsharded
        full.set_epoch(epoch)
        order = torch.tensor([index for index, _ in full], dtype=torch.int64)
        generator = torch.Generator().manual_seed(((self.seed * 1_000_003 + epoch) * 7_919 + 17) % 2**63)
        boxes = random_resized_boxes(self.bank.sizes[order], self.scale, self.ratio, generator)
        flips = torch.rand(len(order), generator=generator) < 0.5
        return order, boxes, flips & self.hflip

    def __iter__(self):
        device, skip = self.bank.canvases.device, self.sampler.skip
        order, boxes, flips = self.epoch_plan(self.sampler.epoch)
        mine = torch.tensor(self.shard.take(list(range(skip, len(order))), self.global_batch), dtype=torch.int64)
        mine = mine[:len(self.sampler)]
        order, boxes, flips = (t[mine].to(device) for t in (order, boxes, flips))
        for step in range(len(self)):
            part = slice(step * self.batch_size, (step + 1) * self.batch_size)
            index = order[part]
            bad = self.bank.bad if step == 0 and self.shard.rank == 0 else []  # reported once, by one process
            if self.crop_size is None:
                yield Batch(self.bank.canvases[index], self.bank.labels[index], bad, boxes[part], flips[part])
            else:
                crops = crop_on_device(self.bank.canvases[index], boxes[part], flips[part], self.crop_size,
                                       self.channels_last)
                yield Batch(crops, self.bank.labels[index], bad)
