"""MPDD: the MVTec AD layout with 6 metal-part categories."""

from __future__ import annotations

from pathlib import Path

from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.mvtec_ad import LAYOUT, scan_mvtec_layout
from maugpt.schema import SourceImage


def scan_mpdd(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """Every image of MPDD's categories (``missing`` stays as it is: nothing is required)."""
    return scan_mvtec_layout(root, "mpdd")


register(
    Source(name="mpdd", scan=scan_mpdd, layout=LAYOUT, paper_images=(1064, 282), release_images=1346)
)  # 888 train + 458 test
