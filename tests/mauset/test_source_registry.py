"""A source is one registration: a toy source defined in this file alone (its products and defect
classes in a knowledge overlay) is built end to end, and every list of sources derives from the registry."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest

from maugpt import commands
from maugpt.data.shards import iter_samples
from maugpt.mauset.build import BuildError, build_mauset
from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.sources import SOURCES, LayoutError, Source, register
from maugpt.mauset.sources.common import images_in, listing
from maugpt.mauset.table1 import paper_subset
from maugpt.schema import SourceImage
from tests.mauset.releases import image, mask

LAYOUT = "<product>/{good,<defect>}/*.png, <product>/masks/<defect>/*.png"


def scan_toy(root: Path, missing: list[str] | None = None) -> list[SourceImage]:
    """``<product>/good/*.png`` normal, ``<product>/<defect>/*.png`` anomalous with masks by stem."""
    products = sorted(p for p in root.iterdir() if (p / "good").is_dir()) if root.is_dir() else []
    if not products:
        raise LayoutError("toy", root, LAYOUT, listing(root))
    found = []
    for product in products:
        for folder in sorted(p for p in product.iterdir() if p.is_dir() and p.name != "masks"):
            normal = folder.name == "good"
            for path in images_in(folder):
                found.append(
                    SourceImage(
                        source="toy",
                        product=product.name,
                        image=path,
                        root=root,
                        key=f"toy/{product.name}/{folder.name}/{path.stem}",
                        is_anomalous=not normal,
                        defect_class=None if normal else folder.name,
                        mask=None if normal else product / "masks" / folder.name / path.name,
                    )
                )
    return found


TOY = Source(name="toy", scan=scan_toy, layout=LAYOUT, release_images=8)


@pytest.fixture
def toy_source(monkeypatch):
    monkeypatch.setitem(SOURCES, "toy", TOY)  # registered for this test only
    return TOY


def toy_release(root: Path) -> Path:
    for i in range(5):
        image(root / "widget" / "good" / f"{i}.png")
    for i in range(3):
        image(root / "widget" / "dent" / f"{i}.png")
        mask(root / "widget" / "masks" / "dent" / f"{i}.png")
    return root


def toy_knowledge(folder: Path) -> Knowledge:
    folder.mkdir()
    (folder / "products.yaml").write_text(
        "sources:\n  toy:\n    widget: {name: toy widget, domain: Mechanical Parts, kind: object}\n"
    )
    (folder / "defects.yaml").write_text("classes:\n  toy:\n    widget: {dent: {kind: hole, name: dent}}\n")
    return Knowledge(overlay=folder)


def test_a_source_registered_in_one_file_builds_end_to_end(toy_source, tmp_path):
    root = toy_release(tmp_path / "toy")
    stats = build_mauset(
        ["toy"],
        root,
        tmp_path / "out",
        knowledge=toy_knowledge(tmp_path / "knowledge"),
        test=0.25,
        val=0.0,
        max_side=32,
        progress=False,
    )
    assert sum(s["images"] for s in stats.values()) == 8 and sum(s["abnormal"] for s in stats.values()) == 3
    records = [sample["json"] for split in stats for sample in iter_samples(tmp_path / "out" / split)]
    assert {r["source"] for r in records} == {"toy"} and {r["product_name"] for r in records} == {"toy widget"}
    dents = [r for r in records if r["is_anomalous"]]
    assert len(dents) == 3 and all(r["defect_name"] == "dent" and r["location"] is not None for r in dents)


def test_every_list_of_sources_is_the_registry(toy_source, tmp_path):
    assert list(SOURCES)[:7] == ["btad", "dagm", "deeppcb", "ksdd2", "magnetic_tile", "mpdd", "mvtec_ad"]
    # the command line's choices were read from the registry when the CLI was imported
    assert typing.get_args(commands.SourceChoice) == (*list(SOURCES)[:7], "all")
    with pytest.raises(BuildError, match=r"unknown source\(s\) \['nope'\]; expected some of \['btad', .*'toy'\]"):
        build_mauset(["nope"], tmp_path, tmp_path / "out", progress=False)
    with pytest.raises(
        BuildError,
        match="toy: found 2 images under .* but the full release has 8: .* layout "
        r"'<product>/\{good,<defect>\}",
    ):
        image(tmp_path / "small" / "widget" / "good" / "0.png")
        image(tmp_path / "small" / "widget" / "good" / "1.png")
        build_mauset(["toy"], tmp_path / "small", tmp_path / "out", progress=False)
    with pytest.raises(BuildError, match="toy is not in the paper's Table 1: build it without paper_subset"):
        paper_subset(scan_toy(toy_release(tmp_path / "toy")))


def test_a_second_source_under_a_taken_name_is_refused():
    register(SOURCES["btad"])  # the same registration again is harmless
    with pytest.raises(ValueError, match="a source named 'btad' is already registered"):
        register(Source(name="btad", scan=scan_toy, layout=LAYOUT, release_images=1))
