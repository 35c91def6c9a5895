"""MODEL_CARD.md in every finished run: Hugging Face's model-card format (a YAML metadata block with a model-index,
then Markdown) written from the run's own files: summary.json (with the details gathered at the end of training),
spec.yaml and evaluation/test/metrics.json, so it can be written again from a finished run folder."""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml

from transferkit.callbacks.best import standard_error
from transferkit.files import atomic_write_text
from transferkit.inference.export import serve_available
from transferkit.rundir import RunDir, RunRoot

def split_counts(task, items) -> dict[str, int] | None:
    """Examples per output of a split (task.output_counts); streamed shards' from their index, not read."""
    if not hasattr(items, "per_class"):
        return task.output_counts([target for _, target in items])
    empty = task.output_counts([])  # None where outputs are not counts (regression)
    return None if empty is None else {name: int(items.per_class.get(name, 0)) for name in empty}


def card_details(parts, tracker, finished) -> dict:
    """What the card needs that only the run knows (stored in summary.json's `details`): the backbone and where its
    weights came from, the outputs with their counts per split, the validation split's size and standard error,
    how best.pt was selected and the calibration."""
    spec, task, splits = parts.spec, parts.task, parts.splits
    samples = {"train": splits.train, "val": splits.val or [], "test": splits.test}
    n_val = len(samples["val"])
    state = task.state_dict()
    return {
        "backbone": spec.backbone.name, "weights": spec.backbone.weights, "pretrained": spec.backbone.pretrained,
        "weights_origin": parts.weights_origin, "head": spec.head.name, "task": task.name,
        "task_description": task.describe(), "outputs": list(splits.classes), "output_kind": task.output_kind,
        "images": {split: len(items) for split, items in samples.items()},
        "counts": {split: split_counts(task, items) for split, items in samples.items()},
        "input_size": parts.preprocessing.input_size, "train_input_size": parts.preprocessing.train_input_size,
        "validation": {"images": n_val, "standard_error_at_0.9": standard_error(0.9, n_val) if n_val else None,
                       "standard_error_at_0.5": standard_error(0.5, n_val) if n_val else None},
        "selection": {"metric": parts.selection, "rule": tracker.rule_words() if tracker and parts.selection else None,
                      "described": tracker.describe() if tracker else "", "best_epoch": getattr(tracker, "best_epoch", 0),
                      "weights": finished.weights},
        "temperature": state.get("temperature"), "calibration": state.get("calibration"),
        "tta_flip": "test" in parts.trainer.flip_splits, "data_limit": spec.data.limit,
        "data_root": str(splits.root or spec.data.root or spec.data.dataset),
    }


def _number(value, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _metadata(name: str, details: dict, test: dict, evaluation: dict, spec: dict) -> str:
    """The YAML block, built and checked with huggingface_hub's ModelCardData (model-index from EvalResults)."""
    from huggingface_hub import EvalResult, ModelCardData

    dataset = Path(details["data_root"]).name or details["data_root"]
    task_type = "image-classification"
    results = []
    for key, label in (("test_accuracy", "accuracy"), ("test_loss", "loss"), ("test_map", "mAP"), ("test_f1", "f1"),
                       ("test_mae", "mae"), ("test_r2", "r2")):
        if key in test:
            results.append(EvalResult(task_type=task_type, dataset_type="imagefolder", dataset_name=dataset,
                                      dataset_split="test", metric_type=label, metric_value=round(test[key], 4),
                                      metric_name=f"test {label} (best.pt)"))
    calibration = evaluation.get("calibration")
    if calibration:
        results.append(EvalResult(task_type=task_type, dataset_type="imagefolder", dataset_name=dataset,
                                  dataset_split="test", metric_type="ece",
                                  metric_value=round(calibration["after"]["ece"], 4),
                                  metric_name="expected calibration error (15 bins)"))
    tags = ["transferkit", "image-classification", "transfer-learning", details["task"]]
    data = ModelCardData(library_name="transferkit", pipeline_tag=task_type, tags=tags, model_name=name,
                         metrics=sorted({r.metric_type for r in results}) or None, eval_results=results or None,
                         datasets=[dataset], base_model=details["backbone"] if "/" in details["backbone"] else None)
    return data.to_yaml()


def _counts_table(details: dict) -> list[str]:
    counts = details["counts"]
    splits = [split for split in ("train", "val", "test") if details["images"][split]]
    if not counts.get("train"):
        return [f"{details['images'][s]} {s} images" for s in splits]
    rows = [f"| {details['output_kind'][:-2] if details['output_kind'].endswith('es') else details['output_kind']} | "
            + " | ".join(splits) + " |", "|---|" + "---|" * len(splits)]
    for output in details["outputs"]:
        rows.append(f"| {output} | " + " | ".join(str((counts.get(s) or {}).get(output, 0)) for s in splits) + " |")
    rows.append("| **all images** | " + " | ".join(str(details["images"][s]) for s in splits) + " |")
    return rows


def _metrics_table(test: dict, evaluation: dict, details: dict, cross_validation: dict | None) -> list[str]:
    n_test = details["images"]["test"]
    rows = ["| metric (test split, the weights best.pt holds) | value | uncertainty |", "|---|---|---|"]
    for key, value in test.items():
        name = key.removeprefix("test_")
        spread = ""
        if name in ("accuracy", "subset_accuracy") and n_test:
            spread = f"± {standard_error(value, n_test):.3f} (standard error, {n_test} images)"
        if name == "loss" and details.get("calibration") and "calibration" in evaluation:
            spread = f"of the raw logits; NLL after the temperature: {evaluation['calibration']['after']['nll']:.4f}"
        rows.append(f"| {name} | {_number(value, 4)} | {spread} |")
    for key, label in (("top5_accuracy", "top-5 accuracy"),):
        if key in evaluation:
            rows.append(f"| {label} | {_number(evaluation[key], 4)} | |")
    if "macro_avg" in evaluation:
        rows.append(f"| macro F1 | {_number(evaluation['macro_avg']['f1'], 4)} | |")
    for name, (mean, std) in (cross_validation or {}).items():
        rows.append(f"| {name} (cross-validation) | {_number(mean, 4)} | ± {_number(std, 4)} (std over folds) |")
    return rows


def _selection_lines(details: dict, summary: dict) -> list[str]:
    sel, val = details["selection"], details["validation"]
    lines = [f"- The weights: {sel['weights']}; selected: {sel['described'] or 'the last epoch'}."]
    if sel.get("rule"):
        lines.append(f"- Rule: {sel['rule']}.")
    if val["images"]:
        lines.append(f"- Validation split: {val['images']} images; an accuracy measured on them has a standard error "
                     f"of {val['standard_error_at_0.9']:.3f} near 0.9 ({val['standard_error_at_0.5']:.3f} near 0.5), "
                     f"so differences smaller than that between epochs are noise.")
    else:
        lines.append("- No validation split: nothing was selected; best.pt holds the last epoch.")
    lines.append(f"- Trained {summary.get('epochs')} epoch(s)" + (f"; {summary['stop_reason']}" if summary.get("stop_reason")
                                                                   else "") + ".")
    return lines


def _calibration_lines(details: dict, evaluation: dict) -> list[str]:
    c = evaluation.get("calibration")
    if not c:
        return ["No calibration measured for this task."]
    fitted = details.get("calibration")
    lines = []
    if fitted:
        lines.append(f"Temperature scaling: T = {details['temperature']:.3f}, fitted on the {fitted['images']} "
                     f"validation images (NLL {fitted['before_nll']:.3f} -> {fitted['after_nll']:.3f}). Every "
                     f"predictor (PyTorch, ONNX, TorchScript) reports softmax(logits / T).")
    else:
        lines.append("No temperature fitted (train.calibrate off, or nothing to fit): probabilities are the raw "
                     "softmax.")
    lines.append(f"On the {c['images']} test images: NLL {c['before']['nll']:.3f} before, {c['after']['nll']:.3f} after; "
                 f"ECE ({c['bins']} bins) {c['before']['ece']:.3f} before, {c['after']['ece']:.3f} after "
                 f"(evaluation/test/reliability.png).")
    return lines


def _limitations(details: dict, summary: dict) -> list[str]:
    lines = []
    n_test, n_val = details["images"]["test"], details["validation"]["images"]
    if n_test:
        lines.append(f"- The test figures come from {n_test} images: an accuracy near 0.9 measured on them is "
                     f"uncertain by ± {standard_error(0.9, n_test):.3f} (one standard error).")
    if n_val and n_val < 200:
        lines.append(f"- The validation split is small ({n_val} images): the choice of checkpoint"
                     + (" and the temperature rest" if details.get("calibration") else " rests") + " on few examples.")

    counts = details["counts"].get("train") or {}
    if counts:
        rare = min(counts, key=counts.get)
        lines.append(f"- Trained on {details['images']['train']} images; the rarest {details['output_kind'][:-2] if details['output_kind'].endswith('es') else details['output_kind']} "
                     f"({rare}) had {counts[rare]}.")
    if details["task"] == "single_label":
        lines.append(f"- A closed set: every image is given one of the {len(details['outputs'])} classes, "
                     f"even one that shows none of them.")
    if details.get("tta_flip"):
        lines.append("- The test accuracy averages each image with its mirror image (train.tta_flip); predict"
                     + (", serve" if serve_available() else "") + " and the exports do not flip, so they may score "
                     "slightly lower.")
    if details.get("data_limit"):
        lines.append(f"- data.limit {details['data_limit']}: trained and tested on a subset of each split.")
    lines.append("- Images unlike the training photos (other cameras, lighting, framing) may be classified worse "
                 "than the test figures say; check on your own images with `transferkit evaluate`.")
    return lines


def cross_validation_of(run_dir: Path) -> dict | None:
    """{metric: (mean, std)} over the folds of the `transferkit cv` run this variant is a fold of (its cv.json),
    or None."""
    cv = RunRoot(Path(run_dir).parent).cv
    if not cv.is_file():
        return None
    metrics = json.loads(cv.read_text()).get("metrics", {})
    return {name: (m["mean"], m["std"]) for name, m in metrics.items() if name.startswith(("val_", "test_"))}


def model_card(run_dir: str | Path, cross_validation: dict | None = None) -> str:
    """The card of a finished variant (summary.json written), as Markdown with its YAML header. `cross_validation`:
    {metric: (mean, std)} over folds (default: the cv.json of the cv run it is a fold of, when there is one)."""
    files = RunDir(run_dir)
    cross_validation = cross_validation if cross_validation is not None else cross_validation_of(files.path)
    summary = json.loads(files.summary.read_text())
    details = summary.get("details") or {}
    spec_text = files.spec.read_text() if files.spec.is_file() else ""
    spec = yaml.safe_load(spec_text) if spec_text else {}
    fitted = RunRoot(files.path.parent).recipe  # `transferkit fit`'s recipe: shorter than the resolved spec
    recipe, recipe_text = (fitted, fitted.read_text()) if fitted.is_file() else (files.spec, spec_text)
    metrics_file = files.evaluation_metrics("test")
    evaluation = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    test = summary.get("test") or {}
    name = f"{spec.get('name', 'model')}/{summary['name']}"
    where = str(files.path)
    weights = "random initialisation" if not details.get("pretrained", True) else \
        f"{details.get('weights') or 'the default weights'} ({details.get('weights_origin', '')})"
    lines = ["---", _metadata(name, details, test, evaluation, spec).strip(), "---", "", f"# {name}", "",
             spec.get("description") or "A transferkit model.", "",
             "## Model", "",
             f"- Backbone: `{details['backbone']}`, pretrained weights: {weights}; new `{details['head']}` head.",
             f"- Task: {details['task_description']}.",
             f"- Input: RGB images resized and centre-cropped to {details['input_size']} px "
             f"(trained on {details['train_input_size']} px crops).",
             f"- Files: `best.pt` (PyTorch); `transferkit export {where} --format onnx|torchscript` writes the others, "
             f"each with the classes, preprocessing and task state inside.", "",
             f"## Data: {details['output_kind']} and images per split", "", *_counts_table(details), "",
             f"From `{details['data_root']}`.", "",
             "## Evaluation", "", *_metrics_table(test, evaluation, details, cross_validation), "",
             "## How it was selected", "", *_selection_lines(details, summary), "",
             "## Calibration", "", *_calibration_lines(details, evaluation), "",
             "## Use it", "", "```bash",
             f"transferkit predict {where} photo.jpg more-photos/   # one row per image"
             + (", probabilities calibrated" if details.get("calibration") else ""),
             *([f"transferkit serve {where}                             # an HTTP endpoint"]
               if serve_available() else []),
             f"transferkit evaluate {where} --data labelled-folder/",
             f"transferkit export {where} --format onnx", "```", "", "```python", "import transferkit", "",
             f"model = transferkit.load({where!r})", "print(model.predict(\"photo.jpg\")[0])", "```", "",
             "## Known limitations", "", *_limitations(details, summary), "",
             "## Recipe", "", f"Repeat the run: `transferkit run {recipe}`.", "", "```yaml",
             recipe_text.strip(), "```", ""]
    return "\n".join(lines)


def write_model_card(run_dir: str | Path, cross_validation: dict | None = None) -> Path:
    """MODEL_CARD.md in the variant's folder (atomically); returns its path."""
    path = RunDir(run_dir).card
    atomic_write_text(path, model_card(run_dir, cross_validation))
    return path
