"""What the runs of one process may share: decoded images and frozen-backbone features (the folds of `cv`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transferkit.data.cache import DecodedMemo
from transferkit.data.features import FeatureMemo


@dataclass
class SharedCaches:
    """Memory caches handed from run to run: each image is decoded once per size, and passed once through a
    frozen backbone (its eval view), however many runs read it."""

    decoded: DecodedMemo = field(default_factory=DecodedMemo)
    features: FeatureMemo = field(default_factory=FeatureMemo)
