"""Deploy what was trained: every export format written, run in its own runtime and checked against PyTorch, and
`transferkit benchmark` measuring them side by side, on a tiny trained model."""

from __future__ import annotations

import json
import sys
from dataclasses import replace

import numpy as np
import pytest

from conftest import make_image_folder, run_cli, tiny_recipe

CLASSES = ("a", "b", "c")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny run (3 classes, 4 training and 4 test images each, 32 px, one epoch)."""
    import transferkit

    base = tmp_path_factory.mktemp("deploy")
    data = make_image_folder(base / "data", classes=CLASSES, per_class=(4, 4))
    result = transferkit.Experiment.from_dict(tiny_recipe(data)).run(output_dir=base / "runs", progress=False)
    return {"base": base, "data": data, "variant": result.run_root / "base"}


@pytest.fixture(scope="module")
def benchmarked(trained) -> dict:
    """`transferkit benchmark` on the tiny run: every format exported into one folder and measured."""
    out = trained["base"] / "bench"
    result = run_cli("benchmark", str(trained["variant"]), "--output", str(out), "--batch", "8", "--rounds", "2",
                     "--calibration", "12", "--no-progress")
    return {"result": result, "out": out}


def test_benchmark_writes_its_table_json_and_png(benchmarked):
    from transferkit.inference.export_formats import FORMATS

    result, out = benchmarked["result"], benchmarked["out"]
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "benchmark.json").read_text())
    rows = {row["format"]: row for row in report["rows"]}
    assert list(rows) == ["pytorch", *FORMATS] and report["images"] == 3 * 4
    for name, row in rows.items():
        assert row["status"] == "ok", row
        assert row["size_bytes"] > 0 and row["images_per_s"] > 0
        assert 0 < row["latency_p50_ms"] <= row["latency_p99_ms"]
        assert row["accuracy"] is not None and 0 <= row["accuracy"] <= 1
        if name != "pytorch":
            spec = FORMATS[name]
            assert row["agreement"] >= spec.min_agreement and row["max_probability_difference"] <= spec.max_difference
            assert "checked on 12 test images" in row["export_check"]
    assert rows["pytorch"]["agreement"] == 1.0 and rows["onnx-int8"]["calibration_images"] == 12
    # fp16 halves the weights, int8 quarters them (the fp32 head and the graph aside)
    assert rows["onnx-fp16"]["size_bytes"] < 0.6 * rows["onnx"]["size_bytes"]
    assert rows["onnx-int8"]["size_bytes"] < 0.35 * rows["onnx"]["size_bytes"]
    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "benchmark.md").read_text()
    assert all(f"| {name} |" in table for name in rows)
    printed = [line for line in result.stdout.splitlines() if line.split()[:1] in ([n] for n in rows)]
    assert len(printed) == len(rows), result.stdout


def test_every_format_loads_in_its_own_runtime_and_agrees_with_pytorch(trained, benchmarked):
    import onnx
    import openvino
    import torch

    import transferkit
    from transferkit.inference.export_formats import FORMATS
    from transferkit.inference.onnx_predictor import OnnxPredictor
    from transferkit.inference.openvino_predictor import OpenVinoPredictor
    from transferkit.inference.torchscript_predictor import TorchScriptPredictor

    out = benchmarked["out"]
    reference = transferkit.load(trained["variant"], device="cpu")
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    expected = reference.logits(images)
    runtimes = {"onnx": OnnxPredictor, "onnx-fp16": OnnxPredictor, "onnx-int8": OnnxPredictor,
                "openvino": OpenVinoPredictor, "torchscript": TorchScriptPredictor}
    for name, spec in FORMATS.items():
        model = transferkit.load(out / spec.file, device="cpu")
        assert isinstance(model.predictor, runtimes[name]) and model.predictor.format == name
        assert model.classes == list(CLASSES) and model.preprocessing == reference.preprocessing
        assert model.task.name == "single_label"
        got = model.logits(images)
        assert reference.task.agreement(got, expected) <= spec.max_difference, name
        assert model.predict(images[0])[0].label in CLASSES

    graphs = {name: onnx.load(str(out / FORMATS[name].file)) for name in ("onnx", "onnx-fp16", "onnx-int8")}
    for proto in graphs.values():  # callers feed fp32 images and read fp32 logits whatever the arithmetic
        assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
        assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    weight_types = {name: {i.data_type for i in proto.graph.initializer} for name, proto in graphs.items()}
    assert onnx.TensorProto.FLOAT16 in weight_types["onnx-fp16"] and onnx.TensorProto.FLOAT16 not in weight_types["onnx"]
    assert onnx.TensorProto.INT8 in weight_types["onnx-int8"]
    ops = {node.op_type for node in graphs["onnx-int8"].graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    ir = openvino.Core().read_model(str(out / FORMATS["openvino"].file))
    assert json.loads(ir.get_rt_info(["transferkit", "classes"]).astype(str)) == list(CLASSES)


def test_export_cli_writes_int8_beside_the_run_and_the_exports_predict_and_evaluate(trained, benchmarked):
    import transferkit

    variant = trained["variant"]
    result = run_cli("export", str(variant), "--format", "onnx-int8", "--calibration", "8")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(variant / "model.int8.onnx")
    assert "onnx-int8: calibrated on 8 training images; checked on 12 test images" in result.stderr
    assert "same top answer on at least 90% of the check images" in result.stderr

    files = sorted((trained["data"] / "test").rglob("*.jpg"))
    wanted = [p.label for p in transferkit.load(variant, device="cpu").predict(files)]
    openvino = transferkit.load(benchmarked["out"] / "model.openvino.xml", device="cpu")
    assert [p.label for p in openvino.predict(files)] == wanted
    int8 = transferkit.load(variant / "model.int8.onnx", device="cpu")
    labels = [p.label for p in int8.predict(files)]
    assert len(wanted) == 12 and np.mean([a == b for a, b in zip(labels, wanted)]) >= 0.9
    metrics = int8.evaluate(trained["data"]).metrics
    assert metrics["images"] == 12
    assert metrics["top1_accuracy"] == pytest.approx(np.mean([a == f.parent.name for a, f in zip(labels, files)]))


def test_an_export_outside_its_tolerance_is_refused_and_nothing_is_written(trained, monkeypatch):
    import transferkit
    from transferkit.inference import export_formats
    from transferkit.inference.export import ExportError

    # a tolerance no export can meet: the same top answer on more than every check image
    monkeypatch.setitem(export_formats.FORMATS, "torchscript",
                        replace(export_formats.FORMATS["torchscript"], min_agreement=1.01))
    target = trained["base"] / "refused" / "model.pt"
    with pytest.raises(ExportError) as caught:
        transferkit.load(trained["variant"], device="cpu").export(target, format="torchscript", check=6)
    message = str(caught.value)
    assert "outside its tolerance on 6 test images" in message and "not written" in message
    assert "\n" not in message
    assert not target.exists() and not any(target.parent.iterdir())  # no temporary file left either
    with pytest.raises(ExportError, match="an onnx-int8 export is a .onnx file"):
        transferkit.load(trained["variant"], device="cpu").export(trained["base"] / "x.bin", format="onnx-int8")


def test_a_missing_runtime_is_listed_with_the_line_that_installs_it(trained, monkeypatch, tmp_path):
    from rich.console import Console

    import transferkit
    from transferkit.inference.export import ExportError
    from transferkit.run.benchmark import BenchmarkSettings, run_benchmark
    from transferkit.run.benchmark_report import markdown, print_benchmark

    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails as if it were not installed
    install = "pip install 'transferkit[export,openvino]'"
    settings = BenchmarkSettings(formats=["pytorch", "openvino"], calls_per_round=2, rounds=2, batch=4, limit=6)
    result = run_benchmark(trained["variant"], tmp_path / "bench", settings)
    rows = {row.format: row for row in result.rows}
    assert rows["pytorch"].status == "ok" and rows["pytorch"].images_per_s > 0
    assert rows["openvino"].status == "missing" and install in rows["openvino"].note
    assert f"- openvino: missing: openvino not installed: {install}" in markdown(result)
    console = Console(record=True, width=200)
    print_benchmark(result, console)
    assert f"openvino: missing: openvino not installed: {install}" in console.export_text()
    with pytest.raises(ExportError, match=r"openvino not installed: pip install 'transferkit\[export,openvino\]'"):
        transferkit.load(trained["variant"], device="cpu").export(tmp_path / "m.xml", format="openvino")
