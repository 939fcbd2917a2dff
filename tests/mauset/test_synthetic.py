"""The synthetic MAU-Set: coverage, determinism, visible defects, and its shards."""

from __future__ import annotations

import numpy as np
import pytest

from maugpt.data.shards import iter_samples
from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.synthetic import PRODUCTS, build_synthetic, render
from maugpt.schema import DOMAINS


def test_products_cover_all_six_domains_with_at_least_three_defects_each():
    knowledge = Knowledge()
    domains = {}
    for name, (_, defects) in PRODUCTS.items():
        domains.setdefault(knowledge.product("synthetic", name).domain, []).append(name)
        assert len(defects) >= 3
        for defect in defects:
            knowledge.defect("synthetic", name, defect)
    assert sorted(domains) == sorted(DOMAINS) and all(len(v) >= 2 for v in domains.values())


@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_every_defect_changes_the_pixels_under_its_mask_and_nothing_else(product):
    for defect in PRODUCTS[product][1]:
        normal, _ = render(product, None, 96, np.random.default_rng(5))
        image, mask = render(product, defect, 96, np.random.default_rng(5))
        a, b = np.asarray(normal).astype(int), np.asarray(image).astype(int)
        changed = np.abs(a - b).sum(-1) > 0
        assert mask.sum() >= 12, (product, defect)  # at least a few pixels' worth, visible at 96 px
        assert not changed[~mask].any(), (product, defect)
        # a visible defect: on average a large colour difference where it was drawn
        assert np.abs(a - b).sum(-1)[mask].mean() > 40, (product, defect)


def test_the_same_seed_gives_the_same_shards(tmp_path):
    for name in ("a", "b"):
        build_synthetic(tmp_path / name, images=28, seed=3, image_size=48, progress=False)
    for split in ("train", "test"):
        a = [(s["json"], s["png"].tobytes()) for s in iter_samples(tmp_path / "a" / "mauset" / split)]
        b = [(s["json"], s["png"].tobytes()) for s in iter_samples(tmp_path / "b" / "mauset" / split)]
        assert a == b and a


def test_synthetic_shards_hold_masks_references_and_caption_pairs(tmp_path):
    stats = build_synthetic(
        tmp_path,
        images=42,
        seed=0,
        image_size=48,
        references=1,
        progress=False,
        anomaly_fraction=0.5,
        test=0.2,
        val=0.0,
    )
    assert stats["mauset/train"]["images"] + stats["mauset/test"]["images"] == 42
    assert stats["mauset/train"]["products"] == 14
    samples = list(iter_samples(tmp_path / "mauset" / "train"))
    for sample in samples:
        record = sample["json"]
        assert sample["ref0.png"].size == (48, 48)
        assert ("mask.png" in sample) == record["is_anomalous"]
        if record["is_anomalous"]:
            mask = np.asarray(sample["mask.png"]) > 0
            ys, xs = np.nonzero(mask)
            x1, y1, x2, y2 = record["location"]["box"]
            assert x1 <= xs.min() / 48 + 0.03 and (xs.max() + 1) / 48 <= x2 + 0.03  # box and stored mask agree
    captions = [s["json"] for s in iter_samples(tmp_path / "captions" / "train")]
    assert len(captions) == stats["captions/train"]["images"] > 0
    assert all(
        len(c["qa"]) == 1 and c["qa"][0]["task"] == "caption" and c["qa"][0]["answer"].startswith("A ")
        for c in captions
    )


def test_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        build_synthetic(tmp_path, images=14, image_size=32, progress=False)
