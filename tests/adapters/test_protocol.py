"""What every adapter must satisfy, checked for all three through the same protocol."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maugpt.adapters import (
    AMoELoRA,
    AnomalyAware,
    ForwardInputs,
    LoRA,
    LoRAMoE,
    adapter_context,
    adapter_layers,
    auxiliary_loss,
    count_parameters,
    inject,
)
from maugpt.adapters.anomaly_aware import AnomalyAwareLinear
from tests.conftest import randomize_adapters, tiny_causal_lm

ADAPTERS = {
    "lora": lambda: LoRA(rank=4, alpha=8),
    "loramoe": lambda: LoRAMoE(experts=4, rank=2, dropout=0.0),
    "amoe_lora": lambda: AMoELoRA(experts=4, rank=2, hyper_hidden=8),
    "amoe_lora_total_rank": lambda: AMoELoRA(
        experts=4, rank=2, hyper_hidden=8, scaling="total_rank", anomaly_alpha=3.0
    ),
    "anomaly_aware": lambda: AnomalyAware(rank=2, hyper_hidden=8),
}


@pytest.mark.parametrize("kind", ADAPTERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fresh_adapter_leaves_the_output_exactly_unchanged(kind, dtype):
    model = tiny_causal_lm(dtype=dtype)
    ids = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    before = model(ids).logits
    inject(model, ADAPTERS[kind]())
    model.to(dtype)
    assert torch.equal(model(ids).logits, before)


@pytest.mark.parametrize("kind", ADAPTERS)
def test_only_adapter_parameters_receive_gradients(kind):
    model = tiny_causal_lm()
    inject(model, ADAPTERS[kind]())
    model.double().train()
    ids = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    model(ids, labels=ids).loss.backward()
    adapter_ids = {id(p) for _, layer in adapter_layers(model) for p in layer.adapter_parameters().values()}
    frozen = [n for n, p in model.named_parameters() if id(p) not in adapter_ids]
    assert frozen and all(model.get_parameter(n).grad is None for n in frozen)
    assert all(not model.get_parameter(n).requires_grad for n in frozen)
    # B is zero at the start, so A gets no gradient yet; B (and W_b) must.
    for _, layer in adapter_layers(model):
        if isinstance(layer, AnomalyAwareLinear):
            up = layer.anomaly_aware.W_b
        else:
            up = layer.generalist.B if hasattr(layer, "generalist") else layer.B
        assert up.grad is not None and up.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ADAPTERS)
def test_trainable_count_is_the_sum_of_the_layers_component_counts(kind):
    model = tiny_causal_lm()
    _, total_before = count_parameters(model)
    inject(model, ADAPTERS[kind]())
    trainable, total = count_parameters(model)
    per_layer = sum(sum(layer.parameter_counts().values()) for _, layer in adapter_layers(model))
    assert trainable == per_layer > 0
    assert total == total_before + trainable


def test_parameter_counts_match_their_formulas():
    d_in, d_out, n, r, h = 32, 48, 4, 2, 8
    base = nn.Linear(d_in, d_out)
    assert LoRA(rank=r).wrap(base).parameter_counts() == {"lora": r * (d_in + d_out)}
    assert LoRAMoE(experts=n, rank=r).wrap(base).parameter_counts() == {
        "generalist": n * r * (d_in + d_out),
        "router": d_in * n,
    }
    assert AMoELoRA(experts=n, rank=r, hyper_hidden=h).wrap(base).parameter_counts() == {
        "generalist": n * r * (d_in + d_out),
        "router": d_in * n,
        # W_a, W_b, then the hypernetwork's two linear layers with their biases
        "anomaly_aware": r * (d_in + d_out) + (d_in * h + h) + (h * r * r + r * r),
    }


def test_experts_times_rank_64_keeps_the_generalist_count_fixed_across_the_grid():
    base = nn.Linear(32, 48)
    grid = [(1, 64), (2, 32), (4, 16), (8, 8), (16, 4), (32, 2), (64, 1)]
    counts = [AMoELoRA(experts=n, rank=r).wrap(base).parameter_counts() for n, r in grid]
    assert {c["generalist"] for c in counts} == {64 * (32 + 48)}
    assert [c["router"] for c in counts] == [32 * n for n, _ in grid]


@pytest.mark.parametrize(
    "make, argument",
    [
        (lambda: LoRA(rank=0), "rank"),
        (lambda: LoRA(rank=-2), "rank"),
        (lambda: LoRA(alpha=0), "alpha"),
        (lambda: LoRA(alpha=-1.0), "alpha"),
        (lambda: LoRA(dropout=1.0), "dropout"),
        (lambda: LoRA(targets=[]), "targets"),
        (lambda: LoRAMoE(experts=0), "experts"),
        (lambda: LoRAMoE(rank=0), "rank"),
        (lambda: LoRAMoE(alpha=0), "alpha"),
        (lambda: LoRAMoE(balance_weight=-1), "balance_weight"),
        (lambda: LoRAMoE(balance_delta=1.0), "balance_delta"),
        (lambda: AMoELoRA(experts=-1), "experts"),
        (lambda: AMoELoRA(rank=0), "rank"),
        (lambda: AMoELoRA(alpha=-8), "alpha"),
        (lambda: AMoELoRA(hyper_hidden=0), "hyper_hidden"),
    ],
)
def test_invalid_hyper_parameters_raise_naming_the_argument(make, argument):
    with pytest.raises(ValueError, match=rf"^{argument} must be"):
        make()


def test_plain_lora_and_amoe_without_balance_have_no_auxiliary_loss():
    for adapter in (LoRA(), AMoELoRA(experts=2, rank=2)):
        model = tiny_causal_lm()
        inject(model, adapter)
        model.double().train()
        model(torch.randint(1, 96, (2, 5)))
        assert auxiliary_loss(model) is None


def test_adapters_work_under_bfloat16_autocast_with_float32_weights():
    model = tiny_causal_lm(dtype=torch.bfloat16)
    inject(model, AMoELoRA(experts=4, rank=2, hyper_hidden=8))
    randomize_adapters(model)
    layer = next(layer for _, layer in adapter_layers(model))
    assert layer.generalist.A.dtype == torch.float32 and layer.base.weight.dtype == torch.bfloat16
    ids = torch.randint(1, 96, (2, 9))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and layer.generalist.B.grad.dtype == torch.float32
    # Without autocast the adapter computes in its own dtype and casts back.
    assert model(ids).logits.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", ADAPTERS)
def test_activation_checkpointing_gives_the_same_gradients(kind):
    # The context stays set after the forward, so the re-run during backward sees the same masks.
    ids = torch.randint(1, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, :3] = False
    prompt = mask.clone()
    prompt[:, 6:] = False
    grads = []
    for checkpointing in (False, True):
        model = tiny_causal_lm()
        inject(model, ADAPTERS[kind]())
        model.double().train()
        randomize_adapters(model)
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        adapter_context(model).set(
            ForwardInputs(token_mask=mask, condition_mask=prompt, sample_labels=torch.tensor([0, 1]))
        )
        model(ids, attention_mask=mask.long(), labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=0, atol=1e-12, msg=name)


def test_fused_weights_cached_for_generation_follow_every_in_place_update():
    from maugpt.adapters import AMoELoRA, LoRAMoE

    torch.manual_seed(0)
    for adapter in (LoRAMoE(experts=4, rank=2, dropout=0.0), AMoELoRA(experts=4, rank=2, hyper_hidden=8)):
        layer = adapter.wrap(nn.Linear(16, 24))
        x = torch.randn(2, 5, 16)
        with torch.no_grad():
            layer(x)  # fills the cache
            for p in layer.adapter_parameters().values():
                p.add_(torch.randn_like(p))  # as an optimizer step or a load does
            cached = layer(x)
        assert torch.equal(cached, layer(x).detach())  # with gradients on, nothing is cached
