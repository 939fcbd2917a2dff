"""Magnetic Tile defects: ``MT_<Class>/Imgs/<stem>.jpg`` + ``<stem>.png``; ``MT_Free`` is normal.

Masks are not strictly binary (0–255), so any value above 0 is a defect pixel. A few
``MT_Uneven`` masks are empty: those images stay anomalous, without a location.
"""
from __future__ import annotations

from pathlib import Path

from maugpt.schema import SourceImage
from maugpt.mauset.sources.common import LayoutError, listing

LAYOUT = "MT_{Blowhole,Break,Crack,Fray,Uneven,Free}/Imgs/<stem>.jpg with <stem>.png masks"
CLASSES = ("Blowhole", "Break", "Crack", "Fray", "Uneven", "Free")


def scan_magnetic_tile(root: Path) -> list[SourceImage]:
    base = root
    if not (base / "MT_Free").is_dir():  # the release's wrapper folder name varies; look one level down
        inner = [p for p in root.iterdir() if (p / "MT_Free").is_dir()] if root.is_dir() else []
        if not inner:
            raise LayoutError("magnetic_tile", root, LAYOUT, listing(root))
        base = inner[0]
    found = []
    for cls in CLASSES:
        folder = base / f"MT_{cls}" / "Imgs"
        if not folder.is_dir():
            raise LayoutError("magnetic_tile", root, LAYOUT, f"{folder.relative_to(base)} is missing")
        for image in sorted(folder.glob("*.jpg")):
            anomalous = cls != "Free"
            mask = image.with_suffix(".png")
            found.append(SourceImage(
                source="magnetic_tile", product="magnetic_tile", image=image, root=base,
                key=f"magnetic_tile/magnetic_tile/{cls.lower()}/{image.stem}", is_anomalous=anomalous,
                defect_class=cls if anomalous else None,
                mask=mask if anomalous and mask.is_file() else None, mask_threshold=0))
    return found
