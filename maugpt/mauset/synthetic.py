"""A procedural MAU-Set: the offline default for the demo and the tests.

Fourteen product types cover the six domains: textures (wood, tile, fabric, brushed metal, PCB
traces, magnetic tile, an optical-inspection texture) and objects (bottle, capsule, screw, nut,
chip, bearing ring, lens). Each has at least three defect classes, drawn at a random position
with high contrast and a pixel mask, so that a person sees them and a small model can learn
them. Records go through the same QA construction as the real builders (source "synthetic").
Everything is seeded: the same seed gives the same images, masks and questions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.location import location_from_mask
from maugpt.mauset.qa import build_caption_qa, build_qa, image_rng, tidy
from maugpt.mauset.split import split_images
from maugpt.mauset.writer import make_sample, prepare_output, write_split
from maugpt.schema import MAUSetRecord, SourceImage

SOURCE = "synthetic"


# -- products: each renders a normal image and says where defects may go --------------------
@dataclass
class Canvas:
    """A rendered normal product: the image and the region (x1, y1, x2, y2) its defects go in."""

    image: Image.Image
    area: tuple[int, int, int, int]
    background: tuple[int, int, int] = (0, 0, 0)
    parts: list[tuple[int, int, int, int]] | None = None  # removable or bendable parts (pins, teeth…)
    round: bool = False  # a round object: breaks chip its rim, not the corners of its box


def _blur(field: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D float field (edges padded by reflection)."""
    radius = int(3 * sigma) + 1
    kernel = np.exp(-(np.arange(-radius, radius + 1) ** 2) / (2 * sigma**2))
    kernel /= kernel.sum()
    padded = np.pad(field, radius, mode="reflect")
    rows = np.stack([np.convolve(row, kernel, mode="valid") for row in padded])
    return np.stack([np.convolve(col, kernel, mode="valid") for col in rows.T]).T


def _noise(rng: np.random.Generator, size: int, scale: float, blur: float = 0.0) -> np.ndarray:
    field = rng.normal(0.0, scale, (size, size))
    return _blur(field, blur) if blur else field


def _rgb(gray_or_rgb: np.ndarray) -> Image.Image:
    array = np.clip(gray_or_rgb, 0, 255).astype(np.uint8)
    return Image.fromarray(array if array.ndim == 3 else np.stack([array] * 3, -1))


def _tinted(base: np.ndarray, color: tuple[int, int, int]) -> np.ndarray:
    """A grey-level field (0–1) coloured by ``color``."""
    return base[..., None] * np.asarray(color, dtype=np.float64)[None, None, :]


def wood(rng, s):
    y, x = np.mgrid[0:s, 0:s] / s
    grain = 0.75 + 0.15 * np.sin(2 * math.pi * (x * rng.uniform(5, 9) + 0.3 * np.sin(y * 6 + rng.uniform(0, 6))))
    return Canvas(_rgb(_tinted(grain + _noise(rng, s, 0.03, 1), (181, 128, 80))), (0, 0, s, s))


def tile(rng, s):
    base = np.full((s, s), 0.85) + _noise(rng, s, 0.02, 1)
    step = s // rng.integers(2, 4)
    base[:, ::step] = base[::step, :] = 0.55
    return Canvas(_rgb(_tinted(base, (235, 225, 205))), (0, 0, s, s))


def fabric(rng, s):
    y, x = np.mgrid[0:s, 0:s]
    period = rng.uniform(4, 7)
    weave = 0.7 + 0.15 * np.sign(np.sin(x * 2 * math.pi / period)) * np.sign(np.sin(y * 2 * math.pi / period))
    color = tuple(int(c) for c in rng.integers(60, 200, 3))
    return Canvas(_rgb(_tinted(weave + _noise(rng, s, 0.02), color)), (0, 0, s, s))


def brushed_metal(rng, s):
    streaks = np.repeat(rng.normal(0, 0.04, (s, 1)), s, axis=1) + _noise(rng, s, 0.02)
    return Canvas(_rgb(_tinted(0.7 + streaks, (200, 200, 205))), (0, 0, s, s))


def pcb(rng, s):
    image = Image.new("RGB", (s, s), (20, 90, 40))
    draw = ImageDraw.Draw(image)
    width = max(2, s // 40)
    for y in np.linspace(s * 0.15, s * 0.85, 5).astype(int):
        draw.line([(s * 0.05, y), (s * 0.95, y)], fill=(200, 160, 60), width=width)
    for x in np.linspace(s * 0.2, s * 0.8, 3).astype(int):
        draw.ellipse([x - 2 * width, s * 0.5 - 2 * width, x + 2 * width, s * 0.5 + 2 * width], fill=(220, 180, 80))
    return Canvas(image, (int(s * 0.05), int(s * 0.1), int(s * 0.95), int(s * 0.9)), (20, 90, 40))


def magnetic_tile(rng, s):
    y, x = np.mgrid[0:s, 0:s] / s
    arcs = 0.35 + 0.05 * np.sin(2 * math.pi * np.hypot(x - 0.5, y + 0.5) * rng.uniform(8, 12))
    return Canvas(_rgb(_tinted(arcs + _noise(rng, s, 0.03, 0.5), (255, 255, 255))), (0, 0, s, s))


def optical_texture(rng, s):
    field = _noise(rng, s, 1.0, blur=rng.uniform(1.5, 3.0))
    field = 0.5 + 0.25 * field / (np.abs(field).max() + 1e-9)
    return Canvas(_rgb(_tinted(field, (230, 230, 230))), (0, 0, s, s))


def _object(s, background):
    image = Image.new("RGB", (s, s), background)
    return image, ImageDraw.Draw(image)


def bottle(rng, s):
    image, draw = _object(s, (30, 30, 30))
    c, r = s / 2, s * rng.uniform(0.36, 0.42)
    draw.ellipse([c - r, c - r, c + r, c + r], fill=(90, 120, 60))
    draw.ellipse([c - 0.6 * r, c - 0.6 * r, c + 0.6 * r, c + 0.6 * r], fill=(60, 85, 40))
    return Canvas(image, (int(c - r), int(c - r), int(c + r), int(c + r)), (30, 30, 30), round=True)


def capsule(rng, s):
    image, draw = _object(s, (40, 40, 45))
    h = s * 0.16
    colors = [tuple(int(v) for v in rng.integers(120, 240, 3)) for _ in range(2)]
    draw.rounded_rectangle([s * 0.15, s / 2 - h, s / 2, s / 2 + h], radius=h, fill=colors[0])
    draw.rounded_rectangle([s / 2, s / 2 - h, s * 0.85, s / 2 + h], radius=h, fill=colors[1])
    draw.rectangle([s * 0.35, s / 2 - h, s * 0.65, s / 2 + h], fill=colors[0])
    draw.rectangle([s / 2, s / 2 - h, s * 0.65, s / 2 + h], fill=colors[1])
    return Canvas(image, (int(s * 0.15), int(s / 2 - h), int(s * 0.85), int(s / 2 + h)), (40, 40, 45))


def screw(rng, s):
    image, draw = _object(s, (230, 230, 230))
    x1, x2, y = s * 0.3, s * 0.85, s / 2
    draw.rectangle([s * 0.12, y - s * 0.12, x1, y + s * 0.12], fill=(110, 110, 115))
    draw.rectangle([x1, y - s * 0.05, x2, y + s * 0.05], fill=(140, 140, 145))
    step = max(3, s // 25)
    for x in np.arange(x1 + 3, x2 - 2, step):
        draw.line([(x, y - s * 0.07), (x + 2, y + s * 0.07)], fill=(80, 80, 85), width=max(1, s // 100))
    # a removable section: three turns of the thread with the shaft under them
    sections = [
        (int(x - 1), int(y - s * 0.07), int(x + 3 * step), int(y + s * 0.07))
        for x in np.arange(x1 + 3, x2 - 3 * step, step)
    ]
    return Canvas(image, (int(s * 0.12), int(y - s * 0.12), int(x2), int(y + s * 0.12)), (230, 230, 230), sections)


def nut(rng, s):
    image, draw = _object(s, (225, 225, 220))
    c, r = s / 2, s * 0.38
    hexagon = [(c + r * math.cos(a), c + r * math.sin(a)) for a in np.arange(6) * math.pi / 3]
    draw.polygon(hexagon, fill=(150, 150, 155))
    draw.ellipse([c - r * 0.45, c - r * 0.45, c + r * 0.45, c + r * 0.45], fill=(225, 225, 220))
    corners = [(int(x - r * 0.3), int(y - r * 0.3), int(x + r * 0.3), int(y + r * 0.3)) for x, y in hexagon]
    return Canvas(image, (int(c - r), int(c - r), int(c + r), int(c + r)), (225, 225, 220), corners)


def chip(rng, s):
    image, draw = _object(s, (25, 110, 55))
    a, b = s * 0.3, s * 0.7
    pins = []
    for y in np.linspace(a + s * 0.05, b - s * 0.05, 4):
        for x0, x1 in ((a - s * 0.12, a), (b, b + s * 0.12)):
            box = (int(x0), int(y - s * 0.025), int(x1), int(y + s * 0.025))
            draw.rectangle(box, fill=(200, 200, 210))
            pins.append(box)
    draw.rectangle([a, a, b, b], fill=(25, 25, 30))
    return Canvas(image, (int(a), int(a), int(b), int(b)), (25, 110, 55), pins)


def bearing_ring(rng, s):
    image, draw = _object(s, (50, 50, 60))
    c, r = s / 2, s * 0.4
    draw.ellipse([c - r, c - r, c + r, c + r], fill=(180, 180, 190))
    draw.ellipse([c - r * 0.6, c - r * 0.6, c + r * 0.6, c + r * 0.6], fill=(50, 50, 60))
    return Canvas(image, (int(c - r), int(c - r), int(c + r), int(c + r)), (50, 50, 60), round=True)


def lens(rng, s):
    y, x = np.mgrid[0:s, 0:s] / s
    d = np.hypot(x - 0.5, y - 0.5)
    glass = np.where(d < 0.4, 0.55 + 0.35 * (1 - d / 0.4), 0.12)
    return Canvas(
        _rgb(_tinted(glass, (170, 200, 235))), (int(s * 0.2), int(s * 0.2), int(s * 0.8), int(s * 0.8)), (20, 24, 30)
    )


# -- defects: each draws on the image and the mask ---------------------------------------------
def _spot(rng, area, margin):
    x1, y1, x2, y2 = area
    return rng.uniform(x1 + margin, max(x1 + margin + 1, x2 - margin)), rng.uniform(
        y1 + margin, max(y1 + margin + 1, y2 - margin)
    )


def _line(rng, canvas, draws, color, s):
    cx, cy = _spot(rng, canvas.area, s * 0.15)
    angle, length = rng.uniform(0, math.pi), rng.uniform(0.2, 0.35) * s
    dx, dy = math.cos(angle) * length / 2, math.sin(angle) * length / 2
    for draw, fill in draws(color):
        draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=fill, width=max(2, s // 32))


def scratch(rng, canvas, draws, s):
    _line(rng, canvas, draws, (250, 250, 250), s)


def crack(rng, canvas, draws, s):
    cx, cy = _spot(rng, canvas.area, s * 0.15)
    points = [(cx, cy)]
    angle = rng.uniform(0, 2 * math.pi)
    for _ in range(6):
        angle += rng.uniform(-0.8, 0.8)
        points.append((points[-1][0] + math.cos(angle) * s * 0.06, points[-1][1] + math.sin(angle) * s * 0.06))
    for draw, fill in draws((15, 15, 15)):
        draw.line(points, fill=fill, width=max(2, s // 40))


def _blob(rng, canvas, draws, s, color, radius):
    cx, cy = _spot(rng, canvas.area, s * radius * 1.2)
    rx, ry = s * radius * rng.uniform(0.7, 1.3), s * radius * rng.uniform(0.7, 1.3)
    for draw, fill in draws(color):
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=fill)


def hole(rng, canvas, draws, s):
    _blob(rng, canvas, draws, s, (5, 5, 5), 0.06)


def blowhole(rng, canvas, draws, s):
    _blob(rng, canvas, draws, s, (8, 8, 8), 0.055)


def stain(rng, canvas, draws, s):
    _blob(rng, canvas, draws, s, (70, 45, 20), 0.1)


def color(rng, canvas, draws, s):
    _blob(rng, canvas, draws, s, (200, 40, 160), 0.09)


def contamination(rng, canvas, draws, s):
    cx, cy = _spot(rng, canvas.area, s * 0.1)
    for _ in range(5):
        x, y, r = cx + rng.normal(0, s * 0.04), cy + rng.normal(0, s * 0.04), s * rng.uniform(0.02, 0.035)
        for draw, fill in draws((30, 200, 230)):
            draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)


def _contrasting(color: tuple[int, int, int]) -> tuple[int, int, int]:
    return (25, 25, 25) if sum(color) > 300 else (235, 235, 225)


# Absence defects leave a trace, as they do on real parts: an empty mount, bare laminate, a
# fracture edge. (Erased to the background alone, they look like a plausible normal variant.)
def missing_part(rng, canvas, draws, s):
    parts = canvas.parts or [canvas.area]
    x1, y1, x2, y2 = parts[rng.integers(len(parts))]
    for draw, fill in draws(canvas.background):
        draw.rectangle([x1, y1, x2, y2], fill=fill)
    for draw, fill in draws(_contrasting(canvas.background)):  # the empty mount
        draw.rectangle([x1, y1, x2, y2], outline=fill, width=max(2, s // 48))


def bent(rng, canvas, draws, s):
    parts = canvas.parts or [canvas.area]
    x1, y1, x2, y2 = parts[rng.integers(len(parts))]
    shift = s * 0.06
    for draw, fill in draws(canvas.background):  # erase the straight part, then draw it bent
        draw.rectangle([x1, y1, x2, y2], fill=fill)
    for draw, fill in draws((230, 90, 40)):
        draw.polygon([(x1, y1), (x2, y1 + shift), (x2, y2 + shift), (x1, y2)], fill=fill)


def open_circuit(rng, canvas, draws, s):
    x = rng.uniform(s * 0.15, s * 0.85)
    y = np.linspace(s * 0.15, s * 0.85, 5).astype(int)[rng.integers(5)]
    for draw, fill in draws((235, 225, 190)):  # the trace is gone down to the bare laminate
        draw.rectangle([x - s * 0.05, y - s * 0.05, x + s * 0.05, y + s * 0.05], fill=fill)


def short_circuit(rng, canvas, draws, s):
    ys = np.linspace(s * 0.15, s * 0.85, 5).astype(int)
    i, x = rng.integers(4), rng.uniform(s * 0.15, s * 0.85)
    for draw, fill in draws((255, 210, 90)):
        draw.rectangle([x - s * 0.03, ys[i], x + s * 0.03, ys[i + 1]], fill=fill)


def broken(rng, canvas, draws, s):
    x1, y1, x2, y2 = canvas.area
    if canvas.round:  # a chip out of the rim
        angle = rng.uniform(0, 2 * math.pi)
        cx = (x1 + x2) / 2 + math.cos(angle) * (x2 - x1) / 2
        cy = (y1 + y2) / 2 + math.sin(angle) * (y2 - y1) / 2
    else:  # a corner broken off
        cx, cy = (x1, x2)[rng.integers(2)], (y1, y2)[rng.integers(2)]
    r = s * 0.15
    piece = [(cx - r, cy), (cx, cy - r), (cx + r, cy), (cx, cy + r)]
    for draw, fill in draws(canvas.background):
        draw.polygon(piece, fill=fill)
    for draw, fill in draws(_contrasting(canvas.background)):  # the fracture edge
        draw.polygon(piece, outline=fill, width=max(2, s // 48))


DEFECTS: dict[str, Callable] = {
    "scratch": scratch,
    "crack": crack,
    "hole": hole,
    "blowhole": blowhole,
    "stain": stain,
    "color": color,
    "contamination": contamination,
    "missing_part": missing_part,
    "bent": bent,
    "open": open_circuit,
    "short": short_circuit,
    "break": broken,
}

PRODUCTS: dict[str, tuple[Callable, tuple[str, ...]]] = {
    "wood": (wood, ("scratch", "hole", "stain", "crack")),
    "tile": (tile, ("crack", "stain", "hole")),
    "fabric": (fabric, ("hole", "stain", "color", "contamination")),
    "bottle": (bottle, ("contamination", "crack", "break")),
    "capsule": (capsule, ("crack", "color", "scratch")),
    "brushed_metal": (brushed_metal, ("scratch", "hole", "stain")),
    "screw": (screw, ("scratch", "bent", "missing_part")),
    "nut": (nut, ("scratch", "crack", "missing_part")),
    "pcb": (pcb, ("open", "short", "contamination")),
    "chip": (chip, ("missing_part", "bent", "scratch")),
    "magnetic_tile": (magnetic_tile, ("blowhole", "crack", "break")),
    "bearing_ring": (bearing_ring, ("scratch", "crack", "break")),
    "optical_texture": (optical_texture, ("scratch", "stain", "contamination")),
    "lens": (lens, ("scratch", "contamination", "crack")),
}


def render(
    product: str, defect: str | None, size: int, rng: np.random.Generator
) -> tuple[Image.Image, np.ndarray | None]:
    """One image of ``product`` (normal if ``defect`` is None) and the defect's pixel mask."""
    draw_product, defects = PRODUCTS[product]
    canvas = draw_product(rng, size)
    if defect is None:
        return canvas.image, None
    if defect not in defects:
        raise ValueError(f"synthetic {product} has no defect {defect!r}; it has {list(defects)}")
    mask = Image.new("L", (size, size), 0)
    image_draw, mask_draw = ImageDraw.Draw(canvas.image), ImageDraw.Draw(mask)

    def draws(fill):  # each drawing call paints the image and marks the mask alike
        return ((image_draw, tuple(fill)), (mask_draw, 255))

    DEFECTS[defect](rng, canvas, draws, size)
    changed = np.asarray(mask) > 0
    return canvas.image, changed


# -- the synthetic MAU-Set and captions -------------------------------------------------------
def plan(images: int, seed: int, anomaly_fraction: float) -> list[SourceImage]:
    """Which product and defect each image gets: products round-robin, defects in turn."""
    rng = np.random.default_rng(seed)
    names = sorted(PRODUCTS)
    planned = []
    for i in range(images):
        product = names[i % len(names)]
        anomalous = bool(rng.random() < anomaly_fraction)
        defects = PRODUCTS[product][1]
        defect = defects[(i // len(names)) % len(defects)] if anomalous else None
        planned.append(SourceImage(SOURCE, product, f"{SOURCE}/{product}/{i:06d}", Path(f"{i:06d}"), anomalous, defect))
    return planned


def synthetic_sample(
    item: SourceImage, split: str, knowledge: Knowledge, seed: int, size: int, image_format: str, references: int
) -> dict:
    rng = np.random.default_rng([seed, int(item.image.name)])
    image, mask = render(item.product, item.defect_class, size, rng)
    product = knowledge.product(SOURCE, item.product)
    defect = knowledge.defect(SOURCE, item.product, item.defect_class) if item.is_anomalous else None
    location = location_from_mask(mask) if mask is not None else None
    record = MAUSetRecord(
        key=item.key,
        source=SOURCE,
        product=item.product,
        product_name=product.name,
        domain=product.domain,
        split=split,
        is_anomalous=item.is_anomalous,
        defect_class=item.defect_class,
        defect_name=defect.name if defect else None,
        location=location,
        qa=build_qa(knowledge, product, defect, location, image_rng(seed, item.key)),
        origin=f"procedural seed {seed} image {item.image.name}",
    )
    refs = [render(item.product, None, size, rng)[0] for _ in range(references)]
    return make_sample(record, image, image_format, size, mask, refs)


def caption(item: SourceImage, knowledge: Knowledge, location: dict | None) -> str:
    """A short factual caption of a synthetic image, for stage-1 alignment."""
    product = knowledge.product(SOURCE, item.product)
    kind = "close-up of a" if product.kind == "texture" else "photo of a"
    if not item.is_anomalous:
        return tidy(f"A {kind} {product.name} on an inspection station.")
    where = f" in the {location['region']} of the image" if location else ""
    return tidy(
        f"A {kind} {product.name} with a {knowledge.defect(SOURCE, item.product, item.defect_class).name}{where}."
    )


def caption_sample(
    item: SourceImage, split: str, knowledge: Knowledge, seed: int, size: int, image_format: str
) -> dict:
    rng = np.random.default_rng([seed, int(item.image.name), 1])
    image, mask = render(item.product, item.defect_class, size, rng)
    product = knowledge.product(SOURCE, item.product)
    location = location_from_mask(mask) if mask is not None else None
    record = MAUSetRecord(
        key=item.key.replace(SOURCE, "synthetic_caption", 1),
        source="synthetic_caption",
        product=item.product,
        product_name=product.name,
        domain=product.domain,
        split=split,
        is_anomalous=item.is_anomalous,
        defect_class=item.defect_class,
        defect_name=knowledge.defect(SOURCE, item.product, item.defect_class).name if item.is_anomalous else None,
        location=location,
        origin=f"procedural seed {seed} image {item.image.name}",
        qa=build_caption_qa(knowledge, caption(item, knowledge, location), image_rng(seed, item.key)),
    )
    return make_sample(record, image, image_format, size)


def build_synthetic(
    out: str | Path,
    images: int = 700,
    seed: int = 0,
    image_size: int = 224,
    captions: int | None = None,
    anomaly_fraction: float = 0.5,
    test: float = 0.2,
    val: float = 0.05,
    references: int = 0,
    image_format: str = "png",
    maxcount: int = 1000,
    overwrite: bool = False,
    knowledge: Knowledge | None = None,
    progress: bool = True,
) -> dict[str, dict]:
    """Write ``out/mauset/{train,val,test}`` (QA shards) and ``out/captions/{train,val}`` (stage 1).

    Returns the statistics per written folder, keyed ``"mauset/train"`` and so on.
    """
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {out} is not empty; pass --overwrite to replace its shards")
    knowledge = knowledge or Knowledge()
    stats = {}
    prepare_output(out / "mauset", overwrite=True)
    for split, items in split_images(plan(images, seed, anomaly_fraction), test=test, val=val, seed=seed).items():
        if items:
            bar = tqdm(items, desc=f"mauset {split:>5}", unit="img", disable=not progress)
            samples = (synthetic_sample(it, split, knowledge, seed, image_size, image_format, references) for it in bar)
            stats[f"mauset/{split}"] = write_split(samples, out / "mauset" / split, maxcount)
    prepare_output(out / "captions", overwrite=True)
    caption_items = plan(images if captions is None else captions, seed + 1, anomaly_fraction)
    for split, items in split_images(caption_items, test=0.0, val=val, seed=seed).items():
        if items:
            bar = tqdm(items, desc=f"captions {split:>5}", unit="img", disable=not progress)
            samples = (caption_sample(it, split, knowledge, seed, image_size, image_format) for it in bar)
            stats[f"captions/{split}"] = write_split(samples, out / "captions" / split, maxcount)
    return stats


def iter_synthetic(images: int, seed: int, size: int) -> Iterator[tuple[SourceImage, Image.Image, np.ndarray | None]]:
    """The planned images rendered in order (for previews and benchmarks)."""
    for item in plan(images, seed, 0.5):
        yield item, *render(item.product, item.defect_class, size, np.random.default_rng([seed, int(item.image.name)]))
