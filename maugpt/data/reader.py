"""Reading MAU-Set shards safely: only images, JSON and text are ever decoded (never pickle).

A sample whose image or JSON cannot be decoded is skipped with a warning and counted, so that a
long run never dies on one bad sample.
"""
from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image

from maugpt.schema import validate_record

log = logging.getLogger(__name__)
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png")


def read_index(folder: str | Path) -> dict:
    """A split folder's ``index.json``: ``{"samples": N, "shards": [{"name", "count"}, …]}``."""
    path = Path(folder) / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a MAU-Set split folder written by "
                                "maugpt (expected shard-*.tar files with index.json)")
    return json.loads(path.read_text())


def shard_urls(folder: str | Path) -> list[str]:
    """The shards of a split folder, in index order: paths beside ``index.json``, or URLs as written
    there (``https://…``, ``pipe:…``) for shards that live elsewhere."""
    return [shard["name"] if re.match(r"^[a-z][a-z0-9+]*:", shard["name"]) else str(Path(folder) / shard["name"])
            for shard in read_index(folder)["shards"]]


def decode_sample(raw: dict, images: Callable[[str], bool] | None = None) -> dict:
    """Decode a raw WebDataset sample: images to PIL, ``json`` to a validated record, ``txt`` to str.

    ``images`` picks the image members to decode by name (default: all); the others, and members
    with any other extension (``.pyd``, ``.pickle``, …), are dropped undecoded.
    """
    sample = {k: raw[k] for k in ("__key__", "__url__") if k in raw}
    for name, value in raw.items():
        if name.startswith("__"):
            continue
        extension = name.rsplit(".", 1)[-1].lower()
        if extension in IMAGE_EXTENSIONS and (images is None or images(name)):
            image = Image.open(io.BytesIO(value))
            image.load()  # decode now, so a truncated file fails here and not in a transform
            sample[name] = image
        elif extension == "json":
            sample[name] = json.loads(value)
        elif extension == "txt":
            sample[name] = value.decode("utf-8")
    if "json" not in sample:
        raise ValueError(f"sample {raw.get('__key__')!r} in {raw.get('__url__')} has no json record")
    validate_record(sample["json"], where=f"sample in {raw.get('__url__')}")
    return sample


class SkipCounter:
    """Counts samples skipped as undecodable; ``take()`` returns and resets the count."""

    def __init__(self) -> None:
        self.count = 0

    def take(self) -> int:
        count, self.count = self.count, 0
        return count


def decode_or_skip(samples: Iterable[dict], counter: SkipCounter,
                   images: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Decoded samples; a damaged one is logged, counted in ``counter`` and passed over."""
    for raw in samples:
        try:
            yield decode_sample(raw, images)
        except Exception as err:  # any damage in one sample: never stop a long run for it
            counter.count += 1
            log.warning("skipping undecodable sample %r in %s: %s", raw.get("__key__"), raw.get("__url__"), err)


def iter_samples(folder: str | Path, counter: SkipCounter | None = None) -> Iterator[dict]:
    """Every decodable sample of a split folder, in order (for tools and tests)."""
    raw = wds.WebDataset(shard_urls(folder), shardshuffle=False, handler=wds.warn_and_continue,
                         nodesplitter=None, workersplitter=None, empty_check=False)
    return decode_or_skip(raw, counter or SkipCounter())
