"""The anomaly-aware expert (the paper's Eq. 4–5), and the adapter that is that expert alone.

For a frozen linear layer with output ``o_0 = W_0 x``::

    H = hypernetwork(c)                  (B, r, r), one core per sample; c: the prompt's mean input
    A_0 = W_a H,  B_0 = H W_b            W_a (d_in, r), W_b (r, d_out) zero
    o_2 = s_a x A_0 B_0 = s_a (x W_a) H H W_b,   s_a = α/r

:class:`AnomalyAwareExpert` holds the parameters and generates the cores; AMoE-LoRA
(:mod:`maugpt.adapters.amoe_lora`) adds it to the generalist mixture (Eq. 6). :class:`AnomalyAware`
wraps layers with the expert *alone*, ``o = o_0 + o_2``: the "anomaly-aware only" arm of the
component ablation (the "generalist only" arm is LoRAMoE without its balancing loss). See
:mod:`maugpt.adapters.amoe_lora` for how the condition ``c`` is read.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maugpt.adapters.base import ALL_PROJECTIONS, AdapterContext, require_positive
from maugpt.adapters.fused import HypernetworkCore, LoRAUp, compute_dtype
from maugpt.adapters.lora import low_rank_init, zero_init
from maugpt.adapters.lowrank import LowRankAdapter, LowRankLayer


class Hypernetwork(nn.Module):
    """``H`` of Eq. 4: a per-sample condition ``(B, d_in)`` → an ``(r, r)`` core ``(B, r, r)``.

    A two-layer MLP on the parameter-free layer-normalised condition: the inputs of o_proj and
    down_proj are not normalised by the decoder, and their scale differs by orders of magnitude
    from that of q/k/v. The output bias starts at the identity, so the expert starts as the
    plain pair ``x W_a W_b`` (zero, since ``W_b`` is) and gradients reach ``W_b`` from step one.
    """

    def __init__(self, d_in: int, rank: int, *, hidden: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.d_in, self.rank = d_in, rank
        self.hidden = nn.Linear(d_in, hidden, device=device)
        self.out = nn.Linear(hidden, rank * rank, device=device)
        with torch.no_grad():
            self.out.weight.normal_(0.0, 0.02)
            self.out.bias.copy_(torch.eye(rank, device=device).flatten())

    def forward(self, condition: Tensor) -> Tensor:
        """``(B, d_in) → (B, r, r)``, forward and backward by hand (:class:`HypernetworkCore`)."""
        return HypernetworkCore.apply(
            condition, self.hidden.weight, self.hidden.bias, self.out.weight, self.out.bias, self.rank
        )


class AnomalyAwareExpert(nn.Module):
    """The anomaly-aware expert's parameters (Eq. 4–5): ``hypernetwork``, ``W_a``, ``W_b`` (zero);
    ``scale`` is Eq. 5's ``s_a``."""

    def __init__(
        self, d_in: int, d_out: int, *, rank: int, hidden: int, scale: float, device: torch.device | None = None
    ) -> None:
        super().__init__()
        self.rank, self.scale = rank, scale
        self.hypernetwork = Hypernetwork(d_in, rank, hidden=hidden, device=device)
        self.W_a = low_rank_init(d_in, rank, device)
        self.W_b = zero_init(rank, d_out, device)

    def core(self, x: Tensor, layer: LowRankLayer) -> Tensor:
        """Eq. 4: the hypernetwork's ``(B, r, r)`` core for the samples of ``x (B, T, d_in)``, from
        ``layer``'s pooled condition; in a generation (the context's :class:`GenerationCache`) the
        prefill's core, reused for every new token."""
        cache = layer.context.generation
        if cache is not None and layer.name in cache.cores:
            core = cache.cores[layer.name]
            if core.shape[0] != x.shape[0]:
                raise ValueError(
                    f"adapted layer {layer.name!r}: the condition was fixed at the prefill for a batch of "
                    f"{core.shape[0]} but the input has {x.shape[0]} samples"
                )
            return core
        core = self.hypernetwork(layer.pooled_condition(x))
        if cache is not None:
            cache.cores[layer.name] = core
        return core

    def core_square(self, core: Tensor, layer: LowRankLayer) -> Tensor | None:
        """``H H`` of Eq. 4–5, kept for the whole generation while the condition is fixed
        (None in training: the delta squares the core itself)."""
        cache = layer.context.generation
        if cache is None:
            return None
        if layer.name not in cache.squares:
            cache.squares[layer.name] = torch.bmm(core, core)
        return cache.squares[layer.name]


class AnomalyAwareLinear(LowRankLayer):
    """The anomaly-aware expert alone on a frozen linear layer: ``o = o_0 + s_a (x W_a) H H W_b``.

    The per-sample core acts on the small ``(B, T, r)`` intermediate, as in AMoE-LoRA.
    """

    def __init__(self, base: nn.Linear, config: AnomalyAware, context: AdapterContext | None = None) -> None:
        super().__init__(base, context)
        self.rank = config.rank
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else None
        self.anomaly_aware = AnomalyAwareExpert(
            self.in_features,
            self.out_features,
            rank=config.rank,
            hidden=config.hyper_hidden,
            scale=config.alpha / config.rank,
            device=base.weight.device,
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"anomaly_aware": list(self.anomaly_aware.parameters())}

    def down_blocks(self) -> list[tuple[bool, list[Tensor]]]:
        return [(self.dropout is not None, [self.anomaly_aware.W_a])]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(
                f"anomaly-aware layer {self.name!r} needs input (batch, tokens, features): "
                f"its expert is per sample; got shape {tuple(x.shape)}"
            )
        expert = self.anomaly_aware
        core = expert.core(x, self)  # Eq. 4
        hh = expert.core_square(core, self)
        hh = torch.bmm(core, core) if hh is None else hh  # (B, r, r)
        x2 = x.reshape(-1, self.in_features)
        (z,) = self.project_down(x, x2.to(compute_dtype(x, expert.W_a)))  # x W_a, (B·T, r)
        u = torch.bmm(z.view(x.shape[0], -1, self.rank), hh.to(z.dtype)).view(-1, self.rank)  # (x W_a) H H
        out0 = self.base(x2)
        out = LoRAUp.apply(out0, u, expert.W_b, expert.scale)
        self.record_outputs(
            x, lambda: {"frozen": out0, "anomaly_aware": expert.scale * (u @ expert.W_b.to(u.dtype))}, core=core
        )
        return out.view(*x.shape[:-1], self.out_features)


class AnomalyAware(LowRankAdapter):
    """The anomaly-aware expert alone (Eq. 4–5, no generalist experts): a component ablation.

    Args:
        rank: rank r of the generated pair.
        alpha: scaling numerator; the expert's update is scaled by α / r.
        dropout: dropout on the expert's input (the condition reads the clean input).
        hyper_hidden: hidden width of the hypernetwork H.
        targets: name patterns of the linear layers to wrap.
        share_input: one down-projection GEMM for q/k/v and for gate/up (same parameters and outputs).
    """

    def __init__(
        self,
        rank: int = 4,
        alpha: float = 8.0,
        dropout: float = 0.0,
        hyper_hidden: int = 64,
        targets: Sequence[str] = ALL_PROJECTIONS,
        share_input: bool = False,
    ) -> None:
        super().__init__(rank, alpha, dropout, targets, share_input)
        require_positive(hyper_hidden=hyper_hidden)
        self.hyper_hidden = int(hyper_hidden)

    def wrap(self, base: nn.Linear, context: AdapterContext | None = None) -> AnomalyAwareLinear:
        return AnomalyAwareLinear(base, self, context)
