"""Weights & Biases: the recipe as config, each epoch's metrics at its step, the run's files as an artifact (the wandb
extra)."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from transferkit.callbacks.tracking import epoch_metrics, flat_params, missing_package, run_files
from transferkit.engine.callbacks import Callback, RunContext
from transferkit.registry import LOGGERS


class WandbOptions(BaseModel):
    """train.loggers: {name: wandb, options: {...}}; unset ones follow W&B's own environment variables."""

    model_config = ConfigDict(extra="forbid")

    project: str | None = Field(None, description="W&B project; default: WANDB_PROJECT, else the recipe's name")
    entity: str | None = Field(None, description="team or user; default: WANDB_ENTITY, else your default entity")
    mode: Literal["online", "offline", "disabled"] | None = Field(None, description="default: WANDB_MODE, else online")
    dir: str | None = Field(None, description="where W&B keeps its files; default: WANDB_DIR, else the working directory")
    run_name: str | None = Field(None, description="default: <recipe name>/<variant>")
    group: str | None = Field(None, description="default: the recipe's name, so a recipe's variants sit together")
    tags: list[str] = Field(default_factory=list, description="extra tags beside the variant's name")
    log_model: bool = Field(False, description="also upload best.pt (or last.pt) as a model artifact")


@LOGGERS.register("wandb", options=WandbOptions)
class WandbLogger(Callback):
    """One W&B run per variant: recipe as config, metrics per epoch, PNGs, data_plan.json and spec.yaml at the end.

    The variant is a tag; the run directory, longer than a tag may be, is config key transferkit.run_dir.
    """

    def __init__(self, run: RunContext, options: WandbOptions | None = None):
        self.options = options or WandbOptions()
        self.spec, self.variant, self.run_dir = run.spec, run.variant, run.run_dir
        self.run_id: str | None = None  # kept in last.pt: a resume logs on into the same W&B run
        self.run = None

    @staticmethod
    def missing_requirement() -> str | None:
        """Why this logger cannot run here (checked when the recipe is read), or None."""
        return missing_package("wandb", "wandb", "wandb")

    def on_fit_start(self, trainer) -> None:
        import wandb

        o = self.options
        config = {**flat_params(self.spec.model_dump(mode="json")), "transferkit.variant": self.variant,
                  "transferkit.run_dir": str(self.run_dir.resolve())}
        self.run = wandb.init(project=o.project or os.environ.get("WANDB_PROJECT") or self.spec.name, entity=o.entity, mode=o.mode, dir=o.dir,
                              name=o.run_name or f"{self.spec.name}/{self.variant}", group=o.group or self.spec.name,
                              tags=[self.variant, *o.tags], config=config, id=self.run_id,
                              resume="allow" if self.run_id else None, reinit="create_new")
        self.run_id = self.run.id

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        self.run.log({**epoch_metrics(row), "epoch": epoch}, step=epoch)

    def on_interrupt(self, trainer) -> None:
        self.run.finish(exit_code=1)  # a resume opens it again by its id

    def on_run_end(self, run_dir) -> None:
        import wandb

        files = run_files(run_dir, self.options.log_model)
        artifact = wandb.Artifact(f"{self.spec.name}-{self.variant}-files", type="run-files")
        for path, folder in files:
            if folder != "model":
                artifact.add_file(str(path), name=f"{folder}/{path.name}" if folder else path.name)
        self.run.log_artifact(artifact)
        model = next((path for path, folder in files if folder == "model"), None)
        if model is not None:
            weights = wandb.Artifact(f"{self.spec.name}-{self.variant}-model", type="model")
            weights.add_file(str(model))
            self.run.log_artifact(weights)
        self.run.finish()

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]
