"""Where a defect is: a normalised box and a region name on a 3 × 3 grid of the image."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_ROWS, _COLS = ("top", "middle", "bottom"), ("left", "center", "right")


def region_name(cx: float, cy: float) -> str:
    """Name of the 3 × 3 cell holding the normalised point ``(cx, cy)``: "top left" … "center"."""
    row = _ROWS[min(int(cy * 3), 2)]
    col = _COLS[min(int(cx * 3), 2)]
    if row == "middle":
        return "center" if col == "center" else col
    return row if col == "center" else f"{row} {col}"


def _location(box: Sequence[float], cx: float, cy: float) -> dict:
    return {"box": [round(float(v), 3) for v in box], "region": region_name(cx, cy)}


def location_from_mask(mask: np.ndarray) -> dict | None:
    """Box around all defect pixels (``mask`` true) and the region of their centroid; None if empty."""
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return None
    h, w = mask.shape[:2]
    box = (xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)
    return _location(box, float(xs.mean() + 0.5) / w, float(ys.mean() + 0.5) / h)


def location_from_boxes(boxes: Sequence[Sequence[float]], width: int, height: int) -> dict | None:
    """Union box of pixel boxes ``(x1, y1, x2, y2)`` and the region of their area-weighted centre."""
    if not boxes:
        return None
    b = np.asarray(boxes, dtype=np.float64)
    area = np.maximum((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]), 1e-9)
    cx = float(((b[:, 0] + b[:, 2]) / 2 * area).sum() / area.sum()) / width
    cy = float(((b[:, 1] + b[:, 3]) / 2 * area).sum() / area.sum()) / height
    box = (b[:, 0].min() / width, b[:, 1].min() / height, b[:, 2].max() / width, b[:, 3].max() / height)
    return _location(np.clip(box, 0.0, 1.0), cx, cy)
