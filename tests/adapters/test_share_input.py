"""``share_input``: one down-projection GEMM for q/k/v and gate/up, the same parameters and outputs."""

from __future__ import annotations

import pytest
import torch

from maugpt.adapters import (
    AMoELoRA,
    AnomalyAware,
    ForwardInputs,
    LoRA,
    LoRAMoE,
    adapter_context,
    adapter_layers,
    adapter_state_dict,
    inject,
    lowrank,
)
from tests.conftest import randomize_adapters, tiny_causal_lm

ADAPTERS = {
    "lora": lambda share: LoRA(rank=4, alpha=8, share_input=share),
    "loramoe": lambda share: LoRAMoE(experts=4, rank=2, dropout=0.0, balance_weight=0.01, share_input=share),
    "amoe_lora": lambda share: AMoELoRA(experts=4, rank=2, hyper_hidden=8, share_input=share),
    "anomaly_aware": lambda share: AnomalyAware(rank=2, hyper_hidden=8, share_input=share),
}


def adapted(kind: str, share: bool):
    model = tiny_causal_lm()
    inject(model, ADAPTERS[kind](share))
    model.double().train()
    randomize_adapters(model)
    return model


def step(model):
    ids = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[1, :2] = 0
    condition = mask.bool().clone()
    condition[:, 6:] = False
    adapter_context(model).set(
        ForwardInputs(token_mask=mask.bool(), condition_mask=condition, sample_labels=torch.tensor([1, 0]))
    )
    out = model(ids, attention_mask=mask, labels=ids, use_cache=False)
    aux = [loss for _, layer in adapter_layers(model) if (loss := layer.auxiliary_loss()) is not None]
    loss = out.loss + sum(aux)
    loss.backward()
    return out.logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("kind", ADAPTERS)
def test_shared_down_projections_train_exactly_like_per_module_ones(kind):
    per_module, shared = adapted(kind, False), adapted(kind, True)
    own, theirs = adapter_state_dict(per_module), adapter_state_dict(shared)
    assert own.keys() == theirs.keys() and all(torch.equal(own[k], theirs[k]) for k in own)
    logits, grads = step(per_module)
    shared_logits, shared_grads = step(shared)
    assert (logits - shared_logits).abs().max().item() <= 1e-10
    assert grads.keys() == shared_grads.keys() and len(grads) > 0
    for name in grads:
        assert (grads[name] - shared_grads[name]).abs().max().item() <= 1e-10, name


def test_siblings_are_the_projections_that_read_one_input():
    model = adapted("amoe_lora", True)
    groups = {
        name.rsplit(".", 1)[-1]: tuple(s.name.rsplit(".", 1)[-1] for s in layer.siblings)
        for name, layer in adapter_layers(model)
        if name.startswith("model.layers.0.")
    }
    assert groups == {
        "q_proj": ("q_proj", "k_proj", "v_proj"),
        "k_proj": ("q_proj", "k_proj", "v_proj"),
        "v_proj": ("q_proj", "k_proj", "v_proj"),
        "o_proj": (),
        "gate_proj": ("gate_proj", "up_proj"),
        "up_proj": ("gate_proj", "up_proj"),
        "down_proj": (),
    }
    alone = tiny_causal_lm()
    inject(alone, AMoELoRA(experts=2, rank=2, targets=["q_proj", "o_proj"], share_input=True))
    assert all(layer.siblings == () for _, layer in adapter_layers(alone))  # q_proj has no adapted sibling


@pytest.mark.parametrize("share, gemms", [(False, 14), (True, 8)])
def test_a_shared_block_runs_one_down_projection_per_input(monkeypatch, share, gemms):
    calls = []
    original = lowrank.DownProjection

    class Counting(original):
        @classmethod
        def apply(cls, *args):
            calls.append(args[0].shape)
            return original.apply(*args)

    monkeypatch.setattr(lowrank, "DownProjection", Counting)
    step(adapted("amoe_lora", share))
    assert len(calls) == gemms  # per decoder layer: 7, or q/k/v + o + gate/up + down = 4


def test_the_option_survives_the_config_round_trip():
    adapter = AMoELoRA(experts=4, rank=2, share_input=True)
    assert adapter.to_config()["init_args"]["share_input"] is True
    assert AMoELoRA(**adapter.init_args()) == adapter != AMoELoRA(experts=4, rank=2)
