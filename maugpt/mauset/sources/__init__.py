"""Builders for the seven public sources: each reads its official release layout into SourceImages."""
from __future__ import annotations

from pathlib import Path
from typing import Protocol

from maugpt.schema import SourceImage
from maugpt.mauset.sources import btad, dagm, deeppcb, ksdd2, magnetic_tile, mvtec
from maugpt.mauset.sources.common import BuildError, LayoutError


class Scanner(Protocol):
    """Reads one source's release folder. A class folder the release has but ``root`` lacks fails
    with a :class:`LayoutError`; given a ``missing`` list (a partial build), a scanner that requires
    such folders appends each absent one to it instead and reads what is there."""

    def __call__(self, root: Path, missing: list[str] | None = None) -> list[SourceImage]: ...


SCANNERS: dict[str, Scanner] = {
    "btad": btad.scan_btad, "dagm": dagm.scan_dagm, "deeppcb": deeppcb.scan_deeppcb, "ksdd2": ksdd2.scan_ksdd2,
    "magnetic_tile": magnetic_tile.scan_magnetic_tile, "mpdd": mvtec.scan_mpdd, "mvtec_ad": mvtec.scan_mvtec_ad,
}
LAYOUTS: dict[str, str] = {
    "btad": btad.LAYOUT, "dagm": dagm.LAYOUT, "deeppcb": deeppcb.LAYOUT, "ksdd2": ksdd2.LAYOUT,
    "magnetic_tile": magnetic_tile.LAYOUT, "mpdd": mvtec.LAYOUT, "mvtec_ad": mvtec.LAYOUT,
}
#: Images in each full public release (its own folder counts, as its public metadata gives them):
#: a scan far below it means a folder is missing or the packaging differs from the layout read.
RELEASE_IMAGES: dict[str, int] = {
    "btad": 2540,  # 01: 400 + 21 + 49, 02: 399 + 30 + 200, 03: 1,000 + 400 + 41
    "dagm": 16100,  # classes 1-6: 575 Train + 575 Test each; 7-10: 1,150 + 1,150
    "deeppcb": 3001,  # 1,500 boards + 1,501 templates
    "ksdd2": 3335,  # train 246 + 2,085, test 110 + 894
    "magnetic_tile": 1344,
    "mpdd": 1346,  # 888 train + 458 test
    "mvtec_ad": 5354,  # 3,629 train + 1,725 test
}

__all__ = ["LAYOUTS", "RELEASE_IMAGES", "SCANNERS", "BuildError", "LayoutError", "Scanner"]
