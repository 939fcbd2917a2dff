"""Magnetic Tile defects: ``MT_<Class>/Imgs/<stem>.jpg`` + ``<stem>.png``; ``MT_Free`` is normal.

Masks are not strictly binary (0–255), so any value above 0 is a defect pixel. A few
``MT_Uneven`` masks are empty: those images stay anomalous, without a location.
"""

from __future__ import annotations

from pathlib import Path

from maugpt.download import COMPUTED, Release, ReleaseFile
from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.common import LayoutError, listing
from maugpt.schema import SourceImage

LAYOUT = "MT_{Blowhole,Break,Crack,Fray,Uneven,Free}/Imgs/<stem>.jpg with <stem>.png masks"
CLASSES = ("Blowhole", "Break", "Crack", "Fray", "Uneven", "Free")


def holds_classes(folder: Path) -> bool:
    """Whether ``folder`` holds at least one of the release's ``MT_<Class>`` folders."""
    return any((folder / f"MT_{cls}").is_dir() for cls in CLASSES)


def release_folder(root: Path) -> Path | None:
    """``root``, or the folder one level down, that holds the ``MT_<Class>`` folders (the release's
    wrapper folder name varies); ``None`` if neither does."""
    if holds_classes(root):
        return root
    inner = sorted(p for p in root.iterdir() if p.is_dir() and holds_classes(p)) if root.is_dir() else []
    return inner[0] if inner else None


def scan_magnetic_tile(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """Every image of the six class folders.

    A missing class folder fails, naming every one missing; with a ``missing`` list (a partial
    build: a deliberate subset may lack whole classes) they are appended to it instead and the
    classes that are there are read.
    """
    base = release_folder(root)
    if base is None:
        raise LayoutError("magnetic_tile", root, LAYOUT, listing(root))
    absent = [f"MT_{cls}/Imgs" for cls in CLASSES if not (base / f"MT_{cls}" / "Imgs").is_dir()]
    if absent and missing is None:
        raise LayoutError(
            "magnetic_tile",
            root,
            LAYOUT,
            f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} missing (a deliberate subset "
            "builds with partial=True, --partial true)",
        )
    if missing is not None:
        missing += absent
    found = []
    for cls in CLASSES:
        folder = base / f"MT_{cls}" / "Imgs"
        for image in sorted(folder.glob("*.jpg")):  # nothing if the folder is missing
            anomalous = cls != "Free"
            mask = image.with_suffix(".png")
            found.append(
                SourceImage(
                    source="magnetic_tile",
                    product="magnetic_tile",
                    image=image,
                    root=base,
                    key=f"magnetic_tile/magnetic_tile/{cls.lower()}/{image.stem}",
                    is_anomalous=anomalous,
                    defect_class=cls if anomalous else None,
                    mask=mask if anomalous and mask.is_file() else None,
                    mask_threshold=0,
                )
            )
    return found


COMMIT = "cc4eb530b57b9cb7225bf76023873043ffd50655"  # the repository's tip, 2020-05-09
RELEASE = Release(
    page="https://github.com/abin24/Magnetic-tile-defect-datasets.",
    licence="none stated by the repository; it asks to cite 'Saliency of magnetic tile surface defects'",
    files=(
        ReleaseFile(
            f"Magnetic-tile-defect-datasets-{COMMIT}.zip",
            f"https://github.com/abin24/Magnetic-tile-defect-datasets./archive/{COMMIT}.zip",
            None,
            COMPUTED,
            strip_top=True,
        ),  # the data lives in the repository: MT_<Class>/Imgs
    ),
)

register(
    Source(
        name="magnetic_tile",
        scan=scan_magnetic_tile,
        layout=LAYOUT,
        paper_images=(952, 383),
        release_images=1344,
        release=RELEASE,
    )
)
