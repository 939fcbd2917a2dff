"""Injection by name pattern, freezing, saving and loading the adapter alone, unwrapping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maugpt.adapters import (
    ALL_PROJECTIONS,
    AMoELoRA,
    LoRA,
    LoRAMoE,
    adapter_layers,
    adapter_state_dict,
    inject,
    load_adapter,
    read_adapter_config,
    save_adapter,
    unwrap,
)
from tests.conftest import randomize_adapters, tiny_causal_lm


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
@pytest.mark.parametrize(
    "adapter, per_block",
    [
        (LoRA(), 7),
        (LoRAMoE(), 3),
        (AMoELoRA(experts=4, rank=2), 7),
    ],
    ids=["lora", "loramoe", "amoe_lora"],
)
def test_injects_into_real_architectures(arch, adapter, per_block):
    model = tiny_causal_lm(arch)
    names = inject(model, adapter)
    assert len(names) == per_block * 2
    assert {n.rsplit(".", 1)[-1] for n in names} == set(adapter.targets)
    assert [n for n, _ in adapter_layers(model)] == names
    assert not isinstance(model.lm_head, type(model.get_submodule(names[0])))


def test_glob_patterns_select_by_full_name():
    model = tiny_causal_lm()
    names = inject(model, LoRA(targets=["model.layers.1.mlp.*"]))
    assert names == ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj", "model.layers.1.mlp.down_proj"]


def test_a_target_matching_nothing_lists_the_linear_layers():
    model = tiny_causal_lm()
    with pytest.raises(ValueError) as err:
        inject(model, LoRA(targets=["q_proj", "query"]))
    message = str(err.value)
    assert "['query'] match no nn.Linear layer" in message
    assert "'model.layers.*.self_attn.q_proj'" in message and "'lm_head'" in message
    assert not any(True for _ in adapter_layers(model))  # nothing was half-injected


def test_injecting_twice_is_refused():
    model = tiny_causal_lm()
    inject(model, LoRA())
    with pytest.raises(ValueError, match="already has adapters"):
        inject(model, LoRAMoE())


def test_injection_works_on_any_module_with_linear_layers():
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    names = inject(net, AMoELoRA(experts=2, rank=2, targets=["0", "2"]))
    assert names == ["0", "2"]
    assert net(torch.randn(3, 5, 8)).shape == (3, 5, 4)


@pytest.mark.parametrize(
    "adapter",
    [LoRA(rank=4), LoRAMoE(experts=4, rank=2, dropout=0.0), AMoELoRA(experts=4, rank=2, hyper_hidden=8)],
    ids=["lora", "loramoe", "amoe_lora"],
)
def test_save_then_load_reproduces_the_outputs(tmp_path, adapter):
    ids = torch.randint(1, 96, (2, 7), generator=torch.Generator().manual_seed(0))
    trained = tiny_causal_lm()
    inject(trained, adapter)
    trained.double()
    randomize_adapters(trained, seed=11)
    path = save_adapter(trained, tmp_path / "adapter.safetensors", adapter)
    assert read_adapter_config(path) == adapter.to_config()

    fresh = tiny_causal_lm()  # same frozen base (same seed), new adapter weights
    inject(fresh, adapter)
    fresh.double()
    assert not torch.equal(fresh(ids).logits, trained(ids).logits)
    load_adapter(fresh, path)
    assert torch.equal(fresh(ids).logits, trained(ids).logits)
    saved = adapter_state_dict(trained)
    assert all(k.startswith("model.layers.") and ".base." not in k for k in saved)


def test_save_never_overwrites_without_being_asked(tmp_path):
    model = tiny_causal_lm()
    inject(model, LoRA())
    path = save_adapter(model, tmp_path / "a.safetensors")
    before = path.read_bytes()
    randomize_adapters(model)
    with pytest.raises(FileExistsError, match="a.safetensors exists"):
        save_adapter(model, path)
    assert path.read_bytes() == before
    save_adapter(model, path, overwrite=True)
    assert path.read_bytes() != before


def test_loading_a_file_for_another_adapter_names_the_mismatch(tmp_path):
    model = tiny_causal_lm()
    inject(model, LoRA(rank=4))
    path = save_adapter(model, tmp_path / "r4.safetensors", LoRA(rank=4))
    other = tiny_causal_lm()
    inject(other, LoRA(rank=8, targets=["q_proj", "v_proj"]))
    with pytest.raises(ValueError) as err:
        load_adapter(other, path)
    message = str(err.value)
    assert "r4.safetensors does not fit" in message and "'rank': 4" in message
    assert "0 missing" in message and "20 unexpected" in message and "8 of another shape" in message
    assert "model.layers.0.self_attn.q_proj.A: file (32, 4) vs model (32, 8)" in message
    with pytest.raises(FileNotFoundError, match="nope.safetensors does not exist"):
        load_adapter(other, tmp_path / "nope.safetensors")


def test_unwrap_restores_the_original_modules_and_trainability():
    model = tiny_causal_lm()
    model.model.embed_tokens.weight.requires_grad_(False)  # the caller's own choice, to be kept
    originals = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ids = torch.randint(1, 96, (2, 7))
    before = model(ids).logits
    inject(model, AMoELoRA(experts=2, rank=2))
    randomize_adapters(model)
    model.double()
    assert all(not p.requires_grad for n, p in model.named_parameters() if ".base." in n)
    assert not model._forward_hooks  # no per-forward clean-up: nothing outlives a forward
    unwrap(model)
    assert {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)} == originals
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    assert torch.equal(model(ids).logits, before)
    assert set(ALL_PROJECTIONS) <= {n.rsplit(".", 1)[-1] for n in originals}
