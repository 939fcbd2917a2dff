"""One MAU-Set sample: what a source builder finds, and the JSON record stored in the shards.

A shard sample holds, under one key: the image (``jpg`` or ``png``), optionally a defect mask
(``mask.png``) and normal reference images (``ref0.jpg``, …), and ``json``, the record::

    key            "mvtec_ad/bottle/broken_large/000"
    source         a registered source (maugpt.mauset.sources), or one of OTHER_SOURCES: "synthetic",
                   "synthetic_caption", "llava_pretrain"
    product        the source's product folder, e.g. "bottle"
    product_name   its display name, e.g. "bottle"
    domain         one of the six industrial DOMAINS ("general" for LLaVA-558K's captions)
    split          "train", "val" or "test"
    is_anomalous   bool
    defect_class   the source's defect class (None for normal images)
    defect_name    its display name (None for normal images)
    location       {"box": [x1, y1, x2, y2] in [0, 1], "region": "top left" … "center"} or None
    qa             [{"task", "style", "question", "answer"}, …]
    origin         the image's path relative to the source root, for traceability
    width, height  of the stored image
    generic_defect true where the defect class has no entry of its own in defects.yaml (else absent)
    defects        every annotated defect type where an image has several (DeepPCB; else absent)

:class:`MAUSetRecord` is that record, validated whole when it is made: every builder makes one,
and the reader checks each decoded record with it.
"""

from __future__ import annotations

import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

TASKS = ("detection", "classification", "localization", "description", "understanding")
DOMAINS = (
    "Industrial Components",
    "Electronic Components",
    "Construction Materials",
    "Mechanical Parts",
    "Consumer Products",
    "Optical Inspection",
)
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


SPLITS = ("train", "val", "test")
STYLES = ("discriminative", "open")
#: Sources besides the seven releases: the offline synthetic sets and LLaVA-558K's captions.
OTHER_SOURCES = ("synthetic", "synthetic_caption", "llava_pretrain")
#: The caption data's domain (LLaVA-558K is not industrial).
GENERAL_DOMAIN = "general"
#: The 3 × 3 grid's region names (``maugpt.mauset.location``).
REGIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")


@dataclass(frozen=True)
class MAUSetRecord:
    """The JSON record of one shard sample (the module docstring lists the fields), validated
    whole when it is made: by a builder (the constructor) or from a shard (:meth:`from_dict`).
    A record that breaks the contract raises ``ValueError`` naming the key and the field."""

    key: str
    source: str
    product: str
    product_name: str
    domain: str
    split: str
    is_anomalous: bool
    defect_class: str | None
    defect_name: str | None
    location: dict | None
    qa: list[dict]
    origin: str
    width: int | None = None
    height: int | None = None
    generic_defect: bool = False  # the defect class has no entry of its own in defects.yaml
    defects: list[dict] | None = None  # every annotated defect type, where an image has several

    def __post_init__(self) -> None:
        where = f"record {self.key!r}"
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = field_kinds(f.name)
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                names = " or ".join("None" if k is type(None) else k.__name__ for k in kinds)
                raise ValueError(f"{where}: field {f.name!r} should be {names}, got {type(value).__name__}")
        if not self.key:
            raise ValueError("record: field 'key' is empty")
        from maugpt.mauset.sources import SOURCES  # the registry imports this module: read it when used

        choices = {"source": (*SOURCES, *OTHER_SOURCES), "domain": (*DOMAINS, GENERAL_DOMAIN), "split": SPLITS}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{where}: field {name!r} is {getattr(self, name)!r}, expected one of {list(allowed)}")
        if not self.is_anomalous and (self.defect_class, self.defect_name, self.location, self.defects) != (None,) * 4:
            raise ValueError(f"{where}: a normal image has no defect_class, defect_name, location or defects")
        if self.location is not None:
            box, region = self.location.get("box"), self.location.get("region")
            numbers = isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)
            if (
                not (numbers and all(0 <= v <= 1 for v in box) and box[0] <= box[2] and box[1] <= box[3])
                or region not in REGIONS
            ):
                raise ValueError(
                    f"{where}: location should be {{'box': [x1, y1, x2, y2] in [0, 1], 'region': one of "
                    f"{list(REGIONS)}}}, got {self.location!r}"
                )
        for i, qa in enumerate(self.qa):
            missing = [f for f in QA_FIELDS if not isinstance(qa.get(f) if isinstance(qa, dict) else None, str)]
            if missing:
                raise ValueError(f"{where}: qa[{i}] lacks text fields {missing}")
            if qa["task"] not in (*TASKS, "caption") or qa["style"] not in STYLES:
                raise ValueError(
                    f"{where}: qa[{i}] has task {qa['task']!r} and style {qa['style']!r}, expected a task "
                    f"of {[*TASKS, 'caption']} and a style of {list(STYLES)}"
                )
            if not qa["question"].strip() or not qa["answer"].strip():
                raise ValueError(f"{where}: qa[{i}] has an empty question or answer")

    @classmethod
    def from_dict(cls, data: dict, where: str = "record") -> MAUSetRecord:
        """The record of a decoded ``json`` member; missing or unknown fields are errors."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(data).__name__}")
        key = data.get("key", "?")
        names = [f.name for f in fields(cls)]
        missing = [f.name for f in fields(cls) if f.default is MISSING and f.name not in data]
        if missing:
            raise ValueError(f"{where} {key!r}: missing field {missing[0]!r}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"{where} {key!r}: unknown field(s) {unknown}; a record has {names}")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"{where} {key!r}: {str(err).split(': ', 1)[-1]}") from None

    def to_dict(self) -> dict:
        """The JSON form stored in the shards (the optional fields only where set)."""
        data = asdict(self)
        for name, unset in (("width", None), ("height", None), ("generic_defect", False), ("defects", None)):
            if data[name] == unset:
                del data[name]
        return data


@cache
def field_kinds(name: str) -> tuple[type, ...]:
    """The types a :class:`MAUSetRecord` field accepts, read from its annotation (``str | None`` →
    ``(str, NoneType)``, ``list[dict]`` → ``(list,)``)."""
    hint = get_type_hints(MAUSetRecord)[name]
    members = get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    return tuple(get_origin(m) or m for m in members)


def validate_record(record: dict, where: str = "record") -> dict:
    """Check a decoded record against the whole contract (:meth:`MAUSetRecord.from_dict`); return it."""
    MAUSetRecord.from_dict(record, where)
    return record
