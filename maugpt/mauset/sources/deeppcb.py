"""DeepPCB: split files list ``groupG/G/GNNN.jpg groupG/G_not/GNNN.txt``; images carry ``_test``/``_temp``.

Every ``_test`` image is defective (3–12 boxes, lines ``x1 y1 x2 y2 type`` separated by spaces);
the ``_temp`` templates are the normal images and serve as the defective images' references.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

from maugpt.schema import SourceImage
from maugpt.mauset.sources.common import LayoutError, descend, listing

LAYOUT = "[PCBData/]{trainval,test}.txt and groupG/G/GNNN_{test,temp}.jpg, groupG/G_not/GNNN.txt"
TYPES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "spurious_copper", 6: "pin_hole"}


def read_boxes(path: Path) -> list[tuple[float, float, float, float, int]]:
    """Annotation lines ``x1 y1 x2 y2 type`` (spaces; commas tolerated, as the upstream README says)."""
    boxes = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.replace(",", " ").split()
        if len(parts) != 5 or int(parts[4]) not in TYPES:
            raise ValueError(f"{path}:{number}: expected 'x1 y1 x2 y2 type' with type 1-6, got {line!r}")
        x1, y1, x2, y2, kind = (int(float(p)) for p in parts)
        boxes.append((x1, y1, x2, y2, kind))
    return boxes


def scan_deeppcb(root: Path) -> list[SourceImage]:
    base = descend(root, "PCBData")
    split_files = [base / name for name in ("trainval.txt", "test.txt") if (base / name).is_file()]
    if not split_files:
        raise LayoutError("deeppcb", root, LAYOUT, listing(base))
    found = []
    for split_file in split_files:
        for number, line in enumerate(split_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                image_rel, annotation_rel = line.split()
            except ValueError:
                raise ValueError(f"{split_file}:{number}: expected '<image> <annotation>', got {line!r}") from None
            stem = Path(image_rel).with_suffix("")
            image, template = base / f"{stem}_test.jpg", base / f"{stem}_temp.jpg"
            if not image.is_file():
                raise LayoutError("deeppcb", root, LAYOUT, f"{split_file.name}:{number} names {image_rel}, "
                                  f"but {image.relative_to(base)} does not exist")
            boxes = read_boxes(base / annotation_rel)
            counts = Counter(kind for *_, kind in boxes)
            order = sorted(counts, key=lambda kind: (-counts[kind], kind))  # most boxes first, then lowest id
            rank = {kind: i for i, kind in enumerate(order)}
            # the types in that order, each type's boxes in the file's order (sorted() is stable)
            defects = [(TYPES[kind], tuple(box)) for *box, kind in sorted(boxes, key=lambda b: rank[b[4]])]
            found.append(SourceImage(
                source="deeppcb", product="pcb", image=image, root=base, key=f"deeppcb/pcb/test/{stem.name}",
                is_anomalous=True, defect_class=TYPES[order[0]], boxes=[b[:4] for b in boxes],
                references=[template] if template.is_file() else [], defects=defects, group=stem.name))
    for template in sorted(base.glob("group*/*/*_temp.jpg")):
        found.append(SourceImage(source="deeppcb", product="pcb", image=template, root=base,
                                 key=f"deeppcb/pcb/temp/{template.stem}", is_anomalous=False,
                                 group=template.stem.removesuffix("_temp")))
    return found
