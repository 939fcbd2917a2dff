"""The MMAD data module on a hand-made MMAD tree (images + mmad.json in the release layout), and
``maugpt test`` on it end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maugpt.mmad.data import MMADDataModule, MMADPrompts
from maugpt.mmad.prompts import SCRIPTS
from maugpt.mmad.scoring import load_questions, present_options
from tests.mmad.test_scoring import MMAD

TEMPLATES = {
    "DS-MVTec": ["MVTec-AD/bottle/train/good/000.png", "MVTec-AD/bottle/train/good/001.png"],
    "VisA": ["VisA/candle/train/good/000.png", "VisA/candle/train/good/001.png"],
}
QUESTIONS = sum(len(e["conversation"]) for e in MMAD.values())  # 13
MMAD_KEYS = list(MMAD)


def write_tree(root: Path, entries: dict | None = None) -> Path:
    """``root`` as the MMAD release: mmad.json, query images at their keys, normal templates."""
    entries = json.loads(json.dumps(entries or MMAD))
    rng = np.random.default_rng(0)
    for key, entry in entries.items():
        templates = TEMPLATES[key.split("/")[0]]
        entry.update(
            image_path=key.split("/", 2)[2],
            mask_path=None,
            random_templates=templates,
            similar_templates=templates[::-1],
        )
        for path in [key, *templates]:
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (24, 36, 3), dtype=np.uint8)).save(root / path)
    (root / "mmad.json").write_text(json.dumps(entries))
    return root


@pytest.fixture
def mmad_root(tmp_path) -> Path:
    return write_tree(tmp_path / "MMAD")


def data_module(root: Path, tokenizer_dir, vision_dir, **kwargs) -> MMADDataModule:
    args = dict(
        tokenizer=str(tokenizer_dir), vision_encoder=str(vision_dir), image_tokens=3, batch_size=4, num_workers=0
    )
    module = MMADDataModule(str(root), **{**args, **kwargs})
    module.setup("test")
    return module


# The scripts' texts, written out from jam-cc/MMAD @ f9a0e6fd (evaluation/examples/): the
# instruction of GPT4/gpt4v.py (a triple-quoted string), then each script's own assembly.
OFFICIAL_INSTRUCTION = (
    "\nYou are an industrial inspector who checks products by images. You should judge whether "
    "there is a defect in the query image and answer the questions about it.\n"
    "Answer with the option's letter from the given choices directly.\n"
)
Q1 = "Question 1: Anomaly Detection? \nA. Yes.\nB. No.\n"
Q2 = "Question 2: Defect Classification? \nA. first\nB. second\nC. third\nD. fourth\n"
EXPECTED = {  # user turns for broken_large/000.png's second question, 1-shot
    "gpt4v": (
        "Following is 1 image of normal sample, which can be used as a template to compare.<image>"
        "Following is the query image: <image>Following is the question list: " + Q1 + Q2
    ),
    "qwen": (
        OFFICIAL_INSTRUCTION + "Answer with the option's letter from the given choices directly."
        "Following is/are 1 image of normal sample, which can be used as a template to compare the image being "
        "queried.Picture 1: <image>\nFollowing is the query image: Picture 2: <image>\n"
        "Following is the question list: " + Q2
    ),
    "internvl": (
        OFFICIAL_INSTRUCTION + "Following is/are 1 image of normal sample, which can be used as a template "
        "to compare the image being queried.\n <image>\n\nFollowing is the query image: \n<image> \n"
        "Following is the question list. Answer with the option's letter from the given choices directly: \n"
        + Q2
        + "\n"
    ),
    "llava": (
        OFFICIAL_INSTRUCTION + "\nFollowing is 1 image of normal sample:<image>\nTest image: \n<image>\n"
        "Following is new question list: \nDefect Classification? \nA. first\nB. second\nC. third\nD. fourth\n"
    ),
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_query_script_writes_its_official_prompt(name):
    conversation = [present_options(q) for q in load_questions("unused", MMAD) if q.image == MMAD_KEYS[1]]
    script = SCRIPTS[name]
    assert script.render(conversation[:2], 1, OFFICIAL_INSTRUCTION) == EXPECTED[name]


def test_zero_shot_prompts_have_only_the_query_image():
    question = [present_options(load_questions("unused", MMAD)[6])]  # broken_large/001.png, question 0
    assert SCRIPTS["llava"].render(question, 0, OFFICIAL_INSTRUCTION) == (
        OFFICIAL_INSTRUCTION + "\nTest image: \n<image>\nFollowing is new question list: \n"
        "Anomaly Detection? \nA. Yes.\nB. No.\n"
    )
    assert SCRIPTS["gpt4v"].render(question, 0, OFFICIAL_INSTRUCTION) == (
        "Following is the query image: <image>Following is the question list: " + Q1
    )
    for name, script in SCRIPTS.items():
        assert script.render(question, 0, OFFICIAL_INSTRUCTION).count("<image>") == 1, name
        assert script.render(question, 2, OFFICIAL_INSTRUCTION).count("<image>") == 3, name


def test_the_scripts_extraction_and_decoding():
    assert {n: (s.shuffle_options, s.last_letter, s.closest_option) for n, s in SCRIPTS.items()} == {
        "gpt4v": (False, True, False),
        "qwen": (False, True, True),
        "internvl": (False, True, False),
        "llava": (True, False, True),
    }
    assert SCRIPTS["llava"].decoding == {
        "do_sample": True,
        "temperature": 0.2,
        "top_p": None,
        "num_beams": 1,
        "max_new_tokens": 64,
    }
    assert SCRIPTS["internvl"].decoding == {"do_sample": False, "max_new_tokens": 128}
    assert SCRIPTS["qwen"].decoding == {"do_sample": True, "top_k": 0, "top_p": 0.3, "max_new_tokens": 512}
    assert SCRIPTS["gpt4v"].decoding["max_new_tokens"] == 600 and SCRIPTS["gpt4v"].system_instruction


def test_the_data_module_uses_the_scripts_settings(mmad_root, tokenizer_dir, vision_dir):
    llava = data_module(mmad_root, tokenizer_dir, vision_dir)  # the default script
    evaluation = llava.evaluation()
    assert (llava.shuffle, evaluation.last_letter, evaluation.closest_option) == (True, False, True)
    assert evaluation.generate_kwargs == SCRIPTS["llava"].decoding
    assert evaluation.setting.startswith("1-shot (random templates), shuffled options (seed 0), official decoding")
    assert "query script llava (LLaVA_Query/llava_query.py @ f9a0e6fd): first letter A–E" in evaluation.setting
    greedy = data_module(mmad_root, tokenizer_dir, vision_dir, prompt="qwen", decoding="greedy", last_letter=False)
    evaluation = greedy.evaluation()
    assert (greedy.shuffle, evaluation.last_letter, evaluation.generate_kwargs) == (False, False, {"do_sample": False})
    assert evaluation.setting.endswith("letter overridden: first")
    gpt4v = data_module(mmad_root, tokenizer_dir, vision_dir, prompt="gpt4v", shots=0)
    question, _, text = gpt4v.items[4]  # broken_large/000.png #2: its questions 1-3 in one list
    assert (
        question.index == 2
        and text.count("Question ") == 3
        and text.endswith("Question 3: Object Structure? \nA. first\nB. second\nC. third\nD. fourth\n")
    )
    prompt = gpt4v.format.tokenizer.decode(
        MMADPrompts(gpt4v.items, gpt4v.format, gpt4v.system).example(question, gpt4v.items[4][1], text, {})["input_ids"]
    )
    assert prompt.startswith("<|im_start|>system\n" + OFFICIAL_INSTRUCTION + "<|im_end|>\n<|im_start|>user\n")
    with pytest.raises(ValueError, match=r"prompt must be one of \['gpt4v', 'qwen', 'internvl', 'llava'\], got 'blip'"):
        data_module(mmad_root, tokenizer_dir, vision_dir, prompt="blip")


def test_options_are_relettered_and_shuffled_with_the_answer_remapped():
    question = load_questions(
        "unused",
        {
            "X/a/good/0.png": {
                "conversation": [
                    {
                        "Question": "q",
                        "Options": {"B": "bee", "C": "sea", "D": "dee"},
                        "Answer": "C",
                        "type": "Object Details",
                    }
                ]
            }
        },
    )[0]
    kept = present_options(question)
    assert kept.options == {"A": "bee", "B": "sea", "C": "dee"} and kept.answer == "B"
    orders = {tuple(present_options(question, shuffle=True, seed=s).options.values()) for s in range(20)}
    assert len(orders) == 6  # all 3! orders occur over seeds
    for seed in range(20):
        shown = present_options(question, shuffle=True, seed=seed)
        assert shown.options[shown.answer] == "sea"
        assert shown == present_options(question, shuffle=True, seed=seed)  # the same every run


def test_the_data_module_asks_every_question_with_its_templates(mmad_root, tokenizer_dir, vision_dir):
    data = data_module(mmad_root, tokenizer_dir, vision_dir, shots=1, templates="similar", prompt="qwen")
    batches = list(data.test_dataloader())
    rows = [(m, v) for b in batches for m, v in zip(b["meta"], b["valid"].tolist())]
    assert [(m["image"], m["question_index"]) for m, _ in rows] == [
        (q.image, q.index) for q in load_questions(mmad_root / "mmad.json")
    ]
    assert all(valid for _, valid in rows)
    first = batches[0]
    assert first["pixel_values"].shape == (4, 2, 32, 32, 3) and first["pixel_values"].dtype == torch.uint8
    image_id = data.format.chat.image_token_id
    assert ((first["input_ids"] == image_id).sum(1) == 2 * 3).all()  # template + query, 3 slots each
    assert first["choice_ids"].tolist() == [data.format.tokenizer.convert_tokens_to_ids(x) for x in "ABCD"]
    # similar_templates is the reversed list here: its first template is the second image
    paths = data.items[0][1]
    assert paths[0].name == "001.png" and paths[1] == mmad_root / MMAD_KEYS[0]


def test_every_question_once_across_ranks_and_workers_in_equal_counts(mmad_root, tokenizer_dir, vision_dir):
    data = data_module(mmad_root, tokenizer_dir, vision_dir, shots=0)
    seen, counts = [], []
    for rank in range(2):
        dataset = MMADPrompts(data.items, data.format, rank=rank, world_size=2)
        loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=2)
        examples = list(loader)
        counts.append(len(examples))
        seen += [(e["meta"]["image"], e["meta"]["question_index"]) for e in examples if e["valid"]]
    assert counts == [4 * 2, 4 * 2]  # 13 questions over 4 slots: 4 each, padding included
    assert sorted(seen) == sorted((q.image, q.index) for q in load_questions(mmad_root / "mmad.json"))


def test_missing_images_and_templates_are_named(mmad_root, tokenizer_dir, vision_dir):
    (mmad_root / MMAD_KEYS[1]).unlink()
    with pytest.raises(FileNotFoundError, match=r"1 MMAD image\(s\) missing .*broken_large/000.png"):
        data_module(mmad_root, tokenizer_dir, vision_dir)
    entries = json.loads((mmad_root / "mmad.json").read_text())
    entries[MMAD_KEYS[0]]["random_templates"] = []
    (mmad_root / "mmad.json").write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=f"entry '{MMAD_KEYS[0]}' field 'random_templates' needs at least 1"):
        data_module(mmad_root, tokenizer_dir, vision_dir)
    with pytest.raises(FileNotFoundError, match="data_root .*nowhere is not a folder"):
        data_module(mmad_root / "nowhere", tokenizer_dir, vision_dir)


def test_an_unreadable_image_is_counted_and_its_questions_kept(mmad_root, tokenizer_dir, vision_dir):
    (mmad_root / MMAD_KEYS[0]).write_bytes(b"not a png")
    data = data_module(mmad_root, tokenizer_dir, vision_dir, shots=0, batch_size=16)
    batch = next(iter(data.test_dataloader()))
    errors = [m for m in batch["meta"] if "error" in m]
    assert [m["question_index"] for m in errors] == [0, 1] and batch["skipped"] == 2  # counted per question
    evaluation = data.evaluation()
    for meta in batch["meta"]:
        evaluation.add(meta, meta["answer"], [0.0] * 4)  # right answers, but not for the unreadable image
    assert [r["answer"] for r in evaluation.rows[:3]] == ["", "", "A"]


def test_maugpt_test_on_mmad_writes_both_scoring_modes(mmad_root, tiny_base, synthetic_dir, tmp_path):
    from maugpt.training.cli import run
    from tests.training.conftest import AMOE, stage_config

    config = stage_config(tmp_path, tiny_base, synthetic_dir, 2, batches=1, adapter=AMOE)
    run(["fit", "--config", config])
    last = str(tmp_path / "stage2" / "checkpoints" / "last.ckpt")
    recipe = Path(__file__).parents[2] / "configs" / "eval" / "mmad.yaml"
    cli = run(
        [
            "test",
            "--config",
            str(recipe),
            "--ckpt_path",
            last,
            "--data.init_args.data_root",
            str(mmad_root),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.shuffle_options",
            "true",
            "--trainer.default_root_dir",
            str(tmp_path / "mmad"),
            "--trainer.logger",
            "false",
            "--trainer.enable_progress_bar",
            "false",
            "--model.init_args.max_new_tokens",
            "4",
        ]
    )
    assert cli.model.hparams.max_new_tokens == 4  # the command line wins over the checkpoint's 64
    folder = tmp_path / "mmad" / "evaluation"
    rows = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [(r["image"], r["question_index"]) for r in rows] == [
        (q.image, q.index) for q in load_questions(mmad_root / "mmad.json")
    ]
    assert all(r["likelihood_answer"] in r["options"] for r in rows)
    for r in rows:  # each answer's own result, in the letters it was shown
        assert r["letter"] in (None, *r["options"]) and r["correct"] == (r["letter"] == r["correct_letter"])
        assert r["likelihood_letter"] == r["likelihood_answer"]
        assert r["likelihood_correct"] == (r["likelihood_answer"] == r["correct_letter"])
        assert r["dataset"] == r["image"].split("/")[0]
    assert any(
        list(r["options"].values()) != list(MMAD[r["image"]]["conversation"][r["question_index"]]["Options"].values())
        for r in rows
    )  # shuffled
    markdown = (folder / "tables.md").read_text()
    assert markdown.startswith(
        f"MMAD: {QUESTIONS} questions; 1-shot (random templates), shuffled options (seed 0), "
        "official decoding; questions with unreadable images: 0\n\nquery script llava"
    )
    assert "### Generation:" in markdown and "### Likelihood:" in markdown
    metrics = cli.trainer.callback_metrics
    tool = Path(__file__).parents[2] / "tools" / "score_mmad.py"
    for mode, field in (("generation", "answer"), ("likelihood", "likelihood_answer")):
        # the written predictions score the same with the standalone tool
        done = subprocess.run(
            [
                sys.executable,
                str(tool),
                "--questions",
                str(mmad_root / "mmad.json"),
                "--predictions",
                str(folder / "predictions.jsonl"),
                "--field",
                field,
                "--script",
                "llava",
                "--csv",
                str(tmp_path / f"{mode}.csv"),
                "--scored",
                str(tmp_path / f"{mode}.jsonl"),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        assert (tmp_path / f"{mode}.csv").read_text() == (folder / f"mmad_{mode}.csv").read_text()
        rescored = [json.loads(line) for line in (tmp_path / f"{mode}.jsonl").read_text().splitlines()]
        assert rescored == rows  # the same letters and verdicts from the written answers alone
        average = float((folder / f"mmad_{mode}.csv").read_text().splitlines()[-1].split(",")[-1])
        assert metrics[f"test/mmad/{mode}/average"].item() == pytest.approx(average, abs=1e-4)
    # Two processes (DDP, gloo): each asks its share, rank 0 gathers and scores every question once.
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "maugpt.cli",
            "test",
            "--config",
            str(recipe),
            "--ckpt_path",
            last,
            "--data.init_args.data_root",
            str(mmad_root),
            "--data.init_args.num_workers",
            "0",
            "--data.init_args.batch_size",
            "3",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.accelerator",
            "cpu",
            "--trainer.logger",
            "false",
            "--trainer.default_root_dir",
            str(tmp_path / "mmad2"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert two.returncode == 0, two.stderr[-3000:]
    gathered = [json.loads(line) for line in (tmp_path / "mmad2" / "evaluation" / "predictions.jsonl").open()]
    assert [(r["image"], r["question_index"]) for r in gathered] == [(r["image"], r["question_index"]) for r in rows]
    tables = (tmp_path / "mmad2" / "evaluation" / "tables.md").read_text()
    assert tables.startswith(f"MMAD: {QUESTIONS} questions;") and "### Likelihood:" in tables  # all ranks' rows


def test_more_slots_than_questions_pad_without_counting_unreadable_questions_twice(
    mmad_root, tokenizer_dir, vision_dir
):
    (mmad_root / MMAD_KEYS[0]).write_bytes(b"not a png")  # the first question's image: also the padding's
    data = data_module(mmad_root, tokenizer_dir, vision_dir, shots=0)
    slots = [list(MMADPrompts(data.items, data.format, rank=r, world_size=16)) for r in range(16)]
    assert [len(s) for s in slots] == [1] * 16
    assert sum(e["valid"] for s in slots for e in s) == QUESTIONS
    assert sum(e["skipped"] for s in slots for e in s) == 2  # the image's 2 questions, not the padding copies
