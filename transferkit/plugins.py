"""Plugin discovery through the `transferkit.plugins` entry-point group.

A plugin's entry point names a module (importing it registers things) or a callable (called with no
arguments). A plugin that fails is recorded with its error; the rest keep working. Set
TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD=1 to skip discovery.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from transferkit import registry

GROUP = "transferkit.plugins"
DISABLE_ENV = "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD"
_REGISTRIES = {"backbones": registry.BACKBONES, "heads": registry.HEADS, "datasets": registry.DATASETS,
               "lr_policies": registry.LR_POLICIES, "optimizers": registry.OPTIMIZERS,
               "weight_sources": registry.WEIGHT_SOURCES, "recipes": registry.RECIPES,
               "tasks": registry.TASKS, "callbacks": registry.CALLBACKS, "loggers": registry.LOGGERS}


@dataclass
class PluginInfo:
    """One discovered plugin: where it comes from, what it registered, or why it failed."""

    name: str
    value: str
    package: str
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


_loaded: list[PluginInfo] | None = None


def _snapshot() -> dict[str, set[str]]:
    return {kind: set(reg.list()) for kind, reg in _REGISTRIES.items()}


def load_plugins(force: bool = False) -> list[PluginInfo]:
    """Import every installed plugin once; returns what each registered (cached after the first call)."""
    global _loaded
    if _loaded is not None and not force:
        return _loaded
    _loaded = []
    if os.environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
        return _loaded
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        package = ep.dist.name if getattr(ep, "dist", None) else ""
        info = PluginInfo(ep.name, ep.value, package)
        before = _snapshot()
        try:
            loaded = ep.load()
            if callable(loaded):
                loaded()
        except Exception as exc:  # a broken plugin must not take the others down
            info.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        after = _snapshot()
        info.registered = {kind: sorted(after[kind] - before[kind]) for kind in after if after[kind] - before[kind]}
        for kind, names in info.registered.items():  # the `from` column of list-* names the installed package
            for name in names:
                _REGISTRIES[kind].set_origin(name, package or ep.name)
        _loaded.append(info)
    return _loaded


def failed_plugins_note() -> str:
    """' (plugin P failed to load: E; ...)' for each installed plugin whose import raised, or ''.

    Appended to an unknown-name error: the name may come from the plugin that failed.
    """
    failed = [info for info in (_loaded or []) if info.error]
    if not failed:
        return ""
    return " (" + "; ".join(f"plugin {info.package or info.name} failed to load: {info.error}" for info in failed) + ")"


registry.add_missing_note(failed_plugins_note)
