"""Opening a user's image safely: ``maugpt predict``'s folder, the MAU-Set builders' sources, MMAD.

:func:`open_rgb` (and :func:`open_mask` for a defect mask) promises:

* **a pixel limit read from the header before anything is decoded** (``max_pixels``; Pillow's
  ``Image.open`` is lazy), so that memory is bounded by the limit: a larger image is rejected, or —
  with ``reduce_jpeg`` — a larger JPEG is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
  ``Image.draft``) when that fits. Pillow's own decompression-bomb check (``Image.MAX_IMAGE_PIXELS``)
  never decides instead of ``max_pixels``: when it refuses an image, the call is repeated once with
  the check lifted for that call only, under a lock, and Pillow's value is restored at once (the
  lifting is process-wide while it lasts: see :func:`_bomb_check_lifted`);
* **one error type**, :class:`ImageRejected` (an ``OSError``, so every existing handler of unreadable
  images catches it), whose ``reason`` is one of :data:`REASONS` and whose message names the file;
* **8-bit RGB whatever the file's mode** (:func:`to_rgb`); a mask's values kept as labels, clipped
  to 0–255, not scaled (:func:`open_mask`);
* **the image upright**: its EXIF orientation applied (``ImageOps.exif_transpose``), as a viewer
  shows it, so that "top left" is the corner a person sees. The orientation applied stays in
  ``image.info[ORIENTATION]``: :func:`open_mask` and :func:`orient_box` turn the image's mask and
  pixel boxes the same way (annotations are drawn on the file's stored pixel grid).
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Default ``max_pixels``: 50 M pixels (7071 × 7071; 150 MB as 8-bit RGB) holds 8K frames and
#: 48-MP photos, and keeps one image's decoding well under a GB (a 13000² PNG took 2.3 GB).
DEFAULT_MAX_PIXELS = 50_000_000
#: What transparent pixels are composited over: white, as a viewer shows them on a page.
BACKGROUND = (255, 255, 255)
#: ``image.info`` key of the EXIF orientation (1–8) that :func:`open_rgb` applied; 1: none.
ORIENTATION = "applied_exif_orientation"
#: ``ImageRejected.reason`` values.
REASONS = ("unreadable", "empty file", "not an image", "too large", "truncated", "corrupt", "unsupported mode")

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")
_SCALED = (*_SIXTEEN_BIT, "I", "F")  # modes whose values are brought to 8 bits here, not by convert()
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")
_DECODE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error, zlib.error)
_ORIENTATION_TAG = 0x0112
#: EXIF orientation → the transpose that shows the stored pixels upright (ImageOps.exif_transpose's table).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_BOMB_CHECK = threading.Lock()


class ImageRejected(OSError):
    """An image that is not read: ``reason`` (one of :data:`REASONS`), ``detail``, and the file, all in the message."""

    def __init__(self, path: str | Path, reason: str, detail: str) -> None:
        super().__init__(f"{path}: {reason}: {detail}")
        self.path, self.reason, self.detail = Path(path), reason, detail

    def __reduce__(self):  # picklable across DataLoader workers despite the three arguments
        return type(self), (self.path, self.reason, self.detail)


@contextlib.contextmanager
def _bomb_check_lifted() -> Iterator[None]:
    """Pillow's decompression-bomb check (``Image.MAX_IMAGE_PIXELS``) off for the ``with`` block.

    Pillow reads that module global at each check, so the lifting is process-wide while it lasts:
    the lock keeps two calls of this module from restoring each other's value (and the ``finally``
    restores it whatever happens), but another thread that calls ``Image.open`` directly, not through
    this module, during that time runs without Pillow's check. That happens only for an image above
    Pillow's own limit (about 179 M pixels: ``2 * MAX_IMAGE_PIXELS``, above which Pillow raises
    ``DecompressionBombError``), and for longer than the reading of its header only when a caller's
    ``max_pixels``, raised above that, allows the image to be decoded: under the default
    :data:`DEFAULT_MAX_PIXELS` such an image is rejected from its header.
    """
    with _BOMB_CHECK:
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _past_bomb_check(call: Callable[[], T]) -> T:
    """``call()``; repeated once with Pillow's bomb check lifted if that check refuses it (the
    caller's ``max_pixels`` is the limit; Pillow checks before it allocates, so a refusal is cheap)."""
    try:
        return call()
    except Image.DecompressionBombError:
        with _bomb_check_lifted():
            return call()


def _fit(image: Image.Image, path: Path, max_pixels: int, reduce_jpeg: bool) -> None:
    """Reject ``image`` (opened, not decoded) above ``max_pixels``, unless ``reduce_jpeg`` and a
    JPEG's DCT scaling brings it under the limit (then set up with ``draft``)."""
    width, height = image.size
    if width * height <= max_pixels:
        return
    if reduce_jpeg:  # draft() is a no-op for formats without reduced decoding: only JPEG and MPO have it
        scale = next((s for s in (2, 4, 8) if math.ceil(width / s) * math.ceil(height / s) <= max_pixels), None)
        if scale is not None:
            image.draft(None, (max(1, width // scale), max(1, height // scale)))
            if image.width * image.height <= max_pixels:
                return
    raise ImageRejected(
        path,
        "too large",
        f"{width}x{height} = {width * height:,} pixels, more than max_pixels "
        f"{max_pixels:,} (read from the header, nothing decoded); raise max_pixels to accept it",
    )


@contextlib.contextmanager
def _decoded(path: str | Path, max_pixels: int, reduce_jpeg: bool) -> Iterator[Image.Image]:
    """The decoded image at ``path`` (closed on leaving); every failure as :class:`ImageRejected`."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageRejected(path, "unreadable", f"cannot read the file ({err.strerror or err})") from err
    if size == 0:
        raise ImageRejected(path, "empty file", "0 bytes, expected an image file")
    try:
        image = _past_bomb_check(lambda: Image.open(path))
    except UnidentifiedImageError as err:
        raise ImageRejected(
            path,
            "not an image",
            "Pillow recognises no image format in it (expected PNG, JPEG, BMP, TIFF or another format Pillow reads)",
        ) from err
    except OSError as err:
        if err.errno is not None:  # the system's refusal (a folder, no permission), not the content's
            raise ImageRejected(path, "unreadable", f"cannot read the file ({err.strerror or err})") from err
        raise ImageRejected(path, "corrupt", f"its header cannot be read ({err})") from err
    except _DECODE_ERRORS as err:
        raise ImageRejected(path, "corrupt", f"its header cannot be read ({err})") from err
    with image:
        _fit(image, path, max_pixels, reduce_jpeg)
        try:
            _past_bomb_check(image.load)
        except _DECODE_ERRORS as err:
            reason = "truncated" if "truncated" in str(err) else "corrupt"
            raise ImageRejected(path, reason, f"decoding failed ({err})") from err
        yield image


def _upright(image: Image.Image, path: Path) -> int:
    """Apply ``image``'s EXIF orientation in place; return it (1: none). A damaged EXIF block is
    ignored with a warning: the pixels are still good."""
    try:
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        ImageOps.exif_transpose(image, in_place=True)
    except (*_DECODE_ERRORS, KeyError, TypeError) as err:
        log.warning("%s: unreadable EXIF block (%s); its orientation is ignored", path, err)
        return 1
    return orientation if orientation in _UPRIGHT else 1


def _grey8(image: Image.Image) -> Image.Image:
    """A 16-bit, ``I`` or ``F`` image as 8-bit ``L``, scaled for display (the rules of :func:`to_rgb`)."""
    values = np.asarray(image)
    if image.mode == "F":
        finite = np.isfinite(values)
        low, high = (float(values[finite].min()), float(values[finite].max())) if finite.any() else (0.0, 0.0)
        if 0.0 <= low and high <= 1.0:
            scaled = values * 255.0
        else:
            scaled = (values - low) * (255.0 / (high - low) if high > low else 0.0)
        eight = np.where(finite, np.rint(scaled), 0).clip(0, 255).astype(np.uint8)
    else:  # 16-bit, and I holding 16-bit values: the high byte
        sixteen = values if values.dtype.kind == "u" else np.clip(values, 0, 65535)
        eight = (sixteen >> 8).astype(np.uint8)
    return Image.fromarray(eight)


def _labels8(image: Image.Image) -> Image.Image:
    """A 16-bit, ``I`` or ``F`` mask as 8-bit ``L``, its values kept (the rules of :func:`open_mask`)."""
    values = np.asarray(image)
    if image.mode == "F":  # +inf to 255, -inf and NaN to 0; then truncated like Pillow's convert("L")
        values = np.nan_to_num(values, nan=0.0, posinf=255.0, neginf=0.0)
    return Image.fromarray(np.clip(values, 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB image of ``image`` (decoded), by mode:

    * 16-bit grey (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``): the high byte, ``v >> 8`` — the rule
      Pillow itself applies to 16-bit RGB(A) PNG and TIFF files, which it decodes to 8 bits; one rule
      for every 16-bit image (within 1 of ``round(v / 257)``). Data of fewer significant bits (12-bit
      in 16) comes out dark.
    * 32-bit integer (``I``): taken as 16-bit values — clipped to 0–65535, then the high byte as
      above. Real 32-bit data is not rescaled: negative values become 0 and every value of 65535
      or more becomes 255 (it saturates).
    * ``F``: values within [0, 1] (the float-image convention) times 255; otherwise the finite
      minimum–maximum stretched to 0–255 (the values have no agreed range); rounded; NaN, ±inf → 0.
    * alpha (``RGBA``, ``LA``, ``PA``, ``RGBa``) or a transparent colour (``P``, ``L``, ``RGB`` with
      ``transparency``): composited over :data:`BACKGROUND`, white. The colour stored under a
      transparent pixel is arbitrary (encoders keep, zero or scramble it), so dropping alpha, as
      ``convert("RGB")`` does, shows whatever was left there; composited, the image looks as a viewer
      shows it, whatever the encoder.
    * ``1``, ``L``, ``P``, ``CMYK``, ``YCbCr``, ``LAB``, ``HSV``, ``RGBX``, ``RGB``: ``convert("RGB")``
      (CMYK without an ICC profile: Pillow's plain inversion).

    Raises ``ValueError`` for a mode Pillow cannot convert.
    """
    if image.mode in _SCALED:
        return _grey8(image).convert("RGB")
    if image.mode in _ALPHA or "transparency" in image.info:
        rgba = image.convert("RGBA")
        out = Image.new("RGB", image.size, BACKGROUND)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    return image.convert("RGB")


def open_rgb(path: str | Path, *, max_pixels: int, reduce_jpeg: bool = False) -> Image.Image:
    """The image at ``path`` as 8-bit RGB (:func:`to_rgb`), upright (its EXIF orientation applied,
    recorded in ``info[ORIENTATION]``), decoded only if its header's width × height is at most
    ``max_pixels`` (``reduce_jpeg``: a larger JPEG is decoded at the DCT scale, 1/2 to 1/8, that fits).

    Raises :class:`ImageRejected` — ``unreadable``, ``empty file``, ``not an image``, ``too large``,
    ``truncated``, ``corrupt`` or ``unsupported mode`` — and nothing else for a bad file.
    """
    with _decoded(path, max_pixels, reduce_jpeg) as image:
        orientation = _upright(image, Path(path))
        try:
            rgb = to_rgb(image)
        except ValueError as err:
            raise ImageRejected(
                path, "unsupported mode", f"mode {image.mode} cannot be converted to RGB ({err})"
            ) from err
    rgb.info[ORIENTATION] = orientation
    return rgb


def open_mask(path: str | Path, *, max_pixels: int, orientation: int = 1) -> Image.Image:
    """The mask at ``path`` as 8-bit grey (``L``), turned by ``orientation``: the EXIF orientation of
    its image (``info[ORIENTATION]`` of what :func:`open_rgb` returned). A mask is drawn on its image's
    stored pixel grid, so it turns with the image, and its own EXIF is ignored.

    A mask is thresholded (``mask > mask_threshold``), not displayed, so its values are kept as the
    labels they are, never scaled as :func:`to_rgb` scales an image: 16-bit (``I;16``, ``I;16L``,
    ``I;16B``, ``I;16N``) and 32-bit integer (``I``) values are clipped to 0–255 (a label mask of 0/1
    stays 0/1; 256 and more become 255); ``F`` values are clipped to 0–255 and truncated toward zero,
    NaN and -inf → 0, +inf → 255. That is what ``Image.open(mask).convert("L")`` gives (for NaN,
    Pillow's C cast is undefined; 0 is chosen here) — how the MAU-Set builders read masks before this
    module — so every source's ``mask_threshold`` keeps its meaning. Other modes: ``convert("L")``
    (alpha ignored: a mask's values, not its transparency, mark the defects). Raises
    :class:`ImageRejected` as :func:`open_rgb`.
    """
    with _decoded(path, max_pixels, False) as image:
        try:
            grey = _labels8(image) if image.mode in _SCALED else image.convert("L")
        except ValueError as err:
            raise ImageRejected(
                path, "unsupported mode", f"mode {image.mode} cannot be converted to grey ({err})"
            ) from err
    return orient(grey, orientation)


def orient(image: Image.Image, orientation: int) -> Image.Image:
    """``image`` turned as EXIF ``orientation`` (1–8) says to show it upright (others: unchanged)."""
    return image.transpose(_UPRIGHT[orientation]) if orientation in _UPRIGHT else image


def orient_box(box: Sequence[float], orientation: int, size: tuple[int, int]) -> tuple[float, ...]:
    """The pixel box ``(x1, y1, x2, y2)`` of an image's stored grid, turned with the image by
    :func:`orient`; ``size`` is the image's size after turning (as :func:`open_rgb` returned it)."""
    if orientation not in _UPRIGHT:
        return tuple(box)
    w, h = size if orientation <= 4 else size[::-1]  # the stored grid's size
    turn = {
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }[orientation]
    (ax, ay), (bx, by) = turn(box[0], box[1]), turn(box[2], box[3])
    return min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)
