"""``maugpt predict`` on a folder of images writes one JSON line per image."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from maugpt.training.cli import run
from tests.mauset.releases import image
from tests.training.conftest import AMOE, stage_config

PREDICT = Path(__file__).parents[2] / "configs" / "tiny" / "predict.yaml"


def test_predict_answers_every_image_and_marks_unreadable_ones(tiny_base, synthetic_dir, tmp_path):
    for name in ("b.png", "a.jpg"):
        image(tmp_path / "images" / name, size=(96, 96))
    (tmp_path / "images" / "c.png").write_bytes(b"not an image")
    out = tmp_path / "answers.jsonl"
    args = ["predict", "--config", stage_config(tmp_path, tiny_base, synthetic_dir, 2, adapter=AMOE),
            "--config", str(PREDICT), "--data.init_args.folder", str(tmp_path / "images"),
            "--trainer.callbacks.init_args.path", str(out), "--model.init_args.max_new_tokens", "4"]
    run(args)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["a.jpg", "b.png", "c.png"]
    assert all(r["question"] == yaml.safe_load(PREDICT.read_text())["data"]["init_args"]["question"] for r in rows)
    assert isinstance(rows[0]["prediction"], str) and rows[2]["prediction"] is None and "error" in rows[2]
    with pytest.raises(FileExistsError, match="answers.jsonl exists"):
        run(args)


def test_predict_on_a_missing_folder_names_it(tiny_base, synthetic_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="predict folder .*nowhere does not exist"):
        run(["predict", "--config", stage_config(tmp_path, tiny_base, synthetic_dir, 2, adapter=AMOE),
             "--config", str(PREDICT), "--data.init_args.folder", str(tmp_path / "nowhere"),
             "--trainer.callbacks.init_args.path", str(tmp_path / "x.jsonl")])
