"""What `train.deterministic: true` costs: the same recipe timed with and without it, interleaved.

    python benchmarks/deterministic_cost.py [--data DIR] [--repeats 3]

Without --data it builds a small synthetic folder. Prints seconds per run and whether the two
modes produced bit-identical weights.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import make_image_folder, tiny_recipe  # noqa: E402

from transferkit import Experiment  # noqa: E402
from transferkit.callbacks.checkpoint import load_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=64)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())
    root = args.data or make_image_folder(work / "data", per_class=(64, 16))
    times: dict[bool, list[float]] = {False: [], True: []}
    weights = {}
    for repeat in range(args.repeats):
        for deterministic in (False, True):
            raw = tiny_recipe(root, train={"epochs": 2, "deterministic": deterministic},
                              data={"image_size": args.image_size, "batch_size": 16},
                              output_dir=str(work / f"runs-{repeat}-{deterministic}"))
            start = time.perf_counter()
            result = Experiment.from_dict(raw).run(progress=False)
            times[deterministic].append(time.perf_counter() - start)
            weights[deterministic] = load_checkpoint(result["base"].run_dir / "last.pt")["model"]
    identical = all(torch.equal(weights[False][k], weights[True][k]) for k in weights[False])
    for mode, values in times.items():
        print(f"deterministic={mode}: median {statistics.median(values):.2f}s over {len(values)} runs")
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"cost ratio (deterministic / default): {ratio:.3f}; identical weights across modes: {identical}")


if __name__ == "__main__":
    main()
