"""Run directories: every file name in them, and which folder a run writes, resumes or reads.

`<output_dir>/<name>[-N]/` is a run root (one `transferkit run`); each variant trains in a folder of its own below
it. Every layer that writes or reads these files takes the names from here, so a script finds what the CLI wrote.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from transferkit.errors import TransferkitError
from transferkit.files import check_room

LAST, BEST = "last.pt", "best.pt"  # last: everything an exact resume needs; best: the best weights
CHECKPOINTS = (BEST, LAST)  # the one inference reads first
# `transferkit export`'s default files (OpenVINO writes its weights beside the .xml, as model.openvino.bin)
EXPORTS = {"onnx": "model.onnx", "onnx-fp16": "model.fp16.onnx", "onnx-int8": "model.int8.onnx",
           "openvino": "model.openvino.xml", "torchscript": "model.torchscript.pt"}
ROOM_MARGIN = 1 << 20  # metrics, summary, recipe copies and plots beside the checkpoints: well under a MiB

# Settings a resume may change: where and how fast it runs, not what it computes.
MAY_CHANGE = {("train", "device"), ("train", "epochs"), ("train", "budget"), ("data", "num_workers"),
              ("data", "eval_batch_size"), ("output_dir",), ("description",), ("train", "loggers")}


class RunDir:
    """One variant's folder: its checkpoints, metrics, recipe, data plan, summary and evaluations."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    last = property(lambda self: self.path / LAST, doc="last.pt: model, optimizer, progress, RNG, callbacks")
    best = property(lambda self: self.path / BEST, doc="best.pt: the selected weights and what predicting needs")
    metrics_json = property(lambda self: self.path / "metrics.json", doc="one row per epoch, as JSON")
    metrics_csv = property(lambda self: self.path / "metrics.csv", doc="one row per epoch, as CSV")
    summary = property(lambda self: self.path / "summary.json", doc="written last: the mark of a finished variant")
    spec = property(lambda self: self.path / "spec.yaml", doc="the variant's resolved recipe: the mark of a start")
    param_groups = property(lambda self: self.path / "param_groups.json", doc="the optimizer's parameter groups")
    data_plan = property(lambda self: self.path / "data_plan.json", doc="the data decisions with their reasons")
    tensorboard = property(lambda self: self.path / "tensorboard", doc="TensorBoard's event files")
    card = property(lambda self: self.path / "MODEL_CARD.md", doc="the model card (Hugging Face's format)")

    def evaluation(self, split: str) -> Path:
        """`evaluation/<split>/`: what evaluate writes for the split."""
        return self.path / "evaluation" / split

    def evaluation_metrics(self, split: str) -> Path:
        """`evaluation/<split>/metrics.json`: written last, so its presence means the split's report is whole."""
        return self.evaluation(split) / "metrics.json"

    def export(self, fmt: str) -> Path:
        """The default file of an export in `fmt` (onnx, onnx-fp16, onnx-int8, openvino, torchscript)."""
        return self.path / EXPORTS[fmt]

    def checkpoint(self) -> Path | None:
        """best.pt, else last.pt, else None."""
        return next((p for p in (self.best, self.last) if p.is_file()), None)

    @property
    def is_finished(self) -> bool:
        """True once the variant finished (its summary.json exists)."""
        return self.summary.is_file()

    @property
    def is_started(self) -> bool:
        """True once the variant wrote its spec.yaml (training began)."""
        return self.spec.is_file()

    def prepare(self) -> "RunDir":
        """Create the folder, with a clear error when it cannot be written."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise TransferkitError(f"output_dir: {self.path} is not a writable directory ({exc.strerror}); "
                                   f"set output_dir in the recipe or pass --output DIR") from None
        return self

    def check_room(self, last_bytes: int, best_bytes: int, setting: str = "output_dir (--output)") -> None:
        """WriteError before training when the disk (or the file-size limit) cannot hold this variant's checkpoints.

        Writes are atomic, so a checkpoint is written beside the one it replaces: the peak is best.pt, last.pt and
        a second copy of the larger. What a resumed run has there already is replaced, so it counts as room.
        """
        files = [(path, size) for path, size in ((self.last, last_bytes), (self.best, best_bytes)) if size]
        if not files:
            return
        present = sum(path.stat().st_size for path, _ in files if path.is_file())
        largest = max(files, key=lambda item: item[1])
        needed = sum(size for _, size in files) + largest[1] + ROOM_MARGIN - present
        check_room(self.path, max(needed, 0), largest, setting)

class RunRoot:
    """One run of an experiment: its variants' folders, the comparison and the curves (and fit's recipe)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunRoot({str(self.path)!r})"

    comparison = property(lambda self: self.path / "comparison.json", doc="the variants compared: the run's end")
    curves = property(lambda self: self.path / "curves.png", doc="the variants' curves")
    recipe = property(lambda self: self.path / "recipe.yaml", doc="the recipe `transferkit fit` (or `cv`) wrote and ran")
    folds = property(lambda self: self.path / "folds.csv", doc="`transferkit cv`: each image's group and fold")
    cv = property(lambda self: self.path / "cv.json", doc="`transferkit cv`: every metric's mean and std over the folds")

    def variant(self, name: str) -> RunDir:
        """The folder variant `name` trains in."""
        return RunDir(self.path / name)

    @property
    def is_finished(self) -> bool:
        """True once every variant ran and the comparison was written."""
        return self.comparison.is_file()

    def started(self) -> dict[str, RunDir]:
        """The variants that began training here, by name."""
        if not self.path.is_dir():
            return {}
        return {p.name: RunDir(p) for p in sorted(self.path.iterdir()) if RunDir(p).is_started}

    @classmethod
    def fresh(cls, output_dir: str | Path, name: str) -> "RunRoot":
        """output_dir/name, or name-2, name-3, ... when earlier runs are there: nothing is overwritten."""
        output_dir = Path(output_dir)
        candidate, n = output_dir / name, 1
        while candidate.exists() and any(candidate.iterdir()):
            n += 1
            candidate = output_dir / f"{name}-{n}"
        return cls(candidate)

    @classmethod
    def latest_unfinished(cls, output_dir: str | Path, name: str) -> "RunRoot | None":
        """The most recently changed run folder of experiment `name` that has no comparison yet."""
        output_dir = Path(output_dir)
        found = [cls(p) for p in [output_dir / name, *output_dir.glob(f"{name}-*")] if p.is_dir()]
        found = [root for root in found if not root.is_finished]
        return max(found, key=lambda root: root.path.stat().st_mtime, default=None)

    @classmethod
    def of(cls, path: str | Path) -> "RunRoot":
        """The run a path names: a variant folder (with last.pt, spec.yaml or summary.json) belongs to its parent."""
        path = Path(path)
        variant = RunDir(path)
        if any(p.is_file() for p in (variant.last, variant.spec, variant.summary)):
            return cls(path.parent)
        return cls(path)

    @classmethod
    def to_resume(cls, resume: str | Path, output_dir: str | Path, name: str) -> "RunRoot":
        """The run `--resume` names: a run or variant folder, or `auto` (the latest unfinished run of `name`)."""
        if str(resume) != "auto":
            path = Path(resume)
            if not path.is_dir():
                raise TransferkitError(f"--resume {resume}: no such run directory; give the folder printed by the "
                                       f"interrupted run (runs/<name>) or use --resume auto")
            return cls.of(path)
        found = cls.latest_unfinished(output_dir, name)
        if found is None:
            raise TransferkitError(f"--resume auto: no unfinished run of '{name}' under {output_dir}; run without "
                                   f"--resume to start one")
        return found

    def check_resumable(self, name: str, variants: dict[str, dict]) -> None:
        """TransferkitError unless every variant begun here was started by this recipe: the same experiment name,
        no variant the recipe lacks, and the same settings but for MAY_CHANGE (`variants`: name -> the resolved
        recipe as plain data)."""
        for variant, folder in self.started().items():
            saved = yaml.safe_load(folder.spec.read_text())
            if saved.get("name") != name:
                raise TransferkitError(f"--resume {self.path}: that is a run of experiment '{saved.get('name')}', "
                                       f"not '{name}'; give this recipe's run folder, or run without --resume")
            if variant not in variants:
                raise TransferkitError(f"--resume {self.path}: it holds variant '{variant}', which this recipe (or "
                                       f"--variant) does not have; resume with the recipe and variants it was "
                                       f"started with")
            changed = differences({k: v for k, v in saved.items() if k != "variants"},
                                  {k: v for k, v in variants[variant].items() if k != "variants"})
            if changed:
                shown = "; ".join(changed[:5]) + (f"; and {len(changed) - 5} more" if len(changed) > 5 else "")
                raise TransferkitError(f"--resume {self.path}: variant {variant} was started with other settings: "
                                       f"{shown}; resume with the same recipe and --set values, or run "
                                       f"without --resume")


def _flat(value, prefix=()) -> dict[tuple, object]:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(_flat(item, (*prefix, key)))
        return out
    return {prefix: value}


def differences(saved: dict, wanted: dict) -> list[str]:
    """'train.freeze_epochs: 1 in the run, 2 in the recipe' for every setting that differs and may not."""
    a, b = _flat(saved), _flat(wanted)
    found = []
    for key in sorted(set(a) | set(b), key=str):
        if any(key[:len(allowed)] == allowed for allowed in MAY_CHANGE) or a.get(key) == b.get(key):
            continue
        if key not in a and b.get(key) in (None, False):  # a setting newer than the run, left off: as it was
            continue
        found.append(f"{'.'.join(map(str, key))}: {a.get(key)!r} in the run, {b.get(key)!r} in the recipe")
    return found
