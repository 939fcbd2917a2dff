"""KolektorSDD2: ``{train,test}/<id>.png`` with ``<id>_GT.png``; an all-zero mask marks a normal image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from maugpt.download import COMPUTED, Release, ReleaseFile
from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.common import LayoutError, descend, listing
from maugpt.schema import SourceImage

LAYOUT = "[KSDD2/]{train,test}/<id>.png with <id>_GT.png"


def scan_ksdd2(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """Every image of ``train/`` and ``test/``, labelled by its mask.

    Both folders are required; with a ``missing`` list (a partial build) one of them may be
    absent, and is appended to it instead of failing.
    """
    base = descend(root, "KSDD2")
    present = [split for split in ("train", "test") if (base / split).is_dir()]
    absent = [f"{split}/" for split in ("train", "test") if split not in present]
    if not present:
        raise LayoutError("ksdd2", root, LAYOUT, listing(base))
    if absent and missing is None:
        raise LayoutError(
            "ksdd2",
            root,
            LAYOUT,
            f"{absent[0]} is missing beside {present[0]}/ (a deliberate "
            "subset builds with partial=True, --partial true)",
        )
    if missing is not None:
        missing += absent
    found = []
    for split in present:
        for image in sorted((base / split).glob("*.png")):
            if image.stem.endswith("_GT"):
                continue
            mask = image.with_name(f"{image.stem}_GT.png")
            if not mask.is_file():
                raise LayoutError("ksdd2", root, LAYOUT, f"{image.name} without its mask {mask.name}")
            with Image.open(mask) as m:
                anomalous = bool(np.asarray(m).any())
            found.append(
                SourceImage(
                    source="ksdd2",
                    product="commutator",
                    image=image,
                    root=base,
                    key=f"ksdd2/commutator/{split}/{image.stem}",
                    is_anomalous=anomalous,
                    defect_class="defect" if anomalous else None,
                    mask=mask if anomalous else None,
                )
            )
    return found


RELEASE = Release(
    page="https://www.vicos.si/resources/kolektorsdd2/",
    licence="CC BY-NC-SA 4.0 (ViCoS): non-commercial use only",
    files=(
        ReleaseFile(
            "KolektorSDD2.zip",
            "https://go.vicos.si/kolektorsdd2",
            None,
            COMPUTED,
            skip=("* (copy)*",),  # train/10301 (copy).png and its mask: a duplicate the zip ships
        ),  # unpacks to train/ and test/
    ),
)

register(
    Source(
        name="ksdd2",
        scan=scan_ksdd2,
        layout=LAYOUT,
        paper_images=(2979, 356),
        release_images=3335,
        release=RELEASE,
    )
)  # train 246 + 2,085, test 110 + 894
