"""Writing MAU-Set samples as WebDataset shards, with an index and statistics per split.

Each split folder holds ``shard-NNNNNN.tar`` files, ``index.json`` (samples per shard, which
the DataModule uses to give every rank the same number of evaluation batches) and
``stats.json`` (:func:`~maugpt.mauset.stats.split_statistics`).
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

from maugpt.images import DEFAULT_MAX_PIXELS, ORIENTATION, open_mask, open_rgb, orient_box
from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.location import location_from_boxes, location_from_mask
from maugpt.mauset.qa import build_qa, image_rng
from maugpt.mauset.stats import split_statistics
from maugpt.schema import MAUSetRecord, SourceImage

SPLITS = ("train", "val", "test")


def encode_image(image: Image.Image, fmt: str, quality: int = 95) -> bytes:
    """PNG or JPEG bytes of ``image``."""
    buffer = io.BytesIO()
    if fmt == "jpg":
        image.save(buffer, format="JPEG", quality=quality)
    elif fmt == "png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"image_format must be 'jpg' or 'png', got {fmt!r}")
    return buffer.getvalue()


def fit_max_side(image: Image.Image, max_side: int, resample=Image.Resampling.LANCZOS) -> Image.Image:
    """``image`` scaled down (never up) so that its longer side is at most ``max_side``."""
    scale = max_side / max(image.size)
    if scale >= 1:
        return image
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, resample)


def sample_key(key: str) -> str:
    """A WebDataset key: no dots (they separate a sample's key from its members' extensions)."""
    return key.replace(".", "_")


def make_sample(
    record: MAUSetRecord,
    image: Image.Image,
    image_format: str,
    max_side: int,
    mask: np.ndarray | None = None,
    references: Iterable[Image.Image] = (),
) -> dict:
    """A shard sample from a finished record and its full-size images (the record gets their stored size)."""
    image = fit_max_side(image.convert("RGB"), max_side)
    record = replace(record, width=image.width, height=image.height)
    sample = {
        "__key__": sample_key(record.key),
        image_format: encode_image(image, image_format),
        "json": json.dumps(record.to_dict()).encode(),
    }
    if mask is not None:
        mask_image = Image.fromarray(mask.astype(np.uint8) * 255).resize(image.size, Image.Resampling.NEAREST)
        sample["mask.png"] = encode_image(mask_image, "png")
    for i, ref in enumerate(references):
        sample[f"ref{i}.{image_format}"] = encode_image(fit_max_side(ref.convert("RGB"), max_side), image_format)
    return sample


def defect_list(knowledge: Knowledge, src: SourceImage, width: int, height: int) -> list[dict]:
    """Every defect type of an image annotated with several (``src.defects``), most boxes first:
    class, name, count, and each box (0-1) with its region."""
    by_class: dict[str, list] = {}
    for cls, box in src.defects:
        by_class.setdefault(cls, []).append(location_from_boxes([box], width, height))
    return [
        {
            "class": cls,
            "name": knowledge.defect(src.source, src.product, cls, generic=True).name,
            "count": len(locations),
            "boxes": [loc["box"] for loc in locations],
            "regions": [loc["region"] for loc in locations],
        }
        for cls, locations in by_class.items()
    ]


def source_sample(
    src: SourceImage, split: str, knowledge: Knowledge, seed: int, max_side: int, image_format: str
) -> dict:
    """Read one source image (and its mask), build its record and QA, and encode it.

    Images are read by :func:`maugpt.images.open_rgb` (at most ``DEFAULT_MAX_PIXELS``, 8-bit RGB,
    upright); an image it rejects raises its ``ImageRejected`` (an ``OSError``: skipped and counted).
    A mask and pixel boxes are drawn on the file's stored grid: they turn with the image's EXIF
    orientation, so locations name the corner a person sees.
    """
    product = knowledge.product(src.source, src.product)
    image = open_rgb(src.image, max_pixels=DEFAULT_MAX_PIXELS)
    turn = image.info[ORIENTATION]
    if turn != 1:  # pixel boxes turned here, the mask by open_mask
        src = replace(
            src,
            boxes=src.boxes and [orient_box(b, turn, image.size) for b in src.boxes],
            defects=src.defects and [(c, orient_box(b, turn, image.size)) for c, b in src.defects],
        )
    mask = location = None
    if src.mask is not None:
        mask = np.asarray(open_mask(src.mask, max_pixels=DEFAULT_MAX_PIXELS, orientation=turn)) > src.mask_threshold
        location = location_from_mask(mask)
    elif src.boxes:
        location = location_from_boxes(src.boxes, image.width, image.height)
    defect = knowledge.defect(src.source, src.product, src.defect_class, generic=True) if src.is_anomalous else None
    defects = defect_list(knowledge, src, image.width, image.height) if src.defects else None
    record = MAUSetRecord(
        key=src.key,
        source=src.source,
        product=src.product,
        product_name=product.name,
        domain=product.domain,
        split=split,
        is_anomalous=src.is_anomalous,
        defect_class=src.defect_class if src.is_anomalous else None,
        defect_name=defect.name if defect else None,
        location=location,
        qa=build_qa(knowledge, product, defect, location, image_rng(seed, src.key), defects=defects),
        origin=str(src.image.relative_to(src.root)) if src.root else src.image.name,
        generic_defect=defect is not None and defect.generic,
        defects=defects or None,
    )
    references = [open_rgb(path, max_pixels=DEFAULT_MAX_PIXELS) for path in src.references]
    return make_sample(record, image, image_format, max_side, mask, references)


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty output folder unless ``overwrite``; then clear only our split folders."""
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {out} is not empty; pass --overwrite to replace the {'/'.join(SPLITS)} shards in it"
            )
        for split in SPLITS:
            if (out / split).is_dir():
                shutil.rmtree(out / split)
    out.mkdir(parents=True, exist_ok=True)


def write_split(
    samples: Iterable[dict],
    folder: Path,
    maxcount: int = 1000,
    maxsize: float = 1e9,
    skipped: list[dict] | None = None,
    extra: dict | None = None,
) -> dict:
    """Write ``samples`` as shards under ``folder``; return the split's statistics.

    ``skipped`` is the list that the ``samples`` generator appends this split's unreadable inputs
    to (``{"path", "reason"}`` each, see :func:`maugpt.mauset.build.skip_unreadable`); it is read
    only after the generator is exhausted, and goes into the statistics as ``skipped_unreadable``
    (the count) and ``skipped_unreadable_files`` (the entries), so that ``stats.json`` names them.
    ``extra`` entries (the build's ``missing`` folders) are added to the statistics as they are.
    """
    folder.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    records = []
    with wds.ShardWriter(str(folder / "shard-%06d.tar"), maxcount=maxcount, maxsize=maxsize, verbose=0) as writer:
        for sample in samples:
            writer.write(sample)
            name = Path(writer.fname).name
            counts[name] = counts.get(name, 0) + 1
            records.append(json.loads(sample["json"]))
    skipped = list(skipped or [])
    stats = {
        **split_statistics(records),
        "skipped_unreadable": len(skipped),
        "skipped_unreadable_files": skipped,
        **(extra or {}),
    }
    index = {"samples": sum(counts.values()), "shards": [{"name": n, "count": c} for n, c in counts.items()]}
    (folder / "index.json").write_text(json.dumps(index, indent=1))
    (folder / "stats.json").write_text(json.dumps(stats, indent=1))
    return stats
