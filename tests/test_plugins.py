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
