"""Adapters are chosen by class_path / init_args, as LightningCLI YAML files do."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from maugpt.adapters import Adapter, AMoELoRA, LoRA, LoRAMoE


def parse(text: str) -> Adapter:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--adapter", type=Adapter)
    return parser.instantiate(parser.parse_string(text)).adapter


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "adapter:\n  class_path: maugpt.adapters.LoRA\n  init_args: {rank: 64, alpha: 128}\n",
            LoRA(rank=64, alpha=128),
        ),
        ("adapter:\n  class_path: maugpt.adapters.LoRAMoE\n", LoRAMoE()),
        (
            "adapter:\n  class_path: maugpt.adapters.AMoELoRA\n  init_args:\n    experts: 16\n    rank: 4\n"
            "    targets: [q_proj, v_proj]\n",
            AMoELoRA(experts=16, rank=4, targets=["q_proj", "v_proj"]),
        ),
    ],
)
def test_yaml_selects_and_configures_the_adapter(text, expected):
    adapter = parse(text)
    assert type(adapter) is type(expected) and adapter == expected


@pytest.mark.parametrize("adapter", [LoRA(rank=2), LoRAMoE(experts=3, balance_weight=0.0), AMoELoRA(hyper_hidden=32)])
def test_to_config_round_trips_through_yaml(adapter):
    assert parse(yaml.safe_dump({"adapter": adapter.to_config()})) == adapter


def test_loramoe_defaults_are_the_official_release():
    adapter = LoRAMoE()
    assert (adapter.experts, adapter.rank, adapter.alpha) == (8, 4, 32.0)
    assert adapter.targets == ("gate_proj", "up_proj", "down_proj")


def test_an_unknown_init_arg_is_rejected_with_its_name():
    with pytest.raises(Exception, match="experts"):
        parse("adapter:\n  class_path: maugpt.adapters.LoRA\n  init_args: {experts: 4}\n")


def test_an_invalid_value_from_yaml_names_the_argument():
    with pytest.raises(ValueError, match="^rank must be > 0, got 0"):
        parse("adapter:\n  class_path: maugpt.adapters.AMoELoRA\n  init_args: {rank: 0}\n")


CONFIGS = sorted((Path(__file__).parents[2] / "configs" / "adapters").glob("*.yaml"))


class Model:
    """Stands in for the LightningModule: LightningCLI adds its signature the same way."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_each_shipped_adapter_recipe_loads_as_a_model_argument(path):
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(Model, "model", sub_configs=True)
    adapter = parser.instantiate(parser.parse_args(["--model.adapter", str(path)])).model.adapter
    assert adapter == parse(f"adapter:\n{textwrap.indent(path.read_text(), '  ')}")
    assert adapter.to_config()["init_args"] == yaml.safe_load(path.read_text())["init_args"]


def test_the_recipes_are_the_three_adapters():
    assert [p.stem for p in CONFIGS] == ["amoe_lora", "lora", "loramoe"]


@pytest.mark.parametrize("kind", [LoRAMoE, AMoELoRA])
def test_align_is_an_argument_that_pads_the_fused_widths_on_gpus_only(kind):
    import torch
    from torch import nn

    cuda, cpu = torch.device("cuda"), torch.device("cpu")  # device objects only: nothing runs on them
    anomaly = kind is AMoELoRA
    # fused widths: down [A | (W_a) | W_g] 80 or 84, up [B; (W_b)] 64 or 68
    pads = {8: (4, 4) if anomaly else (0, 0), 1: (0, 0), 32: (12, 28) if anomaly else (16, 0)}
    for align, (pad_down, pad_up) in pads.items():
        adapter = kind(experts=16, rank=4, align=align)
        assert adapter.to_config()["init_args"]["align"] == align
        assert parse(yaml.safe_dump({"adapter": adapter.to_config()})) == adapter
        layer = adapter.wrap(nn.Linear(16, 24, bias=False))
        width = 16 * 4 + 16 + (4 if anomaly else 0)
        assert (layer.alignment_padding(width, cuda), layer.alignment_padding(width, cpu)) == (pad_down, 0)
        assert layer.spec(cuda).pad_up == pad_up and layer.spec(cpu).pad_up == 0
    with pytest.raises(ValueError, match="^align must be > 0, got 0"):
        kind(align=0)
