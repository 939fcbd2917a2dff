"""Build MAU-Set shards from the public sources' release folders."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from PIL import UnidentifiedImageError
from tqdm import tqdm

from maugpt.mauset.knowledge import Knowledge
from maugpt.schema import SOURCES, SourceImage
from maugpt.mauset.writer import prepare_output, source_sample, write_split
from maugpt.mauset.sources import LAYOUTS, RELEASE_IMAGES, SCANNERS, LayoutError
from maugpt.mauset.sources.common import listing
from maugpt.mauset.split import split_images
from maugpt.mauset.stats import format_statistics
from maugpt.mauset.table1 import paper_subset as draw_paper_subset

log = logging.getLogger(__name__)


#: What PIL raises for a missing or damaged image file.
UNREADABLE: tuple[type[BaseException], ...] = (OSError, UnidentifiedImageError, SyntaxError)


def skip_unreadable(items: Iterable, make: Callable, skipped: list[str],
                    errors: tuple[type[BaseException], ...] = UNREADABLE) -> Iterator:
    """``make(item)`` for each item; an item raising one of ``errors`` is logged, counted in
    ``skipped`` and passed over."""
    for item in items:
        try:
            yield make(item)
        except errors as err:
            label = item.get("id", "?") if isinstance(item, dict) else getattr(item, "image", item)
            skipped.append(f"{label}: {err}")
            log.warning("skipping unreadable image or record %s (%s)", label, err)


#: A scan below this share of the full release fails unless the build is declared partial.
RELEASE_SHARE = 0.9


def scan_sources(sources: Sequence[str], root: Path, partial: bool = False) -> list[SourceImage]:
    """All images of ``sources``; with several sources, ``root/<source>`` holds each release.

    A source that yields no image fails, naming the layout its builder reads; one that yields fewer
    than 90 % of its full release's images fails too, naming both counts, unless ``partial`` (a
    deliberate subset of a release)."""
    unknown = [s for s in sources if s not in SCANNERS]
    if unknown:
        raise ValueError(f"unknown source(s) {unknown}; expected some of {list(SOURCES)}")
    images = []
    for source in sources:
        folder = root if len(sources) == 1 else root / source
        found = SCANNERS[source](folder)
        if not found:
            raise LayoutError(source, folder, LAYOUTS[source], f"no image: {listing(folder)}")
        if not partial and len(found) < RELEASE_SHARE * RELEASE_IMAGES[source]:
            raise ValueError(
                f"{source}: found {len(found)} images under {folder}, but the full release has "
                f"{RELEASE_IMAGES[source]:,}: a folder is missing or packaged differently from the layout "
                f"{LAYOUTS[source]!r}. To build from part of a release on purpose, pass partial=True "
                "(tools/build_mauset.py --partial true).")
        images += found
    return images


def build_mauset(sources: Sequence[str], root: Path, out: Path, *, seed: int = 0, test: float = 0.2,
                 val: float = 0.05, max_side: int = 512, image_format: str = "jpg", maxcount: int = 1000,
                 maxsize: float = 1e9, overwrite: bool = False, knowledge: Knowledge | None = None,
                 progress: bool = True, partial: bool = False, paper_subset: bool = False) -> dict[str, dict]:
    """Scan the sources, split them (the paper's procedure), build QA, and write shards per split.

    Returns the statistics of each split written; they are also saved as ``<split>/stats.json``
    and printed as tables. Unreadable images are skipped, counted and listed in the log. A source
    found empty, or (unless ``partial``) far smaller than its release, fails before anything is
    written (:func:`scan_sources`). ``paper_subset`` keeps the paper's Table 1 counts per source
    and label (:func:`maugpt.mauset.table1.paper_subset`, seeded by ``seed``) before the split.
    """
    root, out = Path(root), Path(out)
    knowledge = knowledge or Knowledge()
    images = scan_sources(sources, root, partial)
    if paper_subset:
        scanned = len(images)
        images, shortfalls = draw_paper_subset(images, seed)
        print(f"paper subset (Table 1 counts): {len(images)} of {scanned} images kept")
        for line in shortfalls:
            print(f"  {line}")
    generic: dict[str, int] = {}
    for image in images:  # fail before writing anything if the data files miss a product
        knowledge.product(image.source, image.product)
        if image.is_anomalous and knowledge.defect(image.source, image.product, image.defect_class, generic=True).generic:
            name = f"{image.source}/{image.product}/{image.defect_class}"
            generic[name] = generic.get(name, 0) + 1
    if generic:
        print(f"{len(generic)} defect class(es) not in the knowledge base get the generic description (records "
              f"marked generic_defect; add them with --knowledge DIR): "
              + ", ".join(f"{name} ({count})" for name, count in sorted(generic.items())))
    prepare_output(out, overwrite)
    all_stats = {}
    for split, members in split_images(images, test=test, val=val, seed=seed).items():
        if not members:
            continue
        bar = tqdm(members, desc=f"{split:>5}", unit="img", disable=not progress)
        skipped: list[str] = []
        samples = skip_unreadable(
            bar, lambda im: source_sample(im, split, knowledge, seed, max_side, image_format), skipped)
        all_stats[split] = write_split(samples, out / split, maxcount, maxsize, skipped)
        print(format_statistics(all_stats[split], f"{split} ({', '.join(sources)})"))
        if skipped:
            print(f"{split}: skipped {len(skipped)} unreadable image(s); first: {skipped[:3]}")
    return all_stats
