#!/usr/bin/env python
"""Build MAU-Set shards from the official releases of the seven public sources."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import auto_cli

from maugpt.mauset.build import build_mauset
from maugpt.mauset.knowledge import Knowledge
from maugpt.schema import SOURCES


def main(*, source: Literal["btad", "dagm", "deeppcb", "ksdd2", "magnetic_tile", "mpdd", "mvtec_ad", "all"],
         root: Path, out: Path, seed: int = 0, test: float = 0.2, val: float = 0.05, max_side: int = 512,
         image_format: Literal["jpg", "png"] = "jpg", maxcount: int = 1000, maxsize: float = 1e9,
         overwrite: bool = False, partial: bool = False, paper_subset: bool = False,
         knowledge: Path | None = None) -> None:
    """Scan, split (fixed ratio per source and class), build QA, and write shards with statistics.

    Args:
        source: one source, or ``all`` (then ``root/<source>`` holds each release).
        root: the release folder of the source (or the folder of all releases).
        out: output folder; ``train/``, ``val/`` and ``test/`` are written into it.
        seed: seed of the split and of the question sampling.
        test: fraction of each source's normal and of its abnormal images that goes to test.
        val: fraction that goes to validation.
        max_side: images are scaled down so that their longer side is at most this.
        image_format: encoding of the stored images.
        maxcount: samples per shard at most.
        maxsize: bytes per shard at most.
        overwrite: replace the split folders of a non-empty ``out``.
        partial: build from part of a release on purpose; without it a source that yields fewer
            than 90 % of its release's images fails (a missing folder, another packaging).
        paper_subset: keep the paper's Table 1 normal and abnormal counts per source (a seeded,
            even draw over products; all images where a release has fewer).
        knowledge: a folder of your own products.yaml / questions.yaml / defects.yaml, merged over
            the packaged ones (new products or defect classes of a release, edited texts). Defect
            classes found in neither get a generic description, marked and listed in the stats.
    """
    sources = list(SOURCES) if source == "all" else [source]
    build_mauset(sources, root, out, knowledge=Knowledge(overlay=knowledge), seed=seed, test=test, val=val,
                 max_side=max_side, image_format=image_format,
                 maxcount=maxcount, maxsize=maxsize, overwrite=overwrite, partial=partial, paper_subset=paper_subset)


if __name__ == "__main__":
    auto_cli(main)
