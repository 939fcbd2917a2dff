"""The paper's split: each source's normal and abnormal images are split at a fixed ratio, then merged.

Splitting the two classes separately keeps every source's normal/abnormal ratio the same in
every split, which the sources' own splits (often all-normal training sets) do not.
"""
from __future__ import annotations

import random
from collections import defaultdict

from maugpt.data.schema import SourceImage


def split_images(images: list[SourceImage], test: float = 0.2, val: float = 0.0,
                 seed: int = 0) -> dict[str, list[SourceImage]]:
    """Assign each image to "train", "val" or "test".

    Within each (source, normal/abnormal) group, sorted by key and shuffled with ``seed``, the
    first ``round(n · test)`` go to test, the next ``round(n · val)`` to val, the rest to train.
    """
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise ValueError(f"test and val fractions must be in [0, 1) with test + val < 1, got {test}, {val}")
    groups: dict[tuple[str, bool], list[SourceImage]] = defaultdict(list)
    for image in images:
        groups[(image.source, image.is_anomalous)].append(image)
    splits: dict[str, list[SourceImage]] = {"train": [], "val": [], "test": []}
    for (source, anomalous), group in sorted(groups.items()):
        group = sorted(group, key=lambda im: im.key)
        random.Random(f"{seed}:{source}:{anomalous}").shuffle(group)
        n_test, n_val = round(len(group) * test), round(len(group) * val)
        splits["test"] += group[:n_test]
        splits["val"] += group[n_test:n_test + n_val]
        splits["train"] += group[n_test + n_val:]
    return splits
