"""A generic name -> object registry with decorator registration, wildcard listing and suggestions."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Callable, Iterable

from transferkit.errors import NotRegisteredError


_missing_notes: list[Callable[[], str]] = []


def add_missing_note(note: Callable[[], str]) -> None:
    """Have every unknown-name error carry `note()` (plugins.py adds the plugins that failed to load)."""
    if note not in _missing_notes:
        _missing_notes.append(note)


def missing_note() -> str:
    """What the registered notes say about a name that is not registered, e.g. ' (plugin X failed to load: ...)'."""
    return "".join(note() for note in _missing_notes)


def suggest(name: str, candidates: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' for the closest candidates, or '' when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(close)}?)" if close else ""


def first_doc_line(obj: Any) -> str:
    """The first line of an object's docstring, or ''."""
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):  # plain values carry their type's docstring
        return ""
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


class Registry:
    """Named items of one kind (backbones, heads, ...), extended by plugins and user code."""

    def __init__(self, kind: str, list_command: str = ""):
        self.kind = kind
        self.list_command = list_command
        self._items: dict[str, Any] = {}
        self._origins: dict[str, str] = {}
        self._options: dict[str, type] = {}

    def register(self, name: str | None = None, obj: Any = None, *, origin: str = "", overwrite: bool = False,
                 options: type | None = None):
        """Register `obj` under `name`; without `obj`, return a decorator that does so.

        `options` is a pydantic model of the settings the item takes from the recipe (`head.options`,
        `data.options`, `lr_policy.options`); they are validated against it when the recipe is read.
        Without one, the item takes no options and any key there is refused.
        """
        if obj is None:
            return lambda target: self.register(name, target, origin=origin, overwrite=overwrite, options=options)
        key = name or obj.__name__
        if key in self._items and not overwrite and self._items[key] is not obj:
            raise ValueError(f"{self.kind} '{key}' is registered already; pass overwrite=True to replace it")
        if options is not None and not (isinstance(options, type) and hasattr(options, "model_validate")):
            raise TypeError(f"{self.kind} '{key}': options must be a pydantic model class, not {options!r}")
        self._items[key] = obj
        self._origins[key] = origin or (getattr(obj, "__module__", None) or "").split(".")[0]
        if options is not None:
            self._options[key] = options
        else:
            self._options.pop(key, None)
        return obj

    def unregister(self, name: str) -> None:
        """Remove `name` (mainly for tests)."""
        self._items.pop(name, None)
        self._origins.pop(name, None)
        self._options.pop(name, None)

    def options_model(self, name: str) -> type | None:
        """The pydantic model of the options `name` takes, or None when it declared none."""
        self.get(name)
        return self._options.get(name)

    def parse_options(self, name: str, values: dict | None = None):
        """`values` validated against the options model `name` declared (a model instance with defaults filled in).

        Raises pydantic's ValidationError on a bad value, ValueError when `name` declared no options but got some.
        """
        model = self.options_model(name)
        if model is None:
            if values:
                raise ValueError(f"{self.kind} '{name}' takes no options; got {', '.join(map(str, values))}")
            return None
        return strict_model(model).model_validate(values or {})

    def get(self, name: str) -> Any:
        """The item registered as `name`; NotRegisteredError with close suggestions otherwise."""
        try:
            return self._items[name]
        except KeyError:
            raise NotRegisteredError(
                f"unknown {self.kind} '{name}'{missing_note()}{suggest(name, self._items)}"
                + (f"; see `transferkit {self.list_command}`" if self.list_command else "")) from None

    def origin(self, name: str) -> str:
        """Where `name` comes from: the distribution of the plugin that registered it, else the top-level package
        of the code that did (`transferkit` for the built-ins)."""
        return self._origins.get(name, "")

    def set_origin(self, name: str, origin: str) -> None:
        """Credit `name` to `origin` (plugin discovery names the distribution that registered it)."""
        if name in self._items:
            self._origins[name] = origin

    def list(self, pattern: str | None = None) -> list[str]:
        """Sorted names, filtered by a shell-style wildcard pattern (case-insensitive) if given."""
        names = sorted(self._items)
        if pattern:
            names = [n for n in names if fnmatch.fnmatch(n.lower(), pattern.lower())]
        return names

    def describe(self, name: str) -> str:
        """The first docstring line of the item registered as `name`."""
        return first_doc_line(self.get(name))

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} items)"


BACKBONES = Registry("backbone", "list-backbones")
HEADS = Registry("head", "list-heads")
DATASETS = Registry("dataset", "list-datasets")
LR_POLICIES = Registry("LR policy", "list-lr-policies")
OPTIMIZERS = Registry("optimizer", "list-optimizers")
WEIGHT_SOURCES = Registry("weight source", "list-weights")
RECIPES = Registry("recipe", "list-recipes")
TASKS = Registry("task", "list-tasks")
CALLBACKS = Registry("callback", "list-callbacks")  # train.callbacks: made as item(run, options) -> Callback
LOGGERS = Registry("logger", "list-loggers")  # train.loggers: the same, built on the primary process only


_strict: dict[type, type] = {}


def strict_model(model: type) -> type:
    """`model`, or a subclass of it that refuses unknown keys when `model` itself would accept them."""
    if model.model_config.get("extra") == "forbid":
        return model
    if model not in _strict:
        _strict[model] = type(model.__name__, (model,), {"model_config": {**model.model_config, "extra": "forbid"},
                                                         "__doc__": model.__doc__})
    return _strict[model]
