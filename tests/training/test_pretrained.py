"""Off-the-shelf VLMs through ``maugpt test`` on MAU-Set and MMAD with the baseline recipes (eight
families' tiny random models in place of the hub ids), the exact prompts they are asked, and one
AMoE-LoRA fine-tune of Qwen2.5-VL from its recipe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from maugpt.data.datamodule import MAUSetDataModule
from maugpt.mmad.data import MMADDataModule, MMADPrompts
from maugpt.mmad.scoring import load_questions
from maugpt.training.cli import run
from tests.conftest import VLM_FAMILIES
from tests.mmad.test_data import QUESTIONS, write_tree

CONFIGS = Path(__file__).parents[2] / "configs"
LOCAL = [
    "--model.init_args.dtype",
    "float32",
    "--trainer.precision",
    "32-true",
    "--trainer.accelerator",
    "cpu",
    "--trainer.logger",
    "false",
    "--trainer.enable_progress_bar",
    "false",
    "--data.init_args.num_workers",
    "0",
    "--model.init_args.max_new_tokens",
    "4",
]
SMALL = [
    "--model.init_args.adapter.init_args.experts",
    "2",
    "--model.init_args.adapter.init_args.hyper_hidden",
    "8",
    "--model.init_args.gradient_checkpointing",
    "false",
]  # a small AMoE-LoRA in the fine-tuning recipe
QWEN_IMAGE = "<|vision_start|><|image_pad|><|vision_end|>"


def wrapped(family: str, turn: str) -> str:
    """``turn`` (a user turn with ``<image>`` placeholders) as the family's published template renders it."""
    if family == "qwen2.5-vl":
        return (
            "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            + turn.replace("<image>", QWEN_IMAGE)
            + "<|im_end|>\n<|im_start|>assistant\n"
        )
    if family == "qwen3-vl":  # as Qwen2.5-VL without the default system turn
        return "<|im_start|>user\n" + turn.replace("<image>", QWEN_IMAGE) + "<|im_end|>\n<|im_start|>assistant\n"
    if family in ("internvl", "internvl3.5"):
        return "<|im_start|>user\n" + turn.replace("<image>", "<IMG_CONTEXT>\n") + "<|im_end|>\n<|im_start|>assistant\n"
    if family == "gemma-4":  # every text part trimmed, each image between blank lines, then the empty thought
        pieces = turn.split("<image>")
        body = pieces[0].strip() + "".join("\n\n<|image|>\n\n" + piece.strip() for piece in pieces[1:])
        return "<bos><|turn>user\n" + body + "<turn|>\n<|turn>model\n<|channel>thought\n<channel|>"
    if family == "gemma-3":  # every text part trimmed, each image its <start_of_image>
        pieces = turn.split("<image>")
        body = pieces[0].strip() + "".join("<start_of_image>" + piece.strip() for piece in pieces[1:])
        return "<bos><start_of_turn>user\n" + body + "<end_of_turn>\n<start_of_turn>model\n"
    if family == "smolvlm":  # "User:" then a space unless the turn starts with an image
        return (
            "<|im_start|>User:" + ("" if turn.startswith("<image>") else " ") + turn + "<end_of_utterance>\nAssistant:"
        )
    # LLaVA-1.5's template writes every image first, then each text part followed by a space
    return (
        "USER: "
        + "<image>\n" * turn.count("<image>")
        + "".join(piece + " " for piece in turn.split("<image>") if piece)
        + "ASSISTANT:"
    )


@pytest.mark.parametrize("family", VLM_FAMILIES)
def test_a_pretrained_vlm_is_tested_on_mauset_and_mmad_with_the_same_prompts_and_scorers(
    family, tiny_vlm, synthetic_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the recipe's relative runs/ folders land here
    folder, mauset = str(tiny_vlm(family)), str(synthetic_dir / "mauset")
    recipe = str(CONFIGS / "baselines" / f"{family}.yaml")
    # The prompts: MAU-Set's question after the image, MMAD's llava-script user turn, in the model's template.
    data = MAUSetDataModule(mauset, processor=folder, num_workers=0)
    planned = data.eval_dataset("test", prompts=True)
    first = next(iter(planned))
    assert first["text"] == wrapped(family, "<image>" + first["meta"]["question"])
    cli = run(
        [
            "test",
            "--config",
            recipe,
            "--model.init_args.vlm",
            folder,
            "--data.init_args.data_dir",
            mauset,
            "--trainer.default_root_dir",
            str(tmp_path / "mauset"),
            *LOCAL,
        ]
    )
    assert cli.datamodule.hparams.processor == folder  # linked from the model
    rows = [json.loads(line) for line in (tmp_path / "mauset" / "evaluation" / "predictions.jsonl").open()]
    assert len(rows) == len(planned.plan) and all(isinstance(r["prediction"], str) for r in rows)
    assert sorted(r["key"] for r in rows) == sorted(key for _, key, _ in planned.plan)  # every question once
    assert "test/detection_accuracy" in cli.trainer.callback_metrics

    mmad = write_tree(tmp_path / "MMAD")
    questions = MMADDataModule(str(mmad), processor=folder, num_workers=0)
    questions.setup("test")
    example = next(iter(MMADPrompts(questions.items, questions.format, questions.system)))
    assert example["text"] == wrapped(family, questions.items[0][2])
    assert len(example["images"]) == 2  # the random template, then the query image
    cli = run(
        [
            "test",
            "--config",
            recipe,
            "--config",
            str(CONFIGS / "eval" / "mmad.yaml"),
            "--model.init_args.vlm",
            folder,
            "--data.init_args.data_root",
            str(mmad),
            "--trainer.default_root_dir",
            str(tmp_path / "mmad"),
            *LOCAL,
        ]
    )
    answers = [json.loads(line) for line in (tmp_path / "mmad" / "evaluation" / "predictions.jsonl").open()]
    assert len(answers) == QUESTIONS and all(r["likelihood_answer"] in r["options"] for r in answers)
    tables = (tmp_path / "mmad" / "evaluation" / "tables.md").read_text()
    assert tables.startswith(f"MMAD: {QUESTIONS} questions; 1-shot (random templates)")


def test_two_ranks_answer_every_mmad_question_once(tiny_vlm, tmp_path):
    folder, mmad = str(tiny_vlm("qwen2.5-vl")), write_tree(tmp_path / "MMAD")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "maugpt.cli",
            "test",
            "--config",
            str(CONFIGS / "baselines" / "qwen2.5-vl.yaml"),
            "--config",
            str(CONFIGS / "eval" / "mmad.yaml"),
            "--model.init_args.vlm",
            folder,
            "--data.init_args.data_root",
            str(mmad),
            "--data.init_args.prompt",
            "qwen",
            "--data.init_args.batch_size",
            "3",
            "--trainer.devices",
            "2",
            "--trainer.strategy",
            "ddp",
            "--trainer.default_root_dir",
            str(tmp_path / "run"),
            *LOCAL,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=CONFIGS.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "evaluation" / "predictions.jsonl").open()]
    assert sorted((r["image"], r["question_index"]) for r in rows) == sorted(
        (q.image, q.index) for q in load_questions(mmad / "mmad.json")
    )
    assert (tmp_path / "run" / "evaluation" / "tables.md").read_text().startswith(f"MMAD: {QUESTIONS} questions;")


def test_fsdp_fine_tunes_a_pretrained_vlm_on_two_processes(tiny_vlm, synthetic_dir, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "maugpt.cli",
            "fit",
            "--config",
            str(CONFIGS / "baselines" / "qwen2.5-vl-amoe.yaml"),
            "--config",
            str(CONFIGS / "strategy" / "fsdp.yaml"),
            "--model.init_args.vlm",
            str(tiny_vlm("qwen2.5-vl")),
            "--data.init_args.data_dir",
            str(synthetic_dir / "mauset"),
            "--trainer.devices",
            "2",
            "--trainer.max_epochs",
            "1",
            "--data.init_args.batches_per_epoch",
            "2",
            "--data.init_args.batch_size",
            "2",
            "--data.init_args.eval_batch_size",
            "4",
            "--trainer.limit_val_batches",
            "1",
            *SMALL,
            *LOCAL,
            "--trainer.logger",
            "true",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )  # the recipe's relative runs/
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(
        tmp_path / "runs" / "baselines" / "qwen2.5-vl-amoe" / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    assert saved["global_step"] == 2 and set(saved["state_dict"]) == set(saved["maugpt"]["trainable"])
    assert any(".visual.merger." in k for k in saved["state_dict"]) and not any(
        ".base." in k for k in saved["state_dict"]
    )


def test_the_stage_recipes_fine_tune_qwen2_5_vl_and_test_from_the_checkpoint(
    tiny_vlm, synthetic_dir, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # the recipes' relative runs/ folders land here
    folder, mauset = str(tiny_vlm("qwen2.5-vl")), str(synthetic_dir / "mauset")
    short = [
        "--model.init_args.vlm",
        folder,
        "--trainer.devices",
        "1",
        "--trainer.max_epochs",
        "1",
        "--data.init_args.batches_per_epoch",
        "2",
        "--data.init_args.batch_size",
        "2",
        "--trainer.limit_val_batches",
        "1",
        *LOCAL,
        "--trainer.logger",
        "true",
    ]
    run(
        [
            "fit",
            "--config",
            str(CONFIGS / "baselines" / "qwen2.5-vl-stage1.yaml"),
            "--data.init_args.data_dir",
            str(synthetic_dir / "captions"),
            *short,
        ]
    )
    first = tmp_path / "runs" / "baselines" / "qwen2.5-vl-stage1" / "checkpoints" / "last.ckpt"
    merger = torch.load(first, map_location="cpu", weights_only=True)["state_dict"]
    assert merger and all(".visual.merger." in n for n in merger)  # stage 1: the connector alone
    recipe = str(CONFIGS / "baselines" / "qwen2.5-vl-amoe.yaml")
    fit = run(
        [
            "--config",
            recipe,
            "--data.init_args.data_dir",
            mauset,
            "--model.init_args.init_from",
            str(first),
            "--data.init_args.eval_batch_size",
            "4",
            *SMALL,
            *short,
        ],
        subcommand=False,
    )
    assert all(torch.equal(dict(fit.model.named_parameters())[n], t) for n, t in merger.items())  # stage 1's
    fit.trainer.fit(fit.model, datamodule=fit.datamodule)
    assert fit.trainer.global_step == 2
    last = tmp_path / "runs" / "baselines" / "qwen2.5-vl-amoe" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)
    trainable = set(fit.model.trainable_names())
    assert set(saved["state_dict"]) == trainable  # the adapter and the merger, never the frozen VLM
    assert any(".visual.merger." in n for n in trainable) and any("language_model" in n for n in trainable)
    # no model in the command: the checkpoint's own settings rebuild it
    tested = run(
        [
            "test",
            "--ckpt_path",
            str(last),
            "--data",
            "maugpt.data.MAUSetDataModule",
            "--data.init_args.data_dir",
            mauset,
            "--trainer.devices",
            "1",
            "--trainer.default_root_dir",
            str(tmp_path / "test"),
            *LOCAL,
        ]
    )
    assert tested.model.hparams.vlm == folder and tested.model.hparams.adapter == fit.model.hparams.adapter
    for name, tensor in saved["state_dict"].items():
        assert torch.equal(dict(tested.model.named_parameters())[name], tensor)
    assert (tmp_path / "test" / "evaluation" / "predictions.jsonl").is_file()
    from maugpt.export import export

    with pytest.raises(ValueError, match="fine-tuned the pretrained VLM .* export writes MAU-GPT checkpoints only"):
        export(str(last), str(tmp_path / "adapter.safetensors"))


@pytest.mark.parametrize(
    "name",
    [
        "llava-1.5",
        "qwen2.5-vl",
        "internvl",
        "gemma-3",
        "smolvlm",
        "qwen3-vl",
        "gemma-4",
        "internvl3.5",
        "qwen2.5-vl-stage1",
        "qwen2.5-vl-amoe",
        "qwen3-vl-amoe",
    ],
)
def test_baseline_recipes_parse_and_name_their_hub_models(name, capsys):
    command = "fit" if name.endswith(("amoe", "stage1")) else "test"
    with pytest.raises(SystemExit):
        run([command, "--config", str(CONFIGS / "baselines" / f"{name}.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    source = yaml.safe_load((CONFIGS / "baselines" / f"{name}.yaml").read_text())["model"]["init_args"]
    assert printed["model"]["class_path"] == "maugpt.training.pretrained.PretrainedVLMModule"
    assert model["vlm"] == source["vlm"] and "/" in model["vlm"]  # a hub id
    data = yaml.safe_load((CONFIGS / "baselines" / f"{name}.yaml").read_text())["data"]["init_args"]
    assert "processor" not in printed["data"]["init_args"] and "processor" not in data  # linked from vlm
    assert model["stage"] == (2 if name.endswith("amoe") else 1)


def test_predict_asks_a_pretrained_vlm_about_a_folder(tiny_vlm, tmp_path, monkeypatch):
    from tests.mauset.releases import image

    monkeypatch.chdir(tmp_path)
    for name in ("b.png", "a.jpg"):
        image(tmp_path / "images" / name, size=(50, 70))
    (tmp_path / "images" / "c.png").write_bytes(b"not an image")
    out = tmp_path / "answers.jsonl"
    run(
        [
            "predict",
            "--config",
            str(CONFIGS / "baselines" / "smolvlm.yaml"),
            "--config",
            str(CONFIGS / "tiny" / "predict.yaml"),
            "--model.init_args.vlm",
            str(tiny_vlm("smolvlm")),
            "--data.init_args.folder",
            str(tmp_path / "images"),
            "--trainer.callbacks.init_args.path",
            str(out),
            *LOCAL,
        ]
    )
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["image"]).name for r in rows] == ["a.jpg", "b.png", "c.png"]
    assert isinstance(rows[0]["prediction"], str) and rows[2]["prediction"] is None and "error" in rows[2]


def test_the_models_processor_settings_reach_its_data(tiny_vlm, synthetic_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run(
        [
            "--config",
            str(CONFIGS / "baselines" / "qwen2.5-vl.yaml"),
            "--model.init_args.vlm",
            str(tiny_vlm("qwen2.5-vl")),
            "--model.init_args.processor_kwargs",
            "{max_pixels: 3136}",
            "--data.init_args.data_dir",
            str(synthetic_dir / "mauset"),
            *LOCAL,
        ],
        subcommand=False,
    )
    assert cli.datamodule.hparams.processor_kwargs == {"max_pixels": 3136}
    cli.datamodule.setup("test")
    assert cli.datamodule.format.processor.image_processor.size["longest_edge"] == 3136  # max_pixels, as v5 keeps it
