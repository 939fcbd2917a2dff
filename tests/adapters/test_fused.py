"""The hand-written backward passes: checked against finite differences and against autograd
through the literal equations (``reference.py``), in float64 to 1e-10."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maugpt.adapters import AMoELoRA, ForwardInputs, LoRA, LoRAMoE, localized_balance_loss
from maugpt.adapters.anomaly_aware import Hypernetwork
from maugpt.adapters.fused import DownProjection, HypernetworkCore, LoRAUp, MixtureDelta, MixtureSpec
from maugpt.adapters.reference import hypernetwork_reference, reference_forward

N, R, D, OUT, BATCH, T = 3, 2, 5, 4, 2, 3
M = BATCH * T


def double(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).requires_grad_()


@pytest.mark.parametrize("pad", [0, 3])
def test_down_projection_backward_matches_finite_differences(pad):
    args = (double(M, D, seed=1), pad, double(D, 4, seed=2), double(D, 1, seed=3), double(D, N, seed=4))
    assert torch.autograd.gradcheck(DownProjection.apply, args)
    z = DownProjection.apply(*args)
    assert z.shape == (M, 4 + 1 + N + pad) and torch.equal(z[:, 4 + 1 + N :], torch.zeros(M, pad, dtype=z.dtype))


def test_lora_up_backward_matches_finite_differences():
    args = (double(M, OUT, seed=0), double(M, R, seed=1), double(R, OUT, seed=2), 1.5)
    assert torch.autograd.gradcheck(LoRAUp.apply, args)


def mixture_inputs(anomaly: bool, router_in_z: bool, pad_z: int):
    width = N * R + (R if anomaly else 0) + (N if router_in_z else 0) + pad_z
    inputs = [
        double(M, OUT, seed=0),
        double(M, width, seed=1),
        None if router_in_z else double(M, N, seed=2),
        double(N * R, OUT, seed=3),
    ]
    return inputs + ([double(R, OUT, seed=4), double(BATCH, R, R, seed=5)] if anomaly else [None, None])


@pytest.mark.parametrize(
    ("anomaly", "own_scale"),
    [(False, None), (True, None), (True, 1.9)],
    ids=["loramoe", "amoe_lora", "amoe_lora_own_scale"],
)  # own_scale: s_a apart from s
@pytest.mark.parametrize(("router_in_z", "pads"), [(True, (0, 0)), (False, (3, 5))], ids=["clean", "dropout_padded"])
def test_mixture_delta_backward_matches_finite_differences(anomaly, own_scale, router_in_z, pads):
    spec = MixtureSpec(N, R, 0.7, anomaly, router_in_z, pads[1], own_scale)
    inputs = mixture_inputs(anomaly, router_in_z, pads[0])
    assert torch.autograd.gradcheck(lambda *t: MixtureDelta.apply(*t, spec, True), inputs)
    assert torch.autograd.gradcheck(lambda *t: MixtureDelta.apply(*t, spec, False), inputs)


def test_padding_changes_nothing_but_the_widths():
    plain = MixtureDelta.apply(*mixture_inputs(True, True, 0), MixtureSpec(N, R, 0.7, True), True)
    padded_inputs = mixture_inputs(True, True, 0)
    padded_inputs[1] = torch.cat([padded_inputs[1], torch.zeros(M, 3, dtype=torch.float64)], dim=1)
    padded = MixtureDelta.apply(*padded_inputs, MixtureSpec(N, R, 0.7, True, True, 5), True)
    for a, b in zip(plain, padded):  # the output and the router weights
        assert (a - b).abs().max().item() <= 1e-12  # zeros summed in another order: equal to rounding


def test_hypernetwork_core_backward_matches_finite_differences():
    args = (
        double(BATCH, D, seed=0) * 3,
        double(7, D, seed=1),
        double(7, seed=2),
        double(R * R, 7, seed=3),
        double(R * R, seed=4),
        R,
    )
    assert torch.autograd.gradcheck(HypernetworkCore.apply, args)


def test_the_hypernetwork_equals_eq_4_in_torch_nn_functional():
    torch.manual_seed(0)
    hypernetwork = Hypernetwork(D, R, hidden=7).double()
    with torch.no_grad():
        for p in hypernetwork.parameters():
            p.normal_(0.0, 0.5)
    condition = (double(BATCH, D, seed=6) * 40).requires_grad_()  # o_proj/down_proj inputs are large
    fast, literal = hypernetwork(condition), hypernetwork_reference(hypernetwork, condition)
    assert fast.shape == (BATCH, R, R) and (fast - literal).abs().max().item() <= 1e-12
    grad = double(BATCH, R, R, seed=7)
    params = [condition, *hypernetwork.parameters()]
    for f, s in zip(torch.autograd.grad(fast, params, grad), torch.autograd.grad(literal, params, grad)):
        assert (f - s).abs().max().item() <= 1e-12


def layer_and_input(adapter, seed: int = 0):
    torch.manual_seed(seed)
    layer = adapter.wrap(nn.Linear(24, 40)).double()
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.normal_(0.0, 0.3)
    x = torch.randn(3, 7, 24, dtype=torch.float64, requires_grad=True)
    return layer, x


def gradients(layer, x, out):
    named = dict(layer.adapter_parameters(), x=x)
    grads = torch.autograd.grad(out.square().sum(), list(named.values()))
    return dict(zip(named, grads))


@pytest.mark.parametrize(
    "adapter",
    [
        LoRAMoE(experts=4, rank=3, dropout=0.0, balance_weight=0.0),
        AMoELoRA(experts=4, rank=3, hyper_hidden=8),
        AMoELoRA(experts=4, rank=3, hyper_hidden=8, scaling="total_rank", anomaly_alpha=5.0),
    ],
    ids=["loramoe", "amoe_lora", "amoe_lora_total_rank"],
)
def test_every_gradient_equals_autograd_through_the_literal_equations(adapter):
    layer, x = layer_and_input(adapter)
    mask = torch.rand(3, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    with layer.context.use(ForwardInputs(condition_mask=mask)):
        fast = gradients(layer, x, layer(x))
        slow = gradients(layer, x, reference_forward(layer, x))
    # x, A, router, B; AMoE-LoRA also W_a, W_b and the hypernetwork's two weights and biases
    assert fast.keys() == slow.keys() and len(fast) == (10 if isinstance(adapter, AMoELoRA) else 4)
    for name in fast:
        assert (fast[name] - slow[name]).abs().max().item() <= 1e-10, name
    assert all(g.abs().sum() > 0 for g in fast.values())  # every path is exercised


def test_lora_gradients_equal_autograd_of_x_a_b():
    layer, x = layer_and_input(LoRA(rank=4, alpha=8))
    fast = gradients(layer, x, layer(x))
    slow = gradients(layer, x, layer.base(x) + layer.scale * (x @ layer.A) @ layer.B)
    for name in fast:
        assert (fast[name] - slow[name]).abs().max().item() <= 1e-10, name


def test_the_balancing_loss_gradient_reaches_the_router_through_the_fused_weights():
    adapter = LoRAMoE(experts=4, rank=3, dropout=0.0, balance_delta=0.2, balance_weight=0.5)
    layer, x = layer_and_input(adapter)
    mask = torch.ones(3, 7, dtype=torch.bool)
    labels = torch.tensor([0, 1, 1])
    with layer.context.use(ForwardInputs(token_mask=mask, sample_labels=labels)):
        out = layer(x)
        router, A = layer.generalist.router, layer.generalist.A
        fast = torch.autograd.grad(out.square().sum() + layer.auxiliary_loss(), [router, A])
        literal = reference_forward(layer, x)
        loss = 0.5 * localized_balance_loss(torch.softmax(x @ layer.generalist.router, -1), mask, labels, 0.2)
        slow = torch.autograd.grad(literal.square().sum() + loss, [router, A])
    for f, s in zip(fast, slow):
        assert (f - s).abs().max().item() <= 1e-10


def test_dropout_reaches_the_experts_and_never_the_router():
    adapter = LoRAMoE(experts=4, rank=3, dropout=0.5, balance_weight=0.0)
    layer, x = layer_and_input(adapter)
    layer.train()
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)  # the same mask, drawn the same way, applied by hand
    dropped = layer.dropout(x.reshape(-1, 24)).view_as(x)
    weights = torch.softmax(x @ layer.generalist.router, -1)
    z = (dropped @ layer.generalist.A).unflatten(-1, (4, 3)) * weights.unsqueeze(-1)
    expected = layer.base(x) + layer.generalist.scale * z.flatten(-2) @ layer.generalist.B
    assert (out - expected).abs().max().item() <= 1e-12
