"""The paper-subset draw: Table 1's counts per source and label, even over products, deterministic."""

from __future__ import annotations

from pathlib import Path

from maugpt.mauset.sources import SOURCES
from maugpt.mauset.table1 import equal_shares, paper_subset
from maugpt.schema import SourceImage


def release(source: str, counts: dict[str, tuple[int, int]]) -> list[SourceImage]:
    """Fake scanned images: product → (normal, abnormal)."""
    images = []
    for product, (normal, abnormal) in counts.items():
        for i in range(normal + abnormal):
            images.append(
                SourceImage(
                    source,
                    product,
                    f"{source}/{product}/{i}",
                    Path(f"{i}.png"),
                    is_anomalous=i >= normal,
                    defect_class="defect" if i >= normal else None,
                )
            )
    return images


def test_equal_shares_fill_the_smaller_products_first():
    assert equal_shares({"a": 10, "b": 3, "c": 10}, 15) == {"a": 6, "b": 3, "c": 6}
    assert equal_shares({"a": 10, "b": 3, "c": 10}, 16) == {"a": 7, "b": 3, "c": 6}  # leftover in key order
    assert equal_shares({"a": 2, "b": 3}, 10) == {"a": 2, "b": 3}  # not enough: everything


def test_dagm_gets_the_older_packagings_1000_plus_150_per_class():
    # the 2007 competition release: classes 1-6 have 1,000 normal + 150 defective, 7-10 twice that
    counts = {f"Class{k}": (1000, 150) if k <= 6 else (2000, 300) for k in range(1, 11)}
    kept, shortfalls = paper_subset(release("dagm", counts), seed=3)
    assert len(kept) == sum(SOURCES["dagm"].paper_images) == 11500 and shortfalls == []
    for k in range(1, 11):
        mine = [im for im in kept if im.product == f"Class{k}"]
        assert (sum(not im.is_anomalous for im in mine), sum(im.is_anomalous for im in mine)) == (1000, 150)


def test_a_release_smaller_than_the_paper_keeps_everything_and_says_so():
    images = release("btad", {"01": (470, 49), "02": (429, 200), "03": (1400, 41)})
    kept, shortfalls = paper_subset(images)
    assert (sum(not im.is_anomalous for im in kept), sum(im.is_anomalous for im in kept)) == (2250, 290)
    assert shortfalls == ["btad abnormal: the release has 290, the paper counts 580; all 290 kept"]


def test_the_draw_is_seeded_and_keeps_scan_order():
    images = release("magnetic_tile", {"magnetic_tile": (952, 392)})
    first, _ = paper_subset(images, seed=0)
    assert [im.key for im in first] == [im.key for im in paper_subset(images, seed=0)[0]]
    assert sum(im.is_anomalous for im in first) == 383 and len(first) == 952 + 383
    assert [im.key for im in first] != [im.key for im in paper_subset(images, seed=1)[0]]
    order = {im.key: i for i, im in enumerate(images)}
    assert [order[im.key] for im in first] == sorted(order[im.key] for im in first)
