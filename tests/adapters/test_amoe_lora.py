"""AMoE-LoRA's anomaly-aware expert: one generated pair per sample, conditioned on the prompt."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maugpt.adapters import AMoELoRA, ForwardInputs, adapter_context, adapter_diagnostics, adapter_layers, inject
from tests.conftest import randomize_adapters, tiny_causal_lm


def random_layer(seed: int = 0):
    torch.manual_seed(seed)
    layer = AMoELoRA(experts=4, rank=2, hyper_hidden=8).wrap(nn.Linear(16, 24)).double()
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.normal_(0.0, 0.3)
    return layer


def test_changing_another_sample_leaves_a_samples_output_unchanged():
    layer = random_layer()
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    y = layer(x)
    x2 = x.clone()
    x2[1] = torch.randn(5, 16, dtype=torch.float64) * 5
    y2 = layer(x2)
    torch.testing.assert_close(y2[0], y[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(y2[2], y[2], rtol=0, atol=1e-12)
    assert (y2[1] - y[1]).abs().max() > 1e-3


def test_the_core_is_per_sample_in_a_whole_model():
    model = tiny_causal_lm()
    inject(model, AMoELoRA(experts=4, rank=2, hyper_hidden=8))
    model.double()
    randomize_adapters(model)
    ids = torch.randint(1, 96, (2, 8), generator=torch.Generator().manual_seed(0))
    other = ids.clone()
    other[1] = torch.randint(1, 96, (8,), generator=torch.Generator().manual_seed(5))
    a, b = model(ids).logits, model(other).logits
    torch.testing.assert_close(b[0], a[0], rtol=0, atol=1e-12)
    assert (b[1] - a[1]).abs().max() > 1e-3


def cores(model, ids, condition_mask):
    with adapter_context(model).use(ForwardInputs(condition_mask=condition_mask)), adapter_context(model).recording():
        model(ids)
    return {name: d["core"] for name, d in adapter_diagnostics(model).items()}


def test_answer_tokens_do_not_change_the_condition_but_prompt_tokens_do():
    model = tiny_causal_lm()
    inject(model, AMoELoRA(experts=4, rank=2, hyper_hidden=8))
    model.double()
    randomize_adapters(model)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 96, (2, 10), generator=gen)
    prompt = torch.zeros(2, 10, dtype=torch.bool)
    prompt[:, :6] = True  # 6 prompt tokens, then 4 answer tokens
    reference = cores(model, ids, prompt)
    assert len(reference) == 14 and all(c.shape == (2, 2, 2) for c in reference.values())

    new_answer = ids.clone()
    new_answer[:, 6:] = torch.randint(1, 96, (2, 4), generator=gen)
    for name, core in cores(model, new_answer, prompt).items():
        torch.testing.assert_close(core, reference[name], rtol=0, atol=0)

    new_prompt = ids.clone()
    new_prompt[:, 2] = (ids[:, 2] % 95) + 1
    changed = cores(model, new_prompt, prompt)
    assert all((changed[n] - reference[n]).abs().max() > 1e-9 for n in reference)


class Attention(nn.Module):
    """q/k/v reading one input, as in a decoder block (an input group)."""

    def __init__(self) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(16, 16) for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.q_proj(x) * self.k_proj(x) + self.v_proj(x)


def grouped_attention(share_input: bool = False) -> nn.Module:
    torch.manual_seed(0)
    net = Attention()
    inject(
        net,
        AMoELoRA(experts=2, rank=2, hyper_hidden=4, targets=["q_proj", "k_proj", "v_proj"], share_input=share_input),
    )
    randomize_adapters(net)
    return net.double()


@pytest.mark.parametrize("share_input", [False, True])
def test_the_condition_is_pooled_once_per_block_input_and_equals_each_layers_own(monkeypatch, share_input):
    net = grouped_attention(share_input)
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    adapter_context(net).set(ForwardInputs(condition_mask=mask))
    calls = []
    pooled_condition = type(adapter_context(net)).pooled_condition
    monkeypatch.setattr(
        type(adapter_context(net)),
        "pooled_condition",
        lambda self, *a: calls.append(a[1]) or pooled_condition(self, *a),
    )
    grouped = net(x)
    assert len(calls) == 1  # q pooled x; k and v took its mean
    grouped.square().sum().backward()
    grouped_grad = x.grad.clone()
    for _, layer in adapter_layers(net):  # each layer alone pools its own input
        layer.group = None
    x.grad = None
    alone = net(x)
    alone.square().sum().backward()
    assert len(calls) == 4
    assert torch.equal(grouped, alone)
    torch.testing.assert_close(x.grad, grouped_grad, rtol=0, atol=1e-12)


def test_a_block_input_fed_again_is_computed_afresh_never_from_a_freed_graph():
    net = grouped_attention(share_input=True)
    x = torch.randn(2, 5, 16, dtype=torch.float64, requires_grad=True)
    adapter_context(net).set(ForwardInputs(condition_mask=torch.ones(2, 5, dtype=torch.bool)))
    first = net(x)
    first.square().sum().backward()
    net.q_proj(x).sum().backward()  # q alone: what it handed to k and v is never taken
    for _ in range(2):  # the same tensor again: no part of an earlier forward's graph is reused
        again = net(x)
        again.square().sum().backward()
        assert torch.equal(again, first)


def test_an_empty_prompt_pools_to_zeros_not_nan():
    layer = random_layer()
    x = torch.randn(2, 4, 16, dtype=torch.float64)
    mask = torch.tensor([[True, True, False, False], [False] * 4])
    with layer.context.use(ForwardInputs(condition_mask=mask)):
        pooled = layer.context.pooled_condition(x, "layer")
        y = layer(x)
    assert torch.equal(pooled[1], torch.zeros(16, dtype=torch.float64))
    assert torch.equal(pooled[0], x[0, :2].mean(0))
    assert torch.isfinite(y).all()


def test_a_mask_of_the_wrong_shape_names_the_layer_and_both_shapes():
    layer = random_layer()
    layer.name = "model.layers.0.self_attn.q_proj"
    with layer.context.use(ForwardInputs(condition_mask=torch.ones(2, 7, dtype=torch.bool))):
        with pytest.raises(
            ValueError, match=r"condition_mask has shape \(2, 7\) .*'model.layers.0.self_attn.q_proj'.*\(2, 5, 16\)"
        ):
            layer(torch.randn(2, 5, 16, dtype=torch.float64))


def test_per_sample_expert_needs_a_batch_and_token_axis():
    layer = random_layer()
    with pytest.raises(ValueError, match=r"needs input \(batch, tokens, features\)"):
        layer(torch.randn(5, 16, dtype=torch.float64))


def test_the_hypernetwork_starts_at_the_identity_core_and_the_expert_at_zero():
    layer = AMoELoRA(experts=2, rank=3, hyper_hidden=4).wrap(nn.Linear(8, 8))
    with torch.no_grad():
        layer.anomaly_aware.hypernetwork.out.weight.zero_()
    core = layer.anomaly_aware.hypernetwork(torch.randn(5, 8))
    assert torch.equal(core, torch.eye(3).expand(5, 3, 3))
    assert torch.equal(layer.anomaly_aware.W_b, torch.zeros(3, 8))
