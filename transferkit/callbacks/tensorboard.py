"""TensorBoard event files: per-epoch metrics, each parameter group's LR, images/s, and the recipe as hparams."""

from __future__ import annotations

from transferkit.callbacks.tracking import epoch_metrics, flat_params, missing_package
from transferkit.engine.callbacks import Callback, RunContext
from transferkit.registry import LOGGERS
from transferkit.rundir import RunDir


@LOGGERS.register("tensorboard")
class TensorBoardLog(Callback):
    """Writes <run>/tensorboard/: scalars per epoch (metrics, lr/<group>, images/s); the recipe as hparams at the end."""

    def __init__(self, run: RunContext, options=None):
        self.folder = RunDir(run.run_dir).tensorboard
        self.recipe = run.spec.model_dump(mode="json")
        self.writer = None

    @staticmethod
    def missing_requirement() -> str | None:
        """Why this logger cannot run here (checked when the recipe is read), or None."""
        return missing_package("tensorboard", "tensorboard", "tensorboard")

    def on_fit_start(self, trainer) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.folder))

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        for key, value in epoch_metrics(row).items():
            self.writer.add_scalar(f"metrics/{key}", value, epoch)
        for group in trainer.optimizer.param_groups:
            self.writer.add_scalar(f"lr/{group.get('name', 'group')}", group["lr"], epoch)
        self.writer.flush()

    def on_interrupt(self, trainer) -> None:
        self.writer.close()

    def on_fit_end(self, trainer) -> None:
        final = {f"hparam/{k}": v for k, v in epoch_metrics(trainer.history[-1] if trainer.history else {}).items()}
        self.writer.add_hparams(flat_params(self.recipe), final, run_name=".")
        self.writer.close()
