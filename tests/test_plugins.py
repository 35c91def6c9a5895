"""Entry-point plugins: a working one registers, a broken one is reported, autoload can be turned off."""

from __future__ import annotations

import os

from conftest import run_cli

GOOD_PLUGIN = '''
from torch import nn
from transferkit.registry import HEADS

@HEADS.register("plugin_head")
def plugin_head(num_features, num_classes, spec):
    """A head from a test plugin."""
    return nn.Linear(num_features, num_classes)
'''


def _install_fake_plugins(site):
    (site / "good_tk_plugin.py").write_text(GOOD_PLUGIN)
    for dist, entry in (("good_tk_plugin", "good = good_tk_plugin"),
                        ("broken_tk_plugin", "broken = module_that_does_not_exist_xyz")):
        info = site / f"{dist}-0.1.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        (info / "entry_points.txt").write_text(f"[transferkit.plugins]\n{entry}\n")


def test_plugins_are_discovered_and_a_broken_one_is_reported(tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    _install_fake_plugins(site)
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "0"}
    result = run_cli("plugins", env=env)
    assert result.returncode == 0, result.stderr
    assert "broken_tk_plugin" in result.stdout and "ModuleNotFoundError" in result.stdout
    assert "good_tk_plugin" in result.stdout and "heads: plugin_head" in result.stdout
    heads = run_cli("list-heads", env=env)
    assert "plugin_head" in heads.stdout and "A head from a test plugin." in heads.stdout
    assert "linear" in heads.stdout

    off = run_cli("list-heads", env={**env, "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert "plugin_head" not in off.stdout and "linear" in off.stdout


def test_the_docs_plugin_template_trains_offline(tmp_path):
    """The 'your own dataset' plugin and recipe of docs/plugins.md, taken from the page, installed as a
    distribution on the path, and run with the network made unreachable."""
    import re
    import tomllib

    import yaml

    from conftest import REPO, make_image_folder

    section = (REPO / "docs" / "plugins.md").read_text().split("## Your own dataset in a few minutes")[1]
    blocks = dict(re.findall(r"```(toml|python|yaml)\n(.*?)```", section, re.S))
    project = tomllib.loads(blocks["toml"])["project"]
    (name, module), = project["entry-points"]["transferkit.plugins"].items()
    site = tmp_path / "site"
    (site / module).mkdir(parents=True)
    (site / module / "__init__.py").write_text(blocks["python"])
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir()
    info.joinpath("METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: 0.1.0\n")
    info.joinpath("entry_points.txt").write_text(f"[transferkit.plugins]\n{name} = {module}\n")
    work = tmp_path / "work"
    make_image_folder(work / "split", per_class=(10, 0))
    (work / "split" / "train").rename(work / "photos")  # photos/<class>/*.jpg, as the page says
    recipe = work / "mydata-demo.yaml"
    recipe.write_text(blocks["yaml"])
    assert yaml.safe_load(blocks["yaml"])["data"]["dataset"] == name

    dead = "http://127.0.0.1:9"  # nothing listens: any download fails at once
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
           "TRANSFERKIT_DISABLE_PLUGIN_AUTOLOAD": "0", "TORCH_HOME": str(tmp_path / "torch"),
           "HF_HUB_OFFLINE": "1", "HTTP_PROXY": dead, "HTTPS_PROXY": dead, "http_proxy": dead, "https_proxy": dead}
    result = run_cli("run", str(recipe), "--set", "data.image_size=32", "--set", "data.batch_size=4",
                     "--set", "data.num_workers=0", "--set", "train.epochs=1", "--set", "train.device=cpu",
                     "--no-progress", cwd=work, env=env)
    assert result.returncode == 0, result.stderr
    assert list((work / "runs").rglob("best.pt")), result.stderr
