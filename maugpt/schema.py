"""One MAU-Set sample: what a source builder finds, and the JSON record stored in the shards.

A shard sample holds, under one key: the image (``jpg`` or ``png``), optionally a defect mask
(``mask.png``) and normal reference images (``ref0.jpg``, …), and ``json``, the record::

    key            "mvtec_ad/bottle/broken_large/000"
    source         one of SOURCES (or "synthetic", "llava_pretrain")
    product        the source's product folder, e.g. "bottle"
    product_name   its display name, e.g. "bottle"
    domain         one of the six industrial domains
    split          "train", "val" or "test"
    is_anomalous   bool
    defect_class   the source's defect class (None for normal images)
    defect_name    its display name (None for normal images)
    location       {"box": [x1, y1, x2, y2] in [0, 1], "region": "top left" … "center"} or None
    qa             [{"task", "style", "question", "answer"}, …]
    width, height  of the stored image
    origin         the image's path relative to the source root, for traceability
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("detection", "classification", "localization", "description", "understanding")
DOMAINS = ("Industrial Components", "Electronic Components", "Construction Materials",
           "Mechanical Parts", "Consumer Products", "Optical Inspection")
SOURCES = ("btad", "dagm", "deeppcb", "ksdd2", "magnetic_tile", "mpdd", "mvtec_ad")
REQUIRED_FIELDS = {"key": str, "source": str, "product": str, "domain": str, "split": str,
                   "is_anomalous": bool, "qa": list}
QA_FIELDS = ("task", "style", "question", "answer")


@dataclass
class SourceImage:
    """One image as a source builder found it, before QA construction and resizing."""

    source: str
    product: str
    key: str
    image: Path
    is_anomalous: bool
    defect_class: str | None = None
    mask: Path | None = None  # defect pixels are those above mask_threshold
    mask_threshold: int = 0
    boxes: list[tuple[float, float, float, float]] | None = None  # pixel boxes, when no mask
    references: list[Path] = field(default_factory=list)  # normal reference images
    root: Path | None = None  # the source root, for the record's "origin"
    # Every annotated defect, (class, pixel box), where an image holds several (DeepPCB boards);
    # defect_class is then the class with the most boxes.
    defects: list[tuple[str, tuple[float, float, float, float]]] | None = None
    group: str | None = None  # images of one group go to the same split (a board and its template)


def validate_record(record: dict, where: str = "record") -> dict:
    """Check a decoded record's fields and types; raise ``ValueError`` naming the key and field."""
    key = record.get("key", "?")
    for name, kind in REQUIRED_FIELDS.items():
        if name not in record:
            raise ValueError(f"{where} {key!r}: missing field {name!r}")
        if not isinstance(record[name], kind):
            raise ValueError(f"{where} {key!r}: field {name!r} should be {kind.__name__}, "
                             f"got {type(record[name]).__name__}")
    for i, qa in enumerate(record["qa"]):
        missing = [f for f in QA_FIELDS if not isinstance(qa.get(f) if isinstance(qa, dict) else None, str)]
        if missing:
            raise ValueError(f"{where} {key!r}: qa[{i}] lacks text fields {missing}")
    return record
