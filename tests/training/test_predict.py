"""``maugpt predict`` on a folder of images writes one JSON line per image."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from maugpt.training.cli import run
from tests.mauset.releases import image
from tests.test_images import STORED, png, with_orientation
from tests.training.conftest import AMOE, stage_config

PREDICT = Path(__file__).parents[2] / "configs" / "tiny" / "predict.yaml"


def test_predict_answers_every_image_and_marks_unreadable_ones(tiny_base, synthetic_dir, tmp_path, capsys):
    folder = tmp_path / "images"
    for name in ("b.png", "a.jpg"):
        image(folder / name, size=(96, 96))
    (folder / "c.png").write_bytes(b"not an image")
    (folder / "d.png").write_bytes(b"")
    png(folder / "e.png", 20000, 20000, 1, 0, (bytes(2500) for _ in range(20000)))  # a 49 KB bomb
    image(folder / "whole.jpg", size=(96, 96))
    (folder / "f.jpg").write_bytes((folder / "whole.jpg").read_bytes()[:1000])
    (folder / "whole.jpg").unlink()
    Image.fromarray(np.full((96, 96), 40000, np.uint16)).save(folder / "g.png")  # 16-bit grey
    with_orientation(folder / "h.jpg", STORED, 6)  # a phone picture, turned upright
    Image.new("RGBA", (96, 96), (255, 0, 0, 128)).save(folder / "i.png")
    out = tmp_path / "answers.jsonl"
    args = [
        "predict",
        "--config",
        stage_config(tmp_path, tiny_base, synthetic_dir, 2, adapter=AMOE),
        "--config",
        str(PREDICT),
        "--data.init_args.folder",
        str(folder),
        "--trainer.callbacks.init_args.path",
        str(out),
        "--model.init_args.max_new_tokens",
        "4",
    ]
    run(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == [
        "a.jpg",
        "b.png",
        "c.png",
        "d.png",
        "e.png",
        "f.jpg",
        "g.png",
        "h.jpg",
        "i.png",
    ]  # every image, in two batches of 8
    assert all(r["question"] == yaml.safe_load(PREDICT.read_text())["data"]["init_args"]["question"] for r in rows)
    answered = {Path(r["image"]).name for r in rows if isinstance(r["prediction"], str)}
    assert answered == {"a.jpg", "b.png", "g.png", "h.jpg", "i.png"}
    skipped = {Path(r["image"]).name: (r["skip_reason"], r["error"]) for r in rows if r["prediction"] is None}
    assert {name: reason for name, (reason, _) in skipped.items()} == {
        "c.png": "not an image",
        "d.png": "empty file",
        "e.png": "too large",
        "f.jpg": "truncated",
    }
    assert skipped["e.png"][1] == (
        f"{folder / 'e.png'}: too large: 20000x20000 = 400,000,000 pixels, more than "
        "max_pixels 50,000,000 (read from the header, nothing decoded); raise max_pixels "
        "to accept it"
    )
    assert skipped["d.png"][1] == f"{folder / 'd.png'}: empty file: 0 bytes, expected an image file"
    summary = [line for line in capsys.readouterr().out.splitlines() if line.startswith("predict:")]
    assert summary == [
        "predict: 9 images, 5 answered, 4 skipped: 1 empty file (d.png), 1 not an image (c.png), "
        "1 too large (e.png), 1 truncated (f.jpg)"
    ]
    with pytest.raises(FileExistsError, match="answers.jsonl exists"):
        run(args)


def test_predict_on_a_missing_folder_names_it(tiny_base, synthetic_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="predict folder .*nowhere does not exist"):
        run(
            [
                "predict",
                "--config",
                stage_config(tmp_path, tiny_base, synthetic_dir, 2, adapter=AMOE),
                "--config",
                str(PREDICT),
                "--data.init_args.folder",
                str(tmp_path / "nowhere"),
                "--trainer.callbacks.init_args.path",
                str(tmp_path / "x.jsonl"),
            ]
        )


def test_predict_refuses_a_pixel_limit_below_one():
    from maugpt.data.folder import ImageFolderQuestions

    with pytest.raises(ValueError, match="max_pixels must be 1 or more, got 0"):
        ImageFolderQuestions("images", "Is it defective?", max_pixels=0)
