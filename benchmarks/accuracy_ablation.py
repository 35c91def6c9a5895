"""Which of transferkit's differences from the tutorial's loop moves test accuracy: seeds x variants.

    python benchmarks/accuracy_ablation.py --data DIR [--backbone efficientnet-lite0] [--seeds 0 1 2]
        [--variants tutorial transferkit no-cache contiguous global-rng] [--limit 400] [--epochs 2] [--json OUT]

Same recipe as benchmarks/throughput.py (same files, network, initial weights, optimizer, epochs); each
run in a fresh process. Variants:
  tutorial     the d2l-style loop (ImageFolder + PIL transforms + shuffled DataLoader)
  transferkit  `transferkit run`'s code path with its defaults
  no-cache     transferkit with data.cache: none (crops from the original files, not the decoded cache)
  contiguous   transferkit with train.channels_last: false
  global-rng   transferkit with augmentation drawn from the global RNG (no per-sample seed), same order
Prints per-seed test accuracies, each variant's mean and standard deviation, and its mean difference
from the tutorial over the same seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from throughput import BACKBONES, isolated, recipe, transferkit_run, tutorial_loop  # noqa: E402

from transferkit.recipe.merge import deep_merge  # noqa: E402


def transferkit_global_rng(raw: dict) -> dict:
    """transferkit with each sample's augmentation drawn from the global RNG instead of a per-sample seed."""
    from transferkit.data import loading

    per_sample = loading.EpochSampler.__iter__

    def indices_only(self):
        return iter([index for index, _ in per_sample(self)])

    loading.EpochSampler.__iter__ = indices_only
    return transferkit_run(raw)


VARIANTS = {
    "tutorial": (tutorial_loop, {}),
    "transferkit": (transferkit_run, {}),
    "no-cache": (transferkit_run, {"data": {"cache": "none"}}),
    "contiguous": (transferkit_run, {"train": {"channels_last": False}}),
    "global-rng": (transferkit_global_rng, {}),
}


def main(argv: list[str] | None = None) -> dict:
    """Run every variant for every seed in fresh processes; print and return the accuracies."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--backbone", default="efficientnet-lite0", choices=list(BACKBONES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    data = str(Path(args.data).resolve())
    results: dict[str, dict[int, float]] = {name: {} for name in args.variants}
    for seed in args.seeds:
        for name in args.variants:
            fn, overrides = VARIANTS[name]
            raw = deep_merge(recipe(data, args.backbone, args, seed=seed), overrides)
            result, seconds, _ = isolated(fn, raw)
            results[name][seed] = result["test_accuracy"]
            print(f"  seed {seed} {name}: test accuracy {result['test_accuracy']:.3f} ({seconds:.0f}s)", flush=True)
    print(f"\n{args.backbone}, {args.limit} images per split, {args.epochs} epochs, seeds {args.seeds}")
    print(f"{'variant':<14}{'per seed':>28}{'mean':>8}{'sd':>7}{'minus tutorial':>16}")
    for name, by_seed in results.items():
        accs = [by_seed[s] for s in args.seeds]
        diff = ""
        if "tutorial" in results and name != "tutorial":
            diff = f"{statistics.mean(by_seed[s] - results['tutorial'][s] for s in args.seeds):+.3f}"
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        print(f"{name:<14}{' '.join(f'{a:.3f}' for a in accs):>28}{statistics.mean(accs):>8.3f}{sd:>7.3f}{diff:>16}")
    report = {"settings": vars(args), "test_accuracy": results}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
