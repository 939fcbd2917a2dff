"""KolektorSDD2: ``{train,test}/<id>.png`` with ``<id>_GT.png``; an all-zero mask marks a normal image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maugpt.schema import SourceImage
from maugpt.mauset.sources.common import LayoutError, descend, listing

LAYOUT = "[KSDD2/]{train,test}/<id>.png with <id>_GT.png"


def scan_ksdd2(root: Path) -> list[SourceImage]:
    base = descend(root, "KSDD2")
    if not all((base / split).is_dir() for split in ("train", "test")):
        raise LayoutError("ksdd2", root, LAYOUT, listing(base))
    found = []
    for split in ("train", "test"):
        for image in sorted((base / split).glob("*.png")):
            if image.stem.endswith("_GT"):
                continue
            mask = image.with_name(f"{image.stem}_GT.png")
            if not mask.is_file():
                raise LayoutError("ksdd2", root, LAYOUT, f"{image.name} without its mask {mask.name}")
            with Image.open(mask) as m:
                anomalous = bool(np.asarray(m).any())
            found.append(SourceImage(source="ksdd2", product="commutator", image=image, root=base,
                                     key=f"ksdd2/commutator/{split}/{image.stem}", is_anomalous=anomalous,
                                     defect_class="defect" if anomalous else None,
                                     mask=mask if anomalous else None))
    return found
