"""Start-up time of the CLI commands that train nothing: each command's wall time in fresh processes.

    python benchmarks/startup.py [--runs 5] [--json OUT] [--label after]

Every command runs `--runs` times as `python -m transferkit.cli ...` in a new process (the same interpreter,
PYTHONPATH set to this checkout), interleaved command by command, and the median wall time is reported, with
the fastest and slowest run, and the median CPU time (user + system: what the
command costs when the machine's cores are shared with other work, which inflates wall time). `import torch` alone is timed the same way, as the floor of any command that needs
it. The `validate` recipes point at a tiny image folder written to a temporary directory: the ones the
repository ships (examples/clothing, a timm backbone with packaged weights) and a torchvision resnet18. The
`validate` of resnet18 is also timed with an empty model-zoo cache (model/zoo.py), the cost of the first run
after torchvision is installed or upgraded; every other command finds the lists kept by the warm-up run. The
results go to benchmarks/results/startup_<label>_<date>.json unless --json names another file.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tiny_folder(root: Path) -> Path:
    """train/ and test/ with two classes of two small PNGs each (what a data.root check looks at)."""
    from PIL import Image

    for split in ("train", "test"):
        for label, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(2):
                Image.new("RGB", (16, 16), colour).save(folder / f"{i}.png")
    return root


def commands(tmp: Path) -> dict[str, list[str]]:
    """Label -> CLI arguments of each command measured."""
    data = tiny_folder(tmp / "data")
    resnet = tmp / "resnet18.yaml"
    resnet.write_text(f"name: r\nbackbone: {{name: resnet18}}\ndata: {{root: {data}}}\n")
    clothing = ["validate", str(REPO / "examples/clothing/recipe.yaml"), "--set", f"data.root={data}"]
    return {"--help": ["--help"], "validate (examples/clothing, timm)": clothing,
            "validate (resnet18)": ["validate", str(resnet)], "list-heads": ["list-heads"],
            "list-tasks": ["list-tasks"], "list-datasets": ["list-datasets"], "list-lr-policies": ["list-lr-policies"],
            "list-optimizers": ["list-optimizers"], "list-schedules": ["list-schedules"],
            "list-weights": ["list-weights"], "list-recipes": ["list-recipes"], "plugins": ["plugins"],
            "list-backbones": ["list-backbones"], "list-backbones resnet*": ["list-backbones", "resnet*"],
            "schema": ["schema"]}


def timed(args: list[str], env: dict) -> tuple[float, float]:
    """(wall seconds, CPU seconds: user + system) of one fresh process running `args` (it must succeed)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()[-500:]}")
    return seconds, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per command (the median is reported)")
    parser.add_argument("--json", type=Path, help="results file (default benchmarks/results/startup_<label>_<date>.json)")
    parser.add_argument("--label", default="now", help="a word for the code measured, e.g. before or after")
    parser.add_argument("--commit", default="", help="the commit measured, where the checkout is no git repository")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {"import torch": [sys.executable, "-c", "import torch"],
                **{label: [sys.executable, "-m", "transferkit.cli", *cli] for label, cli in commands(Path(tmp)).items()}}
        cold = "validate (resnet18), model-zoo lists not kept yet"
        jobs[cold] = jobs["validate (resnet18)"]

        def env_for(label: str, run: int) -> dict:
            # a fresh zoo cache folder: what the first validate after installing torchvision costs
            return {**env, "TRANSFERKIT_ZOO_CACHE": f"{tmp}/zoo-{run}"} if label == cold else env

        for label, command in jobs.items():  # warm the file cache once, so run 1 is not the only one reading from disk
            timed(command, env_for(label, -1))
        times: dict[str, list[tuple[float, float]]] = {label: [] for label in jobs}
        for run in range(args.runs):
            for label, command in jobs.items():
                times[label].append(timed(command, env_for(label, run)))
    rows = {}
    for label, runs in times.items():
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        rows[label] = {"median_s": round(statistics.median(walls), 3), "min_s": round(min(walls), 3),
                       "max_s": round(max(walls), 3), "runs_s": [round(x, 3) for x in walls],
                       "median_cpu_s": round(statistics.median(cpus), 3)}
        row = rows[label]
        print(f"{label:<40} median {row['median_s']:6.2f} s wall (min {row['min_s']:.2f}, max {row['max_s']:.2f}), "
              f"{row['median_cpu_s']:.2f} s CPU")
    commit = args.commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                           text=True).stdout
    result = {"date": datetime.date.today().isoformat(), "label": args.label, "commit": commit.strip(),
              "runs": args.runs, "python": platform.python_version(), "machine": platform.machine(),
              "cpus": os.cpu_count(), "load_average": os.getloadavg(), "commands": rows}
    target = args.json or REPO / "benchmarks" / "results" / f"startup_{args.label}_{result['date']}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
