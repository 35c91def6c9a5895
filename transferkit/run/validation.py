"""The recipe-validation pipeline: every check a recipe goes through before anything trains, phase by phase.

    schema           the pydantic models, presets and every variant as a full recipe   (recipe/load.py), and a
                     preset's rules that read the data and the machine                (run/preset_rules.py)
    contradictions   settings that contradict each other                               (recipe/check.py)
    environment      registered names, their options, the task's rules; the weights fit  (run/preflight.py)
    data and device  the data root; the device and the processes the run is on         (below)

`transferkit validate`, `transferkit run`, `transferkit.load_recipe()` and `Experiment` all run `PHASES` in this
order, so they refuse the same recipes with the same message, before any image is read. One check waits for
the data's file list: `assemble.check_against_data` (a validation metric without a validation split).
"""

from __future__ import annotations

import os
from pathlib import Path

from transferkit.errors import SpecError
from transferkit.plugins import load_plugins
from transferkit.recipe.check import check_recipe_contradictions, device_contradictions
from transferkit.recipe.load import Recipe, check_schema, read_recipe, recipe_of_dict
from transferkit.recipe.spec import ExperimentSpec
from transferkit.run.preset_rules import apply_presets, needs_presets
from transferkit.run.preflight import (Where, check_data_root, check_options, check_references, check_task,
                                       check_weights)


def check_schema_and_presets(recipe: Recipe) -> None:
    """Phase 'schema': the pydantic models; then, for a recipe naming a preset, the preset's rules that read the
    data and the machine, under the recipe's own keys (the rules `fit --preset` writes out), and the models again."""
    check_schema(recipe)
    if recipe.raw is not None and needs_presets(recipe.raw):
        recipe.raw, recipe.spec = apply_presets(recipe.raw, recipe.source), None
        check_schema(recipe)


def check_environment(recipe: Recipe) -> None:
    """Phase 'environment': registered names in every variant first, then their options, what the task cannot
    honour, then the weights (a file is compared with the network built on the meta device; nothing is
    downloaded)."""
    variants = recipe.variants()
    for check in (check_references, check_options, check_task, check_weights):
        for name, spec in variants.items():
            check(spec, recipe.source, name, recipe.overrides)


def torchrun_processes() -> int:
    """How many processes torchrun started this run with (1 outside torchrun)."""
    return int(os.environ["WORLD_SIZE"]) if "RANK" in os.environ and "WORLD_SIZE" in os.environ else 1


def device_type(name: str) -> str:
    """'cpu', 'cuda' or 'mps' for a train.device value; torch is asked only for 'auto'."""
    if name == "auto":
        from transferkit.device import resolve_device

        return resolve_device(name).type
    return name.split(":")[0]


def check_device(spec: ExperimentSpec, where=lambda field: "", processes: int | None = None) -> None:
    """The device checks of one run's spec (train.device as it will run): the global batch splits over the
    processes, and no setting the device cannot do."""
    processes = torchrun_processes() if processes is None else processes
    if processes > 1:
        from transferkit.engine.placement import Placement

        Placement(0, processes).check_batch(spec.data.batch_size)
    kind = {}

    def resolved() -> str:  # resolved once, and only when a rule asks
        if "type" not in kind:
            kind["type"] = device_type(spec.train.device)
        return kind["type"]

    for field_name, message in device_contradictions(spec, resolved, processes):
        raise SpecError(f"{where(field_name)}{field_name}: {message}")
    if spec.data.source == "webdataset":
        problem = stream_readers_problem(spec, resolved, processes)
        if problem:
            raise SpecError(f"{where('data.urls.train')}data.urls.train: {problem}")


def stream_readers_problem(spec: ExperimentSpec, device_kind, processes: int) -> str | None:
    """Why the training shards would leave a process or loader worker without a shard (data.source webdataset)."""
    from transferkit.data.shard_index import readers_problem
    from transferkit.data.shard_urls import expand

    workers = spec.data.num_workers
    if workers is None:
        import torch

        from transferkit.data.loading import default_num_workers

        workers = default_num_workers(torch.device(device_kind()), processes)
    return readers_problem(len(expand(spec.data.urls.train)), processes, workers)


def check_data_and_device(recipe: Recipe) -> None:
    """Phase 'data and device': each variant's data root is a folder (when its dataset needs one), then the
    device checks."""
    variants = recipe.variants()
    for name, spec in variants.items():
        check_data_root(spec, recipe.source, name, recipe.overrides)
    for name, spec in variants.items():
        check_device(spec, Where(recipe.source, name, recipe.spec.base_variant, recipe.overrides))


PHASES = (("schema", check_schema_and_presets), ("contradictions", check_recipe_contradictions),
          ("environment", check_environment), ("data and device", check_data_and_device))


def run_phases(recipe: Recipe) -> ExperimentSpec:
    """Run every phase on `recipe` in order (plugins loaded first: they register names); the validated spec."""
    load_plugins()
    for _, phase in PHASES:
        phase(recipe)
    return recipe.spec


def load_recipe(path_or_name: str | Path, overrides: list[str] | None = None) -> ExperimentSpec:
    """Load a recipe file (or a plugin-registered recipe name), apply `--set` overrides, and run every validation
    phase: what `Experiment` and `transferkit run` would refuse, this refuses, with the same message."""
    load_plugins()  # a plugin may register the recipe name
    return run_phases(read_recipe(path_or_name, overrides))


def validate_dict(raw: dict, overrides: list[str] | None = None) -> ExperimentSpec:
    """A recipe given as a dict (paths relative to the working directory) through every validation phase."""
    return run_phases(recipe_of_dict(raw, overrides))


def validate_spec(spec: ExperimentSpec, source: str = "recipe", overrides: list[str] | None = None) -> ExperimentSpec:
    """A spec built in Python (or loaded before) through every validation phase; `source` names its file."""
    return run_phases(Recipe(source=source, overrides=overrides, spec=spec))
