"""MPDD: the MVTec AD layout with 6 metal-part categories."""

from __future__ import annotations

from pathlib import Path

from maugpt.download import COMPUTED, Release, ReleaseFile
from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.mvtec_ad import LAYOUT, scan_mvtec_layout
from maugpt.schema import SourceImage


def scan_mpdd(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """Every image of MPDD's categories (``missing`` stays as it is: nothing is required)."""
    return scan_mvtec_layout(root, "mpdd")


RELEASE = Release(
    page="https://vutbr-my.sharepoint.com/:f:/g/personal/xjezek16_vutbr_cz/"
    "EhHS_ufVigxDo3MC6Lweau0BVMuoCmhMZj6ddamiQ7-FnA?e=oHKCxI",
    licence="CC BY-NC-SA 4.0 (the repository github.com/stepanje/MPDD): non-commercial use only",
    files=(
        ReleaseFile("MPDD.zip", None, None, COMPUTED, strip_top=True),
    ),  # a SharePoint folder: "Download" zips it; no direct link
)

register(
    Source(
        name="mpdd",
        scan=scan_mpdd,
        layout=LAYOUT,
        paper_images=(1064, 282),
        release_images=1346,
        release=RELEASE,
    )
)  # 888 train + 458 test
