"""The fold models of a `transferkit cv` folder as one predictor: each image's answers averaged over the folds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from transferkit.errors import TransferkitError
from transferkit.inference.checkpoint_io import read_checkpoint
from transferkit.inference.predictor import Predictor
from transferkit.inference.torch_predictor import TorchPredictor
from transferkit.rundir import RunRoot


def is_cv_folder(path: str | Path) -> bool:
    """True for the folder a `transferkit cv` wrote (it holds cv.json)."""
    return RunRoot(Path(path).expanduser()).cv.is_file()


class EnsemblePredictor(Predictor):
    """Every fold's best checkpoint; an image's probabilities (label probabilities, values) are the folds' mean.

    Its recipe is the folds' without the fold: the test split is theirs, and there is no validation split (each
    fold's held-out part trained the others).
    """

    def __init__(self, folder: str | Path, device: str | torch.device = "auto", batch_size: int | None = None):
        root = RunRoot(Path(folder).expanduser())
        runs = [Path(p) for p in json.loads(root.cv.read_text())["runs"].values()]
        missing = [p for p in runs if not p.is_dir()]
        if missing:
            raise TransferkitError(f"{root.path}: fold run {missing[0]} is gone; the ensemble needs every fold's "
                                   f"folder (or predict with one fold's folder)")
        self.members = [TorchPredictor(read_checkpoint(run), device, batch_size) for run in runs]
        first = self.members[0]
        for run, member in zip(runs, self.members):
            if member.classes != first.classes or member.preprocessing != first.preprocessing:
                raise TransferkitError(f"{run}: its classes or preprocessing differ from {runs[0]}'s; an ensemble "
                                       f"averages models of the same outputs and inputs")
        self.source = root.cv
        self.classes, self.task, self.preprocessing = first.classes, first.task, first.preprocessing
        self.recipe = {**first.recipe, "data": {**first.recipe["data"], "kfold": None}}
        self.device, self.batch_size, self.decode_threads = first.device, first.batch_size, first.decode_threads

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Head outputs whose answers are the folds' mean answers (probabilities averaged, not logits)."""
        answers = np.mean([member.task.answers(member.logits(images)) for member in self.members], axis=0)
        return self.task.logits_of(answers).astype(np.float32)
