"""Hyperparameter search on Optuna: `transferkit tune RECIPE --trials N` (docs/tuning.md).

The search space is the recipe's `tune:` section; each trial is a normal run directory with its own recipe,
pruned after any epoch by Optuna's pruner; many processes (`--jobs`, or other machines on one `--storage`) share
one study. `tune()` in tune/study.py is what the command calls.
"""

from transferkit.errors import TransferkitError

try:
    import optuna  # noqa: F401
except ModuleNotFoundError:
    raise TransferkitError("transferkit tune runs on Optuna, which is not installed: pip install 'transferkit[tune]' "
                           "(or pip install optuna)") from None
