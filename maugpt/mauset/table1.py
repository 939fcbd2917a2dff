"""The paper's Table 1 (images per source) and a deterministic draw of those counts from the releases.

Built from the full public releases MAU-Set is about 15 % larger than the paper's Table 1 (docs/data.md,
"MAU-Set data"): DAGM's 2007 competition release holds 16,100 images where the paper counts the
older packaging's 1,000 normal + 150 defective per class, and the paper's BTAD and Magnetic Tile
abnormal counts differ from the releases'. :func:`paper_subset` draws the paper's per-source
normal and abnormal counts: within each source and label, an equal share per product (capped by
what the product has, the rest spread over the others), then a seeded random draw inside each
product. Where a release has fewer images than the paper counts, all are kept and the shortfall
is reported.
"""

from __future__ import annotations

import random
from collections import defaultdict

from maugpt.mauset.sources import SOURCES, BuildError
from maugpt.schema import SourceImage


def equal_shares(available: dict[str, int], total: int) -> dict[str, int]:
    """``total`` spread over the keys as evenly as their ``available`` counts allow (water filling;
    leftover units go to the keys in sorted order)."""
    shares, left, open_keys = dict.fromkeys(available, 0), min(total, sum(available.values())), sorted(available)
    while left and open_keys:
        each, extra = divmod(left, len(open_keys))
        for i, key in enumerate(open_keys):
            take = min(each + (i < extra), available[key] - shares[key])
            shares[key] += take
            left -= take
        open_keys = [k for k in open_keys if shares[k] < available[k]]
    return shares


def paper_subset(images: list[SourceImage], seed: int = 0) -> tuple[list[SourceImage], list[str]]:
    """The images kept to match Table 1's counts per source (see the module docstring), in their
    scan order, and a line per (source, label) whose release holds fewer images than the paper."""
    groups: dict[tuple[str, bool, str], list[SourceImage]] = defaultdict(list)
    for image in images:
        groups[(image.source, image.is_anomalous, image.product)].append(image)
    kept, shortfalls = set(), []
    for source in sorted({im.source for im in images}):
        counts = SOURCES[source].paper_images
        if counts is None:
            raise BuildError(f"{source} is not in the paper's Table 1: build it without paper_subset")
        for anomalous, wanted in zip((False, True), counts):
            products = {p: len(g) for (s, a, p), g in groups.items() if s == source and a == anomalous}
            have = sum(products.values())
            if have < wanted:
                shortfalls.append(
                    f"{source} {'abnormal' if anomalous else 'normal'}: the release has {have}, "
                    f"the paper counts {wanted}; all {have} kept"
                )
            for product, share in equal_shares(products, wanted).items():
                members = groups[(source, anomalous, product)]
                rng = random.Random(f"{seed}:{source}:{anomalous}:{product}")
                kept.update(im.key for im in rng.sample(members, share))
    return [im for im in images if im.key in kept], shortfalls
