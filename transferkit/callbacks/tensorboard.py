"""TensorBoard event files: per-epoch metrics, each parameter group's LR, images/s, and the recipe as hparams."""

from __future__ import annotations

from pathlib import Path

from transferkit.engine.callbacks import Callback
from transferkit.errors import SpecError
from transferkit.rundir import RunDir


def _flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat(f"{prefix}.{key}" if prefix else str(key), item, out)
    elif isinstance(value, (int, float, str, bool)):
        out[prefix] = value
    elif value is not None:
        out[prefix] = str(value)
    return out


class TensorBoardLog(Callback):
    """Writes <run>/tensorboard/: scalars per epoch (metrics, lr/<group>, images/s); the recipe as hparams at the end."""

    order = 70

    def __init__(self, run_dir: Path, recipe: dict):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise SpecError("train.loggers: tensorboard needs the tensorboard package; pip install tensorboard "
                            "(or drop it from train.loggers)") from None
        self.folder = RunDir(run_dir).tensorboard
        self.writer_class = SummaryWriter
        self.recipe = recipe
        self.writer = None

    def on_fit_start(self, trainer) -> None:
        self.writer = self.writer_class(log_dir=str(self.folder))

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(f"metrics/{key}", value, epoch)
        for group in trainer.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], epoch)
        self.writer.flush()

    def on_interrupt(self, trainer) -> None:
        self.writer.close()

    def on_fit_end(self, trainer) -> None:
        final = {f"hparam/{k}": v for k, v in (trainer.history[-1] if trainer.history else {}).items()
                 if isinstance(v, (int, float)) and k != "epoch"}
        hparams = _flat("", {k: v for k, v in self.recipe.items() if k != "variants"}, {})
        self.writer.add_hparams(hparams, final, run_name=".")
        self.writer.close()
