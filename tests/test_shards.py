"""WebDataset shards (issue 23): `transferkit shard`, and training, evaluation and resume streamed from the shards.

The folder comparison uses full-batch training of a frozen backbone's head without augmentation (crops of the
whole square image, no flip): one step per epoch over every training image, so the folder pipeline and two
processes streaming shards take the mean gradient of the same 40 images, and differ only in the order floats are
added (tolerance 1e-5, as tests/test_distributed.py). Smaller batches see another, equally valid order when
streamed; there a run over HTTP is the reference a killed and resumed run from local files must equal bit for bit.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import signal
import threading
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from conftest import make_image_folder, run_cli, tiny_recipe
from test_resume import _run_with_fault
from transferkit.callbacks.checkpoint import load_checkpoint
from transferkit.data.shard_index import read_index, readers_problem
from transferkit.data.stream import BadImage, ShardStream, StreamLoader, StreamSettings, eval_shards
from transferkit.errors import DataError, SpecError
from transferkit.recipe.merge import deep_merge

CLASSES = ("a", "b", "c", "d")
METRICS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy")
# Full batch, no augmentation, the backbone frozen (and streamed through: no feature cache).
SAME_STEPS = {"data": {"batch_size": 40, "crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0], "hflip": False,
                       "cache": "none"},
              "lr_policy": {"name": "frozen_backbone", "feature_cache": False},
              "optimizer": {"lr": 0.05, "momentum": 0.9}, "train": {"epochs": 2, "deterministic": True}}


def shard_recipe(urls: dict, **overrides) -> dict:
    """tiny_recipe streaming `urls` instead of reading a folder."""
    recipe = tiny_recipe(Path("unused"), **overrides)
    recipe["data"] = {k: v for k, v in recipe["data"].items() if k not in ("dataset", "root")}
    return deep_merge(recipe, {"data": {"source": "webdataset", "urls": urls}})


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A 4-class folder (10 train, 4 test images each, 32 px) and `transferkit shard` of it: (tmp, folder, shards,
    the command's result)."""
    tmp = tmp_path_factory.mktemp("shards")
    folder = make_image_folder(tmp / "photos", classes=CLASSES, per_class=(10, 4), size=(32, 32))
    result = run_cli("shard", str(folder), str(tmp / "shards"), "--shards", "4", "--shard-size", "20kB")
    assert result.returncode == 0, result.stderr
    return tmp, folder, tmp / "shards", result


def urls_of(shards: Path, base: str | None = None) -> dict:
    index = read_index(str(shards / "index.json"))
    where = base or str(shards)
    return {role: f"{where}/{split.pattern}" for role, split in index.splits.items()}


def test_shard_writes_the_same_bytes_again_and_the_webdataset_library_reads_them_back(made):
    import webdataset

    from transferkit.run.shard import shard_target

    tmp, folder, shards, result = made
    index = json.loads((shards / "index.json").read_text())
    assert index["labels"] == "single_label" and index["outputs"] == list(CLASSES)
    train = index["splits"]["train"]
    assert [s["images"] for s in train["shards"]] == [10, 10, 10, 10] and train["images"] == 40
    assert train["per_class"] == {name: 10 for name in CLASSES} and index["splits"]["test"]["images"] == 16
    assert len(index["splits"]["test"]["shards"]) >= 2  # by --shard-size: evaluation is spread over processes too
    assert "source: webdataset" in result.stdout and train["pattern"] in result.stdout

    samples = list(webdataset.WebDataset(str(shards / train["pattern"]), shardshuffle=False))
    assert len(samples) == 40 and len({s["__key__"] for s in samples}) == 40
    for sample in samples:  # the image bytes untouched, the label as the class index and in the json
        record = json.loads(sample["json"])
        assert sample["jpg"] == (folder / record["path"]).read_bytes()
        assert CLASSES[int(sample["cls"])] == record["class"] == Path(record["path"]).parent.name
    decoded = next(iter(webdataset.WebDataset(str(shards / "test-000000.tar"), shardshuffle=False).decode("pil")))
    assert decoded["jpg"].size == (32, 32) and decoded["cls"] == 0

    again = shard_target(str(folder), tmp / "again", "20kB", train_shards=4)
    written = sorted(p.name for p in shards.iterdir())
    assert written == sorted(p.name for p in again.out.iterdir())
    for name in written:
        assert hashlib.sha1((shards / name).read_bytes()).digest() == \
            hashlib.sha1((again.out / name).read_bytes()).digest(), name
    with pytest.raises(DataError, match="not empty"):
        shard_target(str(folder), shards)


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _run(tmp: Path, recipe: dict, name: str, *args: str) -> Path:
    result = run_cli("run", str(write_recipe(tmp / f"{name}.yaml", recipe)), "--output", str(tmp / name),
                     "--no-progress", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp / name / "tiny" / "base"


def _final(run_dir: Path):
    rows = json.loads((run_dir / "metrics.json").read_text())
    return [{k: row[k] for k in METRICS} for row in rows], load_checkpoint(run_dir / "last.pt")["model"]


def _assert_close(a: Path, b: Path, exact: bool = False) -> None:
    rows_a, model_a = _final(a)
    rows_b, model_b = _final(b)
    for x, y in zip(rows_a, rows_b, strict=True):
        assert x["train_accuracy"] == y["train_accuracy"] and x["test_accuracy"] == y["test_accuracy"]
        for key in ("train_loss", "test_loss"):
            assert y[key] == (x[key] if exact else pytest.approx(x[key], rel=1e-5)), key
    for key in model_a:
        assert torch.allclose(model_a[key].float(), model_b[key].float(), atol=0 if exact else 1e-5), key


@pytest.fixture(scope="module")
def folder_run(made):
    """The folder pipeline's run on the images the shards were written from (in process: the reference)."""
    from transferkit import Experiment

    tmp, folder, _, _ = made
    result = Experiment.from_dict({**tiny_recipe(folder, **SAME_STEPS), "output_dir": str(tmp / "folder")}).run(
        progress=False)
    return result["base"].run_dir


def test_two_gloo_processes_on_shards_train_like_the_folder_and_count_each_evaluation_image_once(made, folder_run):
    tmp, _, shards, _ = made
    two = _run(tmp, shard_recipe(urls_of(shards), **SAME_STEPS), "two", "--nproc", "2")
    _assert_close(folder_run, two)  # each process streamed two shards (20 images): together the folder's batch
    plan = json.loads((two / "data_plan.json").read_text())
    assert plan["train_source"] == "stream" and plan["train_cache"] == plan["eval_cache"] == "none"
    assert plan["stream"]["steps_per_epoch"] == 1 and plan["stream"]["shards"]["train"] == 4
    evaluation = json.loads((two / "evaluation" / "test" / "metrics.json").read_text())
    assert evaluation["images"] == 16 and "sample" in (two / "evaluation" / "test" / "predictions.csv").read_text()
    from transferkit.inference.evaluate import evaluate_folder
    from transferkit.inference.model import load_predictor
    from transferkit.run.fit import fit_recipe

    streamed = evaluate_folder(load_predictor(str(folder_run), "cpu"), shards, "test", tmp / "eval", None, False)
    files = json.loads((folder_run / "evaluation" / "test" / "metrics.json").read_text())
    assert streamed.metrics["images"] == files["images"] == 16  # `evaluate RUN --data SHARDS`: the same test images
    assert streamed.metrics["top1_accuracy"] == files["top1_accuracy"] and streamed.metrics["loss"] == pytest.approx(files["loss"])
    recipe = fit_recipe(shards, "fast", backbone="resnet18")  # `fit SHARDS`: streamed, sized by the index
    assert recipe["data"]["source"] == "webdataset" and recipe["data"]["urls"]["train"].endswith("{000000..000003}.tar")
    assert recipe["train"]["epochs"] == 60 and recipe["train"]["best_metric"] == "auto"  # 40 images, no val split
    assert recipe["data"]["batch_size"] == 40  # not the preset's 64: a streamed epoch is whole batches
    for world in (1, 2, 3):
        for workers in (0, 1, 2):
            read = [i for rank in range(world) for worker in range(max(1, workers))
                    for i in eval_shards(5, rank, world, worker, workers)]
            assert sorted(read) == list(range(5))


def test_too_few_shards_for_the_processes_and_workers_is_refused_when_the_recipe_is_read(made):
    from transferkit import Experiment, load_recipe
    from transferkit.run.launch import check_processes

    tmp, _, shards, _ = made
    recipe = write_recipe(tmp / "refused.yaml", shard_recipe(urls_of(shards)))
    with pytest.raises(SpecError, match=r"data.urls.train: 4 training shard\(s\) for 1 process\(es\) x 5 loader "
                                        r"worker\(s\) = 5 readers: 1 would get no shard"):
        load_recipe(recipe, ["data.num_workers=5"])
    with pytest.raises(SpecError, match=r"2 process\(es\) x 3 loader worker\(s\) = 6 readers: 2 would get no "
                                        r"shard .*, or set data.num_workers: 2, or run fewer processes"):
        check_processes(Experiment.from_yaml(recipe, ["data.num_workers=3"]), 2)  # `run --nproc 2`, before launching
    assert readers_problem(4, 2, 2) is None and "set data.num_workers: 2" in readers_problem(4, 2, 3)
    with pytest.raises(DataError, match="data.urls.index: cannot read .*nowhere.json"):
        load_recipe(recipe, [f"data.urls.index={tmp / 'nowhere.json'}"])


def _stream(urls: list[str], counts: list[int], train: bool, workers: int = 0) -> StreamLoader:
    from torchvision.transforms import v2

    settings = StreamSettings(urls, counts, "single_label", list(CLASSES), 4, train, seed=1, buffer=8,
                              steps=sum(counts) // 4, workers=workers)
    return StreamLoader(ShardStream(settings, v2.PILToTensor(), keys=True), torch.device("cpu"))


def test_a_resumed_stream_continues_with_the_very_samples_of_the_uninterrupted_one(made):
    _, _, shards, _ = made
    index = read_index(str(shards / "index.json"))
    urls = [str(shards / s.name) for s in index.splits["train"].shards]
    loader = _stream(urls, [10, 10, 10, 10], True, workers=2)
    loader.set_epoch(3)
    whole = [batch.keys for batch in loader]
    assert len(whole) == 10 and sorted(k for keys in whole for k in keys) == sorted(f"{i:08d}" for i in range(40))
    for step in (1, 4, 7):  # replayed from the epoch's start without decoding, in each worker
        loader.set_epoch(3, skip=step * 4)
        assert len(loader) == 10 - step and [batch.keys for batch in loader] == whole[step:]
    loader.set_epoch(4)
    assert [batch.keys for batch in loader] != whole  # another epoch, another order
    assert "exact" in loader.describe_resume(4)

    missing = str(shards / "test-000009.tar")  # a shard gone since the run started: named, the rest still read
    first = index.splits["test"].shards[0]
    evaluation = _stream([str(shards / first.name), missing], [first.images, 8], False)
    batches = list(evaluation)
    bad = [item for batch in batches for item in batch.bad]
    assert [b.path for b in bad] == [missing] and isinstance(bad[0], BadImage) and "cannot be read" in bad[0].message
    assert sum(len(batch.keys) for batch in batches) == first.images


def test_http_shards_train_and_a_sigkill_mid_epoch_resumes_exactly_with_a_corrupt_sample_skipped_and_named(tmp_path):
    from transferkit.data.preview import write_preview
    from transferkit.run.shard import shard_target
    from transferkit.run.targets import check_target, splits_for

    folder = make_image_folder(tmp_path / "photos", classes=CLASSES[:2], per_class=(12, 3), size=(32, 32))
    (folder / "train" / "a" / "broken.jpg").write_bytes((folder / "train" / "a" / "a_0.jpg").read_bytes()[:300])
    written = shard_target(str(folder), tmp_path / "shards", train_shards=4)
    report = check_target(str(written.out), [])  # check-data and preview of the shard folder, streamed
    assert report.images_checked == 31 and [p.kind for p in report.problems] == ["truncated"]
    assert "(train/a/broken.jpg)" in str(report.problems[0].path)
    grid = write_preview(splits_for(str(written.out), None, []), tmp_path / "preview.png", cell=32)
    assert grid.size == (8 * 32, 2 * (32 + 18))
    settings = dict(data={"batch_size": 4, "num_workers": 2, "on_bad_image": "skip", "shuffle_buffer": 6},
                    lr_policy={"name": "frozen_backbone", "feature_cache": False},
                    train={"epochs": 2, "deterministic": True})

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(written.out)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        recipe = write_recipe(tmp_path / "http.yaml", shard_recipe(urls_of(written.out, base), **settings))
        over_http = run_cli("run", str(recipe), "--output", str(tmp_path / "http"), "--no-progress")
    finally:
        server.shutdown()
        server.server_close()
    assert over_http.returncode == 0, over_http.stderr[-3000:]
    assert "skipped unreadable image" in over_http.stderr and "(train/a/broken.jpg): truncated" in over_http.stderr

    recipe = write_recipe(tmp_path / "local.yaml", shard_recipe(urls_of(written.out), **settings))
    out = tmp_path / "killed"
    killed = _run_with_fault(tmp_path, "SIGKILL", 6 + 3, "run", str(recipe), "--output", str(out), "--no-progress")
    assert killed.returncode == -signal.SIGKILL  # 25 images, batch 4: 6 steps an epoch; killed in the second
    run_dir = out / "tiny" / "base"
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == 1
    resumed = run_cli("run", str(recipe), "--output", str(out), "--resume", "auto", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming at epoch 2" in resumed.stderr
    _assert_close(tmp_path / "http" / "tiny" / "base", run_dir, exact=True)  # local files and HTTP: the same bytes
