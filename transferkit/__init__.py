"""transferkit: transfer learning for image classification from one validated YAML recipe.

Importing the package registers the built-ins and imports no torch; `Experiment`, `load` and `load_recipe`
(which need it) are imported on first use, so the CLI's help and listings start in a fraction of a second.
"""

from transferkit.model import heads, pypi_weights  # noqa: F401  (register the built-ins)
from transferkit.optim import lr_policies, optimizers  # noqa: F401
from transferkit.data import folder  # noqa: F401
from transferkit.callbacks import metrics_log, mlflow_logger, tensorboard, wandb_logger  # noqa: F401
from transferkit import tasks  # noqa: F401
from transferkit.errors import TransferkitError
from transferkit.plugins import load_plugins
from transferkit.registry import (BACKBONES, CALLBACKS, DATASETS, HEADS, LOGGERS, LR_POLICIES, OPTIMIZERS, RECIPES,
                                  TASKS, WEIGHT_SOURCES, Registry)
from transferkit.recipe.spec import ExperimentSpec

__version__ = "0.1.0"

_LAZY = {"Experiment": "transferkit.run.experiment", "ExperimentResult": "transferkit.run.experiment",
         "VariantResult": "transferkit.run.experiment", "load": "transferkit.inference.model",
         "load_recipe": "transferkit.run.validation"}


def __getattr__(name: str):
    """`transferkit.Experiment`, `.load` and `.load_recipe`, imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'transferkit' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = ["Experiment", "ExperimentResult", "VariantResult", "ExperimentSpec", "load_recipe", "load_plugins",
           "Registry", "BACKBONES", "HEADS", "DATASETS", "LR_POLICIES", "OPTIMIZERS", "WEIGHT_SOURCES", "RECIPES",
           "TASKS", "CALLBACKS", "LOGGERS", "TransferkitError", "load", "__version__"]
