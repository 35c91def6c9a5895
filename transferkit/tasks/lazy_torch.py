"""`torch` and `torch.nn` for the task modules, imported on first attribute use: registering the tasks and
checking a recipe against them (`transferkit validate`) then needs no torch, which costs seconds to import."""

from __future__ import annotations

import importlib


class _OnFirstUse:
    """Stands for module `name`; the first attribute read imports it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


torch = _OnFirstUse("torch")
nn = _OnFirstUse("torch.nn")
