#!/usr/bin/env python
"""Convert LLaVA-Pretrain (blip_laion_cc_sbu_558k.json + images) into stage-1 caption shards."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from jsonargparse import auto_cli

from maugpt.mauset.llava import convert_llava_pretrain
from maugpt.mauset.stats import format_statistics


def main(*, annotations: Path, images: Path, out: Path, max_side: int = 512, image_format: Literal["jpg", "png"] = "jpg",
         maxcount: int = 5000, limit: int | None = None, overwrite: bool = False) -> None:
    """Write ``out/train`` shards with one caption pair per image (task ``caption``).

    Args:
        annotations: the ``blip_laion_cc_sbu_558k.json`` file.
        images: the folder the records' image paths are relative to.
        out: output folder.
        max_side: images are scaled down so that their longer side is at most this.
        image_format: encoding of the stored images.
        maxcount: samples per shard at most.
        limit: convert only the first N records.
        overwrite: replace the shards of a non-empty ``out``.
    """
    stats = convert_llava_pretrain(annotations, images, out, max_side, image_format, maxcount, limit, overwrite)
    print(format_statistics(stats, "llava_pretrain train"))


if __name__ == "__main__":
    auto_cli(main)
