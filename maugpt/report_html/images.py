"""Thumbnails of the test images with the defect outlined, read through the pixel limit."""

from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw, ImageFilter

from maugpt.report_html.markdown import data_uri
from maugpt.report_html.template import OUTLINE, THUMB_SIZE


def thumbnail(
    image: Image.Image, *, mask: Image.Image | None = None, boxes: list[list[float]] = (), size: int = THUMB_SIZE
) -> Image.Image:
    """A copy of ``image`` at most ``size`` pixels a side (never enlarged) with the defect outlined in
    :data:`OUTLINE`: the contour of ``mask`` (pixels above 0) or else the ``boxes`` (x1, y1, x2, y2 in [0, 1])."""
    thumb = image.convert("RGB")
    thumb.thumbnail((size, size))
    if mask is not None and mask.getbbox() is not None:
        # BOX averages, so a defect thinner than the scale-down still covers its thumbnail pixels.
        region = mask.convert("L").resize(thumb.size, Image.Resampling.BOX).point(lambda v: 255 if v else 0)
        # The contour 2 px wide just outside the region: visible at a glance, and a thin defect (a
        # scratch) stays visible inside it rather than painted over.
        thumb.paste(OUTLINE, mask=ImageChops.subtract(region.filter(ImageFilter.MaxFilter(5)), region))
    else:
        draw, (w, h) = ImageDraw.Draw(thumb), thumb.size
        for x1, y1, x2, y2 in boxes:
            draw.rectangle([x1 * w, y1 * h, max(x1 * w, x2 * w - 1), max(y1 * h, y2 * h - 1)], outline=OUTLINE, width=2)
    return thumb


def jpeg_uri(image: Image.Image) -> str:
    """``image`` as a JPEG data URI; without chroma subsampling, so that the thin red outline stays red."""
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=85, subsampling=0)
    return data_uri(buffer.getvalue(), "image/jpeg")


def record_boxes(record: dict, orientation: int) -> list[list[float]]:
    """The record's defect boxes in [0, 1]: each annotated defect's, else its location's."""
    from maugpt.images import orient_box

    boxes = [b for d in record.get("defects") or [] if isinstance(d, dict) for b in d.get("boxes") or []]
    location = record.get("location")
    if not boxes and isinstance(location, dict) and location.get("box"):
        boxes = [location["box"]]
    return [
        list(orient_box(b, orientation, (1, 1)))
        for b in boxes
        if isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b)
    ]


@dataclass
class Thumbs:
    """Thumbnails by image id, and what could not be shown."""

    uris: dict[str, tuple[str, int, int]] = field(default_factory=dict)  # id → (data URI, width, height)
    rejected: dict[str, str] = field(default_factory=dict)  # id → ImageRejected reason
    notes: list[str] = field(default_factory=list)


def mauset_thumbs(split: Path, keys: set[str]) -> Thumbs:
    """Thumbnails of the MAU-Set samples of ``keys`` in the split folder's shards. The shards are read
    raw and only the wanted samples decoded, each through :func:`~maugpt.images.open_rgb`'s pixel
    limit (written to a temporary file, the path it reads)."""
    import webdataset as wds

    from maugpt.data.shards import IMAGE_EXTENSIONS, shard_urls
    from maugpt.images import DEFAULT_MAX_PIXELS, ORIENTATION, ImageRejected, open_mask, open_rgb

    thumbs = Thumbs()
    raw = wds.WebDataset(
        shard_urls(split),
        shardshuffle=False,
        handler=wds.warn_and_continue,
        nodesplitter=None,
        workersplitter=None,
        empty_check=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        for sample in raw:
            try:
                record = json.loads(sample.get("json", b""))
            except ValueError:
                continue
            key = record.get("key") if isinstance(record, dict) else None
            member = next((m for m in IMAGE_EXTENSIONS if isinstance(sample.get(m), bytes)), None)
            if not isinstance(key, str) or key not in keys or key in thumbs.uris or member is None:
                continue
            path = Path(tmp) / f"image.{member}"
            path.write_bytes(sample[member])
            try:
                image = open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS)
            except ImageRejected as err:
                thumbs.rejected[key] = err.reason
                continue
            orientation, mask = image.info.get(ORIENTATION, 1), None
            if isinstance(sample.get("mask.png"), bytes):
                (Path(tmp) / "mask.png").write_bytes(sample["mask.png"])
                try:
                    mask = open_mask(Path(tmp) / "mask.png", max_pixels=DEFAULT_MAX_PIXELS, orientation=orientation)
                except ImageRejected:  # the image is still worth showing; its boxes outline the defect
                    mask = None
            thumb = thumbnail(image, mask=mask, boxes=record_boxes(record, orientation))
            thumbs.uris[key] = (jpeg_uri(thumb), *thumb.size)
            if len(thumbs.uris) + len(thumbs.rejected) == len(keys):
                break
    return thumbs


def mmad_thumbs(root: Path, images: set[str]) -> Thumbs:
    """Thumbnails of MMAD images (``<root>/<image>``), without outlines: MMAD's masks are not read."""
    from maugpt.images import DEFAULT_MAX_PIXELS, ImageRejected, open_rgb

    thumbs = Thumbs()
    for name in sorted(i for i in images if (root / i).is_file()):  # the others are counted as not found
        try:
            thumb = thumbnail(open_rgb(root / name, max_pixels=DEFAULT_MAX_PIXELS))
        except ImageRejected as err:
            thumbs.rejected[name] = err.reason
            continue
        thumbs.uris[name] = (jpeg_uri(thumb), *thumb.size)
    return thumbs


def image_source(folder: Path, kind: str, data_dir: Path | None) -> tuple[Path | None, str]:
    """Where an evaluation's images are — the MAU-Set test split folder or the MMAD root — from
    ``data_dir`` or else the run's ``config.yaml`` beside the evaluation folder; (None, why) if nowhere."""
    name = "data_root" if kind == "mmad" else "data_dir"
    if data_dir is None:
        import yaml

        config = folder.parent / "config.yaml"
        try:
            value = yaml.safe_load(config.read_text())["data"]["init_args"][name]
        except (OSError, ValueError, yaml.YAMLError, KeyError, TypeError):
            value = None
        if not isinstance(value, str) or not value:
            return None, f"{config} gives no data.init_args.{name} (give the data folder to show them)"
        data_dir = Path(value)  # relative to the current directory, as the run itself read it
    if kind == "mmad":
        return (data_dir, "") if data_dir.is_dir() else (None, f"MMAD data_root {data_dir} is not a folder")
    split = data_dir if (data_dir / "index.json").is_file() else data_dir / "test"
    return (
        (split, "") if (split / "index.json").is_file() else (None, f"{split} holds no MAU-Set shards (no index.json)")
    )


def load_thumbs(wanted: dict[tuple[str, Path], set[str]]) -> dict[tuple[str, Path], Thumbs]:
    """Each image folder's thumbnails of the images its pages show."""
    thumbs = {}
    for (kind, folder), ids in wanted.items():
        try:
            thumbs[kind, folder] = mauset_thumbs(folder, ids) if kind == "mauset" else mmad_thumbs(folder, ids)
        except Exception as err:  # noqa: BLE001  images only illustrate: a page without them beats none
            thumbs[kind, folder] = Thumbs(notes=[f"images not read from {folder} ({type(err).__name__}: {err})"])
        if kind == "mmad":
            thumbs[kind, folder].notes.append("no outlines (MMAD's masks are not read)")
    return thumbs
