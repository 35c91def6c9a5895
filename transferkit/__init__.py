"""transferkit: transfer learning for image classification from one validated YAML recipe."""

from transferkit.model import heads, pypi_weights  # noqa: F401  (register the built-ins)
from transferkit.optim import lr_policies, optimizers  # noqa: F401
from transferkit.data import folder  # noqa: F401
from transferkit import tasks  # noqa: F401
from transferkit.errors import TransferkitError
from transferkit.inference.model import load
from transferkit.run.experiment import Experiment, ExperimentResult, VariantResult
from transferkit.plugins import load_plugins
from transferkit.registry import BACKBONES, DATASETS, HEADS, LR_POLICIES, OPTIMIZERS, RECIPES, TASKS, WEIGHT_SOURCES, Registry
from transferkit.recipe.spec import ExperimentSpec, load_recipe

__version__ = "0.1.0"

__all__ = ["Experiment", "ExperimentResult", "VariantResult", "ExperimentSpec", "load_recipe", "load_plugins",
           "Registry", "BACKBONES", "HEADS", "DATASETS", "LR_POLICIES", "OPTIMIZERS", "WEIGHT_SOURCES", "RECIPES",
           "TASKS", "TransferkitError", "load", "__version__"]
