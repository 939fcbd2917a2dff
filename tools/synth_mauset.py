#!/usr/bin/env python
"""Write the synthetic MAU-Set (QA shards) and synthetic caption shards for stage 1."""
from __future__ import annotations

from pathlib import Path

from jsonargparse import auto_cli

from maugpt.mauset.stats import format_statistics
from maugpt.mauset.synthetic import build_synthetic


def main(*, out: Path, images: int = 700, seed: int = 0, image_size: int = 224, captions: int | None = None,
         anomaly_fraction: float = 0.5, test: float = 0.2, val: float = 0.05, references: int = 0,
         overwrite: bool = False) -> None:
    """Procedural images of 14 products in the 6 domains, with defects drawn at known positions.

    Args:
        out: output folder: ``mauset/{train,val,test}`` and ``captions/{train,val}``.
        images: number of MAU-Set images.
        seed: the seed; the same seed writes the same data.
        image_size: side of the square images, in pixels.
        captions: number of caption images (default: as many as ``images``).
        anomaly_fraction: share of images with a defect.
        test: fraction of each class that goes to test.
        val: fraction that goes to validation.
        references: normal reference images of the same product stored with each sample.
        overwrite: replace the shards of a non-empty ``out``.
    """
    stats = build_synthetic(out, images=images, seed=seed, image_size=image_size, captions=captions,
                            anomaly_fraction=anomaly_fraction, test=test, val=val, references=references,
                            overwrite=overwrite)
    for name, split_stats in stats.items():
        print(format_statistics(split_stats, name))


if __name__ == "__main__":
    auto_cli(main)
