"""Imports go one way through the pipeline's packages: recipe -> model, optim, tasks -> data -> engine -> callbacks ->
inference -> run -> serve, tune -> cli, with the small utility modules usable from anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "transferkit"
LAYERS = ["recipe", "model", "optim", "tasks", "data", "engine", "callbacks", "inference", "run", "serve", "tune", "cli"]
RANK = {"recipe": 0, "model": 1, "optim": 1, "tasks": 1, "data": 2, "engine": 3, "callbacks": 4, "inference": 5, "run": 6,
        "serve": 7, "tune": 7, "cli": 8}
UTILITIES = {"errors", "registry", "files", "progress", "seeding", "download", "plugins", "device", "signals",
             "cpu_memory", "testing", "rundir", "synthetic", "tables", "__init__", "__main__"}


def _layer(module: str) -> str | None:
    """'transferkit.data.cache' -> 'data'; None for a utility or the package root."""
    parts = module.split(".")
    if parts[0] != "transferkit" or len(parts) == 1:
        return None
    return None if parts[1] in UTILITIES else parts[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "transferkit":
                found += [(node.lineno, f"transferkit.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
    return found


def test_every_module_sits_in_a_known_layer_or_is_a_utility():
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        layer = _layer(module)
        assert layer is None or layer in RANK, f"{module}: add its package to LAYERS or UTILITIES"


def test_imports_go_one_way():
    wrong = []
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        layer = _layer(module)
        for line, imported in _imports(path):
            target = _layer(imported)
            if layer is None:
                # the package root and its `python -m` entry point sit above every layer
                if path.stem in UTILITIES and path.stem not in ("__init__", "__main__") and target is not None:
                    wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: utility imports {imported}")
                continue
            if target is not None and RANK[target] > RANK[layer]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {layer} imports {imported} ({target})")
    assert not wrong, "imports against the pipeline's direction:\n" + "\n".join(wrong)


def test_recipe_package_needs_no_torch():
    for path in (PACKAGE / "recipe").rglob("*.py"):
        for line, imported in _imports(path):
            assert imported.split(".")[0] != "torch", f"{path.name}:{line} imports torch"


def _inference_graph() -> dict[str, set[str]]:
    """inference module -> the inference modules it imports, at the top or inside a function."""
    graph = {}
    for path in (PACKAGE / "inference").glob("*.py"):
        graph[path.stem] = {imported.split(".")[2] for _, imported in _imports(path)
                            if imported.startswith("transferkit.inference.")}
    return graph


def test_inference_has_no_import_circle():
    graph = _inference_graph()
    done, path = set(), []

    def visit(module: str) -> None:
        if module in path:
            raise AssertionError("inference import circle: " + " -> ".join(path[path.index(module):] + [module]))
        if module in done:
            return
        path.append(module)
        for imported in sorted(graph.get(module, ())):
            visit(imported)
        path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_predictor_base_imports_none_of_its_users():
    # the base sits at the bottom: backends import it, the load() facade imports them, never the other way
    imported = _inference_graph()["predictor"]
    assert not imported & {"torch_predictor", "onnx_predictor", "evaluate", "export", "model"}, imported
