"""DeepPCB: split files list ``groupG/G/GNNN.jpg groupG/G_not/GNNN.txt``; images carry ``_test``/``_temp``.

Every ``_test`` image is defective (3–12 boxes, lines ``x1 y1 x2 y2 type`` separated by spaces);
the ``_temp`` templates are the normal images and serve as the defective images' references.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from maugpt.download import COMPUTED, Release, ReleaseFile
from maugpt.mauset.sources import Source, register
from maugpt.mauset.sources.common import BuildError, LayoutError, descend, listing
from maugpt.schema import SourceImage

LAYOUT = "[PCBData/]{trainval,test}.txt and groupG/G/GNNN_{test,temp}.jpg, groupG/G_not/GNNN.txt"
TYPES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "spurious_copper", 6: "pin_hole"}


def read_boxes(path: Path) -> list[tuple[float, float, float, float, int]]:
    """Annotation lines ``x1 y1 x2 y2 type`` (spaces; commas tolerated, as the upstream README says)."""
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            x1, y1, x2, y2, kind = (int(float(p)) for p in line.replace(",", " ").split())
        except ValueError:  # not five numbers
            kind = None
        if kind not in TYPES:
            raise BuildError(f"{path}:{number}: expected 'x1 y1 x2 y2 type' with type 1-6, got {line!r}")
        boxes.append((x1, y1, x2, y2, kind))
    return boxes


def board(
    base: Path, stem: Path, image: Path, template: Path, boxes: list[tuple[float, float, float, float, int]]
) -> SourceImage:
    """One defective board: every box, its types ordered by box count (then type id), its template."""
    counts = Counter(kind for *_, kind in boxes)
    order = sorted(counts, key=lambda kind: (-counts[kind], kind))  # most boxes first, then lowest id
    rank = {kind: i for i, kind in enumerate(order)}
    # the types in that order, each type's boxes in the file's order (sorted() is stable)
    defects = [(TYPES[kind], tuple(box)) for *box, kind in sorted(boxes, key=lambda b: rank[b[4]])]
    return SourceImage(
        source="deeppcb",
        product="pcb",
        image=image,
        root=base,
        key=f"deeppcb/pcb/test/{stem.name}",
        is_anomalous=True,
        defect_class=TYPES[order[0]],
        boxes=[b[:4] for b in boxes],
        references=[template] if template.is_file() else [],
        defects=defects,
        group=stem.name,
    )


def scan_split_file(base: Path, root: Path, split_file: Path, missing: list[str] | None) -> list[SourceImage]:
    """The boards one split file lists (see :func:`scan_deeppcb` for what is missing)."""
    found = []
    absent: Counter[str] = Counter()  # folder → boards listed but not there (partial builds)
    for number, line in enumerate(split_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            image_rel, annotation_rel = line.split()
        except ValueError:
            raise BuildError(f"{split_file}:{number}: expected '<image> <annotation>', got {line!r}") from None
        stem = Path(image_rel).with_suffix("")
        image, template = base / f"{stem}_test.jpg", base / f"{stem}_temp.jpg"
        if not image.is_file():
            if missing is None:
                raise LayoutError(
                    "deeppcb",
                    root,
                    LAYOUT,
                    f"{split_file.name}:{number} names {image_rel}, but {image.relative_to(base)} does not exist",
                )
            absent[f"{stem.parent}/"] += 1
            continue
        if not (base / annotation_rel).is_file():
            raise LayoutError(
                "deeppcb",
                root,
                LAYOUT,
                f"{split_file.name}:{number} names the annotation "
                f"{annotation_rel} of {image.relative_to(base)}, but it does not exist",
            )
        found.append(board(base, stem, image, template, read_boxes(base / annotation_rel)))
    if missing is not None:
        missing += [f"{folder} ({count} board(s) of {split_file.name})" for folder, count in absent.items()]
    return found


def scan_deeppcb(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """Every board the split files list, with its boxes and template, then every template.

    A board that a split file lists but that is not there fails; with a ``missing`` list (a partial
    build of some groups) each absent folder is appended to it, with its count, instead, and so
    is an absent split file. An annotation file missing beside its board always fails.
    """
    base = descend(root, "PCBData")
    split_files = [base / name for name in ("trainval.txt", "test.txt") if (base / name).is_file()]
    if not split_files:
        raise LayoutError("deeppcb", root, LAYOUT, listing(base))
    if missing is not None:
        missing += [name for name in ("trainval.txt", "test.txt") if not (base / name).is_file()]
    found = [image for split_file in split_files for image in scan_split_file(base, root, split_file, missing)]
    for template in sorted(base.glob("group*/*/*_temp.jpg")):
        found.append(
            SourceImage(
                source="deeppcb",
                product="pcb",
                image=template,
                root=base,
                key=f"deeppcb/pcb/temp/{template.stem}",
                is_anomalous=False,
                group=template.stem.removesuffix("_temp"),
            )
        )
    return found


COMMIT = "08e98c4db5922613fb97176eb3d6497d48260cb1"  # the repository's one tip, 2018-12-19
RELEASE = Release(
    page="https://github.com/tangsanli5201/DeepPCB",
    licence="MIT (the repository's LICENSE); its README: for research purposes only",
    files=(
        ReleaseFile(
            f"DeepPCB-{COMMIT}.zip",
            f"https://github.com/tangsanli5201/DeepPCB/archive/{COMMIT}.zip",
            None,
            COMPUTED,
            strip_top=True,
        ),  # the data lives in the repository: PCBData/ once the archive's top folder is dropped
    ),
)

register(
    Source(
        name="deeppcb",
        scan=scan_deeppcb,
        layout=LAYOUT,
        paper_images=(1501, 1500),
        release_images=3001,
        release=RELEASE,
    )
)  # 1,500 boards + 1,501 templates
