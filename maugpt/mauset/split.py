"""The paper's split: each source's normal and abnormal images are split at a fixed ratio, then merged.

Splitting the two classes separately keeps every source's normal/abnormal ratio the same in
every split, which the sources' own splits (often all-normal training sets) do not.
"""

from __future__ import annotations

import random
from collections import defaultdict

from maugpt.schema import SourceImage


def split_images(
    images: list[SourceImage], test: float = 0.2, val: float = 0.0, seed: int = 0
) -> dict[str, list[SourceImage]]:
    """Assign each image to "train", "val" or "test".

    Within each (source, normal/abnormal) group, sorted by key and shuffled with ``seed``, the
    first ``round(n · test)`` go to test, the next ``round(n · val)`` to val, the rest to train.
    Abnormal images are split first; a normal image of the same ``group`` as one of them (a
    DeepPCB board's own template) follows it, so that no test board's template is trained on, and
    the other normal images are split at the ratio.
    """
    if not (0 <= test < 1 and 0 <= val < 1 and test + val < 1):
        raise ValueError(f"test and val fractions must be in [0, 1) with test + val < 1, got {test}, {val}")
    groups: dict[tuple[str, bool], list[SourceImage]] = defaultdict(list)
    for image in images:
        groups[(image.source, image.is_anomalous)].append(image)
    parts: dict[tuple[str, bool], dict[str, list[SourceImage]]] = {}
    followed: dict[tuple[str, str], str] = {}  # (source, group) → the split of its abnormal image
    for (source, anomalous), group in sorted(groups.items(), key=lambda item: (item[0][0], not item[0][1])):
        part = parts[(source, anomalous)] = {"test": [], "val": [], "train": []}
        if not anomalous:  # normal images of an abnormal image's group follow it
            for image in sorted(group, key=lambda im: im.key):
                if image.group is not None and (source, image.group) in followed:
                    part[followed[(source, image.group)]].append(image)
            group = [im for im in group if im.group is None or (source, im.group) not in followed]
        group = sorted(group, key=lambda im: im.key)
        random.Random(f"{seed}:{source}:{anomalous}").shuffle(group)
        n_test, n_val = round(len(group) * test), round(len(group) * val)
        for split, members in (
            ("test", group[:n_test]),
            ("val", group[n_test : n_test + n_val]),
            ("train", group[n_test + n_val :]),
        ):
            part[split] += members
            if anomalous:
                followed.update({(source, im.group): split for im in members if im.group is not None})
    splits: dict[str, list[SourceImage]] = {"train": [], "val": [], "test": []}
    for key in sorted(parts):  # the order of earlier builds: per source, normal then abnormal
        for split in ("test", "val", "train"):
            splits[split] += parts[key][split]
    return splits
