"""Each source builder reads a tiny tree in its release layout with exact expected counts."""

from __future__ import annotations

import pytest

from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.sources import SOURCES, LayoutError
from tests.mauset.releases import RELEASES


@pytest.mark.parametrize("source", sorted(RELEASES))
def test_scanner_finds_every_image_with_its_label(tmp_path, source):
    expected = RELEASES[source](tmp_path)
    images = SOURCES[source].scan(tmp_path)
    assert len(images) == expected["images"]
    assert sum(im.is_anomalous for im in images) == expected["anomalous"]
    assert len({im.product for im in images}) == expected["products"]
    present = {
        (im.product, cls)
        for im in images
        if im.is_anomalous
        for cls in ([d[0] for d in im.defects] if im.defects else [im.defect_class])
    }
    assert len(present) == expected["defect_classes"]
    assert len({im.key for im in images}) == len(images)
    knowledge = Knowledge()
    for im in images:  # every product and defect class is in the data files
        knowledge.product(im.source, im.product)
        assert im.is_anomalous == (im.defect_class is not None)
        if im.is_anomalous:
            knowledge.defect(im.source, im.product, im.defect_class)


def test_deeppcb_reads_space_separated_boxes_and_inserts_the_suffix(tmp_path):
    RELEASES["deeppcb"](tmp_path)
    images = {im.key: im for im in SOURCES["deeppcb"].scan(tmp_path)}
    board = images["deeppcb/pcb/test/00041000"]
    assert board.image.name == "00041000_test.jpg" and board.references[0].name == "00041000_temp.jpg"
    assert board.boxes == [(2, 2, 10, 10), (20, 20, 30, 28), (25, 2, 35, 9)]
    assert board.defect_class == "short"  # the most boxes
    # every defect, most frequent type first, each type's boxes in the file's order
    assert board.defects == [("short", (20, 20, 30, 28)), ("short", (25, 2, 35, 9)), ("open", (2, 2, 10, 10))]
    assert images["deeppcb/pcb/test/12000000"].defect_class == "spur"  # a tie: the lower type id
    assert [d[0] for d in images["deeppcb/pcb/test/12000000"].defects] == ["spur", "pin_hole"]
    assert board.group == images["deeppcb/pcb/temp/00041000_temp"].group == "00041000"
    assert not images["deeppcb/pcb/temp/00041002_temp"].is_anomalous


def test_deeppcb_rejects_a_malformed_annotation_line(tmp_path):
    RELEASES["deeppcb"](tmp_path)
    (tmp_path / "PCBData/group00041/00041_not/00041001.txt").write_text("5 5 9 9\n")
    with pytest.raises(ValueError, match=r"00041001.txt:1: expected 'x1 y1 x2 y2 type'"):
        SOURCES["deeppcb"].scan(tmp_path)


def test_ksdd2_all_zero_masks_are_normal(tmp_path):
    RELEASES["ksdd2"](tmp_path)
    labels = {im.key: im.is_anomalous for im in SOURCES["ksdd2"].scan(tmp_path)}
    assert labels == {
        "ksdd2/commutator/train/10": False,
        "ksdd2/commutator/train/11": True,
        "ksdd2/commutator/train/12": False,
        "ksdd2/commutator/test/20": True,
        "ksdd2/commutator/test/21": False,
    }


@pytest.mark.parametrize("source", sorted(RELEASES))
def test_a_folder_without_the_layout_names_what_was_expected_and_found(tmp_path, source):
    (tmp_path / "random_folder").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(LayoutError) as err:
        SOURCES[source].scan(tmp_path)
    message = str(err.value)
    assert f"{source}: {tmp_path} does not have the expected layout" in message
    assert "expected: " in message and "found: notes.txt, random_folder/" in message


def test_a_partial_scan_lists_the_required_folders_it_lacks_instead_of_failing(tmp_path):
    import shutil

    RELEASES["ksdd2"](tmp_path / "ksdd2")
    shutil.rmtree(tmp_path / "ksdd2" / "KSDD2" / "test")
    with pytest.raises(
        LayoutError,
        match=r"(?s)ksdd2: .* does not have the expected layout.*found: test/ is missing "
        r"beside train/ \(a deliberate subset builds with partial=True",
    ):
        SOURCES["ksdd2"].scan(tmp_path / "ksdd2")
    missing: list[str] = []
    assert len(SOURCES["ksdd2"].scan(tmp_path / "ksdd2", missing=missing)) == 3 and missing == ["test/"]

    RELEASES["deeppcb"](tmp_path / "deeppcb")
    shutil.rmtree(tmp_path / "deeppcb" / "PCBData" / "group12000")  # the one board of test.txt, and its template
    with pytest.raises(
        LayoutError,
        match=r"test.txt:1 names group12000/12000/12000000.jpg, but "
        r"group12000/12000/12000000_test.jpg does not exist",
    ):
        SOURCES["deeppcb"].scan(tmp_path / "deeppcb")
    missing = []
    images = SOURCES["deeppcb"].scan(tmp_path / "deeppcb", missing=missing)
    assert len(images) == 5 and missing == ["group12000/12000/ (1 board(s) of test.txt)"]

    RELEASES["magnetic_tile"](tmp_path / "mt")
    for cls in ("Break", "Free"):  # MT_Free no longer has to be there to find the release folder
        shutil.rmtree(tmp_path / "mt" / "Magnetic-Tile-Defect" / f"MT_{cls}")
    with pytest.raises(LayoutError, match="found: MT_Break/Imgs, MT_Free/Imgs are missing"):
        SOURCES["magnetic_tile"].scan(tmp_path / "mt")
    missing = []
    assert len(SOURCES["magnetic_tile"].scan(tmp_path / "mt", missing=missing)) == 3
    assert missing == ["MT_Break/Imgs", "MT_Free/Imgs"]


def test_a_board_without_its_annotation_file_is_named(tmp_path):
    RELEASES["deeppcb"](tmp_path)
    (tmp_path / "PCBData/group00041/00041_not/00041001.txt").unlink()
    for missing in (None, []):  # a partial build does not excuse it: the board cannot be labelled
        with pytest.raises(
            LayoutError,
            match=r"trainval.txt:2 names the annotation group00041/00041_not/00041001.txt "
            r"of group00041/00041/00041001_test.jpg, but it does not exist",
        ):
            SOURCES["deeppcb"].scan(tmp_path, missing=missing)
