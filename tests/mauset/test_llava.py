"""The LLaVA-Pretrain converter."""

from __future__ import annotations

import json

import pytest

from maugpt.data.shards import iter_samples
from maugpt.mauset.llava import convert_llava_pretrain
from tests.mauset.releases import image


def test_converts_records_with_the_image_token_before_or_after_and_skips_bad_ones(tmp_path):
    image(tmp_path / "images/00453/004539375.jpg", size=(64, 48))
    image(tmp_path / "images/00000/000000001.jpg", size=(64, 48))
    records = [
        {
            "id": "004539375",
            "image": "00453/004539375.jpg",
            "conversations": [
                {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
                {"from": "gpt", "value": "a red car parked on the street "},
            ],
        },
        {
            "id": "000000001",
            "image": "00000/000000001.jpg",
            "conversations": [
                {"from": "human", "value": "Describe the image briefly.\n<image>"},
                {"from": "gpt", "value": "a cat"},
            ],
        },
        {
            "id": "missing",
            "image": "00000/nope.jpg",
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": "x"}],
        },
        {"id": "malformed", "image": "00000/000000001.jpg", "conversations": [{"from": "gpt", "value": "x"}]},
    ]
    (tmp_path / "blip.json").write_text(json.dumps(records))
    stats = convert_llava_pretrain(
        tmp_path / "blip.json", tmp_path / "images", tmp_path / "out", max_side=32, progress=False
    )
    assert stats["images"] == 2 and stats["skipped_unreadable"] == 2 and stats["task"] == {"caption": 2}
    qa = {s["json"]["key"]: s["json"]["qa"][0] for s in iter_samples(tmp_path / "out" / "train")}
    assert qa["llava_pretrain/004539375"] == {
        "task": "caption",
        "style": "open",
        "answer": "a red car parked on the street",
        "question": "Render a clear and concise summary of the photo.",
    }
    assert qa["llava_pretrain/000000001"]["question"] == "Describe the image briefly."


def test_a_missing_annotation_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="blip_laion_cc_sbu_558k.json"):
        convert_llava_pretrain(tmp_path / "nope.json", tmp_path, tmp_path / "out")
