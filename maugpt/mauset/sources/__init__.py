"""The public sources MAU-Set is built from: a registry in which a source is one file.

A module of this package reads one release's folder into :class:`~maugpt.schema.SourceImage`\\ s
(its *scanner*) and registers itself::

    register(Source(name="btad", scan=scan_btad, layout=LAYOUT, release_images=2540,
                    paper_images=(2250, 580)))

Everything that lists the sources derives from :data:`SOURCES`: the builder and its checks, the
schema's check of a record's source, ``maugpt build --source``'s choices and the paper's Table 1
counts. Every module of this package is imported with it, so a new file here is a new source; a
source defined elsewhere (a test, a user's package) calls :func:`register` before it is built.
Its products, defect classes and questions come from the knowledge files (``configs/mauset/``,
or an overlay: see :class:`~maugpt.mauset.knowledge.Knowledge`).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from maugpt.download import Release
from maugpt.mauset.sources.common import BuildError, LayoutError
from maugpt.schema import SourceImage


class Scanner(Protocol):
    """Reads one source's release folder. A class folder the release has but ``root`` lacks fails
    with a :class:`LayoutError`; given a ``missing`` list (a partial build), a scanner that requires
    such folders appends each absent one to it instead and reads what is there."""

    def __call__(self, root: Path, missing: list[str] | None = None) -> list[SourceImage]: ...


@dataclass(frozen=True)
class Source:
    """One public source.

    Args:
        name: the source's key in records and on the command line (``mvtec_ad``).
        scan: its :class:`Scanner`.
        layout: the release layout the scanner reads, shown when a folder does not have it.
        release_images: images in the full public release, as its publisher counts them: a scan
            far below it means a folder is missing or the packaging differs from ``layout``.
        paper_images: ``(normal, abnormal)`` images of the source in the paper's Table 1; None
            for a source the paper does not use.
        release: where the release is published, its files' hashes and its licence, for
            ``maugpt download`` (:class:`~maugpt.download.Release`); None: not downloadable.
    """

    name: str
    scan: Scanner
    layout: str
    release_images: int
    paper_images: tuple[int, int] | None = None
    release: Release | None = None


#: Every registered source by name: this package's in alphabetical order, then any registered later.
SOURCES: dict[str, Source] = {}


def register(source: Source) -> Source:
    """Add ``source`` to :data:`SOURCES`; a second, different source of the same name is an error."""
    if SOURCES.get(source.name, source) != source:
        raise ValueError(f"a source named {source.name!r} is already registered ({SOURCES[source.name].scan})")
    SOURCES[source.name] = source
    return source


for _module in pkgutil.iter_modules(__path__):  # each module registers its source(s)
    importlib.import_module(f"{__name__}.{_module.name}")
_packaged = sorted(SOURCES.items())  # by name, whichever module imported which first
SOURCES.clear()
SOURCES.update(_packaged)

__all__ = ["SOURCES", "BuildError", "LayoutError", "Scanner", "Source", "register"]
