#!/usr/bin/env python
"""Print the statistics table of a shard folder and a few decoded samples."""
from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from jsonargparse import auto_cli

from maugpt.data.reader import SkipCounter, iter_samples
from maugpt.mauset.stats import format_statistics, split_statistics


def main(folder: Path, samples: int = 2) -> None:
    """Summarise every split folder under ``folder`` (or ``folder`` itself), decoding every sample.

    Args:
        folder: a split folder (with index.json) or a folder of split folders.
        samples: how many decoded samples to print per split.
    """
    splits = [folder] if (folder / "index.json").is_file() else sorted(p.parent for p in folder.glob("**/index.json"))
    if not splits:
        raise SystemExit(f"inspect_shards: no index.json under {folder}: not a folder of maugpt shards")
    for split in splits:
        counter = SkipCounter()
        decoded = list(iter_samples(split, counter))
        stats = {**split_statistics(s["json"] for s in decoded), "skipped_unreadable": counter.count}
        print(format_statistics(stats, str(split)))
        for sample in islice(decoded, samples):
            members = {k: (f"image {v.size[0]}x{v.size[1]}" if hasattr(v, "size") else "record")
                       for k, v in sample.items() if not k.startswith("__")}
            print(f"-- sample {sample['__key__']}: {members}")
            print(json.dumps(sample["json"], indent=1)[:1500])


if __name__ == "__main__":
    auto_cli(main)
