"""The run-directory object: what a script needs to find, resume and read runs the way the CLI does."""

from __future__ import annotations

import json

import pytest

from conftest import make_image_folder, tiny_recipe
from transferkit.errors import TransferkitError
from transferkit.rundir import RunDir, RunRoot


def test_a_script_finds_checks_and_resumes_runs_as_the_cli_does(tmp_path):
    import transferkit

    data = make_image_folder(tmp_path / "data")
    out = tmp_path / "runs"
    experiment = transferkit.Experiment.from_dict(tiny_recipe(data))
    first = experiment.run(output_dir=out, progress=False)
    assert RunRoot.fresh(out, "tiny").path == out / "tiny-2"  # the next run never overwrites this one
    root, variant = RunRoot(first.run_root), RunRoot(first.run_root).variant("base")
    for path in (variant.last, variant.best, variant.metrics_json, variant.metrics_csv, variant.summary,
                 variant.spec, variant.param_groups, variant.data_plan, variant.evaluation("test") / "metrics.json",
                 root.comparison, root.curves):
        assert path.is_file() and path.stat().st_size > 0, path
    assert variant.is_finished and root.is_finished and variant.checkpoint() == variant.best
    assert json.loads(variant.metrics_json.read_text())[0]["epoch"] == 1
    assert RunRoot.of(variant.path).path == root.path and RunRoot.of(root.path).path == root.path
    assert list(root.started()) == ["base"]
    assert RunRoot.latest_unfinished(out, "tiny") is None

    root.comparison.unlink()  # as a run stopped before its comparison leaves it
    found = RunRoot.to_resume("auto", out, "tiny")
    assert found.path == root.path
    variants = {name: experiment.variant_spec(name).model_dump(mode="json") for name in experiment.variant_names}
    found.check_resumable("tiny", variants)
    with pytest.raises(TransferkitError, match="run of experiment 'tiny', not 'other'"):
        found.check_resumable("other", variants)
    changed = {"base": {**variants["base"], "seed": 1}}
    with pytest.raises(TransferkitError, match="seed: 0 in the run, 1 in the recipe"):
        found.check_resumable("tiny", changed)
    again = experiment.run(resume="auto", output_dir=out, progress=False)  # as `--resume auto`: read back, not re-run
    assert again["base"].history == first["base"].history and root.is_finished


def test_resume_names_are_refused_with_one_line(tmp_path):
    with pytest.raises(TransferkitError, match="no such run directory"):
        RunRoot.to_resume(tmp_path / "nope", tmp_path, "tiny")
    with pytest.raises(TransferkitError, match="no unfinished run of 'tiny'"):
        RunRoot.to_resume("auto", tmp_path, "tiny")
    assert RunDir(tmp_path).checkpoint() is None and not RunDir(tmp_path).is_started
