"""MVTec AD: ``<category>/{train/good, test/<defect>}``, masks in ``ground_truth/<defect>/``.

MPDD shares the layout (:mod:`maugpt.mauset.sources.mpdd`)."""

from __future__ import annotations

from pathlib import Path

from maugpt.download import Release, ReleaseFile
from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.common import LayoutError, images_in, listing
from maugpt.schema import SourceImage

LAYOUT = (
    "<category>/train/good/*.png, <category>/test/{good,<defect>}/*.png, <category>/ground_truth/<defect>/*_mask.png"
)


def scan_mvtec_layout(root: Path, source: str) -> list[SourceImage]:
    """Every image of the categories with ``train/`` and ``test/``; their defect folders are read as
    found, so no class folder is required."""
    categories = (
        sorted(p for p in root.iterdir() if (p / "train").is_dir() and (p / "test").is_dir()) if root.is_dir() else []
    )
    if not categories:
        raise LayoutError(source, root, LAYOUT, listing(root))
    found = []
    for category in categories:
        for split in ("train", "test"):
            for defect_dir in sorted(p for p in (category / split).iterdir() if p.is_dir()):
                normal = defect_dir.name == "good"
                for image in images_in(defect_dir):
                    mask = None
                    if not normal:
                        candidate = category / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
                        mask = candidate if candidate.is_file() else None
                    found.append(
                        SourceImage(
                            source=source,
                            product=category.name,
                            image=image,
                            root=root,
                            key=f"{source}/{category.name}/{split}/{defect_dir.name}/{image.stem}",
                            is_anomalous=not normal,
                            defect_class=None if normal else defect_dir.name,
                            mask=mask,
                        )
                    )
    return found


def scan_mvtec_ad(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """MVTec AD: 15 categories, 73 defect types (``missing`` stays as it is: nothing is required)."""
    return scan_mvtec_layout(root, "mvtec_ad")


RELEASE = Release(
    page="https://www.mvtec.com/company/research/datasets/mvtec-ad",
    licence="CC BY-NC-SA 4.0, as MVTec's page states: non-commercial use only",
    files=(
        ReleaseFile(
            "mvtec_anomaly_detection.tar.xz",
            "https://www.mydrive.ch/shares/38536/3830184030e49fe74747669442f0f282/download/420938113-1629952094/"
            "mvtec_anomaly_detection.tar.xz",
            "cf4313b13603bec67abb49ca959488f7eedce2a9f7795ec54446c649ac98cd3d",
            "anomalib's registry (openvinotoolkit/anomalib, src/anomalib/data/datamodules/image/mvtecad.py)",
        ),  # the category folders at the top, as the scanner reads them
    ),
)

register(
    Source(
        name="mvtec_ad",
        scan=scan_mvtec_ad,
        layout=LAYOUT,
        paper_images=(4096, 1258),
        release_images=5354,
        release=RELEASE,
    )
)  # 3,629 train + 1,725 test
