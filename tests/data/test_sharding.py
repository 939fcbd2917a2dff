"""The prompt data modules' shared parts: each item exactly once, equal counts per rank."""

from __future__ import annotations

from pathlib import Path

import pytest

from maugpt.data.sharding import evaluation_slot, padded, share
from tests.mauset.releases import image


def test_padded_fills_a_short_slot_with_flagged_copies_of_its_last_example():
    examples = [{"meta": {"k": i}, "valid": True, "skipped": 0} for i in range(2)]
    skips = iter([4, 0])
    out = list(padded(examples, 4, lambda: next(skips)))
    assert [e["meta"]["k"] for e in out] == [0, 1, 1, 1]
    assert [e["valid"] for e in out] == [True, True, False, False]
    assert [e["meta"].get("padding", False) for e in out] == [False, False, True, True]
    assert [e["skipped"] for e in out] == [0, 0, 4, 0]  # skips met after the last example still count once
    assert examples[1]["meta"] == {"k": 1}  # the original is not touched
    assert list(padded([], 3)) == []  # nothing to copy: an empty plan yields nothing


@pytest.mark.parametrize("n, ranks, workers", [(5, 2, 1), (7, 2, 3), (2, 4, 1), (0, 2, 2)])
def test_the_slots_cover_the_plan_once_with_equal_counts(n, ranks, workers):
    slots = [evaluation_slot(n, slot, ranks * workers) for slot in range(ranks * workers)]
    covered = [i for start, stop, _ in slots for i in range(start, stop)]
    assert covered == list(range(n))  # contiguous, in order, each once
    assert len({target for _, _, target in slots}) == 1 and all(stop - start <= slots[0][2] for start, stop, _ in slots)
    assert share(n, 0, 1) == (0, n, n)  # one process, no workers: the whole plan


def test_a_folder_split_over_two_ranks_answers_each_image_once(tiny_base, tmp_path):
    from maugpt.data.folder import ImageFolderQuestions

    for name in ("a.png", "b.png", "c.png"):
        image(tmp_path / "images" / name, size=(40, 40))
    data = ImageFolderQuestions(
        str(tmp_path / "images"), "Is it defective?", str(tiny_base["llm"]), str(tiny_base["vision"]), image_tokens=4
    )
    data.setup()
    per_rank = []
    for rank in range(2):
        data.trainer = type("Trainer", (), {"global_rank": rank, "world_size": 2})()
        per_rank.append([e for batch in data.predict_dataloader() for e in zip(batch["meta"], batch["valid"].tolist())])
    assert [len(examples) for examples in per_rank] == [2, 2]  # equal counts: FSDP ranks stop together
    answered = [Path(m["image"]).name for examples in per_rank for m, _ in examples if not m.get("padding")]
    assert answered == ["a.png", "b.png", "c.png"]
    # rank 0 holds a (and pads with a copy of it), rank 1 b and c
    assert per_rank[0][1] == (
        {"image": str(tmp_path / "images" / "a.png"), "question": "Is it defective?", "padding": True},
        False,
    )


def test_predict_writes_no_row_for_a_padding_slot(tiny_base, monkeypatch):
    import torch

    from maugpt.training.module import MAUGPTModule

    module = MAUGPTModule(str(tiny_base["llm"]), str(tiny_base["vision"]), stage=1)
    monkeypatch.setattr(module, "generate_answers", lambda batch: [" yes", " no", " no"])
    batch = {
        "meta": [{"image": "a"}, {"image": "b", "error": "unreadable"}, {"image": "b", "padding": True}],
        "valid": torch.tensor([True, False, False]),
    }
    assert module.predict_step(batch, 0) == [
        {"image": "a", "prediction": "yes"},
        {"image": "b", "error": "unreadable", "prediction": None},
    ]
