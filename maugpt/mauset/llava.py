"""LLaVA-Pretrain (``blip_laion_cc_sbu_558k.json`` + images) → stage-1 caption shards in MAU-Set's schema."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from tqdm import tqdm

from maugpt.images import DEFAULT_MAX_PIXELS, open_rgb
from maugpt.mauset.build import UNREADABLE, skip_unreadable
from maugpt.mauset.writer import make_sample, prepare_output, write_split
from maugpt.schema import GENERAL_DOMAIN, MAUSetRecord

log = logging.getLogger(__name__)
IMAGE_TOKEN = "<image>"
MALFORMED = (KeyError, ValueError, TypeError, AttributeError)  # a record without the expected fields


def caption_pair(entry: dict) -> tuple[str, str]:
    """``(instruction, caption)`` of one LLaVA record; the ``<image>`` token may sit before or after."""
    turns = entry.get("conversations")
    if (
        not isinstance(turns, list)
        or len(turns) < 2
        or turns[0].get("from") != "human"
        or turns[1].get("from") != "gpt"
    ):
        raise ValueError(f"LLaVA record {entry.get('id')!r}: expected conversations [human, gpt], got {turns!r:.200}")
    question = " ".join(turns[0]["value"].replace(IMAGE_TOKEN, " ").split())
    return question, turns[1]["value"].strip()


def llava_sample(
    entry: dict, images: Path, max_side: int, image_format: str, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict:
    """One caption sample; an image :func:`~maugpt.images.open_rgb` rejects raises its ``ImageRejected``."""
    question, caption = caption_pair(entry)
    image = open_rgb(images / entry["image"], max_pixels=max_pixels)
    record = MAUSetRecord(
        key=f"llava_pretrain/{entry['id']}",
        source="llava_pretrain",
        product="",
        product_name="",
        domain=GENERAL_DOMAIN,
        split="train",
        is_anomalous=False,
        defect_class=None,
        defect_name=None,
        location=None,
        qa=[{"task": "caption", "style": "open", "question": question, "answer": caption}],
        origin=entry["image"],
    )
    return make_sample(record, image, image_format, max_side)


def convert_llava_pretrain(
    annotations: str | Path,
    images: str | Path,
    out: str | Path,
    max_side: int = 512,
    image_format: str = "jpg",
    maxcount: int = 5000,
    limit: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> dict:
    """Write ``out/train`` caption shards; records without a usable image (missing, damaged, or
    larger than ``max_pixels`` by its header) or with bad turns are skipped and counted."""
    annotations, images, out = Path(annotations), Path(images), Path(out)
    if not annotations.is_file():
        raise FileNotFoundError(
            f"LLaVA-Pretrain annotation file {annotations} does not exist (expected blip_laion_cc_sbu_558k.json)"
        )
    if not images.is_dir():
        raise FileNotFoundError(f"LLaVA-Pretrain image folder {images} does not exist")
    entries = json.loads(annotations.read_text())
    if not isinstance(entries, list):
        raise ValueError(f"{annotations}: expected a JSON list of records, got {type(entries).__name__}")
    prepare_output(out, overwrite)
    skipped: list[str] = []

    bar = tqdm(entries[:limit], desc="llava", unit="img", disable=not progress)
    samples = skip_unreadable(
        bar,
        lambda entry: llava_sample(entry, images, max_side, image_format, max_pixels=max_pixels),
        skipped,
        errors=UNREADABLE + MALFORMED,
    )
    stats = write_split(samples, out / "train", maxcount, skipped=skipped)
    if skipped:
        print(
            f"skipped {len(skipped)} record(s) without a readable image or with malformed turns; first: {skipped[:3]}"
        )
    return stats
