"""`transferkit fit FOLDER`: a recipe from a folder of photos and a preset, by the rules of docs/presets.md."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from transferkit.data.shard_index import folder_recipe, is_shard_folder
from transferkit.errors import DataError, SpecError, TransferkitError
from transferkit.files import atomic_write_text
from transferkit.model.offline_weights import availability
from transferkit.recipe.overrides import apply_overrides
from transferkit.recipe.presets import PRESETS
from transferkit.rundir import RunRoot
from transferkit.run.preset_rules import apply_preset, given_keys, task_of, training_images
from transferkit.tasks import task_class

if TYPE_CHECKING:
    from transferkit.run.experiment import Experiment
    from transferkit.run.results import ExperimentResult

ORDER = ["name", "description", "preset", "seed", "base_variant", "task", "backbone", "head", "data", "optimizer",
         "lr_policy", "schedule", "train"]


def fit_recipe(folder: str | Path, preset: str = "balanced", backbone: str | None = None,
               budget: str | None = None, device: str = "auto", seed: int = 0,
               overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The resolved recipe `fit` runs: the folder, the options and the `--set` overrides, with the preset's rules
    applied under them (run/preset_rules.py, as for a recipe's `preset:`), every key explicit."""
    if preset not in PRESETS:
        raise SpecError(f"--preset {preset}: use one of {', '.join(PRESETS)}")
    root = Path(folder).expanduser()
    table = root.suffix.lower() in (".csv", ".tsv") and root.is_file()
    if not table and not root.is_dir():
        raise DataError(f"{root.resolve()}: folder not found; give a folder with train/ and test/ class folders, "
                        f"or one class folder per class")
    folder_name = root.resolve().parent.name if table else root.resolve().name
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", folder_name).strip("-._") or "fit"
    if is_shard_folder(root):  # `transferkit shard` output: streamed, its task and splits as written
        streamed = folder_recipe(root)[0]
        task, data = streamed["task"], streamed["data"]
    else:
        task = {"name": "single_label"}
        data = {"dataset": "folder", ("labels" if table else "root"): str(root.resolve())}
    recipe = {"name": f"{base}-{preset}", "description": "", "preset": preset, "seed": seed, "base_variant": preset,
              "task": task, "head": {"name": "linear"}, "data": data,
              "train": {"device": device, **({"budget": budget} if budget else {})}}
    if backbone:  # the weights already on this machine when there are some (a packaged source, a cached file)
        found = availability(backbone)
        recipe["backbone"] = {"name": backbone, "pretrained": True,
                              **({"weights": found.weights} if found.available else {})}
    recipe = apply_overrides(recipe, list(overrides))
    given = (given_keys({k: v for k, v in recipe.items() if k != "data"})
             | {"data.dataset", "data.root", "data.labels", "data.source", "data.urls"}
             | given_keys(apply_overrides({}, list(overrides))))
    merged, n_train = apply_preset(recipe, given)
    task = task_of(merged)
    streamed_without_val = merged["data"].get("source") == "webdataset" and "val" not in merged["data"]["urls"]
    merged["train"].setdefault("best_metric", "auto" if streamed_without_val
                               else f"val_{task_class(task).default_metric}")
    if n_train is None:
        n_train = training_images(merged["data"], task)
    data = merged["data"]
    if (data.get("source") == "webdataset" and isinstance(data.get("batch_size"), int) and n_train
            and data["batch_size"] > n_train and "data.batch_size" not in given):
        data["batch_size"] = n_train  # a streamed epoch is whole batches: a larger batch would have no step
    merged["description"] = merged["description"] or f"transferkit fit --preset {preset} on {n_train} training images"
    return {key: merged[key] for key in ORDER if key in merged} | {k: v for k, v in merged.items() if k not in ORDER}


FIT_HEADER = "# written by transferkit fit; `transferkit run` on this file repeats the run\n"


@dataclass
class FitRun:
    """A run whose recipe transferkit wrote (`fit`, `continue`), ready to train: the experiment, its fresh run
    folder, and the recipe written there (recipe.yaml)."""

    experiment: "Experiment"
    root: RunRoot
    recipe_text: str

    @property
    def resume_command(self) -> str:
        """What continues this run after an interruption: `transferkit run` on its recipe.yaml with --resume."""
        from transferkit.run.launch import resume_command, run_words

        return resume_command(run_words(str(self.root.recipe)), self.root.path)

    def run(self, console=None, progress: bool = True) -> "ExperimentResult":
        """Train it; a failure before any variant's folder exists leaves no run folder behind. Ctrl-C stops as
        `run` does (RunInterrupted), the resume command printed with the first one."""
        try:
            return self.experiment.run(console=console, progress=progress, run_root=self.root.path,
                                       resume_command=lambda run_root: self.resume_command)
        except TransferkitError:
            if not any(p.is_dir() for p in self.root.path.iterdir()):
                self.root.recipe.unlink()
                self.root.path.rmdir()
            raise


def start_fit(folder: str | Path, preset: str = "balanced", backbone: str | None = None, budget: str | None = None,
              device: str = "auto", seed: int = 0, overrides: list[str] | tuple[str, ...] = (),
              output: str | Path = "runs") -> FitRun:
    """What `transferkit fit` does before training: the resolved recipe (for this machine's device), a fresh run
    folder under `output`, and the recipe written into it."""
    from transferkit.run.experiment import Experiment

    raw = fit_recipe(folder, preset, backbone, budget, device, seed, overrides)
    raw["output_dir"] = str(output)
    experiment = Experiment.from_dict(raw)
    root = RunRoot.fresh(output, experiment.spec.name)
    text = FIT_HEADER + yaml.safe_dump(raw, sort_keys=False)
    atomic_write_text(root.recipe, text)
    return FitRun(experiment, root, text)
