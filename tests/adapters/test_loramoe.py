"""LoRAMoE: the stacked mixture, the localized balancing constraint, the router diagnostics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maugpt.adapters import (
    AMoELoRA,
    ForwardInputs,
    LoRAMoE,
    adapter_context,
    adapter_diagnostics,
    adapter_layers,
    auxiliary_loss,
    inject,
    localized_balance_loss,
)
from maugpt.adapters.reference import reference_forward
from tests.conftest import randomize_adapters, tiny_causal_lm

# Router weights of 2 samples × 2 tokens × 2 experts, and their per-sample importance Q.
W = torch.tensor(
    [
        [[0.8, 0.2], [0.6, 0.4]],  # Q_0 = [1.4, 0.6]
        [[0.3, 0.7], [0.5, 0.5]],
    ],  # Q_1 = [0.8, 1.2]
    dtype=torch.float64,
)


def test_balance_loss_matches_a_hand_computed_value():
    # Sample 0 is labelled 1 (favours expert 0), sample 1 labelled 0 (favours expert 1), δ = 0.5:
    # Z = [1.4·1.5, 0.6·0.5, 0.8·0.5, 1.2·1.5] = [2.1, 0.3, 0.4, 1.8]; mean 1.15;
    # unbiased Var = (0.95² + 0.85² + 0.75² + 0.65²) / 3 = 0.87; CV² = 0.87 / 1.15² = 0.6578449905…
    loss = localized_balance_loss(W, sample_labels=torch.tensor([1, 0]), delta=0.5)
    assert loss.item() == pytest.approx(0.87 / 1.3225, rel=1e-9)
    # Without labels it is the plain importance balance: Z = [1.4, 0.6, 0.8, 1.2], Var 0.4/3, mean 1.
    assert localized_balance_loss(W).item() == pytest.approx(0.4 / 3, rel=1e-9)


def test_balance_loss_ignores_padding_tokens():
    padded = torch.cat([W, torch.tensor([[[0.9, 0.1]], [[0.05, 0.95]]], dtype=torch.float64)], dim=1)
    mask = torch.tensor([[True, True, False], [True, True, False]])
    labels = torch.tensor([1, 0])
    expected = localized_balance_loss(W, sample_labels=labels, delta=0.5)
    assert localized_balance_loss(padded, mask, labels, delta=0.5).item() == pytest.approx(expected.item(), rel=1e-12)
    # …and without the mask the padding would have changed it.
    assert localized_balance_loss(padded, None, labels, delta=0.5).item() != pytest.approx(expected.item(), rel=1e-3)


@pytest.mark.parametrize(
    "adapter",
    [LoRAMoE(experts=4, rank=3, dropout=0.0), AMoELoRA(experts=4, rank=3, hyper_hidden=8)],
    ids=["loramoe", "amoe_lora"],
)
def test_stacked_mixture_equals_the_per_expert_loop(adapter):
    torch.manual_seed(0)
    layer = adapter.wrap(nn.Linear(24, 40)).double()
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.normal_(0.0, 0.3)
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    mask = torch.rand(3, 7) > 0.3
    with layer.context.use(ForwardInputs(condition_mask=mask)):
        fast, slow = layer(x), reference_forward(layer, x)
    assert (fast - slow).abs().max().item() <= 1e-10
    assert (fast - layer.base(x)).abs().max().item() > 1e-3  # the adapter really contributes


def test_layer_balance_loss_is_the_function_on_its_router_weights_times_beta():
    torch.manual_seed(0)
    layer = (
        LoRAMoE(experts=4, rank=2, dropout=0.0, balance_delta=0.2, balance_weight=0.5).wrap(nn.Linear(16, 8)).double()
    )
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    labels = torch.tensor([0, 1])
    with layer.context.use(ForwardInputs(token_mask=mask, sample_labels=labels)):
        layer(x)
    weights = torch.softmax(x @ layer.generalist.router, dim=-1)
    expected = 0.5 * localized_balance_loss(weights, mask, labels, delta=0.2)
    assert layer.auxiliary_loss().item() == pytest.approx(expected.item(), rel=1e-12)
    layer.eval()
    layer(x)
    assert layer.auxiliary_loss() is None


def test_model_auxiliary_loss_sums_layers_and_padding_does_not_change_it():
    model = tiny_causal_lm()
    inject(model, LoRAMoE(experts=4, rank=2, dropout=0.0, balance_weight=0.01))
    model.double().train()
    randomize_adapters(model)
    ctx = adapter_context(model)
    ids = torch.randint(1, 96, (2, 6), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, 0])
    with ctx.use(ForwardInputs(sample_labels=labels)):
        model(ids)
        plain = auxiliary_loss(model)
    layer_sum = sum(layer.auxiliary_loss() for _, layer in adapter_layers(model))
    assert plain.item() == pytest.approx(layer_sum.item(), rel=1e-12) and plain.item() > 0
    # Right-pad with three tokens: causal attention keeps the real tokens' activations, the mask drops the rest.
    padded = torch.cat([ids, torch.zeros(2, 3, dtype=ids.dtype)], dim=1)
    mask = torch.cat([torch.ones(2, 6), torch.zeros(2, 3)], dim=1).bool()
    with ctx.use(ForwardInputs(token_mask=mask, sample_labels=labels)):
        model(padded, attention_mask=mask.long())
        assert auxiliary_loss(model).item() == pytest.approx(plain.item(), rel=1e-9)


def test_router_diagnostics_are_recorded_only_on_request():
    model = tiny_causal_lm()
    inject(model, LoRAMoE(experts=4, rank=2, dropout=0.0))
    model.double()
    randomize_adapters(model)
    ids = torch.randint(1, 96, (2, 6))
    model(ids)
    assert adapter_diagnostics(model) == {}
    with adapter_context(model).recording():
        model(ids)
    diagnostics = adapter_diagnostics(model)
    assert len(diagnostics) == 6  # gate/up/down × 2 decoder layers
    for stats in diagnostics.values():
        assert stats["expert_load"].shape == (4,)
        assert stats["expert_load"].sum().item() == pytest.approx(1.0, abs=1e-12)
        assert 0.0 < stats["router_entropy"].item() <= torch.log(torch.tensor(4.0)).item() + 1e-12
