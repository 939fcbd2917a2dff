"""Reading MAU-Set shards safely: only images, JSON and text are ever decoded (never pickle).

A sample that cannot be used is skipped with a warning and counted, so that a long run never dies
on one bad sample. One rule (:func:`decode_sample`) decides what can be used, for every reader of
shards (``maugpt inspect``, the data modules, the tools): a sample needs its JSON record, valid,
and its query image (the ``jpg``/``jpeg``/``png`` member), decodable. A sample whose image member
is missing, or is a link or another non-file member (which the shard reader does not extract), is
skipped like one whose image is damaged.
"""

from __future__ import annotations

import io
import json
import logging
import re
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image

from maugpt.schema import validate_record

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


class UnusableSample(ValueError):
    """A sample without its JSON record or its query image: nothing can be trained or evaluated on it.

    ``reason`` is the short kind (``"no json record"``, ``"no image"``) that reports count by.
    """

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


def read_index(folder: str | Path) -> dict:
    """A split folder's ``index.json``: ``{"samples": N, "shards": [{"name", "count"}, …]}``."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: {folder} is not a MAU-Set split folder written by "
            "maugpt (expected shard-*.tar files with index.json)"
        )
    try:
        index = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(
            f'{path} is not valid JSON ({err}); expected {{"samples": N, "shards": [...]}} as maugpt writes it'
        ) from None
    if not isinstance(index, dict) or not isinstance(index.get("shards"), list):
        raise ValueError(f'{path} has no "shards" list; expected {{"samples": N, "shards": [...]}} as maugpt writes it')
    return index


def shard_urls(folder: str | Path) -> list[str]:
    """The shards of a split folder, in index order: paths beside ``index.json``, or URLs as written
    there (``https://…``, ``pipe:…``) for shards that live elsewhere."""
    return [
        shard["name"] if re.match(r"^[a-z][a-z0-9+]*:", shard["name"]) else str(Path(folder) / shard["name"])
        for shard in read_index(folder)["shards"]
    ]


def is_query_image(name: str) -> bool:
    """Whether a member name (after the sample's key) is the sample's own image: ``jpg``, ``jpeg`` or
    ``png`` alone, not a reference (``ref0.jpg``) or a mask (``mask.png``)."""
    return name.lower() in IMAGE_EXTENSIONS


def decode_sample(raw: dict, images: Callable[[str], bool] | None = None) -> dict:
    """Decode a raw WebDataset sample: images to PIL, ``json`` to a validated record, ``txt`` to str.

    ``images`` picks the other image members to decode by name (references, masks; default: all);
    the query image is always decoded. Members with any other extension (``.pyd``, ``.pickle``, …)
    are dropped undecoded. Raises :class:`UnusableSample` for a sample without its record or its
    query image, and the decoders' errors for damaged ones: the one rule of what can be used.
    """
    sample = {k: raw[k] for k in ("__key__", "__url__") if k in raw}
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        extension = name.rsplit(".", 1)[-1].lower()
        if extension in IMAGE_EXTENSIONS and (is_query_image(name) or images is None or images(name)):
            image = Image.open(io.BytesIO(value))
            image.load()  # decode now, so a truncated file fails here and not in a transform
            sample[name] = image
        elif extension == "json":
            sample[name] = json.loads(value)
        elif extension == "txt":
            sample[name] = value.decode("utf-8")
    where = f"sample {raw.get('__key__')!r} in {raw.get('__url__')}"
    if "json" not in sample:
        raise UnusableSample(f"{where} has no json record", "no json record")
    if not any(is_query_image(name) for name in sample):
        raise UnusableSample(
            f"{where} has no image (expected a regular jpg, jpeg or png member; "
            f"found {sorted(k for k in raw if not k.startswith('__'))})",
            "no image",
        )
    validate_record(sample["json"], where=f"sample in {raw.get('__url__')}")
    return sample


class SkipCounter:
    """Counts samples skipped as unusable; ``take()`` returns and resets the count.

    ``reasons`` keeps, over the counter's life (``take()`` leaves it), how many were skipped per
    kind of error and the first few messages (``notes``), for reports such as ``maugpt inspect``.
    """

    def __init__(self, notes: int = 3) -> None:
        self.count = 0
        self.reasons: Counter[str] = Counter()
        self.notes: list[str] = []
        self.max_notes = notes

    def skip(self, err: BaseException) -> None:
        """Count one skipped sample and remember why."""
        self.count += 1
        self.reasons[err.reason if isinstance(err, UnusableSample) else type(err).__name__] += 1
        if len(self.notes) < self.max_notes:
            self.notes.append(str(err))

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def decode_or_skip(
    samples: Iterable[dict], counter: SkipCounter, images: Callable[[str], bool] | None = None
) -> Iterator[dict]:
    """Decoded samples; one that cannot be used (:func:`decode_sample`) is logged, counted in
    ``counter`` and passed over."""
    for raw in samples:
        try:
            yield decode_sample(raw, images)
        except Exception as err:  # any damage in one sample: never stop a long run for it
            counter.skip(err)
            log.warning("skipping unusable sample %r in %s: %s", raw.get("__key__"), raw.get("__url__"), err)


def iter_samples(folder: str | Path, counter: SkipCounter | None = None) -> Iterator[dict]:
    """Every decodable sample of a split folder, in order (for tools and tests)."""
    raw = wds.WebDataset(
        shard_urls(folder),
        shardshuffle=False,
        handler=wds.warn_and_continue,
        nodesplitter=None,
        workersplitter=None,
        empty_check=False,
    )
    return decode_or_skip(raw, counter or SkipCounter())


def scan_records(url: str) -> list[dict]:
    """The JSON records of one shard, read without decoding any image: undecodable ones are left
    out, and a missing or damaged (truncated) shard gives the records before the damage."""
    records = []
    try:
        with tarfile.open(url) as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".json"):
                    try:
                        records.append(json.loads(tar.extractfile(member).read()))
                    except ValueError:
                        continue
    except (tarfile.TarError, EOFError, OSError) as err:
        log.warning("evaluation shard %s is missing or damaged after %d record(s): %s", url, len(records), err)
    return records
