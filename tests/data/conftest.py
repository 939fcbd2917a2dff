"""Session fixtures: a small synthetic MAU-Set, a tokenizer trained on it, a timm data config."""
from __future__ import annotations

import json

import pytest

from maugpt.data.reader import iter_samples
from maugpt.data.synthetic import build_synthetic
from maugpt.tokenizer import save_tokenizer, train_tokenizer


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    build_synthetic(out, images=56, seed=0, image_size=40, test=0.25, val=0.25, progress=False, maxcount=6,
                    captions=14)
    return out


@pytest.fixture(scope="session")
def tokenizer_dir(synthetic_dir, tmp_path_factory):
    texts = [qa[k] for split in ("train", "val", "test") for s in iter_samples(synthetic_dir / "mauset" / split)
             for qa in s["json"]["qa"] for k in ("question", "answer")]
    folder = tmp_path_factory.mktemp("tokenizer")
    save_tokenizer(train_tokenizer(texts + ["user assistant system"] * 20, vocab_size=600), folder)
    return folder


@pytest.fixture(scope="session")
def vision_dir(tmp_path_factory):
    """A timm encoder folder as saved locally: config.json with its pretrained_cfg (no weights needed)."""
    folder = tmp_path_factory.mktemp("vision")
    (folder / "config.json").write_text(json.dumps({
        "architecture": "vit_tiny_patch16_224", "num_classes": 0,
        "pretrained_cfg": {"input_size": [3, 32, 32], "interpolation": "bicubic", "crop_pct": 1.0,
                           "crop_mode": "center", "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}}))
    return folder
