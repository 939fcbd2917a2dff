"""AMoE-LoRA, the paper's adapter (Sec. 4.2, Eq. 1–6): generalist experts + an anomaly-aware expert.

For one wrapped linear layer with frozen output ``o_0 = W_0 x``::

    generalist experts (Eq. 1–3)   ω = softmax(x W_g)               (B, T, N)
                                   o_1 = (α/r) Σ_i ω_i x A_i B_i     A_i (d_in, r), B_i (r, d_out)
    anomaly-aware expert (Eq. 4–5) H = hypernetwork(c)               (B, r, r), one core per sample
                                   A_0 = W_a H,  B_0 = H W_b         W_a (d_in, r), W_b (r, d_out)
                                   o_2 = (α/r) x A_0 B_0 = (α/r) (x W_a) H H W_b
    output (Eq. 6)                 o = o_0 + o_1 + o_2

How we read "the embedding x is fed into the hypernetwork" (Eq. 4): ``A_0`` and ``B_0`` are one
pair per *sample*, so ``H`` must see one vector per sample. That vector, the **condition**
``c (B, d_in)``, is the masked mean of the wrapped layer's own input over the sample's **prompt
tokens** (image tokens and question). Never the answer tokens: under teacher forcing they would
leak the target into the adapter, and at generation time they do not exist yet. The condition is
computed once per sequence: in training from the prompt part of the full sequence, in
generation at the prefill, after which every new token reuses the same core, so KV-cached
decoding and a full forward agree exactly. Which tokens count as "prompt" is the model's choice
(``AdapterContext.condition_mask``): the prompt by default, the image tokens alone if a
config prefers that reading.

Cost: ``[A_1 … A_N | W_a | W_g]`` is one ``(d_in, N·r + r + N)`` down-projection and
``[B_1; …; B_N; W_b]`` one ``(N·r + r, d_out)`` up-projection, so the whole adapter reads ``x``
once and writes the output once; the per-sample core acts on the small ``(B, T, r)``
intermediate by a batched ``(r, r)`` matmul, never on ``(d, r)`` matrices per token. Forward and
backward of all of it are one autograd Function (:class:`~maugpt.adapters.fused.MixtureDelta`).
The pooled condition is computed once per layer input and shared by the modules that read it
(q/k/v, gate/up).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from maugpt.adapters.base import ALL_PROJECTIONS, AdapterContext, require_positive
from maugpt.adapters.fused import HypernetworkCore
from maugpt.adapters.lora import low_rank_init, zero_init
from maugpt.adapters.loramoe import LoRAMoE, LoRAMoELinear


class Hypernetwork(nn.Module):
    """``H`` of Eq. 4: a per-sample condition ``(B, d_in)`` → an ``(r, r)`` core ``(B, r, r)``.

    A two-layer MLP on the parameter-free layer-normalised condition: the inputs of o_proj and
    down_proj are not normalised by the decoder, and their scale differs by orders of magnitude
    from that of q/k/v. The output bias starts at the identity, so the expert starts as the
    plain pair ``x W_a W_b`` (zero, since ``W_b`` is) and gradients reach ``W_b`` from step one.
    """

    def __init__(self, d_in: int, rank: int, hidden: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.d_in, self.rank = d_in, rank
        self.hidden = nn.Linear(d_in, hidden, device=device)
        self.out = nn.Linear(hidden, rank * rank, device=device)
        with torch.no_grad():
            self.out.weight.normal_(0.0, 0.02)
            self.out.bias.copy_(torch.eye(rank, device=device).flatten())

    def forward(self, condition: Tensor) -> Tensor:
        """``(B, d_in) → (B, r, r)``, forward and backward by hand (:class:`HypernetworkCore`)."""
        return HypernetworkCore.apply(condition, self.hidden.weight, self.hidden.bias, self.out.weight,
                                      self.out.bias, self.rank)


class AnomalyAwareExpert(nn.Module):
    """The anomaly-aware expert's parameters (Eq. 4–5): ``hypernetwork``, ``W_a``, ``W_b`` (zero)."""

    def __init__(self, d_in: int, d_out: int, rank: int, hidden: int, device: torch.device | None = None) -> None:
        super().__init__()
        self.hypernetwork = Hypernetwork(d_in, rank, hidden, device)
        self.W_a = low_rank_init(d_in, rank, device)
        self.W_b = zero_init(rank, d_out, device)


class AMoELoRALinear(LoRAMoELinear):
    """Generalist experts (inherited from :class:`LoRAMoELinear`) plus the anomaly-aware expert."""

    def __init__(self, base: nn.Linear, experts: int, rank: int, alpha: float, dropout: float = 0.0,
                 hyper_hidden: int = 64, balance_delta: float = 0.0, balance_weight: float = 0.0,
                 context: AdapterContext | None = None, align: int = 8) -> None:
        super().__init__(base, experts, rank, alpha, dropout, balance_delta, balance_weight, context, align)
        self.anomaly_aware = AnomalyAwareExpert(self.in_features, self.out_features, rank, hyper_hidden,
                                                base.weight.device)

    def parameter_counts(self) -> dict[str, int]:
        return {**super().parameter_counts(),
                "anomaly_aware": sum(p.numel() for p in self.anomaly_aware.parameters())}

    def expert_blocks(self) -> list[Tensor]:
        return [self.A, self.anomaly_aware.W_a]

    def core(self, x: Tensor) -> Tensor:
        """The hypernetwork's ``(B, r, r)`` core for the samples of ``x (B, T, d_in)``."""
        ctx = self.context
        if ctx.freeze_condition and self in ctx.frozen_cores:
            return ctx.frozen_cores[self]
        core = self.anomaly_aware.hypernetwork(ctx.pooled_condition(x, self.name))
        if ctx.freeze_condition:
            ctx.frozen_cores[self] = core
        return core

    def core_square(self, core: Tensor) -> Tensor | None:
        """``H H`` of Eq. 4–5, kept for the whole generation while the condition is fixed
        (None in training: the fused delta squares the core itself)."""
        ctx = self.context
        if not ctx.freeze_condition:
            return None
        if (self, "square") not in ctx.frozen_cores:
            ctx.frozen_cores[(self, "square")] = torch.bmm(core, core)
        return ctx.frozen_cores[(self, "square")]

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"AMoE-LoRA layer {self.name!r} needs input (batch, tokens, features): "
                             f"its anomaly-aware expert is per sample; got shape {tuple(x.shape)}")
        core = self.core(x)
        if core.shape[0] != x.shape[0]:
            raise ValueError(f"AMoE-LoRA layer {self.name!r}: the condition was fixed for a batch of "
                             f"{core.shape[0]} but the input has {x.shape[0]} samples")
        out, weights = self.mixture(x, core, self.core_square(core))
        self.observe(x, weights, core=core)
        return out


class AMoELoRA(LoRAMoE):
    """AMoE-LoRA (the paper, Eq. 1–6): N generalist LoRA experts with a softmax router plus one
    anomaly-aware expert whose low-rank pair a hypernetwork generates per sample.

    Args:
        experts: number of generalist experts N (the paper's best: 16).
        rank: rank r of each generalist expert and of the anomaly-aware pair (the paper's best: 4).
        alpha: scaling numerator α; both components are scaled by α / r (Eq. 3, 5).
        dropout: dropout on the experts' input (the router and the condition read the clean input).
        hyper_hidden: hidden width of the hypernetwork H.
        balance_delta: δ of LoRAMoE's balancing constraint on the router (off by default).
        balance_weight: β of that constraint; the paper uses none (0).
        targets: name patterns of the linear layers to wrap.
        share_input: one down-projection GEMM for q/k/v and for gate/up (same parameters and outputs).
        align: on GPUs, the fused low-rank widths are padded with zero columns and rows to a
            multiple of this, for the tensor-core GEMMs (bf16 wants multiples of 8); 1 never pads.
            Parameters, files and outputs do not change with it.
    """

    def __init__(self, experts: int = 16, rank: int = 4, alpha: float = 8.0, dropout: float = 0.0,
                 hyper_hidden: int = 64, balance_delta: float = 0.0, balance_weight: float = 0.0,
                 targets: Sequence[str] = ALL_PROJECTIONS, share_input: bool = False, align: int = 8) -> None:
        super().__init__(experts, rank, alpha, dropout, balance_delta, balance_weight, targets, share_input, align)
        require_positive(hyper_hidden=hyper_hidden)
        self.hyper_hidden = int(hyper_hidden)

    def wrap(self, base: nn.Linear, context: AdapterContext | None = None) -> AMoELoRALinear:
        return AMoELoRALinear(base, self.experts, self.rank, self.alpha, self.dropout, self.hyper_hidden,
                              self.balance_delta, self.balance_weight, context, self.align)
