"""`check-data` on streamed shards: every sample of every split read and decoded, as check-data reads image files.

Reported: shards that cannot be read (to their end), samples without an image or readable labels, images that
do not decode, test images duplicating train/val ones, one image under two classes, and shards holding another
number of images than the index says (the steps per epoch come from it). Shards are read in parallel with
`--workers`.
"""

from __future__ import annotations

import hashlib
import multiprocessing
from contextlib import nullcontext

from rich.progress import track

from transferkit.data.check import TEST, TRAIN, VAL, CheckReport, Problem, compare_images
from transferkit.data.images import FIXES, ImageReadError
from transferkit.data.shard_index import ShardSplits
from transferkit.data.stream import StreamedSamples

ROLES = {"train": TRAIN, "val": VAL, "test": TEST}


def inspect_shard(job: tuple) -> tuple[list[tuple], list[tuple[str, Problem | None]], list[Problem]]:
    """(images as (role, name, label), their (digest, problem), shard-level problems) of one shard."""
    role, url, expected, labels, outputs = job
    samples = StreamedSamples([url], [expected], labels, outputs)
    images, results = [], []
    for image, target in samples:
        label = outputs[target] if isinstance(target, int) else str(target)
        images.append((ROLES[role], image.name, label))
        try:
            image.decode()
            results.append((hashlib.sha1(image.data).hexdigest(), None))
        except ImageReadError as exc:
            fix = FIXES["too-large"] if exc.kind == "too-large" else "write the shards again from a good copy"
            results.append(("", Problem(exc.kind, image.name, f"{exc.reason}; {fix}")))
    problems = [Problem("unreadable-shard" if bad.path == url else "bad-sample", bad.path, bad.message)
                for bad in samples.problems]
    read = len(images) + sum(bad.path != url for bad in samples.problems)
    if read != expected and not any(bad.path == url for bad in samples.problems):
        problems.append(Problem("index-mismatch", url, f"holds {read} samples, the index says {expected}; write the "
                                                       f"shards and index again with transferkit shard"))
    return images, results, problems


def check_shards(splits: ShardSplits, progress: bool = True, workers: int = 1) -> CheckReport:
    """Read and decode every sample of every split's shards; report each problem (see the module doc)."""
    jobs = [(role, url, count, splits.labels, splits.classes)
            for role in ("train", "val", "test") if (split := splits.split(role))
            for url, count in zip(split.urls, split.counts)]
    parallel = workers > 1 and len(jobs) > 1
    with multiprocessing.Pool(min(workers, len(jobs))) if parallel else nullcontext() as pool:
        done = pool.imap(inspect_shard, jobs) if pool else map(inspect_shard, jobs)
        done = list(track(done, total=len(jobs), description="Checking shards", disable=not progress))
    images = [image for shard in done for image in shard[0]]
    report = compare_images(images, [result for shard in done for result in shard[1]])
    report.problems[:0] = [problem for shard in done for problem in shard[2]]
    return report
