"""Tiny trees in each source's official release layout, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def image(path: Path, size=(40, 30), mode="RGB", value=128, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    array = np.clip(rng.normal(value, 20, shape), 0, 255).astype(np.uint8)
    Image.fromarray(array, mode).save(path, format=fmt)
    return path


def mask(path: Path, size=(40, 30), box=(5, 5, 15, 12), value=255, fmt=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.zeros((size[1], size[0]), np.uint8)
    if box is not None:
        x1, y1, x2, y2 = box
        array[y1:y2, x1:x2] = value
    Image.fromarray(array, "L").save(path, format=fmt)
    return path


def mvtec_ad(root: Path) -> dict:
    """bottle (RGB) and grid (grayscale): 11 images, 4 anomalous in 3 defect classes."""
    for i in range(3):
        image(root / f"bottle/train/good/{i:03d}.png")
    for i in range(2):
        image(root / f"bottle/test/good/{i:03d}.png")
    for i in range(2):
        image(root / f"bottle/test/broken_large/{i:03d}.png")
        mask(root / f"bottle/ground_truth/broken_large/{i:03d}_mask.png", box=(30, 2, 38, 8))  # top right
    image(root / "bottle/test/contamination/000.png")
    mask(root / "bottle/ground_truth/contamination/000_mask.png", box=(15, 12, 25, 18))  # center
    for i in range(2):
        image(root / f"grid/train/good/{i:03d}.png", mode="L")
    image(root / "grid/test/bent/000.png", mode="L")
    mask(root / "grid/ground_truth/bent/000_mask.png", box=(1, 22, 8, 29))  # bottom left
    return {"images": 11, "anomalous": 4, "products": 2, "defect_classes": 3}


def mpdd(root: Path) -> dict:
    for i in range(2):
        image(root / f"tubes/train/good/{i:03d}.png")
    image(root / "tubes/test/good/000.png")
    image(root / "tubes/test/flattening/000.png")
    mask(root / "tubes/ground_truth/flattening/000_mask.png")
    return {"images": 4, "anomalous": 1, "products": 1, "defect_classes": 1}


def btad(root: Path) -> dict:
    base = root / "BTech_Dataset_transformed"
    for i in range(2):
        image(base / f"01/train/ok/{i:04d}.bmp", fmt="BMP")
    image(base / "01/test/ok/0000.bmp", fmt="BMP")
    for i in range(2):
        image(base / f"01/test/ko/{i:04d}.bmp", fmt="BMP")
        mask(base / f"01/ground_truth/ko/{i:04d}.png")
    image(base / "03/train/ok/0000.bmp", fmt="BMP")
    image(base / "03/test/ko/0000.bmp", fmt="BMP")
    mask(base / "03/ground_truth/ko/0000.bmp", fmt="BMP")
    return {"images": 7, "anomalous": 3, "products": 2, "defect_classes": 2}


def dagm(root: Path) -> dict:
    base = root / "DAGM"
    for split, n, defective in (("Train", 3, [1]), ("Test", 2, [0])):
        for i in range(n):
            image(base / f"Class1/{split}/{i:04d}.PNG", size=(32, 32), mode="L", fmt="PNG")
        for i in defective:
            mask(base / f"Class1/{split}/Label/{i:04d}_label.PNG", size=(32, 32), fmt="PNG")
        (base / f"Class1/{split}/Label").mkdir(parents=True, exist_ok=True)
        (base / f"Class1/{split}/Label/Labels.txt").write_text("header\n")
    image(base / "Class10/Train/0000.PNG", size=(32, 32), mode="L", fmt="PNG")
    return {"images": 6, "anomalous": 2, "products": 2, "defect_classes": 1}


def deeppcb(root: Path) -> dict:
    """3 defective boards (space-separated boxes, suffix-less split lines) and 4 templates."""
    base = root / "PCBData"
    annotations = {
        "00041000": "2 2 10 10 1\n20 20 30 28 2\n25 2 35 9 2\n",  # dominant: short (2 boxes)
        "00041001": "5 5 9 9 3\n",
        "12000000": "1 1 4 4 6\n10 10 14 14 4\n",  # tie: lowest type id (spur, 4)
    }
    for stem, text in annotations.items():
        group = stem[:5]
        image(base / f"group{group}/{group}/{stem}_test.jpg", size=(40, 40), mode="L")
        image(base / f"group{group}/{group}/{stem}_temp.jpg", size=(40, 40), mode="L")
        (base / f"group{group}/{group}_not").mkdir(parents=True, exist_ok=True)
        (base / f"group{group}/{group}_not/{stem}.txt").write_text(text)
    image(base / "group00041/00041/00041002_temp.jpg", size=(40, 40), mode="L")  # a template without a pair
    (base / "trainval.txt").write_text(
        "group00041/00041/00041000.jpg group00041/00041_not/00041000.txt\n"
        "group00041/00041/00041001.jpg group00041/00041_not/00041001.txt\n"
    )
    (base / "test.txt").write_text("group12000/12000/12000000.jpg group12000/12000_not/12000000.txt\n")
    # every type on a board counts: open, short, mousebite, pin-hole and spur
    return {"images": 7, "anomalous": 3, "products": 1, "defect_classes": 5}


def ksdd2(root: Path) -> dict:
    base = root / "KSDD2"
    for split, ids, defective in (("train", [10, 11, 12], {11}), ("test", [20, 21], {20})):
        for i in ids:
            image(base / f"{split}/{i}.png", size=(23, 63))
            mask(base / f"{split}/{i}_GT.png", size=(23, 63), box=(3, 40, 9, 50) if i in defective else None)
    return {"images": 5, "anomalous": 2, "products": 1, "defect_classes": 1}


def magnetic_tile(root: Path) -> dict:
    """Non-binary masks (value 90), and an MT_Uneven image whose mask is empty."""
    base = root / "Magnetic-Tile-Defect"
    for cls, n in (("Blowhole", 2), ("Break", 1), ("Crack", 0), ("Fray", 0), ("Uneven", 1), ("Free", 3)):
        (base / f"MT_{cls}/Imgs").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image(base / f"MT_{cls}/Imgs/exp{i}_num_{i}.jpg", size=(30, 40), mode="L")
            empty = cls == "Uneven"
            mask(
                base / f"MT_{cls}/Imgs/exp{i}_num_{i}.png", size=(30, 40), value=90, box=None if empty else (2, 2, 6, 6)
            )
    return {"images": 7, "anomalous": 4, "products": 1, "defect_classes": 3}


RELEASES = {
    "mvtec_ad": mvtec_ad,
    "mpdd": mpdd,
    "btad": btad,
    "dagm": dagm,
    "deeppcb": deeppcb,
    "ksdd2": ksdd2,
    "magnetic_tile": magnetic_tile,
}
