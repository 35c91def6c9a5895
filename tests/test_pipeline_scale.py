"""The folder pipeline at scale (#19): set-up decodes no image, each image is decoded once, and decoded images
beyond the memory budget are kept on disk, read back by later epochs and later runs, not held by the process."""

from __future__ import annotations

import io
import json
import threading

from rich.console import Console

from conftest import make_image_folder, tiny_recipe
from transferkit.data import cache
from transferkit.recipe.load import validate
from transferkit.run.assemble import assemble


def _counting_decodes(monkeypatch, threads: list[str] | None = None) -> list[str]:
    """The file names the decoded-image cache (and the uncached training path) decodes, in order; the names of
    the threads that decoded them go to `threads`."""
    names: list[str] = []
    real = cache.open_rgb

    def counting(path, *args, **kwargs):
        names.append(str(path).rsplit("/", 1)[-1])
        if threads is not None:
            threads.append(threading.current_thread().name)
        return real(path, *args, **kwargs)
    monkeypatch.setattr(cache, "open_rgb", counting)
    return names


def test_setup_decodes_nothing_and_training_images_over_the_budget_are_kept_on_disk(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "data", per_class=(12, 4), size=(160, 120))  # 24 train, 8 test
    train_files = sorted(p.name for p in (root / "train").rglob("*.jpg"))
    test_files = sorted(p.name for p in (root / "test").rglob("*.jpg"))
    # 24 training images at 114 x 152 take 1.2 MB decoded, the 8 test images at 37 x 49 43 kB: between the two
    monkeypatch.setattr(cache, "MEMORY_BUDGET", 200_000)
    decodes = _counting_decodes(monkeypatch)
    spec = validate(tiny_recipe(root, train={"epochs": 2}))

    parts = assemble(spec, Console(file=io.StringIO()), progress=False)
    assert decodes == []  # set-up reads headers only; before, it decoded all 32 images here
    plan = parts.plan.to_dict()
    assert (plan["train_cache"], plan["eval_cache"], plan["cache_fill"]) == ("disk", "memory", "first use")
    assert 1_000_000 < plan["train_cache_bytes"] < 1_400_000 and plan["eval_cache_bytes"] < 200_000
    assert any(reason.startswith("training images on disk: 1.2 MiB decoded, over the 0.2 MiB kept in memory")
               for reason in plan["reasons"]), plan["reasons"]

    parts.trainer.fit(parts.train_loader, parts.eval_loaders, 2)
    assert sorted(decodes) == sorted(train_files + test_files)  # each image once in two epochs and two evaluations
    journal = root / ".transferkit-cache" / "decoded2-max114-bilinear" / "journal.jsonl"
    records = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(r[0].rsplit("/", 1)[-1] for r in records) == train_files
    pixels = journal.with_name("pixels.u8").stat().st_size
    assert pixels == sum(r[4] * r[5] * 3 for r in records) == plan["train_cache_bytes"]
    assert {(r[4], r[5]) for r in records} == {(114, 152)}  # shorter side shrunk to the training cache side

    decodes.clear()  # a second run reads the training images back from the disk cache
    again = assemble(validate(tiny_recipe(root)), Console(file=io.StringIO()), progress=False)
    again.trainer.fit(again.train_loader, again.eval_loaders, 1)
    assert sorted(decodes) == test_files  # the evaluation images were held in the first run's memory only


def test_read_ahead_decodes_on_a_thread_and_gives_the_batches_of_the_plain_loader(tmp_path, monkeypatch):
    import torch

    from transferkit.data.loading import ImageFileDataset, ReadAhead, make_loader
    from transferkit.data.transforms import train_transform
    from transferkit.model.preprocess import Preprocessing

    root = make_image_folder(tmp_path / "data", per_class=(10, 1), size=(160, 120))
    samples = [(path, 0) for path in sorted((root / "train").rglob("*.jpg"))]
    transform = train_transform(Preprocessing(input_size=32, resize_size=37), validate(tiny_recipe(root)).data)
    epochs, threads = [], []
    decodes = _counting_decodes(monkeypatch, threads)
    for ahead in (False, True):
        images = cache.DecodedImages(cache.MemoryStore(), 114, "bilinear", shrink_only=True)
        loader = make_loader(ImageFileDataset(samples, transform, images), 4, True, 0, 0, torch.device("cpu"))
        if ahead:
            loader = ReadAhead(loader, images.read_ahead)
        loader.sampler.set_epoch(2)
        epochs.append([batch.images for batch in loader])
        assert images.decoded == len(images) == 20
    assert all(torch.equal(a, b) for a, b in zip(*epochs)) and len(epochs[0]) == len(epochs[1]) == 5
    assert len(decodes) == 40 and "transferkit-read-ahead" in threads[20:]  # each image once per loader


def test_disk_store_is_shared_through_its_journal_and_ignores_damaged_records(tmp_path):
    import numpy as np

    first, second = (tmp_path / name for name in ("first.jpg", "second.jpg"))
    first.write_bytes(b"a"), second.write_bytes(b"bb")  # the store keys on each file's size and mtime
    one, other = cache.DiskStore(tmp_path / "c"), cache.DiskStore(tmp_path / "c")  # two processes, in effect
    pixels = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    one.put(str(first), pixels)
    other.put(str(second), f"{second}: broken")
    assert other.get(str(first)).numpy().tolist() == pixels.tolist() and one.get(str(second)) == f"{second}: broken"
    with open(tmp_path / "c" / "journal.jsonl", "ab") as journal:
        journal.write(b'["torn by a killed run", 1')
    data = bytearray((tmp_path / "c" / "pixels.u8").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "c" / "pixels.u8").write_bytes(data)
    fresh = cache.DiskStore(tmp_path / "c")
    assert fresh.get(str(first)) is None and fresh.get(str(second)) == f"{second}: broken"  # CRC fails: decode again
    second.write_bytes(b"changed")
    assert not fresh.has(str(second))  # a file changed since it was decoded


def test_with_two_workers_a_memory_cache_is_filled_at_setup_and_an_unreadable_image_stops_it_there(tmp_path,
                                                                                                      monkeypatch):
    import pytest

    from transferkit.errors import DataError

    root = make_image_folder(tmp_path / "data", per_class=(6, 2), size=(80, 60))
    decodes = _counting_decodes(monkeypatch)
    raw = tiny_recipe(root, train={"epochs": 2}, data={"num_workers": 2})
    parts = assemble(validate(raw), Console(file=io.StringIO()), progress=False)
    plan = parts.plan.to_dict()
    assert (plan["train_cache"], plan["eval_cache"], plan["cache_fill"]) == ("memory", "memory", "setup")
    assert len(decodes) == 16  # every image decoded once, in this process, before the workers would start
    for name in ("cat_0.jpg", "cat_1.jpg"):
        (root / "train" / "cat" / name).write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="2 unreadable images in all"):  # before any training step
        assemble(validate(raw), Console(file=io.StringIO()), progress=False)


def test_runs_sharing_a_memo_decode_each_image_once_and_sgd_uses_the_fused_cpu_kernel(tmp_path, monkeypatch):
    import torch

    from transferkit.optim.optimizers import build_optimizer

    root = make_image_folder(tmp_path / "data", per_class=(3, 1), size=(80, 60))
    paths = [str(p) for p in sorted(root.rglob("*.jpg"))]
    decodes = _counting_decodes(monkeypatch)
    memo = cache.DecodedMemo()
    first = cache.build_cache(paths[:4], 36, "bilinear", "memory", fill_now=True, memo=memo)
    second = cache.build_cache(paths, 36, "bilinear", "memory", fill_now=True, memo=memo)  # a later fold
    assert second is first and len(decodes) == len(paths)  # the first four were not decoded again
    assert cache.build_cache(paths, 37, "bilinear", "memory", memo=memo) is not first  # another size

    spec = validate(tiny_recipe(root, optimizer={"momentum": 0.9, "weight_decay": 1e-4})).optimizer
    torch.manual_seed(0)
    nets = [torch.nn.Linear(5, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    fused = build_optimizer(spec, [{"params": list(nets[0].parameters())}])
    plain = torch.optim.SGD(nets[1].parameters(), lr=spec.lr, momentum=0.9, weight_decay=1e-4)
    assert fused.param_groups[0]["fused"] and not plain.param_groups[0]["fused"]
    for _ in range(3):
        x = torch.randn(4, 5)
        for net, step in zip(nets, (fused, plain)):
            step.zero_grad()
            net(x).square().sum().backward()
            step.step()
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
