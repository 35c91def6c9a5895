"""Load held by `transferkit serve` on loopback: requests/s and p50/p99 latency with and without dynamic batching,
the batch sizes the server formed (its own /stats), errors, its resident memory sampled over the run, and a mixed
load where every tenth request is bad (every good one must still succeed), and one client alone (the latency floor).

    flock /tmp/transferkit-bench.lock python benchmarks/serve_load.py MODEL.onnx --data ../shared/data/clothing-small \\
        [--requests 2000] [--concurrency 32] [--rounds 2] [--json benchmarks/results/serve_load_2026-12-07.json]

MODEL is anything `transferkit serve` takes (the docs use an EfficientNet-Lite0 `fit --preset fast` run on
clothing-small, exported to ONNX). Each scenario gets a fresh server process (`transferkit serve --port 0`), 64
warm-up requests, then `--requests` POSTs of one JPEG each (the data folder's test images, cycled, as raw
image/jpeg bodies) from `--concurrency` clients of one httpx AsyncClient; the scenarios alternate round by round.
The server is stopped with SIGTERM and must exit 0. Client and server share this machine's cores. The labels
of each run are compared with the first run's, image by image.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import itertools
import json
import os
import signal
import statistics
import sys
import threading
import time
from collections import Counter
from datetime import date
from pathlib import Path

import httpx
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transferkit.data.folder import is_image_file  # noqa: E402
from transferkit.testing import ServeProcess  # noqa: E402

MAX_BODY_MB = 1  # every scenario's --max-body-mb: the photos are under 60 KB, a "too large body" is 1 MiB + 1
BATCHED = ["--max-batch", "32", "--max-wait-ms", "5"]
SCENARIOS = {  # name -> (serve options, share of bad requests, one client with a tenth of the requests)
    "unbatched": (["--max-batch", "1"], 0.0, False),
    "batched": (BATCHED, 0.0, False),
    "batched, 10% bad": (BATCHED, 0.1, False),
    "batched, 1 client": (BATCHED, 0.0, True),
}


def bad_requests() -> list[tuple[str, bytes, str, int]]:
    """(kind, body, content type, expected status) of each kind of bad input the server must refuse."""
    huge = io.BytesIO()
    Image.new("1", (10_000, 9_000)).save(huge, format="PNG")  # 90 million pixels, over Pillow's 89.5 million
    photo = io.BytesIO()
    Image.new("RGB", (256, 256), (120, 30, 200)).save(photo, format="JPEG")
    return [("not an image", b"hello, not a picture", "image/jpeg", 422),
            ("truncated", photo.getvalue()[:400], "image/jpeg", 422),
            ("empty body", b"", "image/jpeg", 400),
            ("wrong content type", b'{"image": 1}', "application/json", 415),
            ("too many pixels", huge.getvalue(), "image/png", 413),
            ("body too large", os.urandom(MAX_BODY_MB * 2**20 + 1), "image/jpeg", 413)]


def rss_mb(pid: int) -> float | None:
    """The process's resident memory in MiB, from /proc (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemorySampler:
    """Samples a process's resident memory every `every_s` seconds in a thread, with the time of each sample."""

    def __init__(self, pid: int, every_s: float = 0.25):
        self.pid, self.every_s, self.samples = pid, every_s, []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.perf_counter()
        while not self.done.is_set():
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append((round(time.perf_counter() - start, 3), round(value, 1)))
            self.done.wait(self.every_s)

    def __enter__(self) -> "MemorySampler":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()

    def summary(self) -> dict:
        """First, last, peak, and the change over the second half of the run (flat memory: about 0)."""
        values = [v for _, v in self.samples]
        middle = values[len(values) // 2]
        return {"samples": len(values), "first_mb": values[0], "last_mb": values[-1], "peak_mb": max(values),
                "second_half_change_mb": round(values[-1] - middle, 1)}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


async def load(url: str, photos: list[Path], bodies: list[bytes], count: int, concurrency: int,
               bad_share: float, bad: list) -> dict:
    """`count` requests from `concurrency` clients; every round(1/bad_share)-th one is bad, cycling the kinds."""
    every = round(1 / bad_share) if bad_share else 0
    numbers = itertools.count()
    good_latency, bad_latency, statuses, failures, labels = [], [], Counter(), [], {}

    async def client_loop(client: httpx.AsyncClient) -> None:
        while (i := next(numbers)) < count:
            if every and i % every == every - 1:
                kind, body, content_type, expected = bad[(i // every) % len(bad)]
            else:
                kind, body, content_type, expected = None, bodies[i % len(bodies)], "image/jpeg", 200
            start = time.perf_counter()
            try:
                answer = await client.post("/predict", content=body, headers={"content-type": content_type})
                status, text = answer.status_code, answer.text
            except httpx.HTTPError as exc:
                status, text = None, f"{type(exc).__name__}: {exc}"
            (bad_latency if kind else good_latency).append(time.perf_counter() - start)
            statuses[str(status)] += 1
            if status != expected:
                failures.append({"request": i, "kind": kind or "good", "status": status, "body": text[:200]})
            elif kind is None:
                labels.setdefault(photos[i % len(photos)].name, json.loads(text)["predictions"][0]["label"])

    started = time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
    wall = time.perf_counter() - started

    def latency(values):
        return {"p50_ms": round(1000 * percentile(values, 50), 1), "p99_ms": round(1000 * percentile(values, 99), 1),
                "max_ms": round(1000 * max(values), 1)} if values else None

    return {"requests": count, "wall_s": round(wall, 2), "requests_per_s": round(count / wall, 1),
            "good": len(good_latency), "bad": len(bad_latency), "latency_good": latency(good_latency),
            "latency_bad": latency(bad_latency), "statuses": dict(statuses), "errors": len(failures),
            "failures": failures[:10], "labels": labels}


def scenario(model: str, name: str, photos: list[Path], bodies: list[bytes], args, bad: list) -> dict:
    """One fresh server, a warm-up, the measured load, then SIGTERM (it must exit 0)."""
    options, bad_share, alone = SCENARIOS[name]
    requests, clients = (args.requests // 10, 1) if alone else (args.requests, args.concurrency)
    with ServeProcess(model, *options, "--max-body-mb", str(MAX_BODY_MB)) as server:
        asyncio.run(load(server.url, photos, bodies, 64, min(8, args.concurrency), 0.0, bad))
        before = httpx.get(f"{server.url}/stats").json()
        with MemorySampler(server.pid) as memory:
            result = asyncio.run(load(server.url, photos, bodies, requests, clients, bad_share, bad))
        after = httpx.get(f"{server.url}/stats").json()
        server.process.send_signal(signal.SIGTERM)
        exit_code = server.process.wait(timeout=60)
    sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in after["batch_sizes"].items()}
    sizes = {k: v for k, v in sorted(sizes.items()) if v}
    passes = after["batches"] - before["batches"]
    images = after["images"] - before["images"]
    return {"scenario": name, "serve_options": options, "clients": clients, "bad_share": bad_share, **result,
            "server": {"forward_passes": passes, "images": images, "mean_batch_size": round(images / passes, 2),
                       "batch_sizes": sizes, "refused": {k: v - before["refused"].get(k, 0)
                                                         for k, v in after["refused"].items()},
                       "exit_code_after_sigterm": exit_code},
            "memory": memory.summary()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="what `transferkit serve` takes: an exported .onnx, a run directory, ...")
    parser.add_argument("--data", type=Path, required=True, help="folder whose test/ JPEGs are sent")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=1, help="each scenario this many times, alternated")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    photos = sorted(p for p in (args.data / "test").rglob("*") if is_image_file(p))
    bodies = [p.read_bytes() for p in photos]
    bad = bad_requests()
    load_before = os.getloadavg()
    runs = []
    for round_number in range(args.rounds):
        for name in SCENARIOS:
            result = scenario(args.model, name, photos, bodies, args, bad)
            runs.append({"round": round_number + 1, **result})
            good = result["latency_good"]
            print(f"round {round_number + 1} {name:18s} {result['requests_per_s']:7.1f} req/s  p50 {good['p50_ms']:6.1f} ms"
                  f"  p99 {good['p99_ms']:6.1f} ms  errors {result['errors']}  mean batch "
                  f"{result['server']['mean_batch_size']:5.2f}  rss {result['memory']['first_mb']:.0f}->"
                  f"{result['memory']['last_mb']:.0f} MiB (peak {result['memory']['peak_mb']:.0f})  "
                  f"exit {result['server']['exit_code_after_sigterm']}", flush=True)
    reference = runs[0]["labels"]
    for run in runs:
        shared = set(run["labels"]) & set(reference)
        run["labels_differing_from_first_run"] = sum(run["labels"][k] != reference[k] for k in shared)
        run["labels_compared"] = len(shared)
        del run["labels"]
    by_name = {name: [r for r in runs if r["scenario"] == name] for name in SCENARIOS}
    summary = {name: {"requests_per_s": statistics.median(r["requests_per_s"] for r in rs),
                      "p50_ms": statistics.median(r["latency_good"]["p50_ms"] for r in rs),
                      "p99_ms": statistics.median(r["latency_good"]["p99_ms"] for r in rs),
                      "errors": sum(r["errors"] for r in rs)} for name, rs in by_name.items()}
    summary["batched_over_unbatched_requests_per_s"] = round(
        summary["batched"]["requests_per_s"] / summary["unbatched"]["requests_per_s"], 2)
    report = {"date": date.today().isoformat(), "model": args.model, "data": str(args.data),
              "requests": args.requests, "concurrency": args.concurrency, "rounds": args.rounds,
              "cores": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
              "summary": summary, "runs": runs}
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
