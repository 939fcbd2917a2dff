"""Builders for the seven public sources: each reads its official release layout into SourceImages."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from maugpt.data.schema import SourceImage
from maugpt.data.sources.btad import scan_btad
from maugpt.data.sources.common import LayoutError
from maugpt.data.sources.dagm import scan_dagm
from maugpt.data.sources.deeppcb import scan_deeppcb
from maugpt.data.sources.ksdd2 import scan_ksdd2
from maugpt.data.sources.magnetic_tile import scan_magnetic_tile
from maugpt.data.sources.mvtec import scan_mpdd, scan_mvtec_ad

SCANNERS: dict[str, Callable[[Path], list[SourceImage]]] = {
    "btad": scan_btad, "dagm": scan_dagm, "deeppcb": scan_deeppcb, "ksdd2": scan_ksdd2,
    "magnetic_tile": scan_magnetic_tile, "mpdd": scan_mpdd, "mvtec_ad": scan_mvtec_ad,
}

__all__ = ["SCANNERS", "LayoutError"]
