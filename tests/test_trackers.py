"""The MLflow and W&B loggers, for real: a CLI run logs to a real `mlflow server` (SQLite store, on 127.0.0.1) and
to W&B's offline run folder, and the test reads the runs back with each tool's own client or record format."""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import run_cli, tiny_recipe

mlflow = pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server with a SQLite backend store and an artifacts folder in tmp; stopped after."""
    port, log = _free_port(), (tmp_path / "mlflow-server.log").open("w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", str(tmp_path / "mlflow-artifacts"), "--workers", "1"],
                              stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                              env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})  # no job workers
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not answer /health in 120 s"
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


def _run(tmp_path: Path, image_root: Path, loggers: list, env: dict, **recipe) -> Path:
    raw = tiny_recipe(image_root, train={"epochs": 2, "loggers": loggers}, **recipe)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    result = run_cli("run", str(path), "--output", str(tmp_path / "runs"), "--no-progress", env=env)
    assert result.returncode == 0, result.stderr
    return tmp_path / "runs" / "tiny"


def test_mlflow_logs_params_metrics_tags_and_artifacts_to_a_real_server(image_root, tmp_path, mlflow_server):
    from mlflow.tracking import MlflowClient

    # the server comes from MLflow's own environment variable; the experiment and the model from the options
    run_root = _run(tmp_path, image_root, ["csv", {"name": "mlflow", "options": {"experiment": "tk-test",
                                                                                 "log_model": True}}],
                    env={"MLFLOW_TRACKING_URI": mlflow_server})
    run_dir = run_root / "base"
    client = MlflowClient(tracking_uri=mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("tk-test").experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "tiny/base"
    params = run.data.params
    assert params["optimizer.lr"] == "0.01" and params["train.epochs"] == "2" and params["backbone.name"] == "resnet18"
    assert params["data.crop_scale"] == "[0.08, 1.0]" and params["train.loggers"].startswith("['csv'")
    assert run.data.tags["transferkit.variant"] == "base"
    assert run.data.tags["transferkit.run_dir"] == str(run_dir.resolve())

    written = json.loads((run_dir / "metrics.json").read_text())
    for key in ("train_loss", "test_accuracy", "lr_backbone", "lr_head"):
        history = client.get_metric_history(run.info.run_id, key)
        assert [(m.step, m.value) for m in history] == [(row["epoch"], row[key]) for row in written]

    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"spec.yaml", "data_plan.json", "curves.png", "evaluation", "model"} <= top
    evaluation = {a.path for a in client.list_artifacts(run.info.run_id, "evaluation/test")}
    assert {"evaluation/test/confusion_matrix.png", "evaluation/test/top_losses.png"} <= evaluation
    assert [a.path for a in client.list_artifacts(run.info.run_id, "model")] == ["model/best.pt"]
    fetched = client.download_artifacts(run.info.run_id, "data_plan.json", str(tmp_path))
    assert Path(fetched).read_bytes() == (run_dir / "data_plan.json").read_bytes()


def _wandb_records(path: Path) -> list:
    """The records of a .wandb file: W&B's LevelDB-style log (32 KiB blocks, 7-byte record headers) of its own
    protobuf Records, read with the classes wandb ships."""
    from wandb.proto.wandb_internal_pb2 import Record

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    position, chunks, pending = 7, [], b""
    while position + 7 <= len(data):
        room = 32768 - position % 32768
        if room < 7:  # a block's tail too short for a header is padding
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk, position = data[position + 7:position + 7 + length], position + 7 + length
        if kind == 1:
            chunks.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            chunks.append(pending + chunk)
    return [Record.FromString(chunk) for chunk in chunks]


def _history(records) -> list[dict]:
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def test_wandb_offline_runs_hold_config_metrics_tags_and_the_files(image_root, tmp_path):
    pytest.importorskip("wandb")
    env = {"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true"}
    (tmp_path / "wandb").mkdir()
    run_root = _run(tmp_path, image_root, ["csv", {"name": "wandb", "options": {"project": "tk-test",
                                                                                "tags": ["ci"]}}],
                    env=env, variants={"faster": {"optimizer": {"lr": 0.02}}})
    files = sorted((tmp_path / "wandb" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 2  # one W&B run per variant, open together until the reports are written
    seen = {}
    for path in files:
        records = _wandb_records(path)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = {item.key: json.loads(item.value_json) for item in run.config.update}
        variant = config["transferkit.variant"]
        seen[variant] = config
        assert run.project == "tk-test" and run.run_group == "tiny" and run.display_name == f"tiny/{variant}"
        assert list(run.tags) == [variant, "ci"]
        assert config["transferkit.run_dir"] == str((run_root / variant).resolve())
        written = json.loads((run_root / variant / "metrics.json").read_text())
        history = _history(records)
        assert [row["_step"] for row in history] == [1, 2]
        assert [row["train_loss"] for row in history] == [row["train_loss"] for row in written]
        artifact = next(r.artifact for r in records if r.WhichOneof("record_type") == "artifact")
        assert artifact.type == "run-files"
        paths = {entry.path for entry in artifact.manifest.contents}
        assert {"spec.yaml", "data_plan.json", "curves.png", "evaluation/test/confusion_matrix.png"} <= paths
        assert any(r.WhichOneof("record_type") == "exit" and r.exit.exit_code == 0 for r in records)
    assert seen["base"]["optimizer.lr"] == 0.01 and seen["faster"]["optimizer.lr"] == 0.02
