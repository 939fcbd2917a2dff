"""BTAD: ``{01,02,03}/{train/ok, test/ok, test/ko}``, masks in ``ground_truth/ko`` (same stem)."""

from __future__ import annotations

from pathlib import Path

from maugpt.download import Release, ReleaseFile
from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.common import LayoutError, descend, find_by_stem, images_in, listing
from maugpt.schema import SourceImage

LAYOUT = "[BTech_Dataset_transformed/]{01,02,03}/{train/ok,test/ok,test/ko}/*, {01,02,03}/ground_truth/ko/*"


def scan_btad(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """Every image of the product folders that have ``test/ko``; no class folder is required
    (``missing`` is accepted as every scanner's, and stays as it is)."""
    base = descend(root, "BTech_Dataset_transformed")
    products = sorted(p for p in base.iterdir() if (p / "test" / "ko").is_dir()) if base.is_dir() else []
    if not products:
        raise LayoutError("btad", root, LAYOUT, listing(base))
    found = []
    for product in products:
        for split, label in (("train", "ok"), ("test", "ok"), ("test", "ko")):
            for image in images_in(product / split / label):
                anomalous = label == "ko"
                found.append(
                    SourceImage(
                        source="btad",
                        product=product.name,
                        image=image,
                        root=base,
                        key=f"btad/{product.name}/{split}/{label}/{image.stem}",
                        is_anomalous=anomalous,
                        defect_class="defect" if anomalous else None,
                        mask=find_by_stem(product / "ground_truth" / "ko", image.stem) if anomalous else None,
                    )
                )
    return found


RELEASE = Release(
    page="https://github.com/pankajmishra000/VT-ADL",
    licence="CC BY-SA 4.0, as the authors' repository states (anomalib's docstring says CC BY-NC-SA 4.0)",
    files=(
        ReleaseFile(
            "btad.zip",
            "https://avires.dimi.uniud.it/papers/btad/btad.zip",
            "461c9387e515bfed41ecaae07c50cf6b10def647b36c9e31d239ab2736b10d2a",
            "anomalib's registry (openvinotoolkit/anomalib, src/anomalib/data/datamodules/image/btech.py)",
        ),  # unpacks to BTech_Dataset_transformed/{01,02,03}
    ),
)

register(
    Source(
        name="btad",
        scan=scan_btad,
        layout=LAYOUT,
        paper_images=(2250, 580),
        release_images=2540,
        release=RELEASE,
    )
)  # 01: 400 + 21 + 49, 02: 399 + 30 + 200, 03: 1,000 + 400 + 41
