"""MLflow: the recipe as parameters, each epoch's metrics at its step, the run's files as artifacts (the mlflow extra)."""

from __future__ import annotations

import os
import time

from pydantic import BaseModel, ConfigDict, Field

from transferkit.callbacks.tracking import epoch_metrics, flat_params, missing_package, run_files
from transferkit.engine.callbacks import Callback, RunContext
from transferkit.registry import LOGGERS


class MLflowOptions(BaseModel):
    """train.loggers: {name: mlflow, options: {...}}; unset ones follow MLflow's own environment variables."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str | None = Field(None, description="tracking server or store; default: MLFLOW_TRACKING_URI, "
                                                        "else MLflow's default (./mlruns)")
    experiment: str | None = Field(None, description="MLflow experiment; default: MLFLOW_EXPERIMENT_NAME, else the "
                                                      "recipe's name")
    run_name: str | None = Field(None, description="default: <recipe name>/<variant>")
    tags: dict[str, str] = Field(default_factory=dict, description="extra tags on every run")
    log_model: bool = Field(False, description="also upload best.pt (or last.pt) as an artifact under model/")


@LOGGERS.register("mlflow", options=MLflowOptions)
class MLflowLogger(Callback):
    """One MLflow run per variant: recipe as params, metrics per epoch, PNGs, data_plan.json and spec.yaml at the end."""

    def __init__(self, run: RunContext, options: MLflowOptions | None = None):
        self.options = options or MLflowOptions()
        self.spec, self.variant, self.run_dir = run.spec, run.variant, run.run_dir
        self.run_id: str | None = None  # kept in last.pt: a resume logs on into the same MLflow run
        self.client = None

    @staticmethod
    def missing_requirement() -> str | None:
        """Why this logger cannot run here (checked when the recipe is read), or None."""
        return missing_package("mlflow", "mlflow", "mlflow")

    def on_fit_start(self, trainer) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.options.tracking_uri)  # None: MLFLOW_TRACKING_URI or ./mlruns
        if self.run_id is not None:
            self.client.update_run(self.run_id, status="RUNNING")
            return
        name = self.options.experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or self.spec.name
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        tags = {"transferkit.variant": self.variant, "transferkit.run_dir": str(self.run_dir.resolve()),
                "transferkit.experiment": self.spec.name, **self.options.tags}
        run = self.client.create_run(experiment_id, tags=tags,
                                     run_name=self.options.run_name or f"{self.spec.name}/{self.variant}")
        self.run_id = run.info.run_id
        params = flat_params(self.spec.model_dump(mode="json"))
        self.client.log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def on_epoch_end(self, trainer, epoch: int, row: dict) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in epoch_metrics(row).items()])

    def on_interrupt(self, trainer) -> None:
        self.client.set_terminated(self.run_id, status="KILLED")  # a resume sets it running again

    def on_run_end(self, run_dir) -> None:
        for path, folder in run_files(run_dir, self.options.log_model):
            self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)
        self.client.set_terminated(self.run_id, status="FINISHED")

    def state_dict(self) -> dict:
        return {"run_id": self.run_id}

    def load_state_dict(self, state: dict) -> None:
        self.run_id = state["run_id"]
