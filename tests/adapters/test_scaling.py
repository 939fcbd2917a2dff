"""The mixtures' scale conventions and the per-component output norms, against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from maugpt.adapters import Adapter, AMoELoRA, AnomalyAware, ForwardInputs, LoRA, LoRAMoE

N, R, ALPHA, D_IN, D_OUT = 4, 3, 6.0, 10, 12


def randomized(layer: nn.Module, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in layer.adapter_parameters().values():
            p.normal_(0.0, 0.3)
    return layer


def inputs(seed: int = 1) -> torch.Tensor:
    return torch.randn(2, 5, D_IN, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", [LoRAMoE, AMoELoRA])
def test_each_convention_scales_the_generalist_experts_as_stated(kind):
    paper = kind(experts=N, rank=R, alpha=ALPHA).wrap(nn.Linear(D_IN, D_OUT))
    total = kind(experts=N, rank=R, alpha=ALPHA, scaling="total_rank").wrap(nn.Linear(D_IN, D_OUT))
    assert paper.generalist.scale == ALPHA / R == 2.0
    assert total.generalist.scale == N * ALPHA / R == 8.0


def test_the_anomaly_aware_scale_is_alpha_over_r_unless_set_apart():
    assert AMoELoRA(experts=N, rank=R, alpha=ALPHA).wrap(nn.Linear(D_IN, D_OUT)).anomaly_aware.scale == 2.0
    layer = AMoELoRA(experts=N, rank=R, alpha=ALPHA, scaling="total_rank", anomaly_alpha=9.0).wrap(
        nn.Linear(D_IN, D_OUT)
    )
    # the generalist convention leaves s_a alone
    assert (layer.generalist.scale, layer.anomaly_aware.scale) == (8.0, 3.0)


@pytest.mark.parametrize(
    "adapter",
    [
        LoRAMoE(experts=N, rank=R, alpha=ALPHA, dropout=0.0, scaling="total_rank"),
        AMoELoRA(experts=N, rank=R, alpha=ALPHA, scaling="total_rank", anomaly_alpha=9.0),
    ],
    ids=["loramoe", "amoe_lora"],
)
def test_a_fresh_adapter_changes_nothing_under_either_convention(adapter):
    layer = adapter.wrap(nn.Linear(D_IN, D_OUT)).double()
    x = inputs()
    assert torch.equal(layer(x), layer.base(x))


def test_with_uniform_routing_a_total_rank_mixture_is_one_lora_of_rank_n_r():
    """``N·(α/r)·(1/N)·B A x = (α/r) B A x``: a LoRA of rank N·r whose α keeps α/r (α' = N·α)."""
    mixture = randomized(
        LoRAMoE(experts=N, rank=R, alpha=ALPHA, dropout=0.0, balance_weight=0.0, scaling="total_rank")
        .wrap(nn.Linear(D_IN, D_OUT))
        .double()
    )
    lora = LoRA(rank=N * R, alpha=N * ALPHA).wrap(nn.Linear(D_IN, D_OUT)).double()
    with torch.no_grad():
        mixture.generalist.router.zero_()  # every ω_i = 1/N
        lora.base.load_state_dict(mixture.base.state_dict())
        lora.A.copy_(mixture.generalist.A)
        lora.B.copy_(mixture.generalist.B)
    x = inputs()
    assert (mixture(x) - lora(x)).abs().max().item() <= 1e-12
    paper = LoRAMoE(experts=N, rank=R, alpha=ALPHA, dropout=0.0, balance_weight=0.0).wrap(nn.Linear(D_IN, D_OUT))
    paper = paper.double()
    paper.load_state_dict(mixture.state_dict())
    delta_paper, delta_total = paper(x) - paper.base(x), mixture(x) - mixture.base(x)
    assert (delta_total - N * delta_paper).abs().max().item() <= 1e-12  # the paper's step is N times smaller


def test_the_anomaly_aware_expert_is_scaled_by_its_own_alpha():
    layer = randomized(
        AMoELoRA(experts=N, rank=R, alpha=ALPHA, hyper_hidden=8, anomaly_alpha=9.0)
        .wrap(nn.Linear(D_IN, D_OUT))
        .double()
    )
    with torch.no_grad():
        layer.generalist.B.zero_()  # no generalist output
        layer.anomaly_aware.hypernetwork.out.weight.zero_()  # H = I for every sample
        layer.anomaly_aware.hypernetwork.out.bias.copy_(torch.eye(R).flatten())
    x = inputs()
    expected = layer.base(x) + (9.0 / R) * (x @ layer.anomaly_aware.W_a) @ layer.anomaly_aware.W_b
    assert (layer(x) - expected).abs().max().item() <= 1e-12


@pytest.mark.parametrize("scaling", ["paper", "total_rank"])
def test_the_recorded_output_norms_are_each_components_mean_token_norm(scaling):
    layer = randomized(
        AMoELoRA(experts=N, rank=R, alpha=ALPHA, hyper_hidden=8, scaling=scaling, anomaly_alpha=5.0)
        .wrap(nn.Linear(D_IN, D_OUT))
        .double()
    )
    x = inputs()
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    with layer.context.use(ForwardInputs(token_mask=mask)), layer.context.recording():
        out = layer(x)
    # by hand: the router (Eq. 1), each expert's term (Eq. 3) and the per-sample pair (Eq. 4-5)
    g = layer.generalist
    omega = torch.softmax(x @ g.router, -1)
    generalist = sum(
        g.scale * omega[..., i : i + 1] * (x @ g.A[:, i * R : (i + 1) * R]) @ g.B[i * R : (i + 1) * R] for i in range(N)
    )
    condition = torch.stack([x[b][mask[b]].mean(0) for b in range(2)])
    H = layer.anomaly_aware.hypernetwork(condition)
    anomaly = (5.0 / R) * torch.bmm(x @ layer.anomaly_aware.W_a @ H, H @ layer.anomaly_aware.W_b)
    frozen = layer.base(x)
    assert (out - (frozen + generalist + anomaly)).abs().max().item() <= 1e-12
    diagnostics = layer.diagnostics()
    for name, output in [("frozen", frozen), ("generalist", generalist), ("anomaly_aware", anomaly)]:
        expected = output.norm(dim=-1)[mask].mean()
        assert abs(diagnostics[f"{name}_norm"].item() - expected.item()) <= 1e-10, name


def test_lora_records_its_delta_norm_beside_the_frozen_one():
    layer = randomized(LoRA(rank=R, alpha=ALPHA).wrap(nn.Linear(D_IN, D_OUT)).double())
    x = inputs()
    with layer.context.recording():
        layer(x)
    delta = (ALPHA / R) * (x @ layer.A) @ layer.B
    assert abs(layer.diagnostics()["lora_norm"].item() - delta.norm(dim=-1).mean().item()) <= 1e-10
    assert abs(layer.diagnostics()["frozen_norm"].item() - layer.base(x).norm(dim=-1).mean().item()) <= 1e-10
    layer(x)  # a forward without recording forgets them
    assert layer.diagnostics() == {}


def test_a_bad_convention_or_anomaly_alpha_is_named():
    with pytest.raises(ValueError, match=r"scaling must be one of \['paper', 'total_rank'\], got 'double'"):
        LoRAMoE(scaling="double")
    with pytest.raises(ValueError, match="anomaly_alpha must be > 0, got 0"):
        AMoELoRA(anomaly_alpha=0)


def test_the_convention_survives_the_config_round_trip():
    adapter = AMoELoRA(experts=N, rank=R, alpha=ALPHA, scaling="total_rank", anomaly_alpha=2.5)
    assert Adapter.from_config(adapter.to_config()) == adapter
    assert adapter.init_args()["scaling"] == "total_rank" and adapter.init_args()["anomaly_alpha"] == 2.5
    old = {"class_path": "maugpt.adapters.AMoELoRA", "init_args": {"experts": N, "rank": R, "alpha": ALPHA}}
    rebuilt = Adapter.from_config(old)  # files written before the conventions existed: the paper's
    assert (rebuilt.scaling, rebuilt.anomaly_alpha) == ("paper", None)


def test_the_anomaly_aware_expert_alone_is_eq_5_added_to_the_frozen_output():
    layer = randomized(AnomalyAware(rank=R, alpha=ALPHA, hyper_hidden=8).wrap(nn.Linear(D_IN, D_OUT)).double())
    x = inputs().requires_grad_()
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0]], dtype=torch.bool)
    with layer.context.use(ForwardInputs(condition_mask=mask)), layer.context.recording():
        out = layer(x)
    expert = layer.anomaly_aware
    H = expert.hypernetwork(torch.stack([x[b][mask[b]].mean(0) for b in range(2)]))
    literal = layer.base(x) + (ALPHA / R) * torch.bmm(x @ (expert.W_a @ H), H @ expert.W_b)  # A_0 = W_a H, B_0 = H W_b
    assert (out - literal).abs().max().item() <= 1e-12
    params = [x, *expert.parameters()]
    fast = torch.autograd.grad(out.square().sum(), params)
    slow = torch.autograd.grad(literal.square().sum(), params)
    assert all((f - s).abs().max().item() <= 1e-10 for f, s in zip(fast, slow))
    assert set(layer.diagnostics()) == {"frozen_norm", "anomaly_aware_norm", "core"}
    assert layer.parameter_counts() == {"anomaly_aware": sum(p.numel() for p in expert.parameters())}
