"""Recipe files as YAML: read with yaml.safe_load rules (duplicate keys refused), written back readable."""

from __future__ import annotations

from pathlib import Path

import yaml

from transferkit.errors import SpecError
from transferkit.recipe.spec import ExperimentSpec


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping instead of keeping the last."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _sibling_hint(path: Path) -> str:
    """' (did you mean: recipe.yaml?)' for files beside a missing one with a close name (recipe.yml), or ''."""
    import difflib

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return ""
    names = [p.name for p in folder.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file()]
    close = difflib.get_close_matches(path.name, names, n=2, cutoff=0.75)
    return f" (did you mean: {', '.join(str(folder / name) for name in close)}?)" if close else ""


def read_yaml(path: str | Path) -> dict:
    """Read a recipe file with yaml.safe_load; SpecError naming the file and line on any problem."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: recipe file not found{_sibling_hint(path)}; check the path (or name a registered "
                        f"recipe)")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read recipe ({exc})") from None
    try:
        data = yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader that also refuses duplicate keys
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        if "appears twice" in problem:  # UniqueKeyLoader: the message already says the fix
            raise SpecError(f"{path}{where}: {problem}") from None
        raise SpecError(f"{path}{where}: YAML syntax error: {problem}; fix the recipe's indentation or quoting") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        kind = {"str": "string", "int": "number", "float": "number", "bool": "boolean"}.get(
            type(data).__name__, type(data).__name__)
        raise SpecError(f"{path}: the recipe's top level must be a mapping of keys (name:, backbone:, ...), "
                        f"not a {kind}")
    return data


def dump_yaml(spec: ExperimentSpec) -> str:
    """The spec as YAML (tuples as lists), readable back by load_recipe."""
    return yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
