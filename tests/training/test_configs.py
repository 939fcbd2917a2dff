"""Every shipped training recipe parses with the CLI; the 4B one builds on the meta device (no downloads)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import yaml

from maugpt.training.cli import run

CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize(
    "name", ["tiny/stage1.yaml", "tiny/stage2.yaml", "mau-gpt-4b/stage1.yaml", "mau-gpt-4b/stage2.yaml"]
)
def test_recipe_parses(name, capsys):
    with pytest.raises(SystemExit) as done:
        run(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert done.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    source = yaml.safe_load((CONFIGS / name).read_text())
    assert printed["model"]["init_args"]["stage"] == source["model"]["init_args"]["stage"]
    assert printed["data"]["init_args"]["data_dir"] == source["data"]["init_args"]["data_dir"]
    # linked from the model, so never set twice in a recipe
    assert "tokenizer" not in printed["data"]["init_args"] and "tokenizer" not in source["data"]["init_args"]


def test_a_mistyped_key_names_the_key(capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(CONFIGS / "tiny/stage2.yaml"), "--model.init_args.learning_rate", "1e-3"])
    assert "learning_rate" in capsys.readouterr().err


@pytest.mark.parametrize("adapter", ["lora", "loramoe", "amoe_lora"])
def test_stage_2_swaps_adapters_from_their_recipes(adapter, capsys):
    with pytest.raises(SystemExit):
        run(
            [
                "fit",
                "--config",
                str(CONFIGS / "tiny/stage2.yaml"),
                "--model.init_args.adapter",
                str(CONFIGS / "adapters" / f"{adapter}.yaml"),
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    recipe = yaml.safe_load((CONFIGS / "adapters" / f"{adapter}.yaml").read_text())
    assert printed["model"]["init_args"]["adapter"]["class_path"] == recipe["class_path"]
    # every argument the file states wins over the stage recipe's adapter (its scale convention too)
    swapped = printed["model"]["init_args"]["adapter"]["init_args"]
    assert {key: swapped[key] for key in recipe["init_args"]} == recipe["init_args"]


MIXTURE_RECIPES = [
    "tiny/stage2.yaml",
    "mau-gpt-4b/stage2.yaml",
    "baselines/qwen2.5-vl-amoe.yaml",
    "baselines/qwen3-vl-amoe.yaml",
    "adapters/amoe_lora.yaml",
    "adapters/loramoe.yaml",
]


@pytest.mark.parametrize("name", MIXTURE_RECIPES)
def test_every_mixture_recipe_states_its_scale_convention(name):
    source = yaml.safe_load((CONFIGS / name).read_text())
    adapter = source if "class_path" in source else source["model"]["init_args"]["adapter"]
    # the tiny recipe takes the effective-step convention its sweeps chose; the rest keep Eq. 3's
    expected = "total_rank" if name == "tiny/stage2.yaml" else "paper"
    assert adapter["init_args"]["scaling"] == expected


def test_the_convention_test_covers_every_mixture_recipe():
    mixtures = sorted(
        str(p.relative_to(CONFIGS))
        for p in CONFIGS.rglob("*.yaml")
        if "LoRAMoE" in (text := p.read_text()) or "AMoELoRA" in text
    )
    assert mixtures == sorted(MIXTURE_RECIPES)  # a new mixture recipe joins MIXTURE_RECIPES


FIXTURES = Path(__file__).parents[1] / "fixtures" / "hub"


@pytest.mark.parametrize("name", ["mau-gpt-4b/stage1.yaml", "mau-gpt-4b/stage2.yaml"])
def test_4b_recipe_parses_and_names_hub_models(name, capsys):
    with pytest.raises(SystemExit):
        run(["fit", "--config", str(CONFIGS / name), "--config", str(CONFIGS / "strategy/fsdp.yaml"), "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    model = printed["model"]["init_args"]
    assert (model["llm"], model["vision_encoder"]) == (
        "Qwen/Qwen2.5-3B-Instruct",
        "vit_so400m_patch14_siglip_384.webli",
    )
    assert printed["trainer"]["strategy"]["class_path"].endswith("ModelParallelStrategy")
    global_batch = printed["trainer"]["devices"] * printed["data"]["init_args"]["batch_size"]
    assert global_batch == (256 if model["stage"] == 1 else 128)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "fsdp1"])
def test_strategy_recipes_compose_with_a_stage_recipe(strategy, capsys):
    with pytest.raises(SystemExit):
        run(
            [
                "fit",
                "--config",
                str(CONFIGS / "tiny/stage2.yaml"),
                "--config",
                str(CONFIGS / f"strategy/{strategy}.yaml"),
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)["trainer"]["strategy"]
    recipe = yaml.safe_load((CONFIGS / f"strategy/{strategy}.yaml").read_text())["trainer"]["strategy"]
    assert printed["class_path"] == recipe["class_path"]
    assert all(printed["init_args"][k] == v for k, v in recipe["init_args"].items())


def test_4b_stage_2_builds_on_the_meta_device_with_the_expected_parameter_count(tiny_base, tmp_path):
    """The paper's scale, without downloading: Qwen2.5-3B-Instruct's published config.json (with the
    tiny tokenizer beside it) and SigLIP so400m from timm's own config, built on the meta device."""
    llm = tmp_path / "Qwen2.5-3B-Instruct"
    shutil.copytree(tiny_base["llm"], llm)
    shutil.copy(FIXTURES / "Qwen2.5-3B-Instruct" / "config.json", llm / "config.json")
    with torch.device("meta"):
        cli = run(
            [
                "--config",
                str(CONFIGS / "mau-gpt-4b/stage2.yaml"),
                "--model.init_args.llm",
                str(llm),
                "--model.init_args.init_from",
                "null",
                "--model.init_args.llm_pretrained",
                "false",
                "--model.init_args.vision_pretrained",
                "false",
                "--trainer.accelerator",
                "cpu",
                "--trainer.devices",
                "1",
                "--trainer.logger",
                "false",
            ],
            subcommand=False,
        )
    model = cli.model.model
    frozen_llm = sum(p.numel() for p in model.llm.parameters() if not p.requires_grad)
    assert frozen_llm == 3_085_938_688  # Qwen2.5-3B's published size (tied embeddings)
    assert (model.vision.dim, model.image_tokens) == (1152, 729)
    assert cli.datamodule.hparams.image_tokens == 729
    vision = sum(p.numel() for p in model.vision.parameters())
    assert vision == 397_745_440  # SigLIP so400m/14 without its last block, head and final norm
    assert cli.model.parameter_summary()["projector"] == 1152 * 2048 + 2048 + 2048 * 2048 + 2048
    # AMoE-LoRA 16 × 4 (hypernetwork hidden 64) on the 7 projections of each of 36 layers: experts,
    # router, W_a and W_b, hypernetwork (the formula of tests/adapters/test_protocol.py)
    n, r, h = 16, 4, 64
    dims = [(2048, 2048), (2048, 256), (2048, 256), (2048, 2048), (2048, 11008), (2048, 11008), (11008, 2048)]
    per_layer = sum(n * r * (i + o) + i * n + r * (i + o) + i * h + h + h * r * r + r * r for i, o in dims)
    assert cli.model.parameter_summary()["adapter"] == 36 * per_layer
    total = sum(p.numel() for p in cli.model.parameters())
    assert 3.4e9 < total < 4.1e9 and all(p.is_meta for p in cli.model.parameters())


def test_the_mmad_eval_recipe_composes_with_a_training_recipe(capsys):
    with pytest.raises(SystemExit):
        run(
            [
                "test",
                "--config",
                str(CONFIGS / "mau-gpt-4b/stage2.yaml"),
                "--config",
                str(CONFIGS / "eval/mmad.yaml"),
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["data"]["class_path"] == "maugpt.mmad.data.MMADDataModule"
    assert printed["data"]["init_args"]["shots"] == 1 and printed["data"]["init_args"]["templates"] == "random"
    assert printed["model"]["init_args"]["max_new_tokens"] == 16
    assert printed["model"]["init_args"]["llm"] == "Qwen/Qwen2.5-3B-Instruct"
