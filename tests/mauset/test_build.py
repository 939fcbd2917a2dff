"""Building shards from release trees: QA per task, the split, statistics, and bad input."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from maugpt.data.shards import SkipCounter, iter_samples, read_index
from maugpt.mauset.build import build_mauset
from maugpt.mauset.knowledge import Knowledge
from maugpt.mauset.split import split_images
from maugpt.schema import TASKS, SourceImage
from tests.mauset.releases import RELEASES


def build_all(tmp_path, **kwargs):
    root = tmp_path / "releases"
    expected = {source: make(root / source) for source, make in RELEASES.items()}
    stats = build_mauset(list(RELEASES), root, tmp_path / "out", progress=False, max_side=32, partial=True, **kwargs)
    return expected, stats


def test_all_sources_build_into_readable_shards_with_matching_statistics(tmp_path):
    expected, stats = build_all(tmp_path, test=0.25, val=0.0, maxcount=5)
    total = sum(e["images"] for e in expected.values())
    assert sum(s["images"] for s in stats.values()) == total == 47
    assert sum(s["abnormal"] for s in stats.values()) == sum(e["anomalous"] for e in expected.values())
    records = []
    for split in stats:
        index = read_index(tmp_path / "out" / split)
        assert index["samples"] == stats[split]["images"]
        assert all(shard["count"] <= 5 for shard in index["shards"])
        samples = list(iter_samples(tmp_path / "out" / split))
        assert len(samples) == index["samples"]
        assert json.loads((tmp_path / "out" / split / "stats.json").read_text()) == stats[split]
        for sample in samples:
            record = sample["json"]
            assert record["split"] == split and max(sample["jpg"].size) <= 32
            assert (record["width"], record["height"]) == sample["jpg"].size
            records.append(record)
    per_source = Counter(r["source"] for r in records)
    assert per_source == {s: e["images"] for s, e in expected.items()}


def test_every_image_gets_one_or_two_questions_per_task(tmp_path):
    build_all(tmp_path, test=0.0, val=0.0)
    records = [s["json"] for s in iter_samples(tmp_path / "out" / "train")]
    sizes = Counter()
    for record in records:
        per_task = Counter(qa["task"] for qa in record["qa"])
        assert set(per_task) == set(TASKS) and all(n in (1, 2) for n in per_task.values())
        assert [qa["task"] for qa in record["qa"]] == sorted((qa["task"] for qa in record["qa"]), key=TASKS.index)
        questions = [qa["question"] for qa in record["qa"]]
        assert len(set(questions)) == len(questions)
        detection = [qa for qa in record["qa"] if qa["task"] == "detection"]
        assert all(qa["style"] == "discriminative" and qa["answer"] == str(record["is_anomalous"]) for qa in detection)
        sizes[len(record["qa"])] += 1
    assert min(sizes) >= 5 and max(sizes) <= 10 and len(sizes) > 2  # 1–2 per task, sampled per image


def test_locations_come_from_masks_and_boxes(tmp_path):
    build_all(tmp_path, test=0.0, val=0.0)
    records = {s["json"]["key"]: s["json"] for s in iter_samples(tmp_path / "out" / "train")}
    assert records["mvtec_ad/bottle/test/broken_large/000"]["location"] == {
        "box": [0.75, 0.067, 0.95, 0.267],
        "region": "top right",
    }
    assert records["mvtec_ad/bottle/test/contamination/000"]["location"]["region"] == "center"
    assert records["mvtec_ad/grid/test/bent/000"]["location"]["region"] == "bottom left"
    # Magnetic Tile's masks hold 90, not 255: still a defect; DeepPCB's union of boxes.
    assert records["magnetic_tile/magnetic_tile/blowhole/exp0_num_0"]["location"] == {
        "box": [0.067, 0.05, 0.2, 0.15],
        "region": "top left",
    }
    assert records["deeppcb/pcb/test/00041000"]["location"]["box"] == [0.05, 0.05, 0.875, 0.7]
    uneven = records["magnetic_tile/magnetic_tile/uneven/exp0_num_0"]
    assert uneven["is_anomalous"] and uneven["location"] is None
    assert any("not confined to one region" in qa["answer"] for qa in uneven["qa"] if qa["task"] == "localization")


def test_the_same_seed_builds_the_same_records(tmp_path):
    root = tmp_path / "releases"
    RELEASES["mvtec_ad"](root)
    for name in ("a", "b"):
        build_mauset(["mvtec_ad"], root, tmp_path / name, progress=False, seed=7, max_side=32, partial=True)
    for split in ("train", "test"):
        a = [s["json"] for s in iter_samples(tmp_path / "a" / split)]
        b = [s["json"] for s in iter_samples(tmp_path / "b" / split)]
        assert a == b


def test_split_keeps_each_sources_normal_abnormal_ratio():
    images = [SourceImage("x", "p", f"x/{i}", None, is_anomalous=i < 10) for i in range(50)] + [
        SourceImage("y", "p", f"y/{i}", None, is_anomalous=i < 20) for i in range(20)
    ]
    splits = split_images(images, test=0.2, val=0.1, seed=3)

    def count(split: str, src: str, anomalous: bool) -> int:
        return sum(im.source == src and im.is_anomalous == anomalous for im in splits[split])

    assert [count("test", "x", True), count("test", "x", False), count("val", "x", True), count("val", "x", False)] == [
        2,
        8,
        1,
        4,
    ]
    assert [count("test", "y", True), count("val", "y", True), count("train", "y", True)] == [4, 2, 14]
    assert sum(len(v) for v in splits.values()) == 70
    assert split_images(images, test=0.2, val=0.1, seed=3) == splits


def test_a_non_empty_output_folder_is_refused_unless_asked(tmp_path):
    root = tmp_path / "releases"
    RELEASES["mpdd"](root)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="is not empty; pass --overwrite"):
        build_mauset(["mpdd"], root, out, progress=False, partial=True)
    build_mauset(["mpdd"], root, out, progress=False, overwrite=True, partial=True)
    assert (out / "mine.txt").read_text() == "keep me" and (out / "train" / "index.json").is_file()


def test_an_unreadable_source_image_is_skipped_and_counted(tmp_path, caplog):
    root = tmp_path / "releases"
    RELEASES["mpdd"](root)
    (root / "tubes/train/good/001.png").write_bytes(b"not a png")
    stats = build_mauset(["mpdd"], root, tmp_path / "out", progress=False, test=0.0, val=0.0, partial=True)
    assert stats["train"]["images"] == 3 and stats["train"]["skipped_unreadable"] == 1
    assert "skipping unreadable image" in caplog.text and "001.png" in caplog.text


def test_a_corrupt_sample_in_a_shard_is_skipped_and_counted(tmp_path):
    import io
    import tarfile

    shard = tmp_path / "split" / "shard-000000.tar"
    shard.parent.mkdir()
    good = {
        "key": "k1",
        "source": "mpdd",
        "product": "p",
        "product_name": "p",
        "domain": "Mechanical Parts",
        "split": "test",
        "is_anomalous": False,
        "defect_class": None,
        "defect_name": None,
        "location": None,
        "qa": [],
        "origin": "p/good/1.png",
    }
    from PIL import Image

    jpeg = io.BytesIO()
    Image.new("RGB", (8, 8)).save(jpeg, format="JPEG")
    # k1 is whole (a sample is usable only with its record and its image); the others are not
    members = {
        "k1.json": json.dumps(good).encode(),
        "k1.jpg": jpeg.getvalue(),
        "k2.json": b"{broken",
        "k3.json": json.dumps({**good, "key": "k3"}).encode(),
        "k3.jpg": b"\xff\xd8 not really a jpeg",
        "k4.pyd": b"cos\nsystem\n(S'echo pwned'\ntR.",
    }
    with tarfile.open(shard, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (shard.parent / "index.json").write_text(json.dumps({"samples": 4, "shards": [{"name": shard.name, "count": 4}]}))
    counter = SkipCounter()
    samples = list(iter_samples(shard.parent, counter))
    assert [s["__key__"] for s in samples] == ["k1"]
    assert counter.count == 3  # broken JSON, broken image, and a pickle-only sample without a record


# QA pairs per task for seed 0: fixed by the seed, each image's key and the pools' sizes
# (1–2 per task per image); a change to questions.yaml's pool sizes changes them on purpose.
QA_PER_TASK = {
    "mvtec_ad": {"classification": 16, "description": 15, "detection": 15, "localization": 14, "understanding": 19},
    "mpdd": {"classification": 7, "description": 8, "detection": 6, "localization": 6, "understanding": 6},
    "btad": {"classification": 11, "description": 11, "detection": 8, "localization": 12, "understanding": 11},
    "dagm": {"classification": 9, "description": 8, "detection": 11, "localization": 8, "understanding": 7},
    "deeppcb": {"classification": 11, "description": 12, "detection": 10, "localization": 11, "understanding": 9},
    "ksdd2": {"classification": 7, "description": 8, "detection": 7, "localization": 5, "understanding": 7},
    "magnetic_tile": {
        "classification": 13,
        "description": 10,
        "detection": 12,
        "localization": 10,
        "understanding": 11,
    },
}


@pytest.mark.parametrize("source", sorted(RELEASES))
def test_each_source_builds_its_exact_counts(tmp_path, source):
    expected = RELEASES[source](tmp_path / "release")
    stats = build_mauset(
        [source], tmp_path / "release", tmp_path / "out", progress=False, test=0.0, val=0.0, max_side=32, partial=True
    )["train"]
    assert (stats["images"], stats["abnormal"], stats["products"], stats["defect_classes"]) == (
        expected["images"],
        expected["anomalous"],
        expected["products"],
        expected["defect_classes"],
    )
    assert stats["task"] == QA_PER_TASK[source]
    assert stats["qa_pairs"] == sum(QA_PER_TASK[source].values())
    assert stats["style"] == {
        "discriminative": QA_PER_TASK[source]["detection"],
        "open": stats["qa_pairs"] - QA_PER_TASK[source]["detection"],
    }


def test_a_scan_far_below_the_release_fails_unless_partial(tmp_path):
    expected = RELEASES["mvtec_ad"](tmp_path / "release")
    with pytest.raises(
        ValueError,
        match=rf"mvtec_ad: found {expected['images']} images under .*release, but the "
        r"full release has 5,354: a folder is missing .*--partial true",
    ):
        build_mauset(["mvtec_ad"], tmp_path / "release", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_a_source_with_no_image_fails_naming_its_layout(tmp_path):
    (tmp_path / "dagm" / "Class1" / "Training").mkdir(parents=True)  # a class folder, but not the release's
    with pytest.raises(
        FileNotFoundError,
        match=r"dagm: .* does not have the expected layout\.\n  expected: "
        r"\[DAGM/\]Class<k>/\{Train,Test\}.*\n  found: no image: Class1/",
    ):
        build_mauset(["dagm"], tmp_path / "dagm", tmp_path / "out", progress=False, partial=True)


def test_the_older_dagm_packaging_is_named(tmp_path):
    from tests.mauset.releases import image

    for k in (1, 2):
        image(tmp_path / "dagm" / f"Class{k}" / "0001.PNG", mode="L")
        image(tmp_path / "dagm" / f"Class{k}_def" / "1.png", mode="L")
        (tmp_path / "dagm" / f"Class{k}_def" / "labels.txt").write_text("1\t0\t1.png\t20\t10\t0.5\t30\t30\n")
    with pytest.raises(
        FileNotFoundError,
        match=r"found: the older DAGM packaging \(Class1_def, Class2_def, … beside "
        r"Class<k>/.*get the 2007 competition release",
    ):
        build_mauset(["dagm"], tmp_path / "dagm", tmp_path / "out", progress=False, partial=True)


def test_the_paper_subset_is_drawn_before_the_split(tmp_path, capsys):
    expected = RELEASES["magnetic_tile"](tmp_path / "release")
    stats = build_mauset(
        ["magnetic_tile"],
        tmp_path / "release",
        tmp_path / "out",
        progress=False,
        test=0.0,
        val=0.0,
        max_side=32,
        partial=True,
        paper_subset=True,
    )["train"]
    out = capsys.readouterr().out
    assert stats["images"] == expected["images"]  # the fixture is smaller than the paper's counts: all kept
    assert f"paper subset (Table 1 counts): {expected['images']} of {expected['images']} images kept" in out
    assert f"magnetic_tile abnormal: the release has {expected['anomalous']}, the paper counts 383" in out


def test_an_unseen_defect_class_builds_with_the_generic_description_marked_and_listed(tmp_path, capsys):
    from tests.mauset.releases import image, mask

    root = tmp_path / "release"
    RELEASES["mvtec_ad"](root)
    for i in range(2):  # a class folder the knowledge base has never heard of
        image(root / f"bottle/test/bubble/{i:03d}.png")
        mask(root / f"bottle/ground_truth/bubble/{i:03d}_mask.png")
    stats = build_mauset(
        ["mvtec_ad"], root, tmp_path / "out", progress=False, test=0.0, val=0.0, max_side=32, partial=True
    )["train"]
    assert stats["generic_defect_class"] == {"mvtec_ad/bottle/bubble": 2}
    assert "1 defect class(es) not in the knowledge base get the generic description" in capsys.readouterr().out
    records = [s["json"] for s in iter_samples(tmp_path / "out" / "train")]
    bubbles = [r for r in records if r["defect_class"] == "bubble"]
    assert len(bubbles) == 2 and all(r["generic_defect"] for r in bubbles)
    assert not any("generic_defect" in r for r in records if r["defect_class"] != "bubble")
    answers = [qa["answer"] for r in bubbles for qa in r["qa"] if qa["task"] == "description"]
    assert answers and all(a.startswith("The bottle shows a bubble: a region of the bottle differs") for a in answers)


def test_a_knowledge_overlay_adds_a_product_and_its_classes(tmp_path):
    from tests.mauset.releases import image, mask

    root = tmp_path / "release"
    RELEASES["mvtec_ad"](root)
    for i in range(2):
        image(root / f"gear/train/good/{i:03d}.png")
        image(root / f"gear/test/chipped_tooth/{i:03d}.png")
        mask(root / f"gear/ground_truth/chipped_tooth/{i:03d}_mask.png")
    with pytest.raises(KeyError, match="product folder 'gear' is not in .*add it, with its domain, in a --knowledge"):
        build_mauset(["mvtec_ad"], root, tmp_path / "none", progress=False, partial=True)
    overlay = tmp_path / "mine"
    overlay.mkdir()
    (overlay / "products.yaml").write_text(
        "sources:\n  mvtec_ad:\n    gear: {name: spur gear, domain: Mechanical Parts, kind: object}\n"
    )
    (overlay / "defects.yaml").write_text(
        "classes:\n  mvtec_ad:\n    gear: {chipped_tooth: {kind: teeth, name: chipped tooth}}\n"
    )
    knowledge = Knowledge(overlay=overlay)
    assert len(knowledge.products("mvtec_ad")) == 16 and knowledge.product("mvtec_ad", "bottle").name == "bottle"
    stats = build_mauset(
        ["mvtec_ad"],
        root,
        tmp_path / "out",
        progress=False,
        test=0.0,
        val=0.0,
        max_side=32,
        partial=True,
        knowledge=knowledge,
    )["train"]
    assert stats["product"]["mvtec_ad/gear"] == 4 and stats["generic_defect_class"] == {}
    gear = [s["json"] for s in iter_samples(tmp_path / "out" / "train") if s["json"]["product"] == "gear"]
    assert {r["domain"] for r in gear} == {"Mechanical Parts"} and {r["defect_name"] for r in gear} == {
        None,
        "chipped tooth",
    }
    with pytest.raises(FileNotFoundError, match="knowledge overlay .*nowhere is not a folder"):
        Knowledge(overlay=tmp_path / "nowhere")


def test_deeppcb_boards_carry_every_defect_type_and_stay_with_their_templates(tmp_path):
    RELEASES["deeppcb"](tmp_path / "release")
    stats = build_mauset(
        ["deeppcb"],
        tmp_path / "release",
        tmp_path / "out",
        progress=False,
        test=0.0,
        val=0.0,
        max_side=32,
        partial=True,
    )["train"]
    assert stats["defect_class"] == {
        "deeppcb/pcb/mousebite": 1,
        "deeppcb/pcb/open": 1,
        "deeppcb/pcb/pin_hole": 1,
        "deeppcb/pcb/short": 1,
        "deeppcb/pcb/spur": 1,
    }
    board = next(s["json"] for s in iter_samples(tmp_path / "out" / "train") if s["json"]["key"].endswith("00041000"))
    # boxes (2,2,10,10) open; (20,20,30,28) and (25,2,35,9) short, on a 40 x 40 board
    assert board["defects"] == [
        {
            "class": "short",
            "name": "short circuit",
            "count": 2,
            "boxes": [[0.5, 0.5, 0.75, 0.7], [0.625, 0.05, 0.875, 0.225]],
            "regions": ["center", "top right"],
        },
        {
            "class": "open",
            "name": "open circuit",
            "count": 1,
            "boxes": [[0.05, 0.05, 0.25, 0.25]],
            "regions": ["top left"],
        },
    ]
    answers = {qa["task"]: qa["answer"] for qa in board["qa"]}
    assert answers["classification"] == (
        "The printed circuit board has 2 kinds of defect: short circuit (2) and open circuit (1)."
    )
    assert answers["localization"] == (
        "The printed circuit board has defects in several places: the short circuit (2) "
        "in the center and top right; the open circuit (1) in the top left of the image."
    )
    assert answers["description"].endswith("It also has open circuit defects.")
    single = next(s["json"] for s in iter_samples(tmp_path / "out" / "train") if s["json"]["key"].endswith("00041001"))
    assert [qa["answer"] for qa in single["qa"] if qa["task"] == "classification"][
        0
    ] == "The printed circuit board has a mousebite defect."  # one type: the usual answer


@pytest.mark.parametrize("seed", range(6))
def test_a_board_and_its_template_are_always_in_the_same_split(tmp_path, seed):
    from maugpt.mauset.sources import SOURCES

    RELEASES["deeppcb"](tmp_path)
    images = SOURCES["deeppcb"].scan(tmp_path)
    split_of = {
        im.key: name for name, members in split_images(images, test=0.34, val=0.34, seed=seed).items() for im in members
    }
    assert len(split_of) == len(images)
    for board in (im for im in images if im.is_anomalous):
        assert split_of[f"deeppcb/pcb/temp/{board.group}_temp"] == split_of[board.key]


def test_an_unreadable_image_is_named_in_the_stats_of_the_split_it_was_assigned_to(tmp_path):
    from maugpt.mauset.sources import SOURCES

    root = tmp_path / "release"
    RELEASES["mvtec_ad"](root)
    # the image of the release's test folder that the paper's split (seed 0) also puts in test
    assigned = split_images(SOURCES["mvtec_ad"].scan(root), test=0.25, val=0.0, seed=0)
    broken = next(im.image for im in assigned["test"] if "/test/" in str(im.image))
    broken.write_bytes(b"not a png")
    stats = build_mauset(
        ["mvtec_ad"], root, tmp_path / "out", progress=False, test=0.25, val=0.0, max_side=32, partial=True
    )
    on_disk = {split: json.loads((tmp_path / "out" / split / "stats.json").read_text()) for split in ("train", "test")}
    assert on_disk == stats
    assert on_disk["test"]["skipped_unreadable"] == 1 and on_disk["test"]["images"] == len(assigned["test"]) - 1
    [entry] = on_disk["test"]["skipped_unreadable_files"]
    assert entry["path"] == str(broken) and entry["reason"].startswith(
        "not an image: Pillow recognises no image format"
    )
    assert on_disk["train"]["skipped_unreadable"] == 0 and on_disk["train"]["skipped_unreadable_files"] == []
    assert on_disk["train"]["images"] == len(assigned["train"])


def test_a_partial_build_leaves_out_a_missing_class_folder_and_lists_it(tmp_path, capsys):
    import shutil

    from maugpt.mauset.sources import BuildError, LayoutError

    expected = RELEASES["magnetic_tile"](tmp_path / "release")
    shutil.rmtree(tmp_path / "release" / "Magnetic-Tile-Defect" / "MT_Break")  # its one image
    with pytest.raises(
        LayoutError,
        match=r"found: MT_Break/Imgs is missing \(a deliberate subset builds with "
        r"partial=True, --partial true\)",
    ) as err:
        build_mauset(["magnetic_tile"], tmp_path / "release", tmp_path / "refused", progress=False)
    assert isinstance(err.value, BuildError) and not (tmp_path / "refused").exists()
    stats = build_mauset(
        ["magnetic_tile"],
        tmp_path / "release",
        tmp_path / "out",
        progress=False,
        test=0.0,
        val=0.0,
        max_side=32,
        partial=True,
    )["train"]
    assert (
        "partial build: 1 folder(s) of the release(s) are missing and left out: magnetic_tile: MT_Break/Imgs"
        in capsys.readouterr().out
    )
    assert stats["missing"] == ["magnetic_tile: MT_Break/Imgs"]
    assert json.loads((tmp_path / "out" / "train" / "stats.json").read_text())["missing"] == stats["missing"]
    assert (
        stats["images"] == expected["images"] - 1 and "magnetic_tile/magnetic_tile/Break" not in stats["defect_class"]
    )


def test_the_mistakes_a_user_can_fix_are_build_errors(tmp_path):
    import shutil

    from maugpt.mauset.build import BuildError, OutputExistsError, UnknownProductError

    root = tmp_path / "release"
    RELEASES["mpdd"](root)
    with pytest.raises(BuildError, match=r"unknown source\(s\) \['nope'\]"):
        build_mauset(["nope"], root, tmp_path / "out", progress=False)
    with pytest.raises(BuildError, match=r"test and val fractions must be in \[0, 1\)"):
        build_mauset(["mpdd"], root, tmp_path / "out", progress=False, partial=True, test=0.9, val=0.2)
    assert not (tmp_path / "out").exists()  # checked before the output folder is made
    (root / "gear" / "train" / "good").mkdir(parents=True)
    (root / "gear" / "test").mkdir()
    shutil.copy(root / "tubes/train/good/000.png", root / "gear/train/good/000.png")  # a product no yaml has
    with pytest.raises(UnknownProductError, match=r"^mpdd product folder 'gear' is not in .*--knowledge overlay\)$"):
        build_mauset(["mpdd"], root, tmp_path / "out", progress=False, partial=True)
    (root / "gear" / "train" / "good" / "000.png").unlink()
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("x")
    with pytest.raises(OutputExistsError, match="is not empty; pass --overwrite") as err:
        build_mauset(["mpdd"], root, tmp_path / "out", progress=False, partial=True)
    assert isinstance(err.value, FileExistsError)
