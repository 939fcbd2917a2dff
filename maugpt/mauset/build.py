"""Build MAU-Set shards from the public sources' release folders."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from PIL import UnidentifiedImageError
from tqdm import tqdm

from maugpt.images import ImageRejected
from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.sources import SOURCES, BuildError, LayoutError
from maugpt.mauset.sources.common import listing
from maugpt.mauset.split import split_images
from maugpt.mauset.stats import format_statistics
from maugpt.mauset.table1 import paper_subset as draw_paper_subset
from maugpt.mauset.writer import prepare_output, source_sample, write_split
from maugpt.schema import SourceImage

log = logging.getLogger(__name__)

__all__ = [
    "BuildError",
    "LayoutError",
    "OutputExistsError",
    "UnknownProductError",
    "build_mauset",
    "scan_sources",
    "skip_unreadable",
]


class OutputExistsError(BuildError, FileExistsError):
    """The output folder is not empty and ``overwrite`` was not given."""


class UnknownProductError(BuildError, KeyError):
    """A release's product folder is in no products.yaml (its domain cannot be guessed)."""


#: What PIL raises for a missing or damaged image file.
UNREADABLE: tuple[type[BaseException], ...] = (OSError, UnidentifiedImageError, SyntaxError)


def skipped_entry(item: SourceImage | dict | object, err: BaseException) -> dict:
    """What ``stats.json`` keeps of a skipped input: its file (a LLaVA record's image, with the
    record's id) and why: an image rejected on opening by its reason and detail (its message
    repeats the path), anything else by the error's type and message."""
    reason = f"{err.reason}: {err.detail}" if isinstance(err, ImageRejected) else f"{type(err).__name__}: {err}"
    if isinstance(item, dict):
        return {"path": str(item.get("image", "?")), "id": item.get("id"), "reason": reason}
    return {"path": str(getattr(item, "image", item)), "reason": reason}


def skip_unreadable(
    items: Iterable, make: Callable, skipped: list[dict], errors: tuple[type[BaseException], ...] = UNREADABLE
) -> Iterator:
    """``make(item)`` for each item; an item raising one of ``errors`` is logged, appended to
    ``skipped`` (:func:`skipped_entry`) and passed over.

    Build one ``skipped`` list per split and hand it to that split's ``write_split``, so that an
    input is attributed to the split it was assigned to.
    """
    for item in items:
        try:
            yield make(item)
        except errors as err:
            entry = skipped_entry(item, err)
            skipped.append(entry)
            log.warning("skipping unreadable image or record %s (%s)", entry["path"], entry["reason"])


#: A scan below this share of the full release fails unless the build is declared partial.
RELEASE_SHARE = 0.9


def scan_sources(
    sources: Sequence[str], root: Path, partial: bool = False, missing: list[str] | None = None
) -> list[SourceImage]:
    """All images of ``sources``; with several sources, ``root/<source>`` holds each release.

    A source that yields no image fails, naming the layout its builder reads; one that yields fewer
    than 90 % of its full release's images fails too, naming both counts, unless ``partial`` (a
    deliberate subset of a release). A class folder that a scanner requires (Magnetic Tile's
    ``MT_<Class>``, KolektorSDD2's ``train``/``test``, DeepPCB's listed groups) fails when absent,
    unless ``partial``: then the scanner reads what is there and each absent folder is appended to
    ``missing`` as ``"<source>: <folder>"``. All these are :class:`BuildError`.
    """
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise BuildError(f"unknown source(s) {unknown}; expected some of {list(SOURCES)}")
    images = []
    for source in sources:
        folder = root if len(sources) == 1 else root / source
        absent: list[str] | None = [] if partial else None
        release = SOURCES[source]
        found = release.scan(folder, missing=absent)
        if missing is not None:
            missing += [f"{source}: {name}" for name in absent or []]
        if not found:
            raise LayoutError(source, folder, release.layout, f"no image: {listing(folder)}")
        if not partial and len(found) < RELEASE_SHARE * release.release_images:
            raise BuildError(
                f"{source}: found {len(found)} images under {folder}, but the full release has "
                f"{release.release_images:,}: a folder is missing or packaged differently from the layout "
                f"{release.layout!r}. To build from part of a release on purpose, pass partial=True "
                "(tools/build_mauset.py --partial true)."
            )
        images += found
    return images


def check_knowledge(images: Sequence[SourceImage], knowledge: Knowledge) -> dict[str, int]:
    """Fail (:class:`UnknownProductError`) before anything is written if the data files miss a
    product; return the defect classes that get the generic description, with their image counts."""
    generic: dict[str, int] = {}
    for image in images:
        try:
            knowledge.product(image.source, image.product)
        except KeyError as err:
            raise UnknownProductError(err.args[0]) from None
        if (
            image.is_anomalous
            and knowledge.defect(image.source, image.product, image.defect_class, generic=True).generic
        ):
            name = f"{image.source}/{image.product}/{image.defect_class}"
            generic[name] = generic.get(name, 0) + 1
    return generic


def build_mauset(
    sources: Sequence[str],
    root: Path,
    out: Path,
    *,
    seed: int = 0,
    test: float = 0.2,
    val: float = 0.05,
    max_side: int = 512,
    image_format: str = "jpg",
    maxcount: int = 1000,
    maxsize: float = 1e9,
    overwrite: bool = False,
    knowledge: Knowledge | None = None,
    progress: bool = True,
    partial: bool = False,
    paper_subset: bool = False,
) -> dict[str, dict]:
    """Scan the sources, split them (the paper's procedure), build QA, and write shards per split.

    Returns the statistics of each split written; they are also saved as ``<split>/stats.json``
    and printed as tables. Unreadable images are skipped and counted in the split they were
    assigned to, and named with the reason in its ``stats.json`` (``skipped_unreadable_files``).
    A source found empty, or (unless ``partial``) far smaller than its release or without a class
    folder, fails before anything is written (:func:`scan_sources`); with ``partial`` the absent
    folders are printed and listed as ``missing`` in every split's statistics. ``paper_subset``
    keeps the paper's Table 1 counts per source and label (:func:`maugpt.mauset.table1.paper_subset`,
    seeded by ``seed``) before the split. The mistakes a user can fix (a layout, a count, an unknown
    product, split fractions, a non-empty ``out``) raise :class:`BuildError`.
    """
    root, out = Path(root), Path(out)
    knowledge = knowledge or Knowledge()
    missing: list[str] = []
    images = scan_sources(sources, root, partial, missing)
    if missing:
        print(
            f"partial build: {len(missing)} folder(s) of the release(s) are missing and left out: " + ", ".join(missing)
        )
    if paper_subset:
        scanned = len(images)
        images, shortfalls = draw_paper_subset(images, seed)
        print(f"paper subset (Table 1 counts): {len(images)} of {scanned} images kept")
        for line in shortfalls:
            print(f"  {line}")
    generic = check_knowledge(images, knowledge)
    if generic:
        print(
            f"{len(generic)} defect class(es) not in the knowledge base get the generic description (records "
            f"marked generic_defect; add them with --knowledge DIR): "
            + ", ".join(f"{name} ({count})" for name, count in sorted(generic.items()))
        )
    try:
        splits = split_images(images, test=test, val=val, seed=seed)
    except ValueError as err:  # the fractions: checked before the output folder is touched
        raise BuildError(str(err)) from None
    try:
        prepare_output(out, overwrite)
    except FileExistsError as err:
        raise OutputExistsError(str(err)) from None
    all_stats = {}
    for split, members in splits.items():
        if not members:
            continue
        bar = tqdm(members, desc=f"{split:>5}", unit="img", disable=not progress)
        skipped: list[dict] = []  # this split's own: write_split reads it once the samples are written
        read = functools.partial(
            source_sample, split=split, knowledge=knowledge, seed=seed, max_side=max_side, image_format=image_format
        )
        samples = skip_unreadable(bar, read, skipped)
        all_stats[split] = write_split(samples, out / split, maxcount, maxsize, skipped, extra={"missing": missing})
        print(format_statistics(all_stats[split], f"{split} ({', '.join(sources)})"))
        if skipped:
            print(
                f"{split}: skipped {len(skipped)} unreadable image(s): "
                + "; ".join(f"{e['path']} ({e['reason']})" for e in skipped[:3])
                + (" …" if len(skipped) > 3 else "")
            )
    return all_stats
