"""DAGM 2007: ``Class{1..10}/{Train,Test}/NNNN.PNG``; defective iff ``Label/NNNN_label.PNG`` exists."""

from __future__ import annotations

import re
from pathlib import Path

from maugpt.download import COMPUTED, Release, ReleaseFile
from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.common import LayoutError, descend, find_by_stem, images_in, listing
from maugpt.schema import SourceImage

LAYOUT = "[DAGM/]Class<k>/{Train,Test}/NNNN.PNG with Class<k>/{Train,Test}/Label/NNNN_label.PNG for defects"


def scan_dagm(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """Every image of the ``Class<k>`` folders there are; no class folder is required (``missing``
    is accepted as every scanner's, and stays as it is)."""
    base = descend(root, "DAGM")
    classes = (
        sorted(
            (p for p in base.iterdir() if re.fullmatch(r"Class\d+", p.name) and p.is_dir()),
            key=lambda p: int(p.name[5:]),
        )
        if base.is_dir()
        else []
    )
    older = [p.name for p in base.iterdir() if re.fullmatch(r"Class\d+_def", p.name)] if base.is_dir() else []
    if older:  # Class<k>/ (normal) + Class<k>_def/ (defects, labels.txt ellipses): not read here
        raise LayoutError(
            "dagm",
            root,
            LAYOUT,
            f"the older DAGM packaging ({', '.join(sorted(older)[:3])}, … "
            "beside Class<k>/, defects described by labels.txt ellipses); get the 2007 competition "
            "release with Train/Test folders and Label masks",
        )
    if not classes:
        raise LayoutError("dagm", root, LAYOUT, listing(base))
    found = []
    for cls in classes:
        for split in ("Train", "Test"):
            folder = cls / split
            for image in images_in(folder):
                label = find_by_stem(folder / "Label", f"{image.stem}_label")
                found.append(
                    SourceImage(
                        source="dagm",
                        product=cls.name,
                        image=image,
                        root=base,
                        key=f"dagm/{cls.name}/{split.lower()}/{image.stem}",
                        is_anomalous=label is not None,
                        defect_class="defect" if label is not None else None,
                        mask=label,
                    )
                )
    return found


RELEASE = Release(
    page="https://zenodo.org/records/8086136",
    licence="none stated on the release pages (the DAGM 2007 competition data, for research; cite it)",
    files=tuple(
        ReleaseFile(f"Class{k}.zip", f"https://zenodo.org/records/8086136/files/Class{k}.zip", None, COMPUTED)
        for k in range(1, 11)
    ),  # Zenodo publishes MD5s only; each zip unpacks to Class<k>/{Train,Test}
)

register(
    Source(
        name="dagm", scan=scan_dagm, layout=LAYOUT, paper_images=(10000, 1500), release_images=16100, release=RELEASE
    )
)  # classes 1-6: 575 Train + 575 Test each; 7-10: 1,150 + 1,150
